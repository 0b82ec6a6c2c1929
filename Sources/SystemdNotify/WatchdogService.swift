import Logging
import ServiceLifecycle
import Synchronization

/// What a health check found.
public struct HealthVerdict: Sendable, Hashable {
    /// Whether the process is healthy enough to ping the watchdog.
    public var healthy: Bool
    /// A short summary for `STATUS=` (what `systemctl status` shows).
    public var status: String
    /// The process cannot get well by itself (a wedged event loop): ask systemd to restart it now.
    public var unrecoverable: Bool

    /// Creates a verdict.
    public init(healthy: Bool, status: String, unrecoverable: Bool = false) {
        self.healthy = healthy
        self.status = status
        self.unrecoverable = unrecoverable
    }
}

/// Talks to systemd for the whole process (Docs/supervision.md, "Health and the watchdog"):
/// `READY=1` once `ready` says so, then every tick a health check: `WATCHDOG=1` and
/// `STATUS=` only while healthy, `WATCHDOG=trigger` when the check says unrecoverable.
/// `stopping(drainDeadline:)` sends `STOPPING=1` and keeps the stop timeout extended while the
/// drain runs. A no-op without `NOTIFY_SOCKET`.
///
/// It runs beside the supervision tree, not inside it: it must keep judging the tree while
/// the tree restarts children or stops.
public final class WatchdogService: Service {
    private let notifier: SystemdNotifier
    private let tick: Duration
    private let checkTimeout: Duration
    private let ready: @Sendable () async -> Bool
    private let check: @Sendable (Duration) async -> HealthVerdict
    private let probeTimeout: Duration
    private let logger: Logger
    private let drain = DrainDeadline()

    /// Creates the service. Ticks every half watchdog interval (every 5 s without a watchdog,
    /// for `STATUS=`). `check` is given a probe budget of an eighth of the interval (0.1 to
    /// 2 s); a check that takes longer than a quarter interval counts as unhealthy.
    public init(
        notifier: SystemdNotifier, logger: Logger, ready: @escaping @Sendable () async -> Bool,
        check: @escaping @Sendable (_ probeTimeout: Duration) async -> HealthVerdict
    ) {
        self.notifier = notifier
        let interval = notifier.watchdogInterval ?? .seconds(10)
        self.tick = interval / 2
        self.probeTimeout = min(max(interval / 8, .milliseconds(100)), .seconds(2))
        self.checkTimeout = max(interval / 4, probeTimeout * 2)
        self.ready = ready
        self.check = check
        self.logger = logger
    }

    /// The node started draining: `STOPPING=1`, and the stop timeout extended until the drain's
    /// deadline (plus a margin for the rest of the shutdown).
    public func stopping(drainDeadline: ContinuousClock.Instant) {
        drain.set(drainDeadline)
        notifier.notify("STOPPING=1\nSTATUS=draining devices\n" + timeoutExtension(until: drainDeadline))
    }

    private func timeoutExtension(until deadline: ContinuousClock.Instant) -> String {
        let left = max(deadline - .now, .zero) + .seconds(10)
        return "EXTEND_TIMEOUT_USEC=\(left.components.seconds * 1_000_000 + left.components.attoseconds / 1_000_000_000_000)"
    }

    public func run() async throws {
        guard notifier.isEnabled else { return }
        if let interval = notifier.watchdogInterval {
            logger.info("systemd watchdog enabled", metadata: ["interval": "\(interval)"])
        }
        await cancelWhenGracefulShutdown { [self] in
            while !Task.isCancelled, !(await ready()) {
                try? await Task.sleep(for: .milliseconds(20))
            }
            guard !Task.isCancelled else { return }
            let first = await judged()
            notifier.notify("READY=1\nSTATUS=\(first.status)")
            logger.info("told systemd READY=1")
            var wasHealthy = true
            var unrecoverableTicks = 0
            while !Task.isCancelled {
                try? await Task.sleep(for: tick)
                if let deadline = drain.deadline {
                    // Draining: the tree is stopping on purpose; keep systemd waiting, within the deadline.
                    if deadline > .now { notifier.notify("WATCHDOG=1\n" + timeoutExtension(until: deadline)) }
                    continue
                }
                let verdict = await judged()
                if verdict.healthy {
                    unrecoverableTicks = 0
                    notifier.notify("WATCHDOG=1\nSTATUS=\(verdict.status)")
                } else {
                    notifier.notify("STATUS=unhealthy: \(verdict.status)")
                    if wasHealthy { logger.error("unhealthy: not pinging the watchdog", metadata: ["reason": "\(verdict.status)"]) }
                    unrecoverableTicks = verdict.unrecoverable ? unrecoverableTicks + 1 : 0
                    // Twice in a row, so that one long task on a loop is not taken for a wedged loop.
                    if unrecoverableTicks >= 2 {
                        logger.critical("unrecoverable: asking systemd for a restart (WATCHDOG=trigger)", metadata: ["reason": "\(verdict.status)"])
                        notifier.notify("WATCHDOG=trigger")
                    }
                }
                wasHealthy = verdict.healthy
            }
        }
    }

    /// The check, bounded: one that does not answer in time (a deadlocked actor) is unhealthy.
    private func judged() async -> HealthVerdict {
        let check = check
        let budget = probeTimeout
        return await withDeadline(checkTimeout) { await check(budget) }
            ?? HealthVerdict(healthy: false, status: "health check did not answer within \(checkTimeout)")
    }
}

/// When the drain must be over; set once.
private final class DrainDeadline: Sendable {
    private let value = Mutex<ContinuousClock.Instant?>(nil)
    var deadline: ContinuousClock.Instant? { value.withLock { $0 } }
    func set(_ deadline: ContinuousClock.Instant) { value.withLock { $0 = deadline } }
}

/// Runs `operation` and returns its result, or nil once `timeout` has passed. Unlike a task
/// group, it does not wait for an operation that never ends (a deadlocked actor, a wedged
/// event loop): that task is abandoned.
public func withDeadline<T: Sendable>(_ timeout: Duration, _ operation: @escaping @Sendable () async -> T) async -> T? {
    let once = ResumeOnce<T?>()
    return await withCheckedContinuation { continuation in
        once.set(continuation)
        Task { once.resume(with: await operation()) }
        Task {
            try? await Task.sleep(for: timeout)
            once.resume(with: nil)
        }
    }
}

/// A continuation resumed by whichever comes first (`set` is called before either can).
private final class ResumeOnce<T: Sendable>: Sendable {
    private let state = Mutex<(continuation: CheckedContinuation<T, Never>?, done: Bool)>((nil, false))

    func set(_ continuation: CheckedContinuation<T, Never>) {
        state.withLock { $0.continuation = continuation }
    }

    func resume(with value: T) {
        let continuation: CheckedContinuation<T, Never>? = state.withLock { state in
            guard !state.done else { return nil }
            state.done = true
            defer { state.continuation = nil }
            return state.continuation
        }
        continuation?.resume(returning: value)
    }
}
