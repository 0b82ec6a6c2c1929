import Actors
import Logging
import NIOCore
import NIOPosix
import PushProtocol
import ServiceLifecycle

/// The link from this node to one peer: one persistent TCP connection, framed, pipelined,
/// reconnecting with jittered backoff. One actor per peer, supervised under `relays`.
///
/// Like a device `Connection`, the actor's executor is an event loop, the one its socket
/// lives on: callers on any thread hop once, and it writes inline. Frames are written
/// without waiting for an answer; a PING every `relayPingInterval` is answered by PONG, and
/// since TCP keeps order, a PONG proves that the peer read everything sent before its PING.
/// The client ids of messages not yet proven read are kept; when the link fails they become
/// NUDGEs sent on the next link, so the peer's devices re-read their queues. Nothing here
/// holds a message that is not also in the store.
public actor Relay: Service {
    /// The peer, as its lease described it when this relay started.
    public nonisolated let peer: Member
    /// The loop of this actor and its socket.
    public nonisolated let eventLoop: any EventLoop

    public nonisolated var unownedExecutor: UnownedSerialExecutor {
        eventLoop.executor.asUnownedSerialExecutor()
    }

    private let configuration: ClusterConfiguration
    private let directory: RelayDirectory
    private let metrics: RelayMetrics
    private let logger: Logger
    private var channel: (any Channel)?
    private var pingTimer: RepeatedTask?
    private var lastHeard = NIODeadline.now()
    /// Ids sent since the last PING; then per PING not yet answered, the ids sent before it.
    private var sinceLastPing: Set<String> = []
    private var awaitingPong: [Set<String>] = []
    /// Ids to NUDGE on the next link (or, past `maxMissed`, a RESYNC).
    private var missed: Set<String> = []
    private var resyncNeeded = false
    /// KICKs waiting for a link.
    private var kicks: [RelayFrame] = []

    init(peer: Member, configuration: ClusterConfiguration, group: any EventLoopGroup, directory: RelayDirectory, metrics: RelayMetrics, logger: Logger) {
        self.peer = peer
        self.eventLoop = group.next()
        self.configuration = configuration
        self.directory = directory
        self.metrics = metrics
        var logger = logger
        logger[metadataKey: "herald.peer"] = .string(peer.nodeID)
        self.logger = logger
    }

    // MARK: From the rest of the node (any thread)

    /// Relays messages stored for devices the peer holds.
    public nonisolated func deliver(_ messages: [StoredMessage]) {
        onLoop { $0.send(messages) }
    }

    /// Asks the peer to have these devices re-read their queues (messages were stored for
    /// them that were not relayed).
    public nonisolated func nudge(_ clientIDs: [String]) {
        onLoop { relay in
            for clientID in clientIDs { relay.remember(clientID) }
            relay.writable()
        }
    }

    /// Asks the peer to have every device re-read its queue.
    public nonisolated func resync() {
        onLoop { relay in
            relay.requestResync()
            relay.writable()
        }
    }

    /// Relays a broadcast to the peer's devices (dropped while the link is down: broadcasts
    /// are never stored).
    public nonisolated func broadcast(messageID: String, payload: ByteBuffer) {
        onLoop { relay in
            guard let channel = relay.channel, channel.isWritable else {
                relay.metrics.dropped.increment()
                return
            }
            var buffer = channel.allocator.buffer(capacity: 16 + messageID.utf8.count + payload.readableBytes)
            buffer.writeRelayFrame(.broadcast(messageID: messageID, payload: payload))
            channel.writeAndFlush(buffer, promise: nil)
        }
    }

    /// Asks the peer to close a device's connection (`route` empty: whichever it has).
    public nonisolated func kick(clientID: String, route: String, replaced: Bool) {
        onLoop { relay in
            let frame = RelayFrame.kick(clientID: clientID, route: route, replaced: replaced)
            guard let channel = relay.channel else {
                if relay.kicks.count < relay.configuration.maxMissed { relay.kicks.append(frame) }
                return
            }
            var buffer = channel.allocator.buffer(capacity: 64)
            buffer.writeRelayFrame(frame)
            channel.writeAndFlush(buffer, promise: nil)
        }
    }

    private nonisolated func onLoop(_ body: @escaping @Sendable (isolated Relay) -> Void) {
        if eventLoop.inEventLoop {
            assumeIsolated { body($0) }
        } else {
            eventLoop.execute { [self] in assumeIsolated { body($0) } }
        }
    }

    private func send(_ messages: [StoredMessage]) {
        guard let channel, channel.isWritable else {
            for message in messages { remember(message.clientID) }
            metrics.dropped.increment(by: Int64(messages.count))
            return
        }
        var buffer = channel.allocator.buffer(capacity: 64 * messages.count)
        for message in messages {
            buffer.writeRelayFrame(
                .deliver(
                    RelayedMessage(
                        clientID: message.clientID, messageID: message.id, sequence: message.sequence,
                        expiresAtMillis: message.expiresAtMillis, payload: message.payload
                    )
                )
            )
            sinceLastPing.insert(message.clientID)
        }
        channel.writeAndFlush(buffer, promise: nil)
        metrics.relayed.increment(by: Int64(messages.count))
    }

    private func remember(_ clientID: String) {
        guard !resyncNeeded else { return }
        if missed.count < configuration.maxMissed {
            missed.insert(clientID)
        } else {
            requestResync()
        }
    }

    /// The next link starts with one RESYNC instead of NUDGEs.
    private func requestResync() {
        missed = []
        resyncNeeded = true
    }

    // MARK: Link events (from RelayLinkHandler, on this loop)

    func heard(_ frame: RelayFrame) {
        lastHeard = .now()
        if case .pong = frame, !awaitingPong.isEmpty { awaitingPong.removeFirst() }
    }

    func writable() {
        // Deliveries skipped while the socket was full: the peer's devices re-read now.
        guard let channel, channel.isWritable, !missed.isEmpty || resyncNeeded else { return }
        flushMissed(on: channel)
    }

    private func flushMissed(on channel: any Channel) {
        var buffer = channel.allocator.buffer(capacity: 32 * max(missed.count, 1))
        if resyncNeeded {
            buffer.writeRelayFrame(.resync)
        } else {
            for clientID in missed { buffer.writeRelayFrame(.nudge(clientID: clientID)) }
        }
        for clientID in missed { sinceLastPing.insert(clientID) }
        missed = []
        resyncNeeded = false
        channel.writeAndFlush(buffer, promise: nil)
    }

    private func pingTick() {
        guard let channel else { return }
        if NIODeadline.now() - lastHeard > configuration.relayPingInterval.timeAmount * 3 {
            logger.warning("relay peer stopped answering PING; reconnecting")
            channel.close(promise: nil)
            return
        }
        awaitingPong.append(sinceLastPing)
        sinceLastPing = []
        var buffer = channel.allocator.buffer(capacity: 5)
        buffer.writeRelayFrame(.ping)
        channel.writeAndFlush(buffer, promise: nil)
    }

    private func linkUp(_ channel: any Channel) {
        self.channel = channel
        lastHeard = .now()
        var buffer = channel.allocator.buffer(capacity: 128)
        buffer.writeRelayFrame(
            .hello(version: 1, nodeID: configuration.nodeID, incarnation: configuration.incarnation, token: configuration.token)
        )
        for kick in kicks { buffer.writeRelayFrame(kick) }
        kicks = []
        channel.write(buffer, promise: nil)
        flushMissed(on: channel)
        let interval = configuration.relayPingInterval.timeAmount
        pingTimer = eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { [self] _ in
            assumeIsolated { $0.pingTick() }
        }
        metrics.linksUp.increment()
        logger.info("relay link up", metadata: ["address": "\(peer.relayAddress)"])
    }

    private func linkDown() {
        pingTimer?.cancel()
        pingTimer = nil
        channel = nil
        // Whatever the peer has not proven it read is nudged on the next link.
        for set in awaitingPong { for clientID in set { remember(clientID) } }
        for clientID in sinceLastPing { remember(clientID) }
        awaitingPong = []
        sinceLastPing = []
        metrics.linksDown.increment()
    }

    // MARK: Service

    public func run() async throws {
        let waiting = directory.add(self)
        if waiting.resync { requestResync() } else { for clientID in waiting.clientIDs { remember(clientID) } }
        defer { directory.remove(self) }
        await cancelWhenGracefulShutdown { await self.maintain() }
        try? await channel?.close()
    }

    private func maintain() async {
        var attempt = 0
        var loggedFailure = false
        while !Task.isCancelled {
            do {
                let channel = try await connect()
                attempt = 0
                loggedFailure = false
                linkUp(channel)
                await withTaskCancellationHandler {
                    try? await channel.closeFuture.get()
                } onCancel: {
                    channel.close(promise: nil)
                }
                linkDown()
                if !Task.isCancelled { logger.info("relay link down") }
            } catch {
                if !loggedFailure { logger.info("relay link cannot connect yet", metadata: ["error": "\(error)"]) }
                loggedFailure = true
            }
            attempt += 1
            let delay = Backoff.fullJitter(attempt: attempt, initial: .milliseconds(100), max: .seconds(5))
            try? await Task.sleep(for: delay)
        }
    }

    private func connect() async throws -> any Channel {
        guard let (host, port) = Self.split(peer.relayAddress) else {
            throw StoreError(.unavailable, "bad relay address \(peer.relayAddress)")
        }
        let maxFrame = configuration.relayMaxFrame
        return try await ClientBootstrap(group: eventLoop)
            .connectTimeout(.seconds(2))
            .channelOption(.socketOption(.so_keepalive), value: 1)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelOption(.writeBufferWaterMark, value: .init(low: 256 << 10, high: 1 << 20))
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(RelayLinkHandler(relay: self, maxFrame: maxFrame))
                }
            }
            .connect(host: host, port: port)
            .get()
    }

    static func split(_ address: String) -> (String, Int)? {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else { return nil }
        var host = address[..<colon]
        if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        return (String(host), port)
    }
}

/// The dialling side of a relay link: reads the peer's PONGs and reports writability.
final class RelayLinkHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let relay: Relay
    private let decoder: RelayFrameDecoder
    private var buffer = ByteBuffer()

    init(relay: Relay, maxFrame: Int) {
        self.relay = relay
        self.decoder = RelayFrameDecoder(maxFrame: maxFrame)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        buffer.writeBuffer(&bytes)
        do {
            while let frame = try decoder.decode(&buffer) {
                relay.assumeIsolated { $0.heard(frame) }
            }
            buffer.discardReadBytes()
        } catch {
            context.close(promise: nil)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { relay.assumeIsolated { $0.writable() } }
        context.fireChannelWritabilityChanged()
    }
}

