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
    func run(_ service: any Service) async -> ExitReason {
        enum Outcome: Sendable { case returned, threw(any Error) }
        let manager = shutdownManager
        let killSignal = killSignal
        let outcome: Outcome = await withTaskGroup(of: Outcome?.self) { group in
            group.addTask {
                do {
                    try await TaskLocals.$gracefulShutdownManager.withValue(manager) { try await service.run() }
                    return .returned
                } catch {
                    return .threw(error)
                }
            }
            group.addTask {
                // Ends when killed, or when cancelled because the service already ended.
                for await _ in killSignal {}
                return nil
            }
            var outcome: Outcome?
            while let next = await group.next() {
                if let next { outcome = next }
                group.cancelAll()
            }
            return outcome ?? .returned
        }
        let reason: ExitReason = state.withLock { state in
            if state.stopRequested { return .shutdown }
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
