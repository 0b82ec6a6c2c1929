import PushProtocol

/// The session rules of protocol.md §1 for one connection, without I/O, time or concurrency:
/// each input returns what the connection must do. The `Connection` actor feeds it and
/// carries out the actions.
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

    /// What to do with a frame the device sent.
    public enum FrameAction: Sendable, Hashable {
        /// Nothing.
        case none
        /// Send this frame back (PONG).
        case reply(Frame)
        /// Check the token, then call `authenticated` or `authenticationFailed`.
        case authenticate(clientID: String, token: String)
        /// Remove the message from the store, then make the read, if any.
        case acknowledge(messageID: String, then: Fetch?)
        /// Send ERROR with this code and close.
        case fail(ErrorCode, String)
    }

    /// What to do once the device is authenticated.
    public enum StartAction: Sendable, Hashable {
        /// Register the client id (taking over any older connection), send WELCOME with this
        /// heartbeat, and make the first read of the pending queue.
        case start(clientID: String, heartbeatSeconds: UInt16, fetch: Fetch?)
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

    private struct Session {
        var clientID: String
        /// Message ids sent and not yet acknowledged, oldest first.
        var inflight: [String] = []
        /// The highest sequence sent on this connection.
        var lastSent: UInt64 = 0
        /// A store read is under way.
        var fetching = false
        /// The store may hold messages this connection has not sent.
        var mayHaveMore = true
        /// The device's socket accepts more writes.
        var writable = true
    }

    private enum State {
        case awaitingHello
        case authenticating(clientID: String, heartbeat: UInt16)
        case active(Session)
        case closed
    }

    private var state: State = .awaitingHello
    private let window: Int

    /// Creates the machine for a connection that has just been accepted.
    public init(window: Int) {
        precondition(window > 0)
        self.window = window
    }

    /// The authenticated client id, while the session is active.
    public var clientID: String? {
        if case .active(let session) = state { return session.clientID }
        return nil
    }

    /// Whether a complete HELLO has been received.
    public var helloReceived: Bool {
        if case .awaitingHello = state { return false }
        return true
    }

    /// Messages sent and not yet acknowledged.
    public var inflightCount: Int {
        if case .active(let session) = state { return session.inflight.count }
        return 0
    }

    // MARK: Frames from the device

    /// A complete frame arrived. `heartbeat` clamps the requested heartbeat.
    public mutating func received(_ frame: Frame, heartbeat: (UInt16) -> UInt16) -> FrameAction {
        switch (state, frame) {
        case (.closed, _):
            return .none
        case (.awaitingHello, .hello(let hello)):
            guard hello.version == 1 else { return fail(.badRequest, "unsupported version \(hello.version)") }
            guard Identifiers.isValidClientID(hello.clientID) else { return fail(.badRequest, "malformed client_id") }
            state = .authenticating(clientID: hello.clientID, heartbeat: heartbeat(hello.heartbeatSeconds))
            return .authenticate(clientID: hello.clientID, token: hello.token)
        case (.awaitingHello, _):
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
            return modifySession { session, window in
                guard let index = session.inflight.firstIndex(of: id) else {
                    // Not sent on this connection: it may be from an earlier one. The store
                    // removes only this device's own messages, so passing it on is safe.
                    return .acknowledge(messageID: id, then: nil)
                }
                session.inflight.remove(at: index)
                return .acknowledge(messageID: id, then: Self.nextFetch(&session, window: window))
            } ?? .none
        case (_, .welcome), (_, .push), (_, .error), (_, .goaway):
            return fail(.badRequest, "\(frame.type) is not sent by devices")
        }
    }

    /// The decoder rejected the input.
    public mutating func malformed(_ error: FrameError) -> FrameAction {
        fail(error.code, error.reason)
    }

    // MARK: Authentication

    /// The token was accepted.
    public mutating func authenticated() -> StartAction {
        guard case .authenticating(let clientID, let heartbeat) = state else { return .none }
        var session = Session(clientID: clientID)
        let fetch = Self.nextFetch(&session, window: window)
        state = .active(session)
        return .start(clientID: clientID, heartbeatSeconds: heartbeat, fetch: fetch)
    }

    /// The token was refused.
    public mutating func authenticationFailed() -> FrameAction {
        guard case .authenticating = state else { return .none }
        return fail(.unauthorized, "authentication failed")
    }

    // MARK: Delivery

    /// A message was stored for this device (the notification from the push path).
    /// Sent at once when it is the next in order and the window has room; otherwise read later.
    public mutating func stored(_ message: StoredMessage, nowMillis: Int64) -> Delivery {
        modifySession { session, window in
            guard message.sequence > session.lastSent else { return .nothing }
            if message.sequence == session.lastSent + 1, session.writable, session.inflight.count < window,
                message.expiresAtMillis > nowMillis
            {
                session.lastSent = message.sequence
                session.inflight.append(message.id)
                return Delivery(send: [message], fetch: nil)
            }
            session.mayHaveMore = true
            return Delivery(send: [], fetch: Self.nextFetch(&session, window: window))
        } ?? .nothing
    }

    /// A read asked for by `fetch` returned `messages`.
    public mutating func fetched(_ messages: [StoredMessage], for fetch: Fetch) -> Delivery {
        modifySession { session, window in
            session.fetching = false
            var send: [StoredMessage] = []
            for message in messages where message.sequence > session.lastSent {
                guard session.inflight.count < window else { break }
                session.lastSent = message.sequence
                session.inflight.append(message.id)
                send.append(message)
            }
            if messages.count >= fetch.limit { session.mayHaveMore = true }
            return Delivery(send: send, fetch: Self.nextFetch(&session, window: window))
        } ?? .nothing
    }

    /// The store may hold messages this connection was not told of: the read to make, if
    /// one is not already under way.
    public mutating func nudged() -> Fetch? {
        modifySession { session, window in
            session.mayHaveMore = true
            return Self.nextFetch(&session, window: window)
        } ?? nil
    }

    /// A read failed; it is retried when `retry` is called.
    public mutating func fetchFailed() {
        modifySession { session, window in
            session.fetching = false
            session.mayHaveMore = true
        }
    }

    /// Time to try a failed read again (or any time more may be waiting).
    public mutating func retry() -> Fetch? {
        modifySession { session, window in
            session.mayHaveMore = true
            return Self.nextFetch(&session, window: window)
        } ?? nil
    }

    /// The socket's writability changed: no PUSH is written while it is not writable.
    public mutating func writabilityChanged(_ writable: Bool) -> Fetch? {
        modifySession { session, window in
            session.writable = writable
            return writable ? Self.nextFetch(&session, window: window) : nil
        } ?? nil
    }

    /// The connection is over (closed by either side, replaced, or failed).
    public mutating func closed() {
        state = .closed
    }

    // MARK: -

    /// Runs `body` on the active session, if there is one. The state holds no second reference
    /// meanwhile, so the session's arrays are modified in place, not copied (copy on write).
    private mutating func modifySession<Result>(_ body: (inout Session, _ window: Int) -> Result) -> Result? {
        guard case .active(var session) = state else { return nil }
        state = .closed
        let result = body(&session, window)
        state = .active(session)
        return result
    }

    private mutating func fail(_ code: ErrorCode, _ reason: String) -> FrameAction {
        state = .closed
        return .fail(code, reason)
    }

    /// The read to make now, if any: one at a time, only with room in the window.
    private static func nextFetch(_ session: inout Session, window: Int) -> Fetch? {
        guard session.mayHaveMore, !session.fetching, session.writable, session.inflight.count < window else {
            return nil
        }
        session.fetching = true
        session.mayHaveMore = false
        return Fetch(after: session.lastSent, limit: window - session.inflight.count)
    }
}
