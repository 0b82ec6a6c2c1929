import CoreMetrics
import Synchronization

/// The node's metrics, made from an explicit factory so that several nodes in one process
/// (the tests) keep separate figures. Names follow Prometheus conventions.
public final class NodeMetrics: Sendable {
    /// Open device connections (sockets, before and after HELLO).
    public let connections: Gauge
    /// Messages accepted by the API and stored.
    public let pushesAccepted: Counter
    /// PUSH frames of stored messages written to devices.
    public let pushesDelivered: Counter
    /// Broadcast PUSH frames written to devices.
    public let broadcastsDelivered: Counter
    /// ACKs that removed a message from the store.
    public let pushesAcknowledged: Counter
    /// ACKs the store could not record (it was unreachable): their messages stay stored and
    /// are delivered again on the device's next connection.
    public let acknowledgementsUnrecorded: Counter
    /// Messages removed by the expiry sweeper.
    public let pushesExpired: Counter
    /// HTTP requests answered on the event loop in front of the router (PushApp's `PushFastPath`).
    public let httpFastPathRequests: Counter
    /// Store operation latency.
    public let storeLatency: Timer
    /// Message statuses the store holds (pending and final; the memory store's).
    public let receipts: Gauge
    /// Final statuses forgotten before their retention, to stay under `HERALD_RECEIPT_MAX`.
    public let receiptsForgottenEarly: Counter
    private let receiptsForgottenSeen = Atomic<Int>(0)
    /// Keys in Redis and the memory Redis uses (a single Redis or Sentinel's master): with
    /// message status kept, mostly the statuses (Docs/operations.md).
    public let redisKeys: Gauge
    public let redisUsedMemory: Gauge
    private let factory: any MetricsFactory
    private let frameErrorCounters: [UInt16: Counter]
    private let restartCounters = Mutex<[String: Counter]>([:])
    private let openConnections = Atomic<Int>(0)

    /// Creates the metrics with `factory`.
    public init(factory: any MetricsFactory) {
        self.factory = factory
        connections = Gauge(label: "herald_connections", factory: factory)
        pushesAccepted = Counter(label: "herald_pushes_accepted_total", factory: factory)
        pushesDelivered = Counter(label: "herald_pushes_delivered_total", factory: factory)
        broadcastsDelivered = Counter(label: "herald_broadcasts_delivered_total", factory: factory)
        pushesAcknowledged = Counter(label: "herald_pushes_acked_total", factory: factory)
        acknowledgementsUnrecorded = Counter(label: "herald_acks_unrecorded_total", factory: factory)
        pushesExpired = Counter(label: "herald_pushes_expired_total", factory: factory)
        httpFastPathRequests = Counter(label: "herald_http_fast_path_requests_total", factory: factory)
        storeLatency = Timer(label: "herald_store_latency_seconds", dimensions: [], factory: factory)
        receipts = Gauge(label: "herald_receipts", factory: factory)
        receiptsForgottenEarly = Counter(label: "herald_receipts_forgotten_early_total", factory: factory)
        redisKeys = Gauge(label: "herald_redis_keys", factory: factory)
        redisUsedMemory = Gauge(label: "herald_redis_used_memory_bytes", factory: factory)
        var errors: [UInt16: Counter] = [:]
        for code in [400, 401, 408, 409, 413, 429, 503] as [UInt16] {
            errors[code] = Counter(label: "herald_frame_errors_total", dimensions: [("code", "\(code)")], factory: factory)
        }
        frameErrorCounters = errors
    }

    /// Takes the receipt store's counts (read when /metrics is scraped).
    public func observeReceipts(kept: Int, forgottenEarly: Int) {
        receipts.record(kept)
        let previous = receiptsForgottenSeen.exchange(forgottenEarly, ordering: .relaxed)
        if forgottenEarly > previous { receiptsForgottenEarly.increment(by: Int64(forgottenEarly - previous)) }
    }

    /// Counts one ERROR frame sent to a device.
    public func frameError(_ code: UInt16) {
        frameErrorCounters[code]?.increment()
    }

    /// Counts one restart of a supervised child.
    public func restart(child: String) {
        let counter = restartCounters.withLock { counters in
            if let counter = counters[child] { return counter }
            let counter = Counter(label: "herald_restarts_total", dimensions: [("child", child)], factory: factory)
            counters[child] = counter
            return counter
        }
        counter.increment()
    }

    /// A device socket's session began; returns how many are open now.
    @discardableResult
    public func connectionOpened() -> Int {
        let value = openConnections.add(1, ordering: .relaxed).newValue
        connections.record(value)
        return value
    }

    /// A device socket whose session had begun closed.
    public func connectionClosed() {
        connections.record(openConnections.subtract(1, ordering: .relaxed).newValue)
    }

    /// Open device sockets now.
    public var openConnectionCount: Int { openConnections.load(ordering: .relaxed) }
}
