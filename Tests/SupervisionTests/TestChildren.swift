import HeraldTestSupport
import Logging
import ServiceLifecycle
import Supervision
import Synchronization

/// How a test child answers its supervisor's request to stop.
enum StopBehaviour: Sendable {
    /// Returns as soon as graceful shutdown is triggered.
    case graceful
    /// Ignores graceful shutdown; only cancellation ends it.
    case ignoresShutdown
    /// Ignores graceful shutdown and cancellation (as a task stuck in a call that does not
    /// check for it would): it ends on a command, or when its commands stream is dropped.
    case ignoresCancellation
}

struct Boom: Error, CustomStringConvertible {
    var description: String { "boom" }
}

/// Children whose lives are written to an `EventLog` ("start a", "stop a") and whose exits
/// a test commands ("exit a normally", "crash a").
final class TestChildren: Sendable {
    enum Command: Sendable { case exitNormally, crash }

    let log = EventLog()
    private let commands = Mutex<[String: AsyncStream<Command>.Continuation]>([:])
    private let failStarts = Mutex<[String: Int]>([:])

    func spec(
        _ id: String, restart: RestartType = .permanent, stop: StopBehaviour = .graceful,
        shutdownTimeout: Duration = .seconds(5)
    ) -> ChildSpec {
        ChildSpec(id: id, restart: restart, shutdownTimeout: shutdownTimeout) {
            if self.failStarts.withLock({ failures in
                guard let left = failures[id], left > 0 else { return false }
                failures[id] = left - 1
                return true
            }) {
                self.log.append("start-failed \(id)")
                throw Boom()
            }
            let (stream, continuation) = AsyncStream.makeStream(of: Command.self)
            self.commands.withLock { $0[id] = continuation }
            self.log.append("start \(id)")
            return TestChild(id: id, log: self.log, commands: stream, stop: stop)
        }
    }

    /// The next `count` starts of `id` throw.
    func failNextStarts(of id: String, count: Int) { failStarts.withLock { $0[id] = count } }

    func send(_ command: Command, to id: String) {
        _ = commands.withLock { $0[id] }?.yield(command)
    }

    func starts(of id: String) -> Int { log.count(of: "start \(id)") }
}

struct TestChild: Service {
    let id: String
    let log: EventLog
    let commands: AsyncStream<TestChildren.Command>
    let stop: StopBehaviour

    func run() async throws {
        defer { log.append("stop \(id)") }
        let commands = self.commands
        let body: @Sendable () async throws -> Void = {
            for await command in commands {
                switch command {
                case .exitNormally: return
                case .crash: throw Boom()
                }
            }
            try Task.checkCancellation()
        }
        switch stop {
        case .graceful: try await cancelWhenGracefulShutdown(body)
        case .ignoresShutdown: try await body()
        // An unstructured task is not cancelled with the one awaiting its value.
        case .ignoresCancellation: try await Task { try await body() }.value
        }
    }
}

/// Records supervisor events for assertions.
final class EventRecorder: Sendable {
    let log = EventLog()
    func record(_ event: SupervisorEvent) {
        switch event {
        case .started(let sup, let child, let restart): log.append("\(sup): \(restart ? "restarted" : "started") \(child)")
        case .exited(let sup, let child, let reason):
            let kind = switch reason {
            case .normal: "normal"
            case .shutdown: "shutdown"
            case .failure: "failure"
            }
            log.append("\(sup): exited \(child) \(kind)")
        case .intensityExceeded(let sup, _): log.append("\(sup): gave up")
        case .shutdownTimedOut(let sup, let child): log.append("\(sup): timed out \(child)")
        }
    }
}

let quietLogger: Logger = {
    var logger = Logger(label: "test")
    logger.logLevel = .critical
    return logger
}()
