import Actors
import Synchronization

/// Every open device connection of this node, registered or not, for GOAWAY and the drain.
///
/// Owned by the node rather than by the listener, so that a restarted listener still drains
/// the connections its predecessor accepted.
final class ConnectionTracker: Sendable {
    private struct State {
        var connections: [ObjectIdentifier: Connection] = [:]
        var emptyWaiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())

    func add(_ connection: Connection) {
        state.withLock { $0.connections[ObjectIdentifier(connection)] = connection }
    }

    func remove(_ connection: Connection) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.connections[ObjectIdentifier(connection)] = nil
            guard state.connections.isEmpty else { return [] }
            defer { state.emptyWaiters.removeAll() }
            return state.emptyWaiters
        }
        waiters.forEach { $0.resume() }
    }

    var all: [Connection] { state.withLock { Array($0.connections.values) } }
    var count: Int { state.withLock { $0.connections.count } }

    /// Returns once no connection is open (or at once if none is). Not cancellable by itself:
    /// callers race it against the drain timeout and then close what is left, which ends it.
    func waitUntilEmpty() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let empty = state.withLock { state -> Bool in
                if state.connections.isEmpty { return true }
                state.emptyWaiters.append(continuation)
                return false
            }
            if empty { continuation.resume() }
        }
    }
}
