import Logging
import ServiceLifecycle

/// An OTP supervisor as a swift-service-lifecycle `Service`.
///
/// Children start in order, each awaited (see `ChildSpec.start`), and stop in reverse order,
/// each given its shutdown timeout before it is cancelled. When a child exits, its restart
/// type decides whether it comes back and the strategy decides which siblings come back with
/// it. More than `intensity.maxRestarts` restarts within `intensity.period` make the supervisor
/// stop every child and throw `SupervisorError.intensityExceeded`, which its parent sees as an
/// abnormal exit of one of its own children (escalation). Above the root supervisor sits the
/// process's `ServiceGroup`, and above that systemd.
///
/// Graceful shutdown from the parent (SIGTERM at the root) stops the children in reverse order
/// and returns normally. Children can also be added and removed while it runs (`startChild`,
/// `terminateChild`), which makes any supervisor usable as OTP's dynamic supervisor.
///
/// Time comes from the injected clock, so intensity windows and shutdown timeouts are tested
/// on a manual clock.
public actor Supervisor<C: Clock>: Service, HealthReporting where C.Duration == Duration {
    /// The supervisor's name, used in logs (`sup.name`) and health reports.
    public nonisolated let name: String
    /// Which siblings restart with a child.
    public nonisolated let strategy: RestartStrategy
    /// How many restarts in how long are tolerated.
    public nonisolated let intensity: RestartIntensity

    private enum Event: Sendable {
        case exited(id: String, generation: UInt64, reason: ExitReason)
        case startChild(ChildSpec, CheckedContinuation<Void, any Error>)
        case terminateChild(String, CheckedContinuation<Void, any Error>)
        case shutdown
    }

    private struct Running {
        var handle: ChildHandle
        var service: any Service
    }

    private enum State {
        case initial
        case running(AsyncStream<Event>.Continuation)
        case shuttingDown
        case finished(failed: Bool)
    }

    private let clock: C
    private let logger: Logger
    private let onEvent: @Sendable (SupervisorEvent) -> Void
    private var specs: [ChildSpec]
    private var running: [String: Running] = [:]
    private var stopping: Set<String> = []
    private var overdue: Set<String> = []
    private var restartCounts: [String: Int] = [:]
    private var restartTimes: [C.Instant] = []
    private var nextGeneration: UInt64 = 0
    private var state: State = .initial

    /// Creates a supervisor over `children`, started in that order.
    public init(
        name: String,
        strategy: RestartStrategy,
        intensity: RestartIntensity = RestartIntensity(),
        children: [ChildSpec],
        clock: C,
        logger: Logger,
        onEvent: @escaping @Sendable (SupervisorEvent) -> Void = { _ in }
    ) {
        precondition(Set(children.map(\.id)).count == children.count, "child ids must be unique")
        self.name = name
        self.strategy = strategy
        self.intensity = intensity
        self.specs = children
        self.clock = clock
        var logger = logger
        logger[metadataKey: "sup.name"] = .string(name)
        self.logger = logger
        self.onEvent = onEvent
    }

    // MARK: Service

    /// Starts the children and supervises them until graceful shutdown, cancellation, or
    /// a failure this supervisor cannot handle (which it throws).
    public func run() async throws {
        guard case .initial = state else { throw SupervisorError.notRunning(supervisor: name) }
        let (events, continuation) = AsyncStream.makeStream(of: Event.self)
        state = .running(continuation)
        defer { continuation.finish() }
        do {
            try await withGracefulShutdownHandler {
                try await withThrowingDiscardingTaskGroup { group in
                    try await self.startAll(from: 0, in: &group, isRestart: false)
                    for await event in events {
                        if try await self.handle(event, in: &group) == .stop { break }
                    }
                    // Cancelled from outside: the group cancels whatever still runs.
                }
            } onGracefulShutdown: {
                continuation.yield(.shutdown)
            }
            state = .finished(failed: false)
        } catch {
            state = .finished(failed: true)
            throw error
        }
    }

    // MARK: Run-time children

    /// Starts one more child, as the last in order (OTP's `start_child`). Returns once the
    /// child's `start` has completed; throws what it threw.
    public func startChild(_ spec: ChildSpec) async throws {
        guard case .running(let events) = state else { throw SupervisorError.notRunning(supervisor: name) }
        try await withCheckedThrowingContinuation { events.yield(.startChild(spec, $0)) }
    }

    /// Stops a child within its shutdown timeout and forgets its spec (OTP's
    /// `terminate_child` followed by `delete_child`).
    public func terminateChild(id: String) async throws {
        guard case .running(let events) = state else { throw SupervisorError.notRunning(supervisor: name) }
        try await withCheckedThrowingContinuation { events.yield(.terminateChild(id, $0)) }
    }

    /// Fault injection: cancels a child as if it had crashed. Its exit counts as abnormal.
    public func kill(childID id: String) throws {
        guard let child = running[id] else { throw SupervisorError.unknownChild(supervisor: name, child: id) }
        child.handle.kill()
    }

    /// The service currently running as `id`, for tests and for the composition root.
    public func child(id: String) -> (any Service)? { running[id]?.service }

    /// The ids of the children that currently run, in start order.
    public func runningChildren() -> [String] { specs.map(\.id).filter { running[$0] != nil } }

    // MARK: Health

    public func healthReport() async -> HealthReport {
        let supervisorState: String
        switch state {
        case .initial: supervisorState = "starting"
        case .running: supervisorState = "running"
        case .shuttingDown: supervisorState = "stopping"
        case .finished(let failed): supervisorState = failed ? "failed" : "stopped"
        }
        var reports: [HealthReport] = []
        for spec in specs {
            let restarts = restartCounts[spec.id, default: 0]
            if let child = running[spec.id] {
                if overdue.contains(spec.id) {
                    reports.append(HealthReport(name: spec.id, healthy: false, state: "stop-overdue", restarts: restarts))
                } else if let reporting = child.service as? any HealthReporting {
                    var report = await reporting.healthReport()
                    report.name = spec.id
                    report.restarts = restarts
                    reports.append(report)
                } else {
                    reports.append(HealthReport(name: spec.id, healthy: true, state: "running", restarts: restarts))
                }
            } else {
                // A stopped transient child that ended normally is fine; a permanent one is not.
                let fine = spec.restart != .permanent
                reports.append(HealthReport(name: spec.id, healthy: fine, state: "stopped", restarts: restarts))
            }
        }
        let running = if case .running = state { true } else { false }
        let healthy = running && reports.allSatisfy(\.healthy)
        return HealthReport(name: name, healthy: healthy, state: supervisorState, children: reports)
    }

    // MARK: Event handling

    private enum Next { case proceed, stop }

    private func handle(_ event: Event, in group: inout ThrowingDiscardingTaskGroup<any Error>) async throws -> Next {
        switch event {
        case .shutdown:
            logger.info("supervisor shutting down")
            state = .shuttingDown
            await stopAll(after: -1)
            return .stop

        case .startChild(let spec, let reply):
            guard specs.allSatisfy({ $0.id != spec.id }) else {
                reply.resume(throwing: SupervisorError.duplicateChild(supervisor: name, child: spec.id))
                return .proceed
            }
            do {
                try await launch(spec, in: &group, isRestart: false)
                specs.append(spec)
                reply.resume()
            } catch {
                reply.resume(throwing: error)
            }
            return .proceed

        case .terminateChild(let id, let reply):
            guard specs.contains(where: { $0.id == id }) else {
                reply.resume(throwing: SupervisorError.unknownChild(supervisor: name, child: id))
                return .proceed
            }
            await stop(id)
            specs.removeAll { $0.id == id }
            reply.resume()
            return .proceed

        case .exited(let id, let generation, let reason):
            // Exits the supervisor caused itself are awaited where it caused them.
            guard let child = running[id], child.handle.generation == generation, !stopping.contains(id) else {
                return .proceed
            }
            running[id] = nil
            onEvent(.exited(supervisor: name, child: id, reason: reason))
            guard let index = specs.firstIndex(where: { $0.id == id }) else { return .proceed }
            let spec = specs[index]
            let restart: Bool
            switch spec.restart {
            case .permanent: restart = true
            case .transient: restart = reason.isAbnormal
            case .temporary: restart = false
            }
            if reason.isAbnormal {
                logger.error("child exited", metadata: ["sup.child": "\(id)", "sup.reason": "\(reason)"])
            } else {
                logger.info("child exited", metadata: ["sup.child": "\(id)", "sup.reason": "\(reason)"])
            }
            if spec.restart == .temporary { specs.remove(at: index) }
            guard restart else { return .proceed }
            try await recordRestart(of: id)
            switch strategy {
            case .oneForOne:
                try await restartChild(at: index, in: &group)
            case .oneForAll:
                await stopAll(after: -1)
                try await startAll(from: 0, in: &group, isRestart: true)
            case .restForOne:
                await stopAll(after: index)
                try await startAll(from: index, in: &group, isRestart: true)
            }
            return .proceed
        }
    }

    /// Counts one restart and gives up (stopping everything, then throwing) past the intensity.
    private func recordRestart(of id: String) async throws {
        let now = clock.now
        restartTimes.append(now)
        restartTimes.removeAll { $0.duration(to: now) >= intensity.period }
        guard restartTimes.count > intensity.maxRestarts else { return }
        logger.critical(
            "restart intensity exceeded, supervisor gives up",
            metadata: ["sup.child": "\(id)", "sup.intensity": "\(intensity.maxRestarts) in \(intensity.period)"]
        )
        onEvent(.intensityExceeded(supervisor: name, child: id))
        state = .shuttingDown
        await stopAll(after: -1)
        throw SupervisorError.intensityExceeded(supervisor: name, child: id)
    }

    // MARK: Starting

    /// Starts the spec at `index` again (one-for-one), retrying failed starts within the intensity.
    private func restartChild(at index: Int, in group: inout ThrowingDiscardingTaskGroup<any Error>) async throws {
        let spec = specs[index]
        while true {
            do {
                return try await launch(spec, in: &group, isRestart: true)
            } catch {
                logger.error("child failed to restart", metadata: ["sup.child": "\(spec.id)", "sup.reason": "\(error)"])
                try await recordRestart(of: spec.id)
            }
        }
    }

    /// Starts every non-running spec from `index` on, in order. On the first start a failure
    /// ends the supervisor (OTP: the supervisor fails to start); on a restart it counts as one
    /// more restart and is retried.
    private func startAll(from index: Int, in group: inout ThrowingDiscardingTaskGroup<any Error>, isRestart: Bool) async throws {
        var position = index
        while position < specs.count {
            let spec = specs[position]
            if running[spec.id] == nil {
                do {
                    try await launch(spec, in: &group, isRestart: isRestart)
                } catch {
                    if !isRestart {
                        logger.error("child failed to start", metadata: ["sup.child": "\(spec.id)", "sup.reason": "\(error)"])
                        state = .shuttingDown
                        await stopAll(after: -1)
                        throw SupervisorError.startFailed(supervisor: name, child: spec.id, error: error)
                    }
                    logger.error("child failed to restart", metadata: ["sup.child": "\(spec.id)", "sup.reason": "\(error)"])
                    try await recordRestart(of: spec.id)
                    continue
                }
            }
            position += 1
        }
    }

    private func launch(_ spec: ChildSpec, in group: inout ThrowingDiscardingTaskGroup<any Error>, isRestart: Bool) async throws {
        let service = try await spec.start()
        guard case .running(let events) = state else {
            // Shut down while the child was starting: it never runs.
            throw SupervisorError.notRunning(supervisor: name)
        }
        nextGeneration += 1
        let handle = ChildHandle(id: spec.id, generation: nextGeneration)
        running[spec.id] = Running(handle: handle, service: service)
        if isRestart { restartCounts[spec.id, default: 0] += 1 }
        let clock = clock
        let grace = spec.shutdownTimeout
        group.addTask {
            let reason = await handle.run(service, grace: { try? await clock.sleep(for: grace) })
            events.yield(.exited(id: handle.id, generation: handle.generation, reason: reason))
        }
        logger.info(isRestart ? "child restarted" : "child started", metadata: ["sup.child": "\(spec.id)"])
        onEvent(.started(supervisor: name, child: spec.id, restart: isRestart))
    }

    // MARK: Stopping

    /// Stops, in reverse order, every running child whose index is above `index`.
    private func stopAll(after index: Int) async {
        for position in specs.indices.reversed() where position > index {
            let id = specs[position].id
            guard running[id] != nil else { continue }
            await stop(id)
            if specs.indices.contains(position), specs[position].id == id, specs[position].restart == .temporary {
                specs.remove(at: position)
            }
        }
    }

    /// Triggers the child's graceful shutdown, waits up to its timeout, then cancels it and
    /// waits for it to end. A child that ignores cancellation too is marked unhealthy
    /// (`stop-overdue`) until it is abandoned, one more shutdown timeout later
    /// (`ChildHandle.run`).
    private func stop(_ id: String) async {
        guard let child = running[id], let spec = specs.first(where: { $0.id == id }) else { return }
        stopping.insert(id)
        defer { stopping.remove(id); overdue.remove(id); running[id] = nil }
        child.handle.requestStop()
        let handle = child.handle
        let clock = clock
        let timeout = spec.shutdownTimeout
        let inTime = await withTaskGroup(of: Bool.self) { group in
            group.addTask { await handle.waitForExit(); return handle.exitReason != nil }
            group.addTask { try? await clock.sleep(for: timeout); return false }
            // The first to finish decides; the timer also ends early if we are cancelled.
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        if !inTime, handle.exitReason == nil {
            logger.warning("child ignored graceful shutdown, cancelling it", metadata: ["sup.child": "\(id)"])
            onEvent(.shutdownTimedOut(supervisor: name, child: id))
            overdue.insert(id)
            handle.kill()
            await handle.waitForExit()
        }
        onEvent(.exited(supervisor: name, child: id, reason: handle.exitReason ?? .shutdown))
        logger.info("child stopped", metadata: ["sup.child": "\(id)"])
    }
}

extension Supervisor where C == ContinuousClock {
    /// Creates a supervisor on the continuous clock.
    public init(
        name: String,
        strategy: RestartStrategy,
        intensity: RestartIntensity = RestartIntensity(),
        children: [ChildSpec],
        logger: Logger,
        onEvent: @escaping @Sendable (SupervisorEvent) -> Void = { _ in }
    ) {
        self.init(
            name: name, strategy: strategy, intensity: intensity, children: children,
            clock: ContinuousClock(), logger: logger, onEvent: onEvent
        )
    }
}
