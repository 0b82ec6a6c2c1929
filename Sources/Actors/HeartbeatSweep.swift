import NIOCore
import Synchronization

/// Finds silent device connections: once a second, each event loop looks at the sessions
/// whose heartbeat deadline has come, and closes those that sent nothing for two heartbeats.
///
/// A timer per connection cost each idle connection about 0.3 KB (the scheduled task, its
/// promise and closure) and its loop a wake-up per heartbeat per device; the sweep costs a
/// dictionary entry per connection and one wake-up a second per loop (Docs/benchmarks.md).
/// Each session is filed under the sweep at which its deadline falls (a timing wheel), so a
/// sweep looks only at the sessions due then: a device that keeps PINGing is looked at about
/// once per two heartbeats, not every second, and its PINGs cost the sweep nothing.
/// A silent device is closed between 2 x heartbeat and 2 x heartbeat + `interval`.
/// The same tick records the status marks of sends that waited in vain for their ACK
/// (`LoopSweep.watchSendMarks`).
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
    /// The watched sessions, each with the sweep it is filed under.
    private var connections: [ObjectIdentifier: (connection: Connection, due: Int64)] = [:]
    /// Sessions by the sweep that is to look at them (sweep `n` runs at `n` x interval of the
    /// loop's clock). An entry whose session has gone, or was filed anew under another sweep,
    /// is passed over.
    private var wheel: [Int64: [ObjectIdentifier]] = [:]
    /// The last sweep run.
    private var swept: Int64 = 0
    /// Sessions holding sends whose status mark waits for their ACK (status kept on Redis,
    /// where the ACK records the send too, in its own write): those that began waiting since
    /// the last sweep, and those from before it, whose marks the next sweep records. So a
    /// send's mark is written alone only when no ACK took it along within one to two sweeps.
    private var freshSendMarks: [ObjectIdentifier: Connection] = [:]
    private var dueSendMarks: [ObjectIdentifier: Connection] = [:]
    private var task: RepeatedTask?
    /// Sessions looked at, for tests.
    private(set) var checks = 0
    /// The loop as a task executor, for its sessions' store calls (one per loop, not one per
    /// session: memory per connection is what Herald is sized by).
    let taskExecutor: EventLoopTaskExecutor

    init(loop: any EventLoop, interval: TimeAmount) {
        self.loop = loop
        self.interval = interval
        taskExecutor = EventLoopTaskExecutor(loop)
    }

    /// The sweep at or after `deadline`.
    private func sweep(after deadline: NIODeadline) -> Int64 {
        let nanoseconds = Int64(clamping: deadline.uptimeNanoseconds)
        return (nanoseconds + interval.nanoseconds - 1) / interval.nanoseconds
    }

    private func file(_ id: ObjectIdentifier, _ connection: Connection, under due: Int64) {
        connections[id] = (connection, due)
        wheel[due, default: []].append(id)
    }

    /// Watches `connection` (an authenticated session on this loop) from now on: the next
    /// sweep looks at it and files it under its deadline.
    func add(_ connection: Connection) {
        loop.preconditionInEventLoop()
        if task == nil {
            swept = sweep(after: loop.now) - 1
            task = loop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { [self] _ in run() }
        }
        file(ObjectIdentifier(connection), connection, under: swept + 1)
    }

    /// Records `connection`'s held-back send marks at the sweep after next (a watched session).
    func watchSendMarks(_ connection: Connection) {
        loop.preconditionInEventLoop()
        freshSendMarks[ObjectIdentifier(connection)] = connection
    }

    /// Stops watching `connection`; the sweep stops with the loop's last session.
    func remove(_ connection: Connection) {
        loop.preconditionInEventLoop()
        let id = ObjectIdentifier(connection)
        connections[id] = nil
        freshSendMarks[id] = nil
        dueSendMarks[id] = nil
        if connections.isEmpty {
            task?.cancel()
            task = nil
            wheel = [:]
        }
    }

    private func run() {
        let now = loop.now
        // Every sweep due by now, a late one included: the repeated task may run late.
        let last = max(swept, sweep(after: now + .nanoseconds(1)) - 1)
        while swept < last {
            swept += 1
            guard let due = wheel.removeValue(forKey: swept) else { continue }
            for id in due {
                // A session closed by its check leaves `connections` meanwhile.
                guard let (connection, filed) = connections[id], filed == swept else { continue }
                checks += 1
                guard let deadline = connection.assumeIsolated({ $0.checkHeartbeat(now: now) }) else { continue }
                file(id, connection, under: max(sweep(after: deadline), swept + 1))
            }
        }
        let due = dueSendMarks
        dueSendMarks = freshSendMarks
        freshSendMarks = [:]
        for connection in due.values { connection.assumeIsolated { $0.recordSendMarks() } }
    }
}
