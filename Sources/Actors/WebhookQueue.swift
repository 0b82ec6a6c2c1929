import Logging
import NIOCore
import Synchronization

/// The webhook events of a lone node, in memory until the receiver takes them: `lanes` FIFO
/// queues, a device's events always in the same lane (so in order), at most `capacity` events
/// in all. An event that finds the queue full is dropped and counted: memory is bounded, and a
/// lone node's events live no longer than its messages do (its restart loses both).
///
/// The sender takes a lane's oldest events with `next` (waiting while the lane is empty) and
/// removes them with `remove` once the receiver has them, so a batch being retried stays
/// first in its lane.
public final class MemoryWebhookQueue: WebhookQueue {
    private struct Lane {
        var events = CircularBuffer<(event: WebhookEvent, queuedAt: Int64)>()
        var waiter: CheckedContinuation<Void, Never>?
    }

    private final class LaneLock: Sendable {
        let mutex = Mutex(Lane())
        func withLock<T: Sendable>(_ body: (inout Lane) -> T) -> T { mutex.withLock { body(&$0) } }
    }

    private let lanes: [LaneLock]
    private let capacity: Int
    private let types: Set<WebhookEventType>
    private let ids = WebhookEventIDs()
    private let now: @Sendable () -> Int64
    private let count = Atomic<Int>(0)
    private let queuedTotal = Atomic<Int>(0)
    private let droppedTotal = Atomic<Int>(0)
    private let logger: Logger

    /// Creates a queue of `lanes` lanes holding at most `capacity` events of `types`; `now`
    /// gives Unix milliseconds.
    public init(
        lanes: Int, capacity: Int, types: Set<WebhookEventType>, logger: Logger = Logger(label: "herald.webhooks"),
        now: @escaping @Sendable () -> Int64 = WallClock.millisecondsSinceEpoch
    ) {
        self.logger = logger
        precondition(lanes > 0 && capacity > 0)
        self.lanes = (0..<lanes).map { _ in LaneLock() }
        self.capacity = capacity
        self.types = types
        self.now = now
    }

    public var laneCount: Int { lanes.count }

    public var figures: WebhookQueueFigures {
        WebhookQueueFigures(
            depth: count.load(ordering: .relaxed), queued: queuedTotal.load(ordering: .relaxed), dropped: droppedTotal.load(ordering: .relaxed),
            oldestQueuedAt: lanes.compactMap { $0.withLock { $0.events.first?.queuedAt } }.min(), lanesHeld: lanes.count
        )
    }

    public func wants(_ type: WebhookEventType) -> Bool { types.contains(type) }

    public func emit(_ type: WebhookEventType, clientID: String, message: String?, data: [(String, WebhookValue)]) {
        guard types.contains(type) else { return }
        let now = now()
        let event = WebhookEvent(id: ids.id(of: type, message: message), type: type, atMillis: now, clientID: clientID, data: data)
        guard count.add(1, ordering: .relaxed).newValue <= capacity else {
            count.subtract(1, ordering: .relaxed)
            let dropped = droppedTotal.add(1, ordering: .relaxed).newValue
            // The first drop, then one line in a thousand: the metric has the exact count.
            if dropped % 1000 == 1 {
                logger.warning(
                    "the webhook queue is full (HERALD_WEBHOOK_QUEUE_MAX): events are dropped",
                    metadata: ["dropped": "\(dropped)", "type": "\(type.rawValue)"]
                )
            }
            return
        }
        queuedTotal.add(1, ordering: .relaxed)
        let waiter = lanes[lane(of: clientID)].withLock { lane -> CheckedContinuation<Void, Never>? in
            lane.events.append((event, now))
            defer { lane.waiter = nil }
            return lane.waiter
        }
        waiter?.resume()
    }

    public func next(lane index: Int, limit: Int) async -> [WebhookEvent] {
        while !Task.isCancelled {
            let batch = lanes[index].withLock { lane in Array(lane.events.prefix(limit).map(\.event)) }
            if !batch.isEmpty { return batch }
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let resumeNow = lanes[index].withLock { lane -> Bool in
                        guard lane.events.isEmpty, !Task.isCancelled else { return true }
                        lane.waiter = continuation
                        return false
                    }
                    if resumeNow { continuation.resume() }
                }
            } onCancel: {
                lanes[index].withLock { lane in
                    defer { lane.waiter = nil }
                    return lane.waiter
                }?.resume()
            }
        }
        return []
    }

    /// Nothing to keep: returns at once.
    public func maintain() async {}

    public func remove(lane index: Int, batch: [WebhookEvent]) async -> Bool {
        let taken = lanes[index].withLock { lane in
            let taken = min(batch.count, lane.events.count)
            lane.events.removeFirst(taken)
            return taken
        }
        count.subtract(taken, ordering: .relaxed)
        return true
    }
}
