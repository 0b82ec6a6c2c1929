import NIOCore
import NIOPosix
import Synchronization

/// A TCP proxy on loopback that a test can cut, black-hole and heal, in-process. Put it in front of a listener and point the
/// client at `port`.
public final class FaultProxy: Sendable {
    /// What the proxy does with traffic.
    public enum Mode: Sendable {
        /// Forwards both ways.
        case pass
        /// Closes every connection, and each new one at once (a cut link, a dead host's RST).
        case cut
        /// Keeps connections open and drops every byte both ways (a partition without RST,
        /// a hung peer).
        case blackhole
    }

    private struct State {
        var upstreamPort: Int?
        var mode: Mode = .pass
        var channels: [ObjectIdentifier: any Channel] = [:]
    }

    private let state = Mutex(State())
    private let server: any Channel
    /// The port clients connect to.
    public let port: Int

    private init(server: any Channel) {
        self.server = server
        self.port = server.localAddress!.port!
    }

    /// Starts a proxy on 127.0.0.1 and a free port; `upstreamPort` may be set later.
    public static func start(upstreamPort: Int? = nil) async throws -> FaultProxy {
        let box = Mutex<FaultProxy?>(nil)
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.autoRead, value: false)
            .childChannelInitializer { channel in
                guard let proxy = box.withLock({ $0 }) else { return channel.close() }
                proxy.accepted(channel)
                return channel.eventLoop.makeSucceededVoidFuture()
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        let proxy = FaultProxy(server: server)
        proxy.state.withLock { $0.upstreamPort = upstreamPort }
        box.withLock { $0 = proxy }
        return proxy
    }

    /// Where connections are forwarded to.
    public func setUpstream(port: Int) {
        state.withLock { $0.upstreamPort = port }
    }

    /// Changes what the proxy does; `.cut` also closes every open connection.
    public func set(_ mode: Mode) {
        let open = state.withLock { state in
            state.mode = mode
            return mode == .cut ? Array(state.channels.values) : []
        }
        for channel in open { channel.close(promise: nil) }
    }

    var mode: Mode { state.withLock { $0.mode } }

    /// Stops the proxy and closes every connection.
    public func close() async {
        set(.cut)
        try? await server.close()
    }

    private func track(_ channel: any Channel) {
        state.withLock { $0.channels[ObjectIdentifier(channel)] = channel }
        channel.closeFuture.whenComplete { [self] _ in
            _ = state.withLock { $0.channels.removeValue(forKey: ObjectIdentifier(channel)) }
        }
    }

    private func accepted(_ inbound: any Channel) {
        let (mode, upstream) = state.withLock { ($0.mode, $0.upstreamPort) }
        guard mode != .cut, let upstream else {
            inbound.close(promise: nil)
            return
        }
        track(inbound)
        ClientBootstrap(group: inbound.eventLoop)
            .connectTimeout(.seconds(2))
            .connect(host: "127.0.0.1", port: upstream)
            .whenComplete { [self] result in
                switch result {
                case .failure:
                    inbound.close(promise: nil)
                case .success(let outbound):
                    track(outbound)
                    do {
                        try outbound.pipeline.syncOperations.addHandler(Glue(proxy: self, peer: inbound))
                        try inbound.pipeline.syncOperations.addHandler(Glue(proxy: self, peer: outbound))
                        inbound.setOption(.autoRead, value: true).whenFailure { _ in inbound.close(promise: nil) }
                        inbound.read()
                    } catch {
                        inbound.close(promise: nil)
                        outbound.close(promise: nil)
                    }
                }
            }
    }

    /// Copies reads to the peer channel (unless black-holed) and closes it on close.
    private final class Glue: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let proxy: FaultProxy
        let peer: any Channel

        init(proxy: FaultProxy, peer: any Channel) {
            self.proxy = proxy
            self.peer = peer
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard proxy.mode == .pass else { return }
            peer.writeAndFlush(unwrapInboundIn(data), promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            peer.close(promise: nil)
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }
}
