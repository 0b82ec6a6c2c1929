import HeraldTestSupport
import ServiceLifecycle
import ServiceLifecycleTestKit
import Supervision
import Testing

/// Runs `supervisor` while `body` drives it, then shuts it down gracefully and returns how
/// `run()` ended. Everything is bounded by the test's time limit.
func supervising(
    _ supervisor: Supervisor<ManualClock>,
    _ body: @Sendable () async throws -> Void
) async throws -> Result<Void, any Error> {
    try await testGracefulShutdown { trigger in
        try await withThrowingTaskGroup(of: Result<Void, any Error>?.self) { group in
            group.addTask {
                do { try await supervisor.run(); return .success(()) } catch { return .failure(error) }
            }
            try await body()
            trigger.triggerGracefulShutdown()
            var outcome: Result<Void, any Error>?
            while let next = try await group.next() { outcome = next ?? outcome }
            return outcome!
        }
    }
}

@Suite("Supervisor, as OTP's supervisor_SUITE", .timeLimit(.minutes(1)))
struct SupervisorTests {
    enum Exit: String, CaseIterable, Sendable { case normal, failure }

    /// Children a, b, c; b has the restart type under test and exits with the reason under test.
    @Test(
        "a child's restart type, exit reason and the strategy decide who restarts",
        arguments: [RestartType.permanent, .transient, .temporary], Exit.allCases
    )
    func restartMatrix(restart: RestartType, exit: Exit) async throws {
        for strategy in [RestartStrategy.oneForOne, .oneForAll, .restForOne] {
            let children = TestChildren()
            let events = EventRecorder()
            let clock = ManualClock()
            let supervisor = Supervisor(
                name: "sup", strategy: strategy, intensity: RestartIntensity(maxRestarts: 5, period: .seconds(5)),
                children: [children.spec("a"), children.spec("b", restart: restart), children.spec("c")],
                clock: clock, logger: quietLogger, onEvent: events.record
            )
            let outcome = try await supervising(supervisor) {
                try await children.log.wait(until: "start c")
                children.send(exit == .normal ? .exitNormally : .crash, to: "b")
                try await events.log.wait(until: "sup: exited b \(exit.rawValue)")

                let restarts = switch restart {
                case .permanent: true
                case .transient: exit == .failure
                case .temporary: false
                }
                if restarts {
                    try await children.log.wait(until: "start b", times: 2)
                    if strategy != .oneForOne { try await children.log.wait(until: "start c", times: 2) }
                    if strategy == .oneForAll { try await children.log.wait(until: "start a", times: 2) }
                }
                let expected: [String: Int] = switch (restarts, strategy) {
                case (false, _): ["a": 1, "b": 1, "c": 1]
                case (true, .oneForOne): ["a": 1, "b": 2, "c": 1]
                case (true, .oneForAll): ["a": 2, "b": 2, "c": 2]
                case (true, .restForOne): ["a": 1, "b": 2, "c": 2]
                }
                for (id, count) in expected {
                    #expect(children.starts(of: id) == count, "\(strategy): starts of \(id)")
                }
                let running = await supervisor.runningChildren()
                #expect(running == (restarts ? ["a", "b", "c"] : ["a", "c"]), "\(strategy)")
                if strategy == .oneForAll && restarts {
                    // Siblings stop in reverse order before anyone starts again.
                    let log = children.log.entries
                    let stops = log.filter { $0 == "stop a" || $0 == "stop c" }
                    #expect(stops == ["stop c", "stop a"])
                }
                let health = await supervisor.healthReport()
                #expect(health.healthy == (restarts || restart != .permanent))
            }
            #expect(throws: Never.self) { try outcome.get() }
        }
    }

    @Test("a temporary child is forgotten once it exits")
    func temporaryChildIsRemoved() async throws {
        let children = TestChildren()
        let events = EventRecorder()
        let supervisor = Supervisor(
            name: "sup", strategy: .oneForAll, children: [children.spec("a"), children.spec("t", restart: .temporary)],
            clock: ManualClock(), logger: quietLogger, onEvent: events.record
        )
        _ = try await supervising(supervisor) {
            try await children.log.wait(until: "start t")
            children.send(.crash, to: "t")
            try await events.log.wait(until: "sup: exited t failure")
            let report = await supervisor.healthReport()
            #expect(report.children.map(\.name) == ["a"])
            #expect(report.healthy)
        }
    }

    @Test("more restarts than the intensity within the period end the supervisor")
    func intensityExceeded() async throws {
        let children = TestChildren()
        let events = EventRecorder()
        let supervisor = Supervisor(
            name: "sup", strategy: .oneForOne, intensity: RestartIntensity(maxRestarts: 2, period: .seconds(5)),
            children: [children.spec("a"), children.spec("b")], clock: ManualClock(), logger: quietLogger,
            onEvent: events.record
        )
        let outcome = try await supervising(supervisor) {
            for round in 1...3 {
                try await children.log.wait(until: "start a", times: round)
                children.send(.crash, to: "a")
            }
            try await events.log.wait(until: "sup: gave up")
            // Giving up stops every child, in reverse order.
            try await children.log.wait(until: "stop b")
        }
        #expect(throws: SupervisorError.intensityExceeded(supervisor: "sup", child: "a")) { try outcome.get() }
        #expect(children.starts(of: "a") == 3)
    }

    @Test("restarts spread wider than the period never exceed the intensity")
    func slidingWindow() async throws {
        let children = TestChildren()
        let clock = ManualClock()
        let supervisor = Supervisor(
            name: "sup", strategy: .oneForOne, intensity: RestartIntensity(maxRestarts: 1, period: .seconds(5)),
            children: [children.spec("a")], clock: clock, logger: quietLogger
        )
        let outcome = try await supervising(supervisor) {
            for round in 1...4 {
                try await children.log.wait(until: "start a", times: round)
                clock.advance(by: .seconds(5))
                children.send(.crash, to: "a")
            }
            try await children.log.wait(until: "start a", times: 5)
        }
        #expect(throws: Never.self) { try outcome.get() }
    }

    @Test("a supervisor that gives up is restarted by its parent (escalation)")
    func escalation() async throws {
        let children = TestChildren()
        let clock = ManualClock()
        let events = EventRecorder()
        let inner = ChildSpec(id: "inner", restart: .permanent) {
            Supervisor(
                name: "inner", strategy: .oneForOne, intensity: RestartIntensity(maxRestarts: 1, period: .seconds(5)),
                children: [children.spec("w")], clock: clock, logger: quietLogger, onEvent: events.record
            )
        }
        let root = Supervisor(
            name: "root", strategy: .oneForOne, intensity: RestartIntensity(maxRestarts: 3, period: .seconds(5)),
            children: [children.spec("x"), inner], clock: clock, logger: quietLogger, onEvent: events.record
        )
        let outcome = try await supervising(root) {
            try await children.log.wait(until: "start w")
            children.send(.crash, to: "w")
            try await children.log.wait(until: "start w", times: 2)
            children.send(.crash, to: "w")
            try await events.log.wait(until: "inner: gave up")
            try await events.log.wait(until: "root: exited inner failure")
            try await events.log.wait(until: "root: restarted inner")
            try await children.log.wait(until: "start w", times: 3)
            #expect(children.starts(of: "x") == 1, "one-for-one at the root leaves x alone")
        }
        #expect(throws: Never.self) { try outcome.get() }
    }

    @Test("a storm below the root exceeds the root's intensity and ends it with an error")
    func escalationToTheTop() async throws {
        let children = TestChildren()
        let clock = ManualClock()
        let inner = ChildSpec(id: "inner") {
            Supervisor(
                name: "inner", strategy: .oneForOne, intensity: RestartIntensity(maxRestarts: 0, period: .seconds(5)),
                children: [children.spec("w")], clock: clock, logger: quietLogger
            )
        }
        let events = EventRecorder()
        let root = Supervisor(
            name: "root", strategy: .oneForOne, intensity: RestartIntensity(maxRestarts: 1, period: .seconds(5)),
            children: [inner], clock: clock, logger: quietLogger, onEvent: events.record
        )
        let outcome = try await supervising(root) {
            for round in 1...2 {
                try await children.log.wait(until: "start w", times: round)
                children.send(.crash, to: "w")
            }
            try await events.log.wait(until: "root: gave up")
        }
        #expect(throws: SupervisorError.intensityExceeded(supervisor: "root", child: "inner")) { try outcome.get() }
    }

    @Test("children start in order, each awaited, and stop in reverse order on shutdown")
    func orderedStartAndReverseStop() async throws {
        let children = TestChildren()
        let supervisor = Supervisor(
            name: "sup", strategy: .oneForOne,
            children: [children.spec("a"), children.spec("b"), children.spec("c")],
            clock: ManualClock(), logger: quietLogger
        )
        let outcome = try await supervising(supervisor) { try await children.log.wait(until: "start c") }
        #expect(throws: Never.self) { try outcome.get() }
        #expect(children.log.entries == ["start a", "start b", "start c", "stop c", "stop b", "stop a"])
    }

    @Test("a child that ignores shutdown is cancelled when its shutdown timeout passes, not before")
    func shutdownTimeout() async throws {
        let children = TestChildren()
        let events = EventRecorder()
        let clock = ManualClock()
        let supervisor = Supervisor(
            name: "sup", strategy: .oneForOne,
            children: [children.spec("a"), children.spec("slow", stop: .ignoresShutdown, shutdownTimeout: .seconds(3))],
            clock: clock, logger: quietLogger, onEvent: events.record
        )
        try await testGracefulShutdown { trigger in
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await supervisor.run() }
                try await children.log.wait(until: "start slow")
                trigger.triggerGracefulShutdown()
                try await clock.waitForSleepers(atLeast: 1)
                clock.advance(by: .seconds(2))
                #expect(!children.log.entries.contains("stop slow"), "still inside its timeout")
                let report = await supervisor.healthReport()
                #expect(report.state == "stopping")
                clock.advance(by: .seconds(1))
                try await events.log.wait(until: "sup: timed out slow")
                try await children.log.wait(until: "stop a")
                try await group.waitForAll()
            }
        }
        #expect(children.log.entries == ["start a", "start slow", "stop slow", "stop a"])
    }

    @Test("a child that fails to start on the first start fails the supervisor, stopping the rest")
    func startFailure() async throws {
        let children = TestChildren()
        children.failNextStarts(of: "b", count: 1)
        let supervisor = Supervisor(
            name: "sup", strategy: .oneForOne, children: [children.spec("a"), children.spec("b")],
            clock: ManualClock(), logger: quietLogger
        )
        await #expect(throws: SupervisorError.self) { try await supervisor.run() }
        #expect(children.log.entries == ["start a", "start-failed b", "stop a"])
    }

    @Test("a failed restart counts as another restart and is retried")
    func restartFailureRetried() async throws {
        let children = TestChildren()
        let supervisor = Supervisor(
            name: "sup", strategy: .oneForOne, intensity: RestartIntensity(maxRestarts: 3, period: .seconds(5)),
            children: [children.spec("a")], clock: ManualClock(), logger: quietLogger
        )
        let outcome = try await supervising(supervisor) {
            try await children.log.wait(until: "start a")
            children.failNextStarts(of: "a", count: 2)
            children.send(.crash, to: "a")
            try await children.log.wait(until: "start a", times: 2)
        }
        #expect(throws: Never.self) { try outcome.get() }
        #expect(children.log.count(of: "start-failed a") == 2)
    }

    @Test("children added at run time are supervised and can be terminated (dynamic supervisor)")
    func dynamicChildren() async throws {
        let children = TestChildren()
        let events = EventRecorder()
        let supervisor = Supervisor(
            name: "dyn", strategy: .oneForOne, children: [], clock: ManualClock(), logger: quietLogger,
            onEvent: events.record
        )
        let outcome = try await supervising(supervisor) {
            try await eventually { await supervisor.healthReport().state == "running" }
            try await supervisor.startChild(children.spec("r1"))
            try await supervisor.startChild(children.spec("r2", restart: .temporary))
            await #expect(throws: SupervisorError.duplicateChild(supervisor: "dyn", child: "r1")) {
                try await supervisor.startChild(children.spec("r1"))
            }
            children.send(.crash, to: "r1")
            try await children.log.wait(until: "start r1", times: 2)
            try await supervisor.terminateChild(id: "r1")
            #expect(await supervisor.runningChildren() == ["r2"])
            await #expect(throws: SupervisorError.unknownChild(supervisor: "dyn", child: "nope")) {
                try await supervisor.terminateChild(id: "nope")
            }
        }
        #expect(throws: Never.self) { try outcome.get() }
        #expect(children.log.entries.suffix(1) == ["stop r2"])
    }

    @Test("a killed child is an abnormal exit: restarted even when transient")
    func killIsAbnormal() async throws {
        let children = TestChildren()
        let events = EventRecorder()
        let supervisor = Supervisor(
            name: "sup", strategy: .oneForOne, children: [children.spec("a", restart: .transient)],
            clock: ManualClock(), logger: quietLogger, onEvent: events.record
        )
        _ = try await supervising(supervisor) {
            try await children.log.wait(until: "start a")
            try await supervisor.kill(childID: "a")
            try await events.log.wait(until: "sup: exited a failure")
            try await children.log.wait(until: "start a", times: 2)
        }
    }

    @Test("a killed child that ignores cancellation is abandoned when its shutdown timeout passes, and restarted")
    func killedChildIgnoringCancellationIsAbandoned() async throws {
        let children = TestChildren()
        let events = EventRecorder()
        let clock = ManualClock()
        let supervisor = Supervisor(
            name: "sup", strategy: .oneForOne,
            children: [children.spec("a", restart: .transient, stop: .ignoresCancellation, shutdownTimeout: .seconds(3))],
            clock: clock, logger: quietLogger, onEvent: events.record
        )
        _ = try await supervising(supervisor) {
            try await children.log.wait(until: "start a")
            try await supervisor.kill(childID: "a")
            try await clock.waitForSleepers(atLeast: 1)
            clock.advance(by: .seconds(2))
            #expect(children.starts(of: "a") == 1, "still inside its timeout")
            clock.advance(by: .seconds(1))
            try await events.log.wait(until: "sup: exited a failure")
            try await children.log.wait(until: "start a", times: 2)
            // The new run ends on its own, so the shutdown at the end has nothing to wait for.
            children.send(.exitNormally, to: "a")
            try await events.log.wait(until: "sup: exited a normal")
        }
        #expect(children.starts(of: "a") == 2)
    }

    @Test("inside a ServiceGroup, graceful shutdown of the group stops the tree in reverse order")
    func insideServiceGroup() async throws {
        let children = TestChildren()
        let supervisor = Supervisor(
            name: "root", strategy: .oneForAll, children: [children.spec("a"), children.spec("b")],
            clock: ManualClock(), logger: quietLogger
        )
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: supervisor, failureTerminationBehavior: .gracefullyShutdownGroup)],
                logger: quietLogger
            )
        )
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            try await children.log.wait(until: "start b")
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        #expect(children.log.entries == ["start a", "start b", "stop b", "stop a"])
    }
}
