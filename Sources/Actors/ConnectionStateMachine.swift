import NIOCore
import PushProtocol

/// Everything one device connection remembers, and every session rule of protocol.md §1,
/// without I/O or concurrency: each input (a frame, a timer, a store result, a request from
/// the node) returns what the connection must do, and time is passed in. The `Connection`
/// actor feeds it and carries out the actions; it keeps no state of its own beyond the
/// handles of the timers this machine asks for.
///
/// The rules it holds: HELLO first and once, within the hello timeout from the accept; the
/// token check; the heartbeat (closed after two silent heartbeats); the frame-rate bucket
/// (ACKs are free); the window of unacknowledged PUSHes, in order, with store reads and
/// refills one at a time; ACKs batched per loop tick; no PUSH while the socket is not
/// writable, and a close when it stays so for the stall timeout; draining (GOAWAY once,
/// HELLO refused with 503); and once an ERROR is sent or the connection closes, nothing more.
public struct ConnectionStateMachine: Sendable {
    /// A read of the store the connection must make: `limit` messages after `after`.
    public struct Fetch: Sendable, Hashable {
        /// Only messages with a sequence above this.
        public var after: UInt64
        /// At most this many.
        public var limit: Int

        /// Creates a read.
        public init(after: UInt64, limit: Int) {
            self.after = after
            self.limit = limit
        }
    }

    /// What to do once the transport is up.
    public enum ActivateAction: Sendable, Hashable {
        /// Call `helloTimerFired` at this deadline (cancel it on `authenticate`).
        case scheduleHelloTimeout(NIODeadline)
        /// Send ERROR with this code and close.
        case fail(ErrorCode, String)
        /// Nothing (activated before).
        case none
    }

    /// What to do with a frame the device sent, or with anything that ends the session.
    public enum FrameAction: Sendable, Hashable {
        /// Nothing.
        case none
        /// Send this frame back (PONG).
        case reply(Frame)
        /// Cancel the hello timer; check the token (and the address's failure budget), then
        /// call `authenticated`, `authenticationFailed` or `fail`.
        case authenticate(clientID: String, token: String)
        /// The ACK was recorded for the store: when `scheduleRecord`, call `takeAcknowledged`
        /// at the end of this loop tick (one store call for a burst of ACKs); then make the
        /// read, if any.
        case acknowledge(scheduleRecord: Bool, then: Fetch?)
        /// Send ERROR with this code and close.
        case fail(ErrorCode, String)
    }

    /// What to do once the device is authenticated.
    public enum StartAction: Sendable, Hashable {
        /// Register the client id (taking over any older connection), send WELCOME with this
        /// heartbeat, watch the session's heartbeat, and make the first read of the pending
        /// queue once the route table names this connection.
        case start(clientID: String, heartbeatSeconds: UInt16, fetch: Fetch?)
        /// Send ERROR with this code and close (the node began draining meanwhile).
        case fail(ErrorCode, String)
        /// The connection ended meanwhile.
        case none
    }

    /// What to do with a stored message or a read's result.
    public struct Delivery: Sendable, Hashable {
        /// Send these as PUSH, in this order.
        public var send: [StoredMessage]
        /// Then make this read.
        public var fetch: Fetch?
        static let nothing = Delivery(send: [], fetch: nil)
    }

    /// What to do when the socket's writability changes.
    public struct WritabilityAction: Sendable, Hashable {
        /// The stall timer: start it (call `stallTimerFired` at this deadline), cancel it, or
        /// leave it as it is.
        public enum Timer: Sendable, Hashable {
            case start(NIODeadline)
            case cancel
            case keep
        }

        /// The stall timer.
        public var stallTimer: Timer
        /// Then make this read.
        public var fetch: Fetch?

        /// Creates the action.
        public init(stallTimer: Timer, fetch: Fetch?) {
            self.stallTimer = stallTimer
            self.fetch = fetch
        }
    }

    /// What to undo when the socket has closed.
    public struct Teardown: Sendable, Hashable {
        /// The client id to take out of the registry and the route table (nil before WELCOME).
        public var unregister: String?
        /// Sends of `unregister`'s whose status mark was held back for an ACK that will not come
        /// now (`defersSendMarks`): record them.
        public var unmarkedSends: [Acknowledgement]

        /// Creates the teardown.
        public init(unregister: String?, unmarkedSends: [Acknowledgement] = []) {
            self.unregister = unregister
            self.unmarkedSends = unmarkedSends
        }
    }

    private struct Session {
        var clientID: String
        /// Silence allowed is twice this.
        var heartbeat: TimeAmount
        /// Messages sent and not yet acknowledged (id and sequence; with `defersSendMarks`, the
        /// send's time and whether its status mark is written yet), oldest first.
        var inflight: [Acknowledgement] = []
        /// The highest sequence sent on this connection.
        var lastSent: UInt64 = 0
        /// The newest store generation a message came in (`PushStore.generation`); `lastSent`
        /// counts in it.
        var generation: UInt64 = 0
        /// Messages this connection sent and the device acknowledged that the store may still
        /// hold, oldest first: every one whose removal the store has not confirmed (or could not
        /// make; at most `maxUnconfirmed`), and the last `keptConfirmed` it confirmed (a failover
        /// to a replica can bring back a removal it had not copied yet). A read of the queue from
        /// the start must not send them again on this connection.
        var ackedHere: [Acknowledged] = []
        /// A store read is under way.
        var fetching = false
        /// The store may hold messages this connection has not sent.
        var mayHaveMore = true
    }

    /// A message acknowledged on this connection (`Session.ackedHere`): its id's hash (a
    /// collision, at odds of 2^-64, would only hold a message back until the next connection).
    private struct Acknowledged {
        var idHash: Int
        var generation: UInt64
        var confirmed = false
    }

    private enum State {
        /// Accepted; the transport (TLS, WebSocket) may still be coming up.
        case accepted
        case awaitingHello
        case authenticating(clientID: String, heartbeat: UInt16)
        case active(Session)
        /// An ERROR was sent, the node closed it, or the socket closed: nothing more happens.
        /// Over; with the sends whose status mark was still held back for an ACK.
        case closed(unmarkedSends: [Acknowledgement])
    }

    /// What the rules need of the node's `SessionConfiguration`, compactly: every idle
    /// connection holds a copy (the whole configuration would cost ~70 bytes more each).
    private struct Limits {
        var window: Int32
        var framesPerSecond: Int32
        var stallTimeoutNanoseconds: Int64
        var helloTimeoutSeconds: Int32
        var defaultHeartbeat: UInt16
        var minHeartbeat: UInt16
        var maxHeartbeat: UInt16

        init(_ configuration: SessionConfiguration) {
            window = Int32(clamping: configuration.window)
            framesPerSecond = Int32(clamping: configuration.maxFramesPerSecond)
            stallTimeoutNanoseconds = configuration.stallTimeout.nanoseconds
            helloTimeoutSeconds = Int32(clamping: configuration.helloTimeout.nanoseconds / 1_000_000_000)
            defaultHeartbeat = configuration.defaultHeartbeatSeconds
            minHeartbeat = configuration.heartbeatRange.lowerBound
            maxHeartbeat = configuration.heartbeatRange.upperBound
        }

        /// `SessionConfiguration.clampedHeartbeat`.
        func heartbeat(_ requested: UInt16) -> UInt16 {
            SessionConfiguration.clampedHeartbeat(requested, default: defaultHeartbeat, range: minHeartbeat...maxHeartbeat)
        }
    }

    private var state: State = .accepted
    private let limits: Limits
    /// `helloTimeout` after the socket's accept, whatever time its transport took.
    private let helloDeadline: NIODeadline
    /// When the device last sent a frame.
    private var lastReceived: NIODeadline
    /// Tokens left in the frame-rate bucket, and when they were last counted.
    private var frameTokens: Int64
    private var frameTokensAt: NIODeadline
    /// The socket accepts more writes.
    private var writable = true
    private var stallTimerRunning = false
    /// The node is draining: HELLO is refused.
    private var draining = false
    private var sentGoAway = false
    /// The store records a send's status mark with its ACK when the connection passes the
    /// send's time along (Redis): each message sent keeps its time in flight, for the ACK or
    /// for `takeUnmarkedSends`.
    public var defersSendMarks = false
    /// ACKs received in this loop tick, not yet handed to the store.
    private var acknowledged: [Acknowledgement] = []
    /// The client id this connection registered under, until the socket closes.
    private var registeredClientID: String?
    private var tornDown = false

    /// Creates the machine for a connection accepted at `acceptedAt`.
    public init(configuration: SessionConfiguration, acceptedAt: NIODeadline) {
        precondition(configuration.window > 0)
        self.limits = Limits(configuration)
        self.helloDeadline = acceptedAt + configuration.helloTimeout
        self.lastReceived = acceptedAt
        self.frameTokens = 2 * Int64(configuration.maxFramesPerSecond)
        self.frameTokensAt = acceptedAt
    }

    /// The authenticated client id, while the session is active.
    public var clientID: String? {
        if case .active(let session) = state { return session.clientID }
        return nil
    }

    /// The client id for logs: the registered one, even after the close.
    public var loggedClientID: String { registeredClientID ?? "" }

    /// Whether `activated` was called (or the session ended before it).
    public var hasBegun: Bool {
        if case .accepted = state { return false }
        return true
    }

    /// Whether input should still be decoded (false once the session is over).
    public var isReading: Bool {
        if case .closed = state { return false }
        return true
    }

    /// Messages sent and not yet acknowledged.
    public var inflightCount: Int {
        if case .active(let session) = state { return session.inflight.count }
        return 0
    }

    // MARK: The socket

    /// The socket is open and its transport up: the session begins. `overConnectionLimit`:
    /// the node holds more device sockets than it allows.
    public mutating func activated(now: NIODeadline, overConnectionLimit: Bool) -> ActivateAction {
        guard case .accepted = state else { return .none }
        state = .awaitingHello
        lastReceived = now
        guard !overConnectionLimit else {
            close()
            return .fail(.tooManyRequests, "too many connections")
        }
        return .scheduleHelloTimeout(helloDeadline)
    }

    /// The socket closed. The teardown to make, once, if the session had begun.
    public mutating func deactivated() -> Teardown? {
        if case .accepted = state {
            close()
            return nil
        }
        close()
        guard !tornDown else { return nil }
        tornDown = true
        defer { registeredClientID = nil }
        guard let clientID = registeredClientID, case .closed(let sends) = state, !sends.isEmpty else {
            return Teardown(unregister: registeredClientID)
        }
        state = .closed(unmarkedSends: [])
        return Teardown(unregister: clientID, unmarkedSends: sends)
    }

    /// Ends the session (once; later calls keep what the first kept): an active session's
    /// sends whose status mark was held back stay for the teardown to record.
    private mutating func close() {
        switch state {
        case .closed:
            return
        case .active(let session) where defersSendMarks:
            state = .closed(unmarkedSends: session.inflight.filter { $0.unmarkedSentAtMillis != nil })
        default:
            state = .closed(unmarkedSends: [])
        }
    }

    /// The socket's write buffer crossed a water mark.
    public mutating func writabilityChanged(_ writable: Bool, now: NIODeadline) -> WritabilityAction {
        self.writable = writable
        var timer = WritabilityAction.Timer.keep
        if writable, stallTimerRunning {
            stallTimerRunning = false
            timer = .cancel
        } else if !writable, !stallTimerRunning, isReading {
            stallTimerRunning = true
            timer = .start(now + .nanoseconds(limits.stallTimeoutNanoseconds))
        }
        let fetch = writable ? modifySession { session, window in Self.nextFetch(&session, window: window, writable: true) } ?? nil : nil
        return WritabilityAction(stallTimer: timer, fetch: fetch)
    }

    // MARK: Frames from the device

    /// A complete frame arrived at `now`.
    public mutating func received(_ frame: Frame, now: NIODeadline) -> FrameAction {
        guard isReading else { return .none }
        lastReceived = now
        if case .ack = frame {} else if !takeFrameToken(now: now) {
            return fail(.tooManyRequests, "frames too fast")
        }
        switch (state, frame) {
        case (.closed, _):
            return .none
        case (.accepted, .hello(let hello)), (.awaitingHello, .hello(let hello)):
            guard hello.version == 1 else { return fail(.badRequest, "unsupported version \(hello.version)") }
            guard Identifiers.isValidClientID(hello.clientID) else { return fail(.badRequest, "malformed client_id") }
            guard !draining else { return fail(.unavailable, "server is draining") }
            state = .authenticating(clientID: hello.clientID, heartbeat: limits.heartbeat(hello.heartbeatSeconds))
            return .authenticate(clientID: hello.clientID, token: hello.token)
        case (.accepted, _), (.awaitingHello, _):
            return fail(.badRequest, "expected HELLO")
        case (_, .hello):
            return fail(.badRequest, "second HELLO")
        case (_, .ping):
            return .reply(.pong)
        case (_, .pong):
            return .none
        case (.authenticating, .ack):
            return .none
        case (.active, .ack(let id)):
            let scheduleRecord = acknowledged.isEmpty
            let writable = writable
            var acknowledgement = Acknowledgement(id: id)
            let action: FrameAction = modifySession { session, window in
                // An id not sent on this connection may be from an earlier one. The store
                // removes only this device's own messages, so passing it on is safe; the
                // store then finds it by id, without a sequence.
                guard let index = session.inflight.firstIndex(where: { $0.id == id }) else {
                    return .acknowledge(scheduleRecord: scheduleRecord, then: nil)
                }
                acknowledgement = session.inflight.remove(at: index)
                // Generation 0 is a store's that never changes it (the memory store): nothing
                // to hold back, no work on its ACK path.
                if acknowledgement.generation != 0 {
                    if session.ackedHere.count == Self.maxUnconfirmed + Self.keptConfirmed { session.ackedHere.removeFirst() }
                    session.ackedHere.append(Acknowledged(idHash: id.hashValue, generation: acknowledgement.generation))
                }
                return .acknowledge(scheduleRecord: scheduleRecord, then: Self.nextFetch(&session, window: window, writable: writable))
            } ?? .none
            acknowledged.append(acknowledgement)
            return action
        case (_, .welcome), (_, .push), (_, .error), (_, .goaway):
            return fail(.badRequest, "\(frame.type) is not sent by devices")
        }
    }

    /// The decoder rejected the input.
    public mutating func malformed(_ error: FrameError) -> FrameAction {
        fail(error.code, error.reason)
    }

    /// The ACKs to hand to the store now (all received since the last call), with the
    /// device's client id; nil when there are none or the session is over.
    public mutating func takeAcknowledged() -> (clientID: String, messages: [Acknowledgement])? {
        let messages = acknowledged
        acknowledged = []
        guard let clientID, !messages.isEmpty else { return nil }
        return (clientID, messages)
    }

    /// The store removed (or found gone) the messages of `acknowledgements`, taken by
    /// `takeAcknowledged`: only the last `keptConfirmed` of them are still kept from being sent
    /// again.
    public mutating func acknowledgementsRecorded(_ acknowledgements: [Acknowledgement]) {
        modifySession { session, _ in
            guard !session.ackedHere.isEmpty else { return }
            for acknowledgement in acknowledgements {
                let hash = acknowledgement.id.hashValue
                if let index = session.ackedHere.firstIndex(where: { !$0.confirmed && $0.idHash == hash }) {
                    session.ackedHere[index].confirmed = true
                }
            }
            var confirmed = session.ackedHere.lazy.filter(\.confirmed).count
            session.ackedHere.removeAll { entry in
                guard entry.confirmed, confirmed > Self.keptConfirmed else { return false }
                confirmed -= 1
                return true
            }
        }
    }

    /// ACKs whose removal is not confirmed kept at most (a store down for long, with a device
    /// acknowledging meanwhile): past it the oldest are forgotten.
    static let maxUnconfirmed = 1024
    /// Confirmed ACKs kept: more than a device acknowledges within Redis's replication lag.
    static let keptConfirmed = 16

    /// The sends whose status mark is still held back for their ACK (`defersSendMarks`), with
    /// the client id, to record now; their ACKs will no longer record them (but still carry their
    /// time, for the `message.acked` event).
    public mutating func takeUnmarkedSends() -> (clientID: String, sends: [Acknowledgement])? {
        modifySession { session, _ -> (clientID: String, sends: [Acknowledgement])? in
            var sends: [Acknowledgement] = []
            for index in session.inflight.indices where session.inflight[index].unmarkedSentAtMillis != nil {
                sends.append(session.inflight[index])
                session.inflight[index].sendMarked = true
            }
            return sends.isEmpty ? nil : (session.clientID, sends)
        } ?? nil
    }

    // MARK: Authentication

    /// The token was accepted.
    public mutating func authenticated() -> StartAction {
        guard case .authenticating(let clientID, let heartbeat) = state else { return .none }
        if draining {
            close()
            return .fail(.unavailable, "server is draining")
        }
        var session = Session(clientID: clientID, heartbeat: .seconds(Int64(heartbeat)))
        let fetch = Self.nextFetch(&session, window: Int(limits.window), writable: writable)
        state = .active(session)
        registeredClientID = clientID
        return .start(clientID: clientID, heartbeatSeconds: heartbeat, fetch: fetch)
    }

    /// The token was refused.
    public mutating func authenticationFailed() -> FrameAction {
        guard case .authenticating = state else { return .none }
        return fail(.unauthorized, "authentication failed")
    }

    // MARK: Timers

    /// The hello timer fired at `now`: 408 unless a HELLO came in time.
    public mutating func helloTimerFired(now: NIODeadline) -> FrameAction {
        switch state {
        case .accepted, .awaitingHello:
            guard now >= helloDeadline else { return .none }
            return fail(.helloTimeout, "no HELLO within \(limits.helloTimeoutSeconds) s")
        case .authenticating, .active, .closed:
            return .none
        }
    }

    /// The loop's heartbeat sweep at `now`: whether to close the connection because the device
    /// has been silent for two heartbeats (closed without an ERROR: nobody is listening).
    public mutating func heartbeatCheck(now: NIODeadline) -> Bool {
        guard case .active(let session) = state, now >= lastReceived + session.heartbeat * 2 else { return false }
        close()
        return true
    }

    /// When the device, silent from now on, would have been silent for two heartbeats; nil
    /// outside an active session.
    public var heartbeatDeadline: NIODeadline? {
        guard case .active(let session) = state else { return nil }
        return lastReceived + session.heartbeat * 2
    }

    /// The stall timer fired: whether to close the connection (the socket is still not
    /// writable: the device stopped reading).
    public mutating func stallTimerFired() -> Bool {
        guard stallTimerRunning else { return false }
        stallTimerRunning = false
        guard !writable, isReading else { return false }
        close()
        return true
    }

    // MARK: Requests from the node

    /// The node is draining: the GOAWAY to send (once, while the session lasts); from now on
    /// a HELLO, or a token accepted later, is answered 503.
    public mutating func goAway(reason: String, reconnectAfterMilliseconds: UInt32) -> Frame? {
        draining = true
        guard !sentGoAway, isReading else { return nil }
        sentGoAway = true
        return .goaway(reconnectAfterMilliseconds: reconnectAfterMilliseconds, reason: reason)
    }

    /// The node closes the connection without an ERROR (the API's kick, the drain timeout).
    public mutating func closeRequested() {
        close()
    }

    /// The node ends the session with an ERROR (a newer connection took the client id over,
    /// the address's failure budget is spent): the ERROR to send, if the session is not over.
    public mutating func fail(_ code: ErrorCode, _ reason: String) -> FrameAction {
        guard isReading else { return .none }
        close()
        return .fail(code, reason)
    }

    /// Whether a broadcast may be written now: the session is active and the socket writable.
    public var acceptsBroadcast: Bool {
        guard writable, case .active = state else { return false }
        return true
    }

    // MARK: Delivery

    /// A message was stored for this device (the notification from the push path).
    /// Sent at once when it is the next in order and the window has room; otherwise read later.
    public mutating func stored(_ message: StoredMessage, nowMillis: Int64) -> Delivery {
        let writable = writable
        let sentAt = defersSendMarks ? nowMillis : nil
        return modifySession { session, window in
            if message.generation != session.generation {
                guard message.generation > session.generation else {
                    // Its sequence counts in an older generation: the read finds where it is now.
                    session.mayHaveMore = true
                    return Delivery(send: [], fetch: Self.nextFetch(&session, window: window, writable: writable))
                }
                // A newer generation: the store may have given this device's sequences again
                // (it lost writes). Nothing sent yet: nothing to count from. Otherwise read the
                // queue from the start; what is still in flight is not sent twice.
                let sentNothing = session.lastSent == 0 && session.inflight.isEmpty
                Self.adopt(message.generation, &session)
                if !sentNothing {
                    session.mayHaveMore = true
                    return Delivery(send: [], fetch: Self.nextFetch(&session, window: window, writable: writable))
                }
            }
            guard message.sequence > session.lastSent else { return .nothing }
            if message.sequence == session.lastSent + 1, writable, session.inflight.count < window,
                message.expiresAtMillis > nowMillis
            {
                session.lastSent = message.sequence
                session.inflight.append(
                    Acknowledgement(id: message.id, sequence: message.sequence, sentAtMillis: sentAt, generation: message.generation)
                )
                return Delivery(send: [message], fetch: nil)
            }
            session.mayHaveMore = true
            return Delivery(send: [], fetch: Self.nextFetch(&session, window: window, writable: writable))
        } ?? .nothing
    }

    /// A read asked for by `fetch` returned `messages`, at `nowMillis` (ms since the Unix epoch).
    public mutating func fetched(_ messages: [StoredMessage], for fetch: Fetch, nowMillis: Int64) -> Delivery {
        let writable = writable
        let sentAt = defersSendMarks ? nowMillis : nil
        return modifySession { session, window in
            session.fetching = false
            if let other = messages.first?.generation, other != session.generation {
                // Read in another generation than the session counts in. A newer one: adopted,
                // and this read stands if it was from the start, else the queue is read again
                // from the start. An older one (a read that crossed a newer notification): read
                // again after `lastSent`.
                let older = other < session.generation
                if !older { Self.adopt(other, &session) }
                if older || fetch.after != 0 {
                    session.mayHaveMore = true
                    return Delivery(send: [], fetch: Self.nextFetch(&session, window: window, writable: writable))
                }
            }
            var send: [StoredMessage] = []
            for message in messages where message.sequence > session.lastSent {
                guard session.inflight.count < window else { break }
                session.lastSent = message.sequence
                // After a new generation, the queue is read from the start: a message sent before
                // (still in flight, or acknowledged and its removal not confirmed) is not sent
                // again on this connection. Only entries of an older generation can be such, and
                // they come first.
                if Self.sentBefore(message, in: session) { continue }
                session.inflight.append(
                    Acknowledgement(id: message.id, sequence: message.sequence, sentAtMillis: sentAt, generation: message.generation)
                )
                send.append(message)
            }
            if messages.count >= fetch.limit { session.mayHaveMore = true }
            return Delivery(send: send, fetch: Self.nextFetch(&session, window: window, writable: writable))
        } ?? .nothing
    }

    /// The store may hold messages this connection was not told of: the read to make, if
    /// one is not already under way.
    public mutating func nudged() -> Fetch? {
        let writable = writable
        return modifySession { session, window in
            session.mayHaveMore = true
            return Self.nextFetch(&session, window: window, writable: writable)
        } ?? nil
    }

    /// A read failed; it is retried when `retry` is called (a second later).
    public mutating func fetchFailed() {
        modifySession { session, _ in
            session.fetching = false
            session.mayHaveMore = true
        }
    }

    /// Time to try a failed read again (or any time more may be waiting).
    public mutating func retry() -> Fetch? {
        nudged()
    }

    // MARK: -

    /// Runs `body` on the active session, if there is one. The state holds no second reference
    /// meanwhile, so the session's arrays are modified in place, not copied (copy on write).
    private mutating func modifySession<Result>(_ body: (inout Session, _ window: Int) -> Result) -> Result? {
        guard case .active(var session) = state else { return nil }
        state = .closed(unmarkedSends: [])
        let result = body(&session, Int(limits.window))
        state = .active(session)
        return result
    }

    /// Spends one token of the frame-rate bucket (refilled at `maxFramesPerSecond`, holding at
    /// most two seconds' worth); false when it is empty.
    private mutating func takeFrameToken(now: NIODeadline) -> Bool {
        let rate = Int64(limits.framesPerSecond)
        guard rate > 0 else { return false }
        let elapsed = (now - frameTokensAt).nanoseconds
        let refill = elapsed * rate / 1_000_000_000
        if refill > 0 {
            frameTokens = min(frameTokens + refill, 2 * rate)
            frameTokensAt = frameTokensAt + .nanoseconds(refill * 1_000_000_000 / rate)
        }
        guard frameTokens > 0 else { return false }
        frameTokens -= 1
        return true
    }

    /// Whether `message` was sent on this connection in an older generation (still in flight,
    /// or acknowledged). Entries of older generations come first in both lists.
    private static func sentBefore(_ message: StoredMessage, in session: Session) -> Bool {
        if let oldest = session.inflight.first, oldest.generation != message.generation, session.inflight.contains(where: { $0.id == message.id }) {
            return true
        }
        guard let oldest = session.ackedHere.first, oldest.generation != message.generation else { return false }
        let hash = message.id.hashValue
        return session.ackedHere.contains { $0.idHash == hash }
    }

    /// A newer store generation: sequences count from the start again. (ACKs of what is in
    /// flight carry their own generation, and the store finds them by id.)
    private static func adopt(_ generation: UInt64, _ session: inout Session) {
        session.generation = generation
        session.lastSent = 0
    }

    /// The read to make now, if any: one at a time, only with room in the window.
    private static func nextFetch(_ session: inout Session, window: Int, writable: Bool) -> Fetch? {
        guard session.mayHaveMore, !session.fetching, writable, session.inflight.count < window else {
            return nil
        }
        session.fetching = true
        session.mayHaveMore = false
        return Fetch(after: session.lastSent, limit: window - session.inflight.count)
    }
}
