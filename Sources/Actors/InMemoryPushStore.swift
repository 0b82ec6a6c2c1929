import NIOCore
import Synchronization

/// The default store on a lone node: messages live in this process's memory.
///
/// It keeps the whole `PushStore` contract except durability across a restart of the
/// process. One lock guards all queues: every operation is a few dictionary and ring-buffer
/// steps under it, and a batch spanning devices must be atomic, which one lock makes trivial.
///
/// With a receipt retention it also keeps each message's status (`ReceiptStore`), changed
/// under the same lock as the queue: a receipt per pending message, and each final one (acked,
/// expired) for the retention, at most `maxReceipts` final ones (the oldest go first, counted).
public final class InMemoryPushStore: SynchronousPushStore, ReceiptStore {
    private struct DeviceQueue {
        var messages = CircularBuffer<StoredMessage>()
        var nextSequence: UInt64 = 1
    }

    private struct State {
        var queues: [String: DeviceQueue] = [:]
        /// By message id: the receipt of every pending message, and of final ones until forgotten.
        var receipts: [String: MessageReceipt] = [:]
        /// Final receipts in the order they became final, with when to forget each.
        var finals = CircularBuffer<(forgetAt: Int64, id: String)>()
        /// Final receipts forgotten before their retention ran out, to stay under the cap.
        var forgottenEarly = 0
        /// Messages that expired in this operation, for the webhook (emitted after the lock).
        var expiredOut: [StoredMessage] = []
        /// Messages acknowledged in this operation, with their send time, for the webhook.
        var ackedOut: [(message: String, clientID: String, sentAt: Int64?)] = []
    }

    private let state = Mutex(State())
    private let maxPending: Int
    private let receiptRetentionMillis: Int64?
    private let maxReceipts: Int
    private let events: (any WebhookSink)?
    private let now: @Sendable () -> Int64

    /// Creates a store holding at most `maxPending` unexpired messages per device; `now`
    /// gives the wall-clock time in milliseconds since the Unix epoch. With
    /// `receiptRetentionMillis` it keeps message status, each final receipt for that long and
    /// at most `maxReceipts` of them; without, none.
    public init(
        maxPending: Int, receiptRetentionMillis: Int64? = nil, maxReceipts: Int = 1_000_000, events: (any WebhookSink)? = nil,
        now: @escaping @Sendable () -> Int64 = WallClock.millisecondsSinceEpoch
    ) {
        self.events = events
        precondition(maxPending > 0 && maxReceipts > 0)
        self.maxPending = maxPending
        self.receiptRetentionMillis = receiptRetentionMillis
        self.maxReceipts = maxReceipts
        self.now = now
    }

    public var keepsReceipts: Bool { receiptRetentionMillis != nil }

    public func messageID(_ base: String, for clientID: String) -> String { base }

    /// How many receipts it holds (pending and final), and how many final ones it forgot
    /// before their retention ran out to stay under `maxReceipts`.
    public var receiptCounts: (kept: Int, forgottenEarly: Int) {
        state.withLock { ($0.receipts.count, $0.forgottenEarly) }
    }

    public func append(_ messages: [NewMessage]) throws(StoreError) -> [StoredMessage] {
        try appendNow(messages)
    }

    public func pending(for clientID: String, after sequence: UInt64, limit: Int) -> [StoredMessage] {
        pendingNow(for: clientID, after: sequence, limit: limit)
    }

    public func acknowledge(clientID: String, messages: [Acknowledgement]) -> Int {
        acknowledgeNow(clientID: clientID, messages: messages)
    }

    public func appendNow(_ messages: [NewMessage]) throws(StoreError) -> [StoredMessage] {
        let now = now()
        if messages.count == 1 { return [try appendOne(messages[0], now: now)] }
        let result: Result<[StoredMessage], StoreError> = locked { state in
            // Check every device's cap first, so that a refusal stores nothing.
            var added: [String: Int] = [:]
            for message in messages { added[message.clientID, default: 0] += 1 }
            for (clientID, count) in added {
                if state.queues[clientID] == nil { state.queues[clientID] = DeviceQueue() }
                dropExpired(clientID, in: &state, now: now)
                if state.queues[clientID]!.messages.count + count > maxPending {
                    return .failure(StoreError(.pendingFull, "pending queue of \(clientID) is full (\(maxPending))", clientID: clientID))
                }
            }
            var stored: [StoredMessage] = []
            stored.reserveCapacity(messages.count)
            for message in messages {
                let sequence = state.queues[message.clientID]!.nextSequence
                let entry = StoredMessage(message, sequence: sequence)
                state.queues[message.clientID]!.nextSequence += 1
                state.queues[message.clientID]!.messages.append(entry)
                stored.append(entry)
                accepted(entry, in: &state, now: now)
            }
            return .success(stored)
        }
        return try result.get()
    }

    /// One message: one lookup of its device's queue, changed in place.
    private func appendOne(_ message: NewMessage, now: Int64) throws(StoreError) -> StoredMessage {
        let result: Result<StoredMessage, StoreError> = locked { state in
            let result = appendOne(message, in: &state, now: now)
            if case .success(let entry) = result { accepted(entry, in: &state, now: now) }
            return result
        }
        return try result.get()
    }

    private func appendOne(_ message: NewMessage, in state: inout State, now: Int64) -> Result<StoredMessage, StoreError> {
        var expired: [StoredMessage] = []
        defer { for message in expired { expire(message, in: &state, now: now) } }
        return Self.appendOne(message, to: &state.queues[message.clientID, default: DeviceQueue()], now: now, maxPending: maxPending, expired: &expired)
    }

    private static func appendOne(
        _ message: NewMessage, to queue: inout DeviceQueue, now: Int64, maxPending: Int, expired: inout [StoredMessage]
    ) -> Result<StoredMessage, StoreError> {
        dropExpired(&queue, now: now, into: &expired)
        guard queue.messages.count < maxPending else {
            return .failure(StoreError(.pendingFull, "pending queue of \(message.clientID) is full (\(maxPending))", clientID: message.clientID))
        }
        let entry = StoredMessage(message, sequence: queue.nextSequence)
        queue.nextSequence += 1
        queue.messages.append(entry)
        return .success(entry)
    }

    public func pendingNow(for clientID: String, after sequence: UInt64, limit: Int) -> [StoredMessage] {
        let now = now()
        return locked { state in
            guard state.queues[clientID] != nil else { return [] }
            dropExpired(clientID, in: &state, now: now)
            var result: [StoredMessage] = []
            for message in state.queues[clientID]!.messages where message.sequence > sequence && message.expiresAtMillis > now {
                result.append(message)
                if result.count == limit { break }
            }
            return result
        }
    }

    public func acknowledgeNow(clientID: String, messages: [Acknowledgement]) -> Int {
        let now = now()
        return locked { state in
            var removed = 0
            for message in messages {
                guard let index = state.queues[clientID]?.messages.firstIndex(where: { $0.id == message.id }) else { continue }
                state.queues[clientID]!.messages.remove(at: index)
                removed += 1
                finish(message.id, as: .acked, in: &state, now: now, sentAt: message.unmarkedSentAtMillis)
                if events != nil { state.ackedOut.append((message.id, clientID, state.receipts[message.id]?.sentAtMillis)) }
            }
            return removed
        }
    }

    public func pendingCount(for clientID: String) -> Int {
        let now = now()
        return state.withLock { state in
            state.queues[clientID]?.messages.reduce(0) { $0 + ($1.expiresAtMillis > now ? 1 : 0) } ?? 0
        }
    }

    public func removeExpired() -> Int {
        let now = now()
        return locked { state in
            var removed = 0
            for key in Array(state.queues.keys) {
                var expired: [StoredMessage] = []
                state.queues[key]!.messages.removeAll { message in
                    guard message.expiresAtMillis <= now else { return false }
                    expired.append(message)
                    return true
                }
                removed += expired.count
                for message in expired { expire(message, in: &state, now: now) }
            }
            forget(in: &state, now: now)
            return removed
        }
    }

    public func ping() {}

    /// Drops expired messages from the head of `clientID`'s queue; the sweeper removes the rest.
    private func dropExpired(_ clientID: String, in state: inout State, now: Int64) {
        var expired: [StoredMessage] = []
        Self.dropExpired(&state.queues[clientID, default: DeviceQueue()], now: now, into: &expired)
        for message in expired { expire(message, in: &state, now: now) }
    }

    private static func dropExpired(_ queue: inout DeviceQueue, now: Int64, into expired: inout [StoredMessage]) {
        while let first = queue.messages.first, first.expiresAtMillis <= now {
            queue.messages.removeFirst()
            expired.append(first)
        }
    }

    /// A message left its queue expired: its status says so, and the webhook is told.
    private func expire(_ message: StoredMessage, in state: inout State, now: Int64) {
        finish(message.id, as: .expired, in: &state, now: now)
        if events != nil { state.expiredOut.append(message) }
    }

    /// Runs `body` under the lock, then hands the webhook what it collected (outside the lock).
    private func locked<T: Sendable>(_ body: (inout State) -> T) -> T {
        guard let events else { return state.withLock { body(&$0) } }
        let (result, expired, acked) = state.withLock { state in
            let result = body(&state)
            defer { state.expiredOut = []; state.ackedOut = [] }
            return (result, state.expiredOut, state.ackedOut)
        }
        for message in expired {
            events.emit(
                .messageExpired, clientID: message.clientID, message: message.id,
                data: [("message_id", .string(message.id)), ("expires_at", .integer(message.expiresAtMillis))]
            )
        }
        if !acked.isEmpty {
            let now = now()
            for entry in acked {
                events.emit(
                    .messageAcked, clientID: entry.clientID, message: entry.message,
                    data: [("message_id", .string(entry.message)), ("sent_at", entry.sentAt.map { .integer($0) } ?? .null), ("acked_at", .integer(now))]
                )
            }
        }
        return result
    }

    // MARK: Receipts

    public func receipt(of id: String) -> MessageReceipt? {
        guard keepsReceipts else { return nil }
        let now = now()
        return state.withLock { state in
            forget(in: &state, now: now)
            return state.receipts[id]?.at(now)
        }
    }

    public func pendingReceipts(for clientID: String, after sequence: UInt64, limit: Int) -> [MessageReceipt] {
        guard keepsReceipts else { return [] }
        let now = now()
        return state.withLock { state in
            var result: [MessageReceipt] = []
            for message in state.queues[clientID]?.messages ?? [] where message.sequence > sequence && message.expiresAtMillis > now {
                guard let receipt = state.receipts[message.id] else { continue }
                result.append(receipt)
                if result.count == limit { break }
            }
            return result
        }
    }

    public func markSent(clientID: String, sends: [Acknowledgement]) {
        guard keepsReceipts else { return }
        let now = now()
        state.withLock { state in
            for send in sends { markSent(send.id, of: clientID, at: send.sentAtMillis ?? now, in: &state) }
        }
    }

    public func markSentNow(clientID: String, messages: [StoredMessage]) {
        guard keepsReceipts else { return }
        let now = now()
        state.withLock { state in
            for message in messages { markSent(message.id, of: clientID, at: now, in: &state) }
        }
    }

    /// Message `id`, while stored and not yet sent, was written to a connection at `atMillis`.
    private func markSent(_ id: String, of clientID: String, at atMillis: Int64, in state: inout State) {
        guard let index = state.receipts.index(forKey: id) else { return }
        let receipt = state.receipts.values[index]
        guard receipt.clientID == clientID, receipt.state == .stored else { return }
        state.receipts.values[index].state = .sent
        state.receipts.values[index].sentAtMillis = atMillis
    }

    /// A message was stored: its receipt says so.
    private func accepted(_ message: StoredMessage, in state: inout State, now: Int64) {
        guard keepsReceipts else { return }
        state.receipts[message.id] = MessageReceipt(
            id: message.id, clientID: message.clientID, sequence: message.sequence, state: .stored,
            acceptedAtMillis: now, expiresAtMillis: message.expiresAtMillis
        )
    }

    /// A message left its queue (acknowledged, or expired): its receipt takes the final state
    /// and is kept for the retention.
    /// An ACK brings its send's time when the send was not recorded (`Acknowledgement.sentAtMillis`).
    private func finish(_ id: String, as final: MessageState, in state: inout State, now: Int64, sentAt: Int64? = nil) {
        guard let retention = receiptRetentionMillis, let index = state.receipts.index(forKey: id) else { return }
        state.receipts.values[index].state = final
        if final == .acked {
            state.receipts.values[index].ackedAtMillis = now
            if state.receipts.values[index].sentAtMillis == nil { state.receipts.values[index].sentAtMillis = sentAt ?? now }
        }
        state.finals.append((forgetAt: now + retention, id: id))
        forget(in: &state, now: now)
    }

    /// Forgets the final receipts whose retention ran out, and the oldest beyond the cap.
    private func forget(in state: inout State, now: Int64) {
        while let first = state.finals.first, first.forgetAt <= now || state.finals.count > maxReceipts {
            state.finals.removeFirst()
            state.receipts.removeValue(forKey: first.id)
            if first.forgetAt > now { state.forgottenEarly += 1 }
        }
    }
}
