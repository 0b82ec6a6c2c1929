/// A point-in-time view of one part of the tree and whether it is healthy.
///
/// A supervisor is healthy while it runs, every permanent child of it is running, no child
/// is past its shutdown timeout, and every running child that reports health is healthy.
public struct HealthReport: Sendable, Hashable, Codable {
    /// The part's name (a supervisor's or a child's id).
    public var name: String
    /// Whether this part, and everything below it, is healthy.
    public var healthy: Bool
    /// A short word for the state: `running`, `restarting`, `stopped`, `failed`, ...
    public var state: String
    /// Restarts of this child since its supervisor started.
    public var restarts: Int
    /// The parts below this one.
    public var children: [HealthReport]

    /// Creates a report.
    public init(name: String, healthy: Bool, state: String, restarts: Int = 0, children: [HealthReport] = []) {
        self.name = name
        self.healthy = healthy
        self.state = state
        self.restarts = restarts
        self.children = children
    }

    /// The first unhealthy leaf, as a path (`root/api`), or nil when all is well.
    public var firstProblem: String? {
        guard !healthy else { return nil }
        for child in children {
            if let problem = child.firstProblem { return "\(name)/\(problem)" }
        }
        return "\(name) (\(state))"
    }
}

/// A child that can say how it is: supervisors do, and so may any service with something
/// to check (an event loop answering, a store reachable).
public protocol HealthReporting: Sendable {
    /// The current health of this part and what is below it. Must answer promptly; a part
    /// that cannot tell should report itself unhealthy rather than wait.
    func healthReport() async -> HealthReport
}

/// What a supervisor tells its observer (logging is separate; this feeds metrics and tests).
public enum SupervisorEvent: Sendable {
    /// A child started (`restart` is false for the first start).
    case started(supervisor: String, child: String, restart: Bool)
    /// A child exited.
    case exited(supervisor: String, child: String, reason: ExitReason)
    /// The supervisor exceeded its restart intensity and is giving up.
    case intensityExceeded(supervisor: String, child: String)
    /// A child did not stop within its shutdown timeout and was cancelled.
    case shutdownTimedOut(supervisor: String, child: String)
}
