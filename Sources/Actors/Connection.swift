import Logging
import NIOCore
import PushProtocol

/// One device's connection: the session state machine driven by socket events, timers and
/// deliveries, on the channel's own event loop.
///
/// The actor's executor is its channel's event loop, so the channel handler calls it with
/// `assumeIsolated` (synchronously, no task, no hop) and it writes to the channel inline.
/// Work that must await (token check, store reads and deletes) runs in a short task isolated
/// to this actor, which therefore also runs on the loop; state is re-checked through the
/// state machine when it resumes. Deliveries from other threads hop once, onto this loop.
public actor Connection {
    /// The device's socket.
    public nonisolated let channel: any Channel
    /// The loop the socket and this actor run on.
    public nonisolated let eventLoop: any EventLoop
    /// This connection's number, unique within the process (the route table names it).
    public nonisolated let session: UInt64

    public nonisolated var unownedExecutor: UnownedSerialExecutor {
        eventLoop.executor.asUnownedSerialExecutor()
    }

    /// What the transport learned of the device (its real address, its certificate's names).
    public nonisolated let peer: TransportPeer

    private let services: DeviceServices
    private var machine: ConnectionStateMachine
    /// When the hello timeout runs out: `helloTimeout` after the socket's accept, whatever
    /// time its transport (TLS handshake, WebSocket upgrade) took.
    private let helloDeadline: NIODeadline
    private var sessionBegun = false
    private var lastReceived: NIODeadline
    private var heartbeat: TimeAmount = .seconds(30)
    private var helloTimer: Scheduled<Void>?
    /// The loop's heartbeat sweep, once the session is watched by it.
    private var sweep: LoopSweep?
    private var stallTimer: Scheduled<Void>?
    /// Token bucket for non-ACK frames: tokens left, and when they were last counted.
    private var frameTokens: Int32
    private var frameTokensAt: NIODeadline
    private var draining = false
    private var sentGoAway = false
    private var closing = false

    /// Creates the connection for a channel whose transport is up (for plain TCP: freshly
    /// accepted), accepted at `acceptedAt`. Call on the channel's loop.
    public init(channel: any Channel, services: DeviceServices, peer: TransportPeer = .tcp, acceptedAt: NIODeadline = .now()) {
        self.channel = channel
        self.eventLoop = channel.eventLoop
        self.services = services
        self.peer = peer
        self.helloDeadline = acceptedAt + services.configuration.helloTimeout
        self.session = services.nextSession()
        self.machine = ConnectionStateMachine(window: services.configuration.window)
        self.lastReceived = .now()
        self.frameTokens = Int32(clamping: 2 * services.configuration.maxFramesPerSecond)
        self.frameTokensAt = .now()
    }

    /// The client id, once the device is authenticated.
    public var clientID: String? { machine.clientID }

    /// Whether input should still be decoded (false once an ERROR was sent).
    public var isReading: Bool { !closing }

    // MARK: Socket events (from the channel handler)

    /// The socket is open and its transport up: the session begins (the hello timeout runs
    /// from the accept). Called once; later calls do nothing.
    public func activated() {
        guard !sessionBegun else { return }
        sessionBegun = true
        let open = services.metrics.connectionOpened(1)
        let limit = services.configuration.maxConnections
        if limit > 0, open > limit {
            return fail(.tooManyRequests, "too many connections")
        }
        lastReceived = .now()
        helloTimer = eventLoop.scheduleTask(deadline: helloDeadline) { [self] in
            assumeIsolated { $0.helloTimedOut() }
        }
    }

    /// A complete frame arrived.
    public func received(_ frame: Frame) {
        guard !closing else { return }
        lastReceived = .now()
        if case .ack = frame {} else if !takeFrameToken() {
            return fail(.tooManyRequests, "frames too fast")
        }
        let configuration = services.configuration
        perform(machine.received(frame, heartbeat: configuration.clampedHeartbeat))
    }

    /// The decoder rejected the input.
    public func malformed(_ error: FrameError) {
        guard !closing else { return }
        perform(machine.malformed(error))
    }

    /// The socket closed.
    public func deactivated() {
        guard sessionBegun else { return }
        machine.closed()
        closing = true
        helloTimer?.cancel()
        sweep?.remove(self)
        sweep = nil
        stallTimer?.cancel()
        services.metrics.connectionOpened(-1)
        if let clientID = registeredClientID {
            if services.registry.unregister(clientID, self) {
                services.cluster.disconnected(clientID: clientID, session: session)
            }
            registeredClientID = nil
        }
    }

    /// The socket's write buffer crossed a water mark.
    public func writabilityChanged(_ writable: Bool) {
        if writable {
            stallTimer?.cancel()
            stallTimer = nil
        } else if stallTimer == nil {
            stallTimer = eventLoop.scheduleTask(in: services.configuration.stallTimeout) { [self] in
                assumeIsolated { $0.stalled() }
            }
        }
        if let fetch = machine.writabilityChanged(writable) { startFetch(fetch) }
    }

    // MARK: From the rest of the node

    /// A message was stored for this device. Callable from any thread.
    public nonisolated func deliver(_ message: StoredMessage) {
        onLoop { $0.stored(message) }
    }

    /// The store may hold messages for this device that it was not told of (a relay link
    /// was down): read them. Callable from any thread.
    public nonisolated func nudge() {
        onLoop { connection in
            guard !connection.closing, let fetch = connection.machine.nudged() else { return }
            connection.startFetch(fetch)
        }
    }

    /// A broadcast frame (an encoded PUSH). Call on this connection's loop.
    public func sendBroadcast(_ frame: ByteBuffer) {
        guard machine.clientID != nil, !closing, channel.isWritable else { return }
        channel.writeAndFlush(frame, promise: nil)
        services.metrics.broadcastsDelivered.increment()
    }

    /// A newer connection took this client id over: ERROR 409 and close. Callable from any thread.
    public nonisolated func replace() {
        onLoop { $0.fail(.replaced, "replaced by a newer connection") }
    }

    /// Closes the connection without an ERROR (the API's kick, the drain timeout).
    /// Callable from any thread.
    public nonisolated func close() {
        onLoop { connection in
            connection.closing = true
            connection.channel.close(promise: nil)
        }
    }

    /// The node is draining: send GOAWAY once and refuse HELLO from now on (503).
    /// Callable from any thread.
    public nonisolated func goAway(reason: String) {
        onLoop { connection in
            connection.draining = true
            guard !connection.sentGoAway, !connection.closing else { return }
            connection.sentGoAway = true
            let after = connection.services.configuration.reconnectAfterMilliseconds
            connection.channel.writeAndFlush(
                Frame.goaway(reconnectAfterMilliseconds: after, reason: reason).encoded(allocator: connection.channel.allocator),
                promise: nil
            )
        }
    }

    private nonisolated func onLoop(_ body: @escaping @Sendable (isolated Connection) -> Void) {
        if eventLoop.inEventLoop {
            assumeIsolated { body($0) }
        } else {
            eventLoop.execute { [self] in assumeIsolated { body($0) } }
        }
    }

    // MARK: Actions

    private var registeredClientID: String?

    private func perform(_ action: ConnectionStateMachine.FrameAction) {
        switch action {
        case .none:
            break
        case .reply(let frame):
            channel.writeAndFlush(frame.encoded(allocator: channel.allocator), promise: nil)
        case .authenticate(let clientID, let token):
            helloTimer?.cancel()
            helloTimer = nil
            guard !draining else { return fail(.unavailable, "server is draining") }
            let limiter = services.authFailures
            let address = remoteHost
            guard limiter.allows(address, nowNanoseconds: Self.nanosecondsNow()) else {
                return fail(.tooManyRequests, "too many failed authentications from this address")
            }
            let authenticator = services.authenticator
            // With mutual TLS the certificate must name the client id (Docs/protocol.md), and
            // the token is checked as well when device tokens are configured.
            let certified = peer.certificateNames.map { $0.contains(clientID) } ?? true
            Task { [self] in
                let accepted = certified ? await authenticator.authenticate(clientID: clientID, token: token) : false
                if !accepted { limiter.failed(address, nowNanoseconds: Self.nanosecondsNow()) }
                authenticationFinished(accepted)
            }
        case .acknowledge(let messageID, let fetch):
            acknowledge(messageID)
            if let fetch { startFetch(fetch) }
        case .fail(let code, let reason):
            fail(code, reason)
        }
    }

    /// The device's IP address, without its port: what a trusted proxy reported, else the
    /// socket's peer ("?" if the socket no longer knows it).
    public nonisolated var remoteHost: String {
        (peer.forwardedAddress ?? channel.remoteAddress)?.ipAddress ?? "?"
    }

    private static func nanosecondsNow() -> Int64 {
        Int64(truncatingIfNeeded: NIODeadline.now().uptimeNanoseconds)
    }

    private func authenticationFinished(_ accepted: Bool) {
        guard accepted else {
            if case .fail(let code, let reason) = machine.authenticationFailed() { fail(code, reason) }
            return
        }
        guard case .start(let clientID, let heartbeatSeconds, let fetch) = machine.authenticated() else { return }
        if draining { return fail(.unavailable, "server is draining") }
        registeredClientID = clientID
        services.registry.register(clientID, self)?.replace()
        heartbeat = .seconds(Int64(heartbeatSeconds))
        channel.writeAndFlush(
            Frame.welcome(heartbeatSeconds: heartbeatSeconds, nodeID: services.configuration.nodeID)
                .encoded(allocator: channel.allocator),
            promise: nil
        )
        let sweep = services.heartbeats.sweep(for: eventLoop)
        sweep.add(self)
        self.sweep = sweep
        // The first read waits for the route table to name this connection: a message stored
        // before the route write is found by this read, one stored after it is routed here.
        let cluster = services.cluster
        let session = session
        Task { [self] in
            await cluster.connected(clientID: clientID, session: session)
            if let fetch { startFetch(fetch) }
        }
    }

    private func stored(_ message: StoredMessage) {
        guard !closing else { return }
        send(machine.stored(message, nowMillis: WallClock.millisecondsSinceEpoch()))
    }

    private func send(_ delivery: ConnectionStateMachine.Delivery) {
        if !delivery.send.isEmpty {
            for message in delivery.send {
                var buffer = channel.allocator.buffer(capacity: 7 + message.id.utf8.count + message.payload.readableBytes)
                buffer.writePushFrame(messageID: message.id, payload: message.payload)
                channel.write(buffer, promise: nil)
            }
            channel.flush()
            services.metrics.pushesDelivered.increment(by: Int64(delivery.send.count))
        }
        if let fetch = delivery.fetch { startFetch(fetch) }
    }

    private func startFetch(_ fetch: ConnectionStateMachine.Fetch) {
        guard let clientID = machine.clientID else { return }
        let store = services.store
        Task { [self] in
            do {
                let messages = try await store.pending(for: clientID, after: fetch.after, limit: fetch.limit)
                send(machine.fetched(messages, for: fetch))
            } catch {
                services.logger.warning(
                    "reading pending messages failed, retrying", metadata: ["herald.client": "\(clientID)", "error": "\(error)"]
                )
                machine.fetchFailed()
                eventLoop.scheduleTask(in: .seconds(1)) { [self] in
                    assumeIsolated { connection in
                        if let fetch = connection.machine.retry() { connection.startFetch(fetch) }
                    }
                }
            }
        }
    }

    /// ACKs received in this loop tick, recorded together in one store call at its end.
    private var acknowledged: [String] = []

    private func acknowledge(_ messageID: String) {
        acknowledged.append(messageID)
        guard acknowledged.count == 1 else { return }
        // Runs after the rest of this read burst, so a device ACKing a window of messages
        // costs one store round trip, not one per message.
        eventLoop.execute { [self] in assumeIsolated { $0.recordAcknowledged() } }
    }

    private func recordAcknowledged() {
        let messageIDs = acknowledged
        acknowledged = []
        guard let clientID = machine.clientID, !messageIDs.isEmpty else { return }
        let store = services.store
        let metrics = services.metrics
        let logger = services.logger
        // Isolated to this actor, so the store call starts on this loop (where a per-loop
        // store connection lives) rather than on the shared pool.
        Task { [self] in
            _ = self
            do {
                let removed = try await store.acknowledge(clientID: clientID, messageIDs: messageIDs)
                metrics.pushesAcknowledged.increment(by: Int64(removed))
            } catch {
                // The messages stay stored and are sent again on the next connection.
                logger.warning("ACK not recorded", metadata: ["herald.client": "\(clientID)", "error": "\(error)"])
            }
        }
    }

    /// Spends one token of the frame-rate bucket (refilled at `maxFramesPerSecond`, holding at
    /// most two seconds' worth); false when it is empty.
    private func takeFrameToken() -> Bool {
        let rate = Int64(services.configuration.maxFramesPerSecond)
        let now = lastReceived
        let elapsed = (now - frameTokensAt).nanoseconds
        let refill = elapsed * rate / 1_000_000_000
        if refill > 0 {
            frameTokens = Int32(clamping: min(Int64(frameTokens) + refill, 2 * rate))
            frameTokensAt = frameTokensAt + .nanoseconds(refill * 1_000_000_000 / rate)
        }
        guard frameTokens > 0 else { return false }
        frameTokens -= 1
        return true
    }

    // MARK: Timers

    private func helloTimedOut() {
        guard !machine.helloReceived, !closing else { return }
        machine.closed()
        fail(.helloTimeout, "no HELLO within \(services.configuration.helloTimeout.nanoseconds / 1_000_000_000) s")
    }

    /// Closes a device silent for 2 x heartbeat (the loop's sweep calls this once a second).
    func checkHeartbeat(now: NIODeadline) {
        guard !closing, now >= lastReceived + heartbeat * 2 else { return }
        services.logger.debug("closing silent connection", metadata: ["herald.client": "\(machine.clientID ?? "")"])
        machine.closed()
        closing = true
        channel.close(promise: nil)
    }

    private func stalled() {
        stallTimer = nil
        guard !channel.isWritable, !closing else { return }
        services.logger.info("closing a device that stopped reading", metadata: ["herald.client": "\(machine.clientID ?? "")"])
        machine.closed()
        closing = true
        channel.close(promise: nil)
    }

    /// Sends ERROR and closes: the write side closes at once (FIN after the ERROR frame), and
    /// the socket shortly after, so that the device reads the ERROR before the close.
    private func fail(_ code: ErrorCode, _ reason: String) {
        guard !closing else { return }
        closing = true
        machine.closed()
        services.metrics.frameError(code.rawValue)
        services.logger.debug(
            "closing with ERROR", metadata: [
                "code": "\(code.rawValue)", "reason": "\(reason)", "herald.client": "\(registeredClientID ?? "")",
                "peer": "\(remoteHost)", "transport": "\(peer.transport)",
            ]
        )
        let channel = channel
        channel.writeAndFlush(Frame.error(code, reason).encoded(allocator: channel.allocator), promise: nil)
        channel.close(mode: .output, promise: nil)
        channel.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
    }
}
