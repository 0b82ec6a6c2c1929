import Synchronization

/// The events of one connection, queued until read. Unlike an `AsyncStream`, a reader that
/// gives up (its task is cancelled) loses nothing: the next read gets the next event.
final class EventQueue: Sendable {
    private struct State {
        var events: [DeviceEvent] = []
        var head = 0
        var finished = false
        var waiter: (id: UInt64, continuation: CheckedContinuation<DeviceEvent?, Never>)?
        var nextID: UInt64 = 0
    }
    private let state = Mutex(State())

    func append(_ event: DeviceEvent) {
        let waiter = state.withLock { state -> CheckedContinuation<DeviceEvent?, Never>? in
            guard !state.finished else { return nil }
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter.continuation
            }
            state.events.append(event)
            return nil
        }
        waiter?.resume(returning: event)
    }

    func finish() {
        let waiter = state.withLock { state -> CheckedContinuation<DeviceEvent?, Never>? in
            state.finished = true
            defer { state.waiter = nil }
            return state.waiter?.continuation
        }
        waiter?.resume(returning: nil)
    }

    /// The next event, or nil when the connection is over and every event was read, or when
    /// the calling task is cancelled (then nothing is consumed). One reader at a time.
    func next() async -> DeviceEvent? {
        let id = state.withLock { state -> UInt64 in
            defer { state.nextID += 1 }
            return state.nextID
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<DeviceEvent?, Never>) in
                let ready = state.withLock { state -> (DeviceEvent?, Bool) in
                    if state.head < state.events.count {
                        defer {
                            state.head += 1
                            if state.head > 64, state.head * 2 > state.events.count {
                                state.events.removeFirst(state.head)
                                state.head = 0
                            }
                        }
                        return (state.events[state.head], true)
                    }
                    if state.finished || Task.isCancelled { return (nil, true) }
                    precondition(state.waiter == nil, "one reader at a time")
                    state.waiter = (id, continuation)
                    return (nil, false)
                }
                if ready.1 { continuation.resume(returning: ready.0) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<DeviceEvent?, Never>? in
                guard let waiter = state.waiter, waiter.id == id else { return nil }
                state.waiter = nil
                return waiter.continuation
            }
            waiter?.resume(returning: nil)
        }
    }
}
