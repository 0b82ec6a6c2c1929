import Logging
import ServiceLifecycle

/// Deletes expired messages every `interval`, so that a device that never returns does not
/// hold memory (or Redis space) past its messages' TTL. Delivery never depends on it: reads
/// skip expired messages by themselves.
public struct ExpirySweeper<C: Clock>: Service where C.Duration == Duration {
    private let store: any PushStore
    private let metrics: NodeMetrics
    private let interval: Duration
    private let clock: C
    private let logger: Logger

    /// Creates a sweeper.
    public init(store: any PushStore, metrics: NodeMetrics, interval: Duration, clock: C, logger: Logger) {
        self.store = store
        self.metrics = metrics
        self.interval = interval
        self.clock = clock
        self.logger = logger
    }

    public func run() async throws {
        try await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try await clock.sleep(for: interval)
                do {
                    let removed = try await store.removeExpired()
                    if removed > 0 {
                        metrics.pushesExpired.increment(by: Int64(removed))
                        logger.debug("expired messages removed", metadata: ["count": "\(removed)"])
                    }
                } catch {
                    // An unreachable store is the store's problem to report; try again next round.
                    logger.warning("expiry sweep failed", metadata: ["error": "\(error)"])
                }
            }
        }
    }
}
