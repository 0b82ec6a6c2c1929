import Actors
import Logging
import NIOCore
import NIOPosix
import PushProtocol
import ServiceLifecycle
import Synchronization

/// Accepts the relay links of peer nodes and hands what they carry to this node's devices.
final class RelayListener: Service {
    let serverChannel: any Channel
    private let links: LinkSet
    private let logger: Logger

    private init(serverChannel: any Channel, links: LinkSet, logger: Logger) {
        self.serverChannel = serverChannel
        self.links = links
        self.logger = logger
    }

    /// Binds `host:port` and returns the listener, accepting already.
    static func bind(host: String, port: Int, group: any EventLoopGroup, router: ClusterRouter, logger: Logger) async throws -> RelayListener {
        let links = LinkSet()
        let configuration = router.configuration
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.socketOption(.so_keepalive), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    links.add(channel)
                    channel.closeFuture.whenComplete { _ in links.remove(channel) }
                    // A peer sends PING every interval: three silent intervals (or no HELLO) end the link.
                    try channel.pipeline.syncOperations.addHandlers(
                        IdleStateHandler(readTimeout: configuration.relayPingInterval.timeAmount * 3),
                        RelayInboundHandler(router: router, maxFrame: configuration.relayMaxFrame, logger: logger)
                    )
                }
            }
            .bind(host: host, port: port)
            .get()
        logger.info("relay listener bound", metadata: ["address": "\(channel.localAddress.map { "\($0)" } ?? "?")"])
        return RelayListener(serverChannel: channel, links: links, logger: logger)
    }

    var port: Int? { serverChannel.localAddress?.port }

    func run() async throws {
        await withTaskCancellationHandler {
            try? await gracefulShutdown()
        } onCancel: { [serverChannel] in
            serverChannel.close(promise: nil)
        }
        try? await serverChannel.close()
        for channel in links.channels.withLock({ Array($0.values) }) { channel.close(promise: nil) }
        if Task.isCancelled { throw CancellationError() }
    }
}

/// The inbound links, to close them with the listener.
final class LinkSet: Sendable {
    let channels = Mutex<[ObjectIdentifier: any Channel]>([:])
    func add(_ channel: any Channel) { channels.withLock { $0[ObjectIdentifier(channel)] = channel } }
    func remove(_ channel: any Channel) { _ = channels.withLock { $0.removeValue(forKey: ObjectIdentifier(channel)) } }
}

/// One inbound relay link: RELAY_HELLO with the cluster token first, then frames for this
/// node's devices. Any malformed frame or bad token closes the link (the peer reconnects).
final class RelayInboundHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let router: ClusterRouter
    private let decoder: RelayFrameDecoder
    private let logger: Logger
    private var buffer = ByteBuffer()
    private var peer: String?

    init(router: ClusterRouter, maxFrame: Int, logger: Logger) {
        self.router = router
        self.decoder = RelayFrameDecoder(maxFrame: maxFrame)
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        buffer.writeBuffer(&bytes)
        do {
            while context.channel.isActive, let frame = try decoder.decode(&buffer) {
                handle(frame, context: context)
            }
            buffer.discardReadBytes()
        } catch {
            logger.warning("malformed relay frame; closing the link", metadata: ["error": "\(error)", "herald.peer": "\(peer ?? "?")"])
            context.close(promise: nil)
        }
    }

    private func handle(_ frame: RelayFrame, context: ChannelHandlerContext) {
        guard peer != nil else {
            if case .hello(1, let nodeID, _, let token) = frame, router.acceptsToken(token) {
                peer = nodeID
                logger.info("relay link from peer accepted", metadata: ["herald.peer": "\(nodeID)"])
            } else {
                router.metrics.refused.increment()
                logger.warning("relay link refused: bad RELAY_HELLO or token", metadata: ["remote": "\(context.remoteAddress.map { "\($0)" } ?? "?")"])
                context.close(promise: nil)
            }
            return
        }
        switch frame {
        case .ping:
            var pong = context.channel.allocator.buffer(capacity: 5)
            pong.writeRelayFrame(.pong)
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        default:
            router.received(frame)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            logger.info("relay link idle; closing", metadata: ["herald.peer": "\(peer ?? "?")"])
            context.close(promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
