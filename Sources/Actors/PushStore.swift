import NIOCore

/// A message as the backend gave it, before it is stored.
public struct NewMessage: Sendable {
    /// The device it is for (already validated by the caller).
    public var clientID: String
    /// The message id, unique across the cluster (see `MessageIDGenerator`).
    public var id: String
    /// The payload bytes, at most `max_payload`.
    public var payload: ByteBuffer
    /// When the message expires, in milliseconds since the Unix epoch.
    public var expiresAtMillis: Int64

    /// Creates a message.
    public init(clientID: String, id: String, payload: ByteBuffer, expiresAtMillis: Int64) {
        self.clientID = clientID
        self.id = id
        self.payload = payload
        self.expiresAtMillis = expiresAtMillis
    }
}

/// A message as the store holds it for one device.
public struct StoredMessage: Sendable, Hashable {
    /// The device it is for.
    public var clientID: String
    /// The message id.
    public var id: String
    /// Its position in the device's queue: strictly increasing in the order the store
    /// accepted the device's messages, never reused for that device.
    public var sequence: UInt64
    /// The payload bytes.
    public var payload: ByteBuffer
    /// When it expires, in milliseconds since the Unix epoch.
    public var expiresAtMillis: Int64
    /// The store's generation when `sequence` was read (`PushStore.generation`): a sequence
    /// names this message only within its generation.
    public var generation: UInt64

    /// Creates a stored message.
    public init(clientID: String, id: String, sequence: UInt64, payload: ByteBuffer, expiresAtMillis: Int64, generation: UInt64 = 0) {
        self.clientID = clientID
        self.id = id
        self.sequence = sequence
        self.payload = payload
        self.expiresAtMillis = expiresAtMillis
        self.generation = generation
    }

    /// `message` as stored at `sequence` in `generation`.
    public init(_ message: NewMessage, sequence: UInt64, generation: UInt64 = 0) {
        self.init(
            clientID: message.clientID, id: message.id, sequence: sequence, payload: message.payload, expiresAtMillis: message.expiresAtMillis,
            generation: generation
        )
    }
}

/// A message a device acknowledged: its id, and its sequence when the connection sent it
/// (the store's own `StoredMessage.sequence`), so that a store can find it without a search.
public struct Acknowledgement: Sendable, Hashable {
    /// The message id the device sent in its ACK.
    public var id: String
    /// The message's sequence as the store returned it, when this connection sent it; nil for
    /// an id it did not send (an ACK of a delivery on an earlier connection).
    public var sequence: UInt64?
    /// When this connection wrote the message (ms since the Unix epoch, the node's clock), kept
    /// where the connection holds a send's status mark back for its ACK (on Redis); nil
    /// otherwise. Unless `sendMarked`, the store records the send with the ACK (`ReceiptStore`).
    /// A `message.acked` webhook event carries it as `sent_at`.
    public var sentAtMillis: Int64?
    /// The send was recorded apart already (its ACK came late): the ACK need not record it.
    public var sendMarked: Bool
    /// The store's generation `sequence` was read in (`StoredMessage.generation`): a store
    /// whose generation has changed since finds the message by its id instead.
    public var generation: UInt64

    /// Creates an acknowledgement.
    public init(id: String, sequence: UInt64? = nil, sentAtMillis: Int64? = nil, sendMarked: Bool = false, generation: UInt64 = 0) {
        self.id = id
        self.sequence = sequence
        self.sentAtMillis = sentAtMillis
        self.sendMarked = sendMarked
        self.generation = generation
    }

    /// An ACK of `message` as the store returned it (its id, sequence and generation).
    public init(_ message: StoredMessage, sentAtMillis: Int64? = nil) {
        self.init(id: message.id, sequence: message.sequence, sentAtMillis: sentAtMillis, generation: message.generation)
    }

    /// The send's time the store still has to record with this ACK, if any.
    public var unmarkedSentAtMillis: Int64? { sendMarked ? nil : sentAtMillis }
}

/// Why a store operation failed. Compared by code.
public struct StoreError: Error, Hashable, CustomStringConvertible {
    /// The kinds of failure, which the HTTP API maps to status codes.
    public enum Code: Sendable, Hashable {
        /// A device's pending queue would exceed its cap (HTTP 429).
        case pendingFull
        /// The store cannot be reached or did not answer in time (HTTP 503).
        case unavailable
    }

    /// The kind of failure.
    public let code: Code
    /// Details for the log and the error message.
    public let message: String
    /// The device concerned (the one whose queue is full), when there is one.
    public let clientID: String?
    /// Whether the operation may still have taken effect, or take it later: its request reached
    /// the store's server, whose answer was lost (a connection closed or timed out after the
    /// write). False for one refused, or never sent.
    public let mayHaveTakenEffect: Bool

    /// Creates a store error.
    public init(_ code: Code, _ message: String, clientID: String? = nil, mayHaveTakenEffect: Bool = false) {
        self.code = code
        self.message = message
        self.clientID = clientID
        self.mayHaveTakenEffect = mayHaveTakenEffect
    }

    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }
    public var description: String { "\(code): \(message)" }
}

/// Where accepted messages live until their device acknowledges them (the store role of
/// the node; `InMemoryPushStore` on a lone node, Redis in a cluster).
///
/// Contract, for every implementation (the conformance suite checks each point):
/// - **Durability**: when `append` returns, the messages are in the store, and survive
///   whatever the implementation promises to survive (the process, for Redis).
/// - **Atomicity**: `append` stores all of its messages or none of them, even across devices
///   (on a Redis Cluster, where devices live on different shards, by taking back what was
///   written when another device refuses: Docs/store.md, "Batches on a Redis Cluster").
/// - **Ordering**: one device's messages are returned by `pending` in the order `append`
///   accepted them (array order within one call; call order across calls), with strictly
///   increasing `sequence`. A device's sequences are consecutive (the next is the last plus
///   one, a refused append using none), so a connection that sent sequence n and is told of
///   n + 1 knows that nothing came between and may send it at once. The one exception is an
///   append taken back after it was written (see Atomicity; or not acknowledged by enough
///   replicas): its sequences stay used, since a connection may have read them, and the gap
///   only costs a connection one store read.
/// - **At-least-once**: a message stays until `acknowledge` removes it or it expires;
///   delivering it does not remove it.
/// - **Isolation**: `acknowledge` removes only the named device's own message; an unknown
///   or foreign id changes nothing.
/// - **TTL**: an expired message is never returned by `pending` nor counted by
///   `pendingCount`; `removeExpired` reclaims the space of expired messages.
/// - **Cap**: `append` throws `.pendingFull` rather than hold more than the cap of
///   unexpired messages for one device, and then stores nothing.
/// - **Failure**: when the store cannot answer, operations throw `.unavailable` and have
///   not half-happened.
/// - **Generations**: a store that can lose writes it acknowledged (a Redis restarted from an
///   older snapshot or AOF, a failover to a replica that lagged) may then give a device's
///   sequences again, to other messages. It says so by a new `generation`, and every message
///   it returns carries the generation its sequence was read in: a sequence names a message
///   only within its generation, so a connection told of a newer one reads the device's queue
///   again from the start, and an ACK of a message sent in an older one is found by its id.
public protocol PushStore: Sendable {
    /// The store's generation now (see the contract); a store that never loses an
    /// acknowledged write keeps 0.
    var generation: UInt64 { get }

    /// Stores `messages` atomically, returning them with their sequence numbers in the
    /// same order. Throws `.pendingFull` or `.unavailable`, and then stores nothing.
    func append(_ messages: [NewMessage]) async throws(StoreError) -> [StoredMessage]

    /// Up to `limit` unexpired messages of `clientID` whose sequence is above `sequence`,
    /// in order. Idempotent; does not change what is stored.
    func pending(for clientID: String, after sequence: UInt64, limit: Int) async throws(StoreError) -> [StoredMessage]

    /// Removes those of `messages` that are `clientID`'s own messages, in one step. Returns
    /// how many were there. Idempotent. A sequence, when given, must be the one the store
    /// returned with that id for that device (a connection passes what it sent). A store
    /// that keeps status records each one's `sentAtMillis`, when given, as its send, unless
    /// a send is recorded already.
    func acknowledge(clientID: String, messages: [Acknowledgement]) async throws(StoreError) -> Int

    /// How many unexpired, unacknowledged messages `clientID` has.
    func pendingCount(for clientID: String) async throws(StoreError) -> Int

    /// Deletes expired messages; returns how many. Safe to call at any time, from any node.
    func removeExpired() async throws(StoreError) -> Int

    /// Answers when the store is reachable; throws `.unavailable` otherwise.
    func ping() async throws(StoreError)
}

extension PushStore {
    /// 0: a store that never loses an acknowledged write.
    public var generation: UInt64 { 0 }

    /// Removes those of `messageIDs` that are `clientID`'s own messages, in one step.
    /// Returns how many were there. Idempotent.
    public func acknowledge(clientID: String, messageIDs: [String]) async throws(StoreError) -> Int {
        try await acknowledge(clientID: clientID, messages: messageIDs.map { Acknowledgement(id: $0) })
    }

    /// Removes `clientID`'s message `messageID`. Returns whether it was there. Idempotent.
    public func acknowledge(clientID: String, messageID: String) async throws(StoreError) -> Bool {
        try await acknowledge(clientID: clientID, messageIDs: [messageID]) == 1
    }
}

/// A store whose operations finish without waiting (the in-memory store): the push path and
/// the connections call these inline, on their event loop, with no task and no suspension.
/// Each does exactly what the `PushStore` operation of the same name does.
public protocol SynchronousPushStore: PushStore {
    /// `append`, at once.
    func appendNow(_ messages: [NewMessage]) throws(StoreError) -> [StoredMessage]
    /// `pending`, at once.
    func pendingNow(for clientID: String, after sequence: UInt64, limit: Int) -> [StoredMessage]
    /// `acknowledge`, at once.
    func acknowledgeNow(clientID: String, messages: [Acknowledgement]) -> Int
    /// `ReceiptStore.markSent`, at once; nothing when the store keeps no message status.
    func markSentNow(clientID: String, messages: [StoredMessage])
}
