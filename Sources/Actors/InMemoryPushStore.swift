import NIOCore
import Synchronization

/// The default store on a lone node: messages live in this process's memory.
///
/// It keeps the whole `PushStore` contract except durability across a restart of the
/// process. One lock guards all queues: every operation is a few dictionary and ring-buffer
/// steps under it, and a batch spanning devices must be atomic, which one lock makes trivial.
public final class InMemoryPushStore: SynchronousPushStore {
    private struct DeviceQueue {
        var messages = CircularBuffer<StoredMessage>()
        var nextSequence: UInt64 = 1
    }

    private let queues = Mutex<[String: DeviceQueue]>([:])
    private let maxPending: Int
    private let now: @Sendable () -> Int64

    /// Creates a store holding at most `maxPending` unexpired messages per device; `now`
    /// gives the wall-clock time in milliseconds since the Unix epoch.
    public init(maxPending: Int, now: @escaping @Sendable () -> Int64 = WallClock.millisecondsSinceEpoch) {
        precondition(maxPending > 0)
        self.maxPending = maxPending
        self.now = now
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
        let result: Result<[StoredMessage], StoreError> = queues.withLock { queues in
            // Check every device's cap first, so that a refusal stores nothing.
            var added: [String: Int] = [:]
            for message in messages { added[message.clientID, default: 0] += 1 }
            for (clientID, count) in added {
                var queue = queues[clientID] ?? DeviceQueue()
                Self.dropExpired(&queue, now: now)
                queues[clientID] = queue
                if queue.messages.count + count > maxPending {
                    return .failure(StoreError(.pendingFull, "pending queue of \(clientID) is full (\(maxPending))"))
                }
            }
            var stored: [StoredMessage] = []
            stored.reserveCapacity(messages.count)
            for message in messages {
                let sequence = queues[message.clientID]!.nextSequence
                let entry = StoredMessage(
                    clientID: message.clientID, id: message.id, sequence: sequence,
                    payload: message.payload, expiresAtMillis: message.expiresAtMillis
                )
                queues[message.clientID]!.nextSequence += 1
                queues[message.clientID]!.messages.append(entry)
                stored.append(entry)
            }
            return .success(stored)
        }
        return try result.get()
    }

    /// One message: one lookup of its device's queue, changed in place.
    private func appendOne(_ message: NewMessage, now: Int64) throws(StoreError) -> StoredMessage {
        let maxPending = maxPending
        let result: Result<StoredMessage, StoreError> = queues.withLock { queues in
            Self.appendOne(message, to: &queues[message.clientID, default: DeviceQueue()], now: now, maxPending: maxPending)
        }
        return try result.get()
    }

    private static func appendOne(_ message: NewMessage, to queue: inout DeviceQueue, now: Int64, maxPending: Int) -> Result<StoredMessage, StoreError> {
        dropExpired(&queue, now: now)
        guard queue.messages.count < maxPending else {
            return .failure(StoreError(.pendingFull, "pending queue of \(message.clientID) is full (\(maxPending))"))
        }
        let entry = StoredMessage(
            clientID: message.clientID, id: message.id, sequence: queue.nextSequence,
            payload: message.payload, expiresAtMillis: message.expiresAtMillis
        )
        queue.nextSequence += 1
        queue.messages.append(entry)
        return .success(entry)
    }

    public func pendingNow(for clientID: String, after sequence: UInt64, limit: Int) -> [StoredMessage] {
        let now = now()
        return queues.withLock { queues in
            guard var queue = queues[clientID] else { return [] }
            Self.dropExpired(&queue, now: now)
            queues[clientID] = queue
            var result: [StoredMessage] = []
            for message in queue.messages where message.sequence > sequence && message.expiresAtMillis > now {
                result.append(message)
                if result.count == limit { break }
            }
            return result
        }
    }

    public func acknowledgeNow(clientID: String, messages: [Acknowledgement]) -> Int {
        queues.withLock { queues in
            var removed = 0
            for message in messages {
                guard let index = queues[clientID]?.messages.firstIndex(where: { $0.id == message.id }) else { continue }
                queues[clientID]!.messages.remove(at: index)
                removed += 1
            }
            return removed
        }
    }

    public func pendingCount(for clientID: String) -> Int {
        let now = now()
        return queues.withLock { queues in
            queues[clientID]?.messages.reduce(0) { $0 + ($1.expiresAtMillis > now ? 1 : 0) } ?? 0
        }
    }

    public func removeExpired() -> Int {
        let now = now()
        return queues.withLock { queues in
            var removed = 0
            for key in Array(queues.keys) {
                let before = queues[key]!.messages.count
                queues[key]!.messages.removeAll { $0.expiresAtMillis <= now }
                removed += before - queues[key]!.messages.count
            }
            return removed
        }
    }

    public func ping() {}

    /// Drops expired messages from the head of the queue; the sweeper removes the rest.
    private static func dropExpired(_ queue: inout DeviceQueue, now: Int64) {
        while let first = queue.messages.first, first.expiresAtMillis <= now { queue.messages.removeFirst() }
    }
}
