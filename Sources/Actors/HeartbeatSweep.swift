import NIOCore
import Synchronization

/// Finds silent device connections: once a second, each event loop looks at the sessions it
/// serves and closes those that sent nothing for two heartbeats.
///
/// A timer per connection cost each idle connection about 0.3 KB (the scheduled task, its
/// promise and closure) and its loop a wake-up per heartbeat per device; the sweep costs a
/// dictionary entry per connection and one wake-up a second per loop (Docs/benchmarks.md).
/// A silent device is closed between 2 x heartbeat and 2 x heartbeat + `interval`.
public final class HeartbeatSweeps: Sendable {
    /// How often each loop sweeps.
    public let interval: TimeAmount
    /// The sweeps of the loops named at init: read without a lock, so a session's start on
    /// one loop never waits on another's.
    private let fixed: [ObjectIdentifier: LoopSweep]
    /// Sweeps of other loops (tests' loops), made on first use.
    private let others = Mutex<[ObjectIdentifier: LoopSweep]>([:])

    /// Creates the sweeps: one for each of `loops` now, one for any other loop when its first
    /// session starts.
    public init(interval: TimeAmount = .seconds(1), loops: [any EventLoop] = []) {
        self.interval = interval
        self.fixed = Dictionary(
            loops.map { (ObjectIdentifier($0), LoopSweep(loop: $0, interval: interval)) }, uniquingKeysWith: { first, _ in first }
        )
    }

    /// The sweep of `loop`.
    func sweep(for loop: any EventLoop) -> LoopSweep {
        if let sweep = fixed[ObjectIdentifier(loop)] { return sweep }
        return others.withLock { sweeps in
            if let sweep = sweeps[ObjectIdentifier(loop)] { return sweep }
            let sweep = LoopSweep(loop: loop, interval: interval)
            sweeps[ObjectIdentifier(loop)] = sweep
            return sweep
        }
    }
}

/// One event loop's sessions and its repeating sweep. Used only on that loop.
final class LoopSweep: @unchecked Sendable {
    private let loop: any EventLoop
    private let interval: TimeAmount
    private var connections: [ObjectIdentifier: Connection] = [:]
    private var task: RepeatedTask?

    init(loop: any EventLoop, interval: TimeAmount) {
        self.loop = loop
        self.interval = interval
    }

    /// Watches `connection` (an authenticated session on this loop) from now on.
    func add(_ connection: Connection) {
        loop.preconditionInEventLoop()
        connections[ObjectIdentifier(connection)] = connection
        if task == nil {
            task = loop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { [self] _ in run() }
        }
    }

    /// Stops watching `connection`; the sweep stops with the loop's last session.
    func remove(_ connection: Connection) {
        loop.preconditionInEventLoop()
        connections[ObjectIdentifier(connection)] = nil
        if connections.isEmpty {
            task?.cancel()
            task = nil
        }
    }

    private func run() {
        let now = loop.now
        // A connection closed by its check leaves `connections` meanwhile: this iterates a copy.
        for connection in connections.values {
            connection.assumeIsolated { $0.checkHeartbeat(now: now) }
        }
    }
}
