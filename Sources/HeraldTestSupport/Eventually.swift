import NIOCore

/// Thrown when a bounded wait runs out.
public struct TimedOut: Error, CustomStringConvertible {
    public let what: String
    public var description: String { "timed out waiting for \(what)" }
}

/// Polls `condition` until it holds or `timeout` passes. For conditions that have no event
/// to await (a process's exit seen through the file system, a counter in another process);
/// each poll yields for a few milliseconds, bounded by the timeout.
public func eventually(
    _ what: String = "condition",
    timeout: Duration = .seconds(10),
    poll: Duration = .milliseconds(10),
    _ condition: () async throws -> Bool
) async throws {
    let clock = ContinuousClock()
    let deadline = clock.now.advanced(by: timeout)
    while true {
        if try await condition() { return }
        if clock.now >= deadline { throw TimedOut(what: what) }
        try await Task.sleep(for: poll)
    }
}

/// Runs `operation`, failing with `TimedOut` if it has not finished within `timeout`.
public func withTimeout<T: Sendable>(
    _ what: String = "operation",
    _ timeout: Duration = .seconds(10),
    _ operation: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await operation() }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        defer { group.cancelAll() }
        guard let result = try await group.next(), let value = result else { throw TimedOut(what: what) }
        return value
    }
}
