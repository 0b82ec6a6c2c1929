import NIOCore
import Synchronization

/// Bounds the TLS handshakes a listener has in progress: at `limit` it stops accepting, and
/// once half of them are done it accepts again.
///
/// In a reconnect storm the CPU, not the network, decides how fast handshakes finish. A
/// listener that accepts every socket at once starts thousands of handshakes that share the
/// CPU; each then takes longer than the hello timeout, is closed after the work spent on it,
/// and its device comes back for another full handshake: the node is busy and nobody gets
/// in. With the gate, the sockets beyond the limit wait in the kernel's accept queue (the
/// listen backlog), where waiting costs nothing and the hello timeout has not started, and
/// the handshakes in progress finish at full speed.
public final class HandshakeGate: Sendable {
    /// The handshakes in progress at which the listener stops accepting.
    public let limit: Int
    private let inProgress = Atomic<Int>(0)
    private let listener = Mutex<(any Channel)?>(nil)
    private let pauses: @Sendable () -> Void

    /// A gate of `limit` handshakes (at least 2); `pauses` is called each time it closes.
    public init(limit: Int, pauses: @escaping @Sendable () -> Void = {}) {
        self.limit = max(limit, 2)
        self.pauses = pauses
    }

    /// The listening socket whose accepting the gate pauses; until then it only counts.
    public func attach(_ serverChannel: any Channel) {
        listener.withLock { $0 = serverChannel }
        reconcile()
    }

    /// The number of handshakes in progress.
    public var count: Int { inProgress.load(ordering: .relaxed) }

    /// A handshake began. Callable from any thread.
    public func enter() {
        let now = inProgress.wrappingAdd(1, ordering: .relaxed).newValue
        if now == limit { reconcile() }
    }

    /// A handshake ended: completed, failed, timed out or closed. Callable from any thread.
    public func leave() {
        let now = inProgress.wrappingSubtract(1, ordering: .relaxed).newValue
        if now == limit / 2 { reconcile() }
    }

    /// Sets the listener's accepting from the count as it is when this runs on the
    /// listener's loop. Called on each crossing of a threshold, so the last call sees the
    /// last crossing: calls arriving out of order cannot leave it paused below the limit.
    private func reconcile() {
        guard let channel = listener.withLock({ $0 }) else { return }
        channel.eventLoop.execute { [self] in
            let now = count
            guard let options = channel.syncOptions, let accepting = try? options.getOption(.autoRead) else { return }
            if accepting, now >= limit {
                try? options.setOption(.autoRead, value: false)
                pauses()
            } else if !accepting, now <= limit / 2 {
                try? options.setOption(.autoRead, value: true)
            }
        }
    }
}
