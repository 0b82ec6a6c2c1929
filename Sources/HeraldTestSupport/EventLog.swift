import Synchronization

/// An append-only log of strings that tests await instead of sleeping.
public final class EventLog: Sendable {
    private struct Waiter {
        var predicate: @Sendable ([String]) -> Bool
        var continuation: CheckedContinuation<Void, Never>
    }
    private struct State {
        var entries: [String] = []
        var waiters: [UInt64: Waiter] = [:]
        var nextID: UInt64 = 0
    }
    private let state = Mutex(State())

    public init() {}

    public var entries: [String] { state.withLock { $0.entries } }

    public func append(_ entry: String) {
        let ready = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.entries.append(entry)
            let entries = state.entries
            let ids = state.waiters.filter { $0.value.predicate(entries) }.keys
            return ids.compactMap { state.waiters.removeValue(forKey: $0)?.continuation }
        }
        ready.forEach { $0.resume() }
    }

    public func count(of entry: String) -> Int { entries.filter { $0 == entry }.count }

    /// Waits until the log satisfies `predicate`, failing with `TimedOut` after `timeout`.
    public func wait(
        for what: String, timeout: Duration = .seconds(10), _ predicate: @escaping @Sendable ([String]) -> Bool
    ) async throws {
        let id = state.withLock { state -> UInt64 in
            defer { state.nextID += 1 }
            return state.nextID
        }
        try await withTimeout(what, timeout) {
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let ready = self.state.withLock { state -> Bool in
                        if predicate(state.entries) || Task.isCancelled { return true }
                        state.waiters[id] = Waiter(predicate: predicate, continuation: continuation)
                        return false
                    }
                    if ready { continuation.resume() }
                }
            } onCancel: {
                self.state.withLock { $0.waiters.removeValue(forKey: id) }?.continuation.resume()
            }
        }
        if !predicate(entries) { throw TimedOut(what: "\(what); log: \(entries)") }
    }

    /// Waits until `entry` has been appended at least `times` times.
    public func wait(until entry: String, times: Int = 1, timeout: Duration = .seconds(10)) async throws {
        try await wait(for: "\(times)x \(entry)", timeout: timeout) { $0.filter { $0 == entry }.count >= times }
    }
}
