import NIOCore
import Synchronization

/// Where a device's message stands, as `GET /v1/messages/{id}` reports it.
public enum MessageState: String, Sendable, Hashable {
    /// Accepted and stored; not yet written to a connection of its device.
    case stored
    /// Written to a connection of its device; not acknowledged.
    case sent
    /// Acknowledged by its device (final).
    case acked
    /// Its TTL passed before an acknowledgement (final).
    case expired
}

/// What a store knows of one message for one device: its state and when it changed.
/// Times are milliseconds since the Unix epoch.
public struct MessageReceipt: Sendable, Hashable {
    /// The message id.
    public var id: String
    /// The device it is for.
    public var clientID: String
    /// Its sequence in the device's queue (the paging cursor of a device's list).
    public var sequence: UInt64
    /// Where it stands.
    public var state: MessageState
    /// When the store accepted it.
    public var acceptedAtMillis: Int64
    /// When it was first written to a connection, if ever (an ACK recorded before the send was
    /// gives its own time).
    public var sentAtMillis: Int64?
    /// When the device acknowledged it.
    public var ackedAtMillis: Int64?
    /// When it expires (or expired).
    public var expiresAtMillis: Int64

    /// Creates a receipt.
    public init(
        id: String, clientID: String, sequence: UInt64, state: MessageState, acceptedAtMillis: Int64,
        sentAtMillis: Int64? = nil, ackedAtMillis: Int64? = nil, expiresAtMillis: Int64
    ) {
        self.id = id
        self.clientID = clientID
        self.sequence = sequence
        self.state = state
        self.acceptedAtMillis = acceptedAtMillis
        self.sentAtMillis = sentAtMillis
        self.ackedAtMillis = ackedAtMillis
        self.expiresAtMillis = expiresAtMillis
    }

    /// The state at `now`: a message still stored or sent once its expiry has passed is expired,
    /// whether or not a sweep has removed it yet.
    public func at(_ now: Int64) -> MessageReceipt {
        guard state == .stored || state == .sent, expiresAtMillis <= now else { return self }
        var receipt = self
        receipt.state = .expired
        return receipt
    }
}

/// A store that keeps message status (the receipts of `GET /v1/messages/{id}` and
/// `GET /v1/clients/{id}/messages`) next to the messages, changed in the same step as them:
/// written by `append`, moved to `acked` by `acknowledge` and to `expired` by expiry, and
/// kept for the retention after that final state.
public protocol ReceiptStore: PushStore {
    /// Whether it keeps status (it may be configured not to); when not, the reads answer nothing.
    var keepsReceipts: Bool { get }

    /// The id a message for `clientID` gets, made from a unique `base`: a store may add what it
    /// needs to find the status from the id alone (the Redis store, the slot). Status is kept
    /// only for messages whose id was made here.
    func messageID(_ base: String, for clientID: String) -> String

    /// The receipt of message `id`; nil for an unknown id or one forgotten after the retention.
    func receipt(of id: String) async throws(StoreError) -> MessageReceipt?

    /// Up to `limit` receipts of `clientID`'s pending (stored or sent, unexpired) messages whose
    /// sequence is above `sequence`, in order.
    func pendingReceipts(for clientID: String, after sequence: UInt64, limit: Int) async throws(StoreError) -> [MessageReceipt]

    /// Records that messages were written to a connection of `clientID`: each of `sends` at
    /// its `sentAtMillis` (now, by the store's clock, when nil). A send already recorded, and
    /// a message no longer pending, are passed over.
    func markSent(clientID: String, sends: [Acknowledgement]) async throws(StoreError)

    /// `markSent` without waiting for it: what a connection calls for the sends whose ACK did
    /// not come to record them. A failure only leaves the status behind (it is logged or
    /// dropped, never thrown).
    func markSentDetached(clientID: String, sends: [Acknowledgement])
}

extension ReceiptStore {
    public func markSentDetached(clientID: String, sends: [Acknowledgement]) {
        Task { try? await markSent(clientID: clientID, sends: sends) }
    }

    /// Records that `messages` were written to a connection of `clientID` now.
    public func markSent(clientID: String, messages: [StoredMessage]) async throws(StoreError) {
        try await markSent(clientID: clientID, sends: messages.map { Acknowledgement($0) })
    }
}

/// What a node knows of a broadcast: when it was accepted and how many connections of each
/// node it was written to. Broadcasts are not stored, so there is no ACK to report.
public struct BroadcastReceipt: Sendable, Hashable {
    /// The broadcast's message id.
    public var id: String
    /// When the API accepted it, in milliseconds since the Unix epoch.
    public var acceptedAtMillis: Int64
    /// Connections it was written to, by node id.
    public var sent: [String: Int]

    /// Creates a broadcast receipt.
    public init(id: String, acceptedAtMillis: Int64, sent: [String: Int]) {
        self.id = id
        self.acceptedAtMillis = acceptedAtMillis
        self.sent = sent
    }
}

/// The status `GET /v1/messages/{id}` reports: of a device's message, or of a broadcast.
public enum Receipt: Sendable, Hashable {
    case message(MessageReceipt)
    case broadcast(BroadcastReceipt)
}

/// Where the status of broadcasts is kept: each node that writes a broadcast to its
/// connections records how many, the node that accepted it also when.
public protocol BroadcastReceiptStore: Sendable {
    /// Records that `node` wrote broadcast `id` to `sent` connections (and, from the node that
    /// accepted it, when it did).
    func recordBroadcast(id: String, node: String, sent: Int, acceptedAtMillis: Int64?) async throws(StoreError)
    /// The status of broadcast `id`; nil when unknown or forgotten.
    func broadcastReceipt(of id: String) async throws(StoreError) -> BroadcastReceipt?
}

/// The status of a lone node's broadcasts, kept for the retention in memory, at most
/// `maxKept` of them (the oldest go first).
public final class BroadcastReceipts: BroadcastReceiptStore {
    private struct State {
        var receipts: [String: BroadcastReceipt] = [:]
        var order = CircularBuffer<(forgetAt: Int64, id: String)>()
    }

    private let state = Mutex(State())
    private let retentionMillis: Int64
    private let maxKept: Int
    private let now: @Sendable () -> Int64

    /// Creates the table; `now` gives the wall-clock time in milliseconds since the Unix epoch.
    public init(retentionMillis: Int64, maxKept: Int = 10_000, now: @escaping @Sendable () -> Int64 = WallClock.millisecondsSinceEpoch) {
        self.retentionMillis = retentionMillis
        self.maxKept = maxKept
        self.now = now
    }

    public func recordBroadcast(id: String, node: String, sent: Int, acceptedAtMillis: Int64?) {
        let now = now()
        state.withLock { state in
            if state.receipts[id] == nil {
                state.receipts[id] = BroadcastReceipt(id: id, acceptedAtMillis: acceptedAtMillis ?? now, sent: [:])
                state.order.append((forgetAt: now + retentionMillis, id: id))
            }
            state.receipts[id]!.sent[node] = sent
            forget(&state, now: now)
        }
    }

    public func broadcastReceipt(of id: String) -> BroadcastReceipt? {
        let now = now()
        return state.withLock { state in
            forget(&state, now: now)
            return state.receipts[id]
        }
    }

    private func forget(_ state: inout State, now: Int64) {
        while let first = state.order.first, first.forgetAt <= now || state.order.count > maxKept {
            state.order.removeFirst()
            state.receipts.removeValue(forKey: first.id)
        }
    }
}
