import HeraldTestSupport
import NIOCore
import NIOPosix
import NIOSSL
import PushProtocol
import Synchronization

/// A device socket driven byte by byte, for the hostile and exact-protocol tests.
///
/// What arrives is recorded from the first byte on, even before `connect` returns (a server
/// may answer and close at once, as with ERROR 429).
final class RawConnection: Sendable {
    private let inbox: Inbox
    let channel: any Channel

    private init(channel: any Channel, inbox: Inbox) {
        self.channel = channel
        self.inbox = inbox
    }

    /// Connects to the device port; with `tls`, through a TLS handshake (which needs reads:
    /// to stop reading after it, call `stopReading()`).
    static func connect(
        port: Int, readsAutomatically: Bool = true, tls: NIOSSLContext? = nil, smallReceiveBuffer: Bool = false
    ) async throws -> RawConnection {
        let inbox = Inbox()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.autoRead, value: readsAutomatically)
            .channelOption(.socketOption(.so_rcvbuf), value: readsAutomatically && !smallReceiveBuffer ? 65536 : 4096)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: nil))
                    }
                    try channel.pipeline.syncOperations.addHandler(Collector(inbox: inbox))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        return RawConnection(channel: channel, inbox: inbox)
    }

    /// Reads nothing more: the server's writes pile up in the kernel's buffers.
    func stopReading() async throws {
        try await channel.setOption(.autoRead, value: false)
    }

    func send(_ bytes: [UInt8]) async throws {
        try await channel.writeAndFlush(ByteBuffer(bytes: bytes))
    }

    func send(_ frame: Frame) async throws {
        try await channel.writeAndFlush(frame.encoded())
    }

    /// The frames received so far (the tail that is not a whole frame stays).
    func frames() throws -> [Frame] {
        var buffer = inbox.state.withLock { $0.received }
        var frames: [Frame] = []
        while let frame = try FrameDecoder().decode(&buffer) { frames.append(frame) }
        return frames
    }

    var isClosed: Bool { inbox.state.withLock { $0.closed } }

    /// Waits until the server closed the connection; returns every frame received.
    func waitForClose(timeout: Duration = .seconds(10)) async throws -> [Frame] {
        try await eventually("server closes the connection", timeout: timeout) { self.isClosed }
        return try frames()
    }

    /// Waits until at least `count` frames arrived.
    func waitForFrames(_ count: Int, timeout: Duration = .seconds(10)) async throws -> [Frame] {
        try await eventually("\(count) frames", timeout: timeout) { try self.frames().count >= count || self.isClosed }
        return try frames()
    }

    func close() async { try? await channel.close() }

    /// What the socket received, and whether it closed; written by the collector on the loop.
    private final class Inbox: Sendable {
        struct State {
            var received = ByteBuffer()
            var closed = false
        }
        let state = Mutex(State())
    }

    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let inbox: Inbox
        init(inbox: Inbox) { self.inbox = inbox }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = unwrapInboundIn(data)
            inbox.state.withLock { $0.received.writeBuffer(&buffer) }
        }
        func channelInactive(context: ChannelHandlerContext) {
            inbox.state.withLock { $0.closed = true }
        }
        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }
}
