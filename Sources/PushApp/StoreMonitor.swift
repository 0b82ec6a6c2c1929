import Actors
import Logging
import ServiceLifecycle
import Supervision
import Synchronization

/// Watches the store: pings it every `interval` and reports what it saw. An unreachable
/// store is a declared, degraded state (pushes answer 503, `/readyz` is 503), not a failure
/// of the tree: the node keeps its devices connected and recovers when the store returns.
final class StoreMonitor: Service, HealthReporting {
    private let store: any PushStore
    private let interval: Duration
    private let logger: Logger
    private let reachable = Atomic<Bool>(true)
    private let footprint: (@Sendable () async -> Void)?

    /// `footprint`, when given, runs after each probe that reached the store (Redis's size).
    init(store: any PushStore, interval: Duration, logger: Logger, footprint: (@Sendable () async -> Void)? = nil) {
        self.store = store
        self.interval = interval
        self.logger = logger
        self.footprint = footprint
    }

    var isReachable: Bool { reachable.load(ordering: .relaxed) }

    func run() async throws {
        try await cancelWhenGracefulShutdown {
            // At start the store's connections may still be opening: a failed probe within the
            // first interval is retried quickly rather than reported.
            var grace: ContinuousClock.Instant? = .now + self.interval
            while !Task.isCancelled {
                let ok: Bool
                do {
                    try await self.store.ping()
                    ok = true
                } catch {
                    ok = false
                }
                if !ok, let until = grace, ContinuousClock.now < until {
                    try await Task.sleep(for: .milliseconds(50))
                    continue
                }
                grace = nil
                let was = self.reachable.exchange(ok, ordering: .relaxed)
                if was != ok {
                    if ok { self.logger.notice("store reachable again") } else { self.logger.error("store unreachable") }
                }
                if ok, let footprint = self.footprint { await footprint() }
                try await Task.sleep(for: self.interval)
            }
        }
    }

    func healthReport() async -> HealthReport {
        HealthReport(name: "store", healthy: true, state: isReachable ? "reachable" : "unreachable (degraded)")
    }
}
