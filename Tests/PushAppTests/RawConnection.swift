import HeraldTestSupport
import NIOCore
import NIOPosix
import PushProtocol
import Synchronization

/// A device socket driven byte by byte, for the hostile and exact-protocol tests.
final class RawConnection: Sendable {
    private struct State {
        var received = ByteBuffer()
        var closed = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())
    let channel: any Channel

    private init(channel: any Channel) { self.channel = channel }

    static func connect(port: Int, readsAutomatically: Bool = true) async throws -> RawConnection {
        let box = Box()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.autoRead, value: readsAutomatically)
            .channelOption(.socketOption(.so_rcvbuf), value: readsAutomatically ? 65536 : 4096)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Collector(box: box))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        let connection = RawConnection(channel: channel)
        box.connection.withLock { $0 = connection }
        try await channel.eventLoop.submit {}.get()  // the collector now sees the connection
        return connection
    }

    func send(_ bytes: [UInt8]) async throws {
        try await channel.writeAndFlush(ByteBuffer(bytes: bytes))
    }

    func send(_ frame: Frame) async throws {
        try await channel.writeAndFlush(frame.encoded())
    }

    /// The frames received so far (the tail that is not a whole frame stays).
    func frames() throws -> [Frame] {
        var buffer = state.withLock { $0.received }
        var frames: [Frame] = []
        while let frame = try FrameDecoder().decode(&buffer) { frames.append(frame) }
        return frames
    }

    var isClosed: Bool { state.withLock { $0.closed } }

    /// Waits until the server closed the connection; returns every frame received.
    func waitForClose(timeout: Duration = .seconds(10)) async throws -> [Frame] {
        try await withTimeout("server closes the connection", timeout) {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let closed = self.state.withLock { state -> Bool in
                    if state.closed { return true }
                    state.waiters.append(continuation)
                    return false
                }
                if closed { continuation.resume() }
            }
        }
        return try frames()
    }

    /// Waits until at least `count` frames arrived.
    func waitForFrames(_ count: Int, timeout: Duration = .seconds(10)) async throws -> [Frame] {
        try await eventually("\(count) frames", timeout: timeout) { try self.frames().count >= count || self.isClosed }
        return try frames()
    }

    func close() async { try? await channel.close() }

    fileprivate func received(_ buffer: ByteBuffer) {
        state.withLock { state in
            var buffer = buffer
            state.received.writeBuffer(&buffer)
        }
    }

    fileprivate func closed() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.closed = true
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        waiters.forEach { $0.resume() }
    }

    private final class Box: Sendable {
        let connection = Mutex<RawConnection?>(nil)
    }

    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let box: Box
        init(box: Box) { self.box = box }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            box.connection.withLock { $0 }?.received(unwrapInboundIn(data))
        }
        func channelInactive(context: ChannelHandlerContext) {
            box.connection.withLock { $0 }?.closed()
        }
        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }
}
