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
    private let sweeps = Mutex<[ObjectIdentifier: LoopSweep]>([:])

    /// Creates the sweeps (one per event loop, made when the loop's first session starts).
    public init(interval: TimeAmount = .seconds(1)) {
        self.interval = interval
    }

    /// The sweep of `loop`.
    func sweep(for loop: any EventLoop) -> LoopSweep {
        sweeps.withLock { sweeps in
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
        let now = NIODeadline.now()
        // A connection closed by its check leaves `connections` meanwhile: this iterates a copy.
        for connection in connections.values {
            connection.assumeIsolated { $0.checkHeartbeat(now: now) }
        }
    }
}
