@_spi(TestKit) import ServiceLifecycle
import Synchronization

/// One run of one child: its own graceful-shutdown trigger, its kill switch and its exit.
///
/// Each child gets a graceful-shutdown manager of its own, exactly as `ServiceGroup` gives
/// each of its services one, so the supervisor can shut children down one at a time in
/// reverse order instead of all at once. swift-service-lifecycle exposes that manager as
/// `@_spi(TestKit)` (its TestKit product wraps the same thing as `testGracefulShutdown`);
/// this file is the only place that uses it.
final class ChildHandle: Sendable {
    private enum Outcome: Sendable { case returned, threw(any Error) }

    private struct State {
        var stopRequested = false
        var killed = false
        var exit: ExitReason?
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter: UInt64 = 0
    }

    let id: String
    let generation: UInt64
    private let shutdownManager = GracefulShutdownManager()
    private let killSignal: AsyncStream<Void>
    private let killContinuation: AsyncStream<Void>.Continuation
    private let state = Mutex(State())

    init(id: String, generation: UInt64) {
        self.id = id
        self.generation = generation
        (killSignal, killContinuation) = AsyncStream.makeStream(of: Void.self)
    }

    /// Whether the child has exited, and how.
    var exitReason: ExitReason? { state.withLock { $0.exit } }

    /// The supervisor asks the child to stop: graceful shutdown, which ends as `.shutdown`.
    func requestStop() {
        state.withLock { $0.stopRequested = true }
        shutdownManager.shutdownGracefully()
    }

    /// Cancels the child's task. Without a prior `requestStop` the exit counts as a failure.
    func kill() {
        state.withLock { $0.killed = true }
        killContinuation.finish()
    }

    /// Runs the service until it returns, throws or is killed, then records why it ended.
    ///
    /// The service runs in a task of its own. Once it is killed (or this task is cancelled) that
    /// task is cancelled, and if it has still not ended when `grace` returns, it is abandoned:
    /// the child counts as exited, so the supervisor can restart it, and the old task goes on
    /// unwatched. A task that ignores cancellation cannot be ended in Swift, so this is as near
    /// as it gets to OTP's brutal kill; what the old task still holds (a port, say) makes the
    /// restart fail, and the restart intensity escalates that.
    func run(_ service: any Service, grace: @escaping @Sendable () async -> Void) async -> ExitReason {
        let manager = shutdownManager
        let work = Task {
            do {
                try await TaskLocals.$gracefulShutdownManager.withValue(manager) { try await service.run() }
                return Outcome.returned
            } catch {
                return Outcome.threw(error)
            }
        }
        let killSignal = killSignal
        let killContinuation = killContinuation
        let ended = OneShot<Outcome?>()
        let outcome: Outcome? = await withTaskCancellationHandler {
            await ended.wait { finish in
                let watcher = Task {
                    // Ends when killed, when cancelled, or when the service ended (below).
                    for await _ in killSignal {}
                    guard !ended.isDone else { return }
                    work.cancel()
                    await grace()
                    finish(nil)
                }
                Task {
                    finish(await work.value)
                    watcher.cancel()
                    killContinuation.finish()
                }
            }
        } onCancel: {
            killContinuation.finish()
        }
        let reason: ExitReason = state.withLock { state in
            if state.stopRequested { return .shutdown }
            guard let outcome else { return .failure(ChildAbandoned(child: id)) }
            if state.killed { return .failure(ChildKilled(child: id)) }
            switch outcome {
            case .returned: return .normal
            case .threw(let error): return .failure(error)
            }
        }
        let waiters = state.withLock { state in
            state.exit = reason
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
        return reason
    }

    /// Waits until the child has exited. Returns early, without the child having exited,
    /// if the waiting task is cancelled.
    func waitForExit() async {
        let key: UInt64? = state.withLock { state in
            guard state.exit == nil else { return nil }
            defer { state.nextWaiter += 1 }
            return state.nextWaiter
        }
        guard let key else { return }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let resumeNow = state.withLock { state in
                    if state.exit != nil || Task.isCancelled { return true }
                    state.waiters[key] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: key) }?.resume()
        }
    }
}

/// A value delivered once, to one waiter, by whichever of several tasks gets there first.
private final class OneShot<Value: Sendable>: Sendable {
    private let state = Mutex<(continuation: CheckedContinuation<Value, Never>?, done: Bool)>((nil, false))

    var isDone: Bool { state.withLock { $0.done } }

    /// Suspends until one of the `finish` calls that `start` arranges delivers a value; later
    /// calls are ignored.
    func wait(_ start: (@escaping @Sendable (Value) -> Void) -> Void) async -> Value {
        await withCheckedContinuation { continuation in
            state.withLock { $0.continuation = continuation }
            start { value in
                let waiter = self.state.withLock { state -> CheckedContinuation<Value, Never>? in
                    guard !state.done else { return nil }
                    state.done = true
                    defer { state.continuation = nil }
                    return state.continuation
                }
                waiter?.resume(returning: value)
            }
        }
    }
}
