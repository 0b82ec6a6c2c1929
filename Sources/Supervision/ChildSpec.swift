import ServiceLifecycle

/// When a supervisor restarts a child that has exited (OTP's `restart` field).
public enum RestartType: Sendable, Hashable {
    /// Always restarted, whatever the exit reason.
    case permanent
    /// Restarted only after an abnormal exit (a thrown error or an injected kill).
    case transient
    /// Never restarted; removed from the supervisor once it exits.
    case temporary
}

/// Which children a supervisor restarts when one of them must be restarted (OTP's strategies).
public enum RestartStrategy: Sendable, Hashable {
    /// Only the child that exited.
    case oneForOne
    /// Every child: the others are stopped in reverse start order, then all start again in order.
    case oneForAll
    /// The child that exited and every child started after it.
    case restForOne
}

/// How a child ended.
public enum ExitReason: Sendable, CustomStringConvertible {
    /// `run()` returned without being asked to stop.
    case normal
    /// The supervisor stopped it (restart of a sibling, or shutdown of the supervisor).
    case shutdown
    /// `run()` threw, or the child was killed from outside (fault injection).
    case failure(any Error)

    /// Whether OTP would call this exit abnormal: only abnormal exits restart a transient child.
    public var isAbnormal: Bool {
        if case .failure = self { return true }
        return false
    }

    public var description: String {
        switch self {
        case .normal: "normal"
        case .shutdown: "shutdown"
        case .failure(let error): "failure(\(error))"
        }
    }
}

/// The recipe a supervisor uses to start, and to start again, one child.
///
/// A restart always calls `start` again: the new child is a fresh value built from the
/// spec, never a reference kept from the previous run.
public struct ChildSpec: Sendable {
    /// The child's name, unique within its supervisor. Logged as `sup.child`.
    public var id: String
    /// When the child is restarted.
    public var restart: RestartType
    /// How long the child has to return from `run()` after its graceful shutdown is triggered,
    /// before it is cancelled (OTP's `shutdown` timeout, with cancellation as `brutal_kill`).
    public var shutdownTimeout: Duration
    /// Builds and initialises the child. The supervisor awaits it before starting the next
    /// child, so work done here (binding a socket, loading state) is finished before a later
    /// sibling starts, like OTP's synchronous `start_link`. Throwing here is a start failure.
    public var start: @Sendable () async throws -> any Service

    /// Creates a child spec.
    public init(
        id: String,
        restart: RestartType = .permanent,
        shutdownTimeout: Duration = .seconds(5),
        start: @escaping @Sendable () async throws -> any Service
    ) {
        self.id = id
        self.restart = restart
        self.shutdownTimeout = shutdownTimeout
        self.start = start
    }

    /// A child spec for a service that is built once and needs no initialisation step.
    /// Only use this for services whose `run()` may be called again after it ended.
    public static func service(
        id: String,
        restart: RestartType = .permanent,
        shutdownTimeout: Duration = .seconds(5),
        _ make: @escaping @Sendable () -> any Service
    ) -> ChildSpec {
        ChildSpec(id: id, restart: restart, shutdownTimeout: shutdownTimeout, start: { make() })
    }
}

/// OTP's restart intensity: more than `maxRestarts` restarts within `period` (a sliding
/// window) ends the supervisor, which then fails towards its own parent.
public struct RestartIntensity: Sendable, Hashable {
    /// Restarts allowed within `period`.
    public var maxRestarts: Int
    /// The sliding window.
    public var period: Duration

    /// Creates an intensity. OTP's default is 1 restart in 5 seconds.
    public init(maxRestarts: Int = 1, period: Duration = .seconds(5)) {
        precondition(maxRestarts >= 0 && period > .zero)
        self.maxRestarts = maxRestarts
        self.period = period
    }
}
