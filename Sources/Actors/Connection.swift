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
    public nonisolated var eventLoop: any EventLoop { channel.eventLoop }
    /// This connection's number, unique within the process (the route table names it).
    public nonisolated let session: UInt64

    public nonisolated var unownedExecutor: UnownedSerialExecutor {
        eventLoop.executor.asUnownedSerialExecutor()
    }

    /// What the transport learned of the device (its real address, its certificate's names).
    public nonisolated let peer: TransportPeer

    private let services: DeviceServices
    /// The whole session: every rule and every piece of state. What follows are only the
    /// handles of the timers it asked for.
    private var machine: ConnectionStateMachine
    private var helloTimer: Scheduled<Void>?
    private var stallTimer: Scheduled<Void>?
    /// The loop's heartbeat sweep, once the session is watched by it.
    private var sweep: LoopSweep?
    /// Why the connection ends, for `device.disconnected`; nil: the device (or the network) closed it.
    private var closeReason: String?
    /// A store call recording ACKs is under way: the next waits for it, so a device's ACKs reach
    /// the store (and its webhook events their queue) in the order the device sent them.
    private var recordingAcknowledgements = false
    /// The loop's sweep will record the sends whose status mark waits for their ACK.
    private var sendMarksWatched = false

    /// Creates the connection for a channel whose transport is up (for plain TCP: freshly
    /// accepted), accepted at `acceptedAt` (default: now). Call on the channel's loop. Time is
    /// the loop's (`EventLoop.now`), so a test's loop with a manual clock drives every timer.
    public init(channel: any Channel, services: DeviceServices, peer: TransportPeer = .tcp, acceptedAt: NIODeadline? = nil) {
        self.channel = channel
        self.services = services
        self.peer = peer
        self.session = services.nextSession()
        self.machine = ConnectionStateMachine(configuration: services.configuration, acceptedAt: acceptedAt ?? channel.eventLoop.now)
        machine.defersSendMarks = services.asynchronousReceipts != nil
    }

    /// The client id, once the device is authenticated.
    public var clientID: String? { machine.clientID }

    /// Whether input should still be decoded (false once an ERROR was sent).
    public var isReading: Bool { machine.isReading }

    // MARK: Socket events (from the channel handler, on the loop)

    /// The socket is open and its transport up: the session begins (the hello timeout runs
    /// from the accept). Called once; later calls do nothing.
    public func activated() {
        guard !machine.hasBegun else { return }
        let open = services.metrics.connectionOpened()
        let limit = services.configuration.maxConnections
        switch machine.activated(now: eventLoop.now, overConnectionLimit: limit > 0 && open > limit) {
        case .scheduleHelloTimeout(let deadline):
            helloTimer = eventLoop.scheduleTask(deadline: deadline) { [self] in
                assumeIsolated { $0.perform($0.machine.helloTimerFired(now: $0.eventLoop.now)) }
            }
        case .fail(let code, let reason):
            fail(code, reason)
        case .none:
            break
        }
    }

    /// A complete frame arrived.
    public func received(_ frame: Frame) {
        perform(machine.received(frame, now: eventLoop.now))
    }

    /// The decoder rejected the input.
    public func malformed(_ error: FrameError) {
        perform(machine.malformed(error))
    }

    /// The socket closed.
    public func deactivated() {
        guard let teardown = machine.deactivated() else { return }
        helloTimer?.cancel()
        stallTimer?.cancel()
        sweep?.remove(self)
        sweep = nil
        services.metrics.connectionClosed()
        if let clientID = teardown.unregister, !teardown.unmarkedSends.isEmpty {
            services.asynchronousReceipts?.markSentDetached(clientID: clientID, sends: teardown.unmarkedSends)
        }
        if let clientID = teardown.unregister, services.registry.unregister(clientID, self) {
            services.cluster.disconnected(clientID: clientID, session: session)
            if let events = services.events, events.wants(.deviceDisconnected) {
                events.emit(
                    .deviceDisconnected, clientID: clientID,
                    data: [("node", .string(services.configuration.nodeID)), ("reason", .string(closeReason ?? "device_closed"))]
                )
            }
        }
    }

    /// The socket's write buffer crossed a water mark.
    public func writabilityChanged(_ writable: Bool) {
        let action = machine.writabilityChanged(writable, now: eventLoop.now)
        switch action.stallTimer {
        case .start(let deadline):
            stallTimer = eventLoop.scheduleTask(deadline: deadline) { [self] in
                assumeIsolated { $0.stalled() }
            }
        case .cancel:
            stallTimer?.cancel()
            stallTimer = nil
        case .keep:
            break
        }
        if let fetch = action.fetch { startFetch(fetch) }
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
            if let fetch = connection.machine.nudged() { connection.startFetch(fetch) }
        }
    }

    /// A broadcast frame (an encoded PUSH). Call on this connection's loop.
    public func sendBroadcast(_ frame: ByteBuffer) {
        guard machine.acceptsBroadcast else { return }
        channel.writeAndFlush(frame, promise: nil)
        services.metrics.broadcastsDelivered.increment()
    }

    /// A newer connection took this client id over: ERROR 409 and close. Callable from any thread.
    public nonisolated func replace() {
        onLoop { $0.perform($0.machine.fail(.replaced, "replaced by a newer connection")) }
    }

    /// Closes the connection without an ERROR (the API's kick, the drain timeout).
    /// Callable from any thread.
    public nonisolated func close() {
        onLoop { connection in
            if connection.closeReason == nil { connection.closeReason = "closed_by_server" }
            connection.machine.closeRequested()
            connection.channel.close(promise: nil)
        }
    }

    /// The node is draining: send GOAWAY once and refuse HELLO from now on (503).
    /// Callable from any thread.
    public nonisolated func goAway(reason: String) {
        onLoop { connection in
            let after = connection.services.configuration.reconnectAfterMilliseconds
            guard let frame = connection.machine.goAway(reason: reason, reconnectAfterMilliseconds: after) else { return }
            connection.channel.writeAndFlush(frame.encoded(allocator: connection.channel.allocator), promise: nil)
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

    private func perform(_ action: ConnectionStateMachine.FrameAction) {
        switch action {
        case .none:
            break
        case .reply(let frame):
            if case .pong = frame {
                // Every heartbeat of every device: the same five bytes, encoded once.
                channel.writeAndFlush(Self.pong, promise: nil)
            } else {
                channel.writeAndFlush(frame.encoded(allocator: channel.allocator), promise: nil)
            }
        case .authenticate(let clientID, let token):
            helloTimer?.cancel()
            helloTimer = nil
            let limiter = services.authFailures
            // The address (a string made from the socket's) only when some address has failures.
            guard !limiter.hasFailures || limiter.allows(remoteHost, nowNanoseconds: Self.nanosecondsNow()) else {
                return perform(machine.fail(.tooManyRequests, "too many failed authentications from this address"))
            }
            // With mutual TLS the certificate must name the client id (Docs/protocol.md), and
            // the token is checked as well when device tokens are configured. The check runs
            // here, on the loop: it is synchronous and shares nothing across loops.
            let certified = peer.certificateNames.map { $0.contains(clientID) } ?? true
            guard certified && services.authenticator.authenticate(clientID: clientID, token: token) else {
                limiter.failed(remoteHost, nowNanoseconds: Self.nanosecondsNow())
                return perform(machine.authenticationFailed())
            }
            start(machine.authenticated())
        case .acknowledge(let scheduleRecord, let fetch):
            // A synchronous store takes each ACK at once. Another is called after the rest of
            // this read burst, so a device ACKing a window of messages costs one round trip.
            if services.synchronousStore != nil {
                recordAcknowledged()
            } else if scheduleRecord {
                eventLoop.execute { [self] in assumeIsolated { $0.recordAcknowledged() } }
            }
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

    private static let pong = Frame.pong.encoded(allocator: ByteBufferAllocator())

    private static func nanosecondsNow() -> Int64 {
        Int64(truncatingIfNeeded: NIODeadline.now().uptimeNanoseconds)
    }

    private func start(_ action: ConnectionStateMachine.StartAction) {
        switch action {
        case .none:
            return
        case .fail(let code, let reason):
            return fail(code, reason)
        case .start(let clientID, let heartbeatSeconds, let fetch):
            services.registry.register(clientID, self)?.replace()
            if let events = services.events, events.wants(.deviceConnected) {
                events.emit(
                    .deviceConnected, clientID: clientID,
                    data: [("node", .string(services.configuration.nodeID)), ("transport", .string(peer.transport)), ("address", .string(remoteHost))]
                )
            }
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
            guard cluster.routesConnections else {
                if let fetch { startFetch(fetch) }
                return
            }
            let session = session
            Task(executorPreference: sweep.taskExecutor) { [self] in
                await cluster.connected(clientID: clientID, session: session)
                if let fetch { await startFetch(fetch) }
            }
        }
    }

    private func stored(_ message: StoredMessage) {
        var message = message
        // Relayed by another node (no generation of this node's store): the generation now is
        // the best known.
        if message.generation == 0 { message.generation = services.store.generation }
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
            if let store = services.synchronousStore, let clientID = machine.clientID {
                store.markSentNow(clientID: clientID, messages: delivery.send)
            } else if machine.defersSendMarks, !sendMarksWatched, let sweep {
                // The send's status mark waits for the ACK, which records both in one write; the
                // sweep records it alone if no ACK came within one to two sweeps.
                sendMarksWatched = true
                sweep.watchSendMarks(self)
            }
        }
        if let fetch = delivery.fetch { startFetch(fetch) }
    }

    /// Reads the store: inline with a synchronous store, else in a task isolated to this actor
    /// (it calls isolated methods), so that the read starts and ends on this loop.
    private func startFetch(_ fetch: ConnectionStateMachine.Fetch) {
        guard let clientID = machine.clientID else { return }
        if let store = services.synchronousStore {
            let messages = store.pendingNow(for: clientID, after: fetch.after, limit: fetch.limit)
            return send(machine.fetched(messages, for: fetch, nowMillis: WallClock.millisecondsSinceEpoch()))
        }
        let store = services.store
        Task(executorPreference: sweep?.taskExecutor) { [self] in
            await fetchFromStore(store, clientID: clientID, fetch: fetch)
        }
    }

    private func fetchFromStore(_ store: any PushStore, clientID: String, fetch: ConnectionStateMachine.Fetch) async {
        do {
            let messages = try await store.pending(for: clientID, after: fetch.after, limit: fetch.limit)
            send(machine.fetched(messages, for: fetch, nowMillis: WallClock.millisecondsSinceEpoch()))
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

    private func recordAcknowledged() {
        if let store = services.synchronousStore {
            guard let (clientID, messages) = machine.takeAcknowledged() else { return }
            let removed = store.acknowledgeNow(clientID: clientID, messages: messages)
            return services.metrics.pushesAcknowledged.increment(by: Int64(removed))
        }
        // One call at a time; the ACKs that come meanwhile go together in the next.
        guard !recordingAcknowledgements, let (clientID, messages) = machine.takeAcknowledged() else { return }
        recordingAcknowledgements = true
        Task(executorPreference: sweep?.taskExecutor) { [self] in
            await removeFromStore(clientID: clientID, messages: messages)
        }
    }

    private func removeFromStore(clientID: String, messages: [Acknowledgement]) async {
        do {
            let removed = try await services.store.acknowledge(clientID: clientID, messages: messages)
            machine.acknowledgementsRecorded(messages)
            services.metrics.pushesAcknowledged.increment(by: Int64(removed))
        } catch {
            // The messages stay stored and are sent again on the next connection (never on this
            // one: the session holds back what was acknowledged on it, `acknowledgementsRecorded`).
            services.metrics.acknowledgementsUnrecorded.increment(by: Int64(messages.count))
            services.logger.warning("ACK not recorded", metadata: ["herald.client": "\(clientID)", "error": "\(error)"])
        }
        recordingAcknowledgements = false
        recordAcknowledged()
    }

    // MARK: Timers

    /// Records the sends whose status mark still waits for an ACK (the loop's sweep calls this
    /// a sweep or two after the first of them).
    func recordSendMarks() {
        sendMarksWatched = false
        guard let (clientID, sends) = machine.takeUnmarkedSends() else { return }
        services.asynchronousReceipts?.markSentDetached(clientID: clientID, sends: sends)
    }

    /// Closes a device silent for 2 x heartbeat (the loop's sweep calls this when the deadline
    /// it last returned has come).
    /// Returns when to look again: the heartbeat deadline then in force; nil once closed.
    func checkHeartbeat(now: NIODeadline) -> NIODeadline? {
        guard machine.heartbeatCheck(now: now) else { return machine.heartbeatDeadline }
        services.logger.debug("closing silent connection", metadata: ["herald.client": "\(machine.loggedClientID)"])
        closeReason = "heartbeat_timeout"
        channel.close(promise: nil)
        return nil
    }

    private func stalled() {
        stallTimer = nil
        guard machine.stallTimerFired() else { return }
        services.logger.info("closing a device that stopped reading", metadata: ["herald.client": "\(machine.loggedClientID)"])
        closeReason = "write_stall"
        channel.close(promise: nil)
    }

    /// Sends ERROR and closes: the write side closes at once (FIN after the ERROR frame), and
    /// the socket shortly after, so that the device reads the ERROR before the close.
    /// The machine has already closed the session.
    private func fail(_ code: ErrorCode, _ reason: String) {
        if closeReason == nil { closeReason = code == .replaced ? "replaced" : "error_\(code.rawValue)" }
        services.metrics.frameError(code.rawValue)
        services.logger.debug(
            "closing with ERROR", metadata: [
                "code": "\(code.rawValue)", "reason": "\(reason)", "herald.client": "\(machine.loggedClientID)",
                "peer": "\(remoteHost)", "transport": "\(peer.transport)",
            ]
        )
        let channel = channel
        channel.writeAndFlush(Frame.error(code, reason).encoded(allocator: channel.allocator), promise: nil)
        channel.close(mode: .output, promise: nil)
        channel.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
    }
}
