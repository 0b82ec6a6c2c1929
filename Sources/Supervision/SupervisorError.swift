/// Why a supervisor gave up. Thrown from `Supervisor.run()`, so its parent sees an abnormal exit.
public struct SupervisorError: Error, Hashable, CustomStringConvertible {
    private enum Code: Hashable {
        case intensityExceeded
        case startFailed
        case duplicateChild
        case unknownChild
        case notRunning
    }

    private let code: Code
    /// The supervisor that failed.
    public let supervisor: String
    /// The child involved.
    public let child: String
    /// The underlying error's description, where there is one.
    public let detail: String

    private init(_ code: Code, supervisor: String, child: String, detail: String = "") {
        self.code = code
        self.supervisor = supervisor
        self.child = child
        self.detail = detail
    }

    /// More restarts than the intensity allows: the supervisor stopped every child and exited.
    public static func intensityExceeded(supervisor: String, child: String) -> Self {
        Self(.intensityExceeded, supervisor: supervisor, child: child)
    }
    /// A child's `start` threw while the supervisor was starting its children.
    public static func startFailed(supervisor: String, child: String, error: any Error) -> Self {
        Self(.startFailed, supervisor: supervisor, child: child, detail: String(describing: error))
    }
    /// `startChild` named an id that is already in use.
    public static func duplicateChild(supervisor: String, child: String) -> Self {
        Self(.duplicateChild, supervisor: supervisor, child: child)
    }
    /// An operation named a child the supervisor does not have.
    public static func unknownChild(supervisor: String, child: String) -> Self {
        Self(.unknownChild, supervisor: supervisor, child: child)
    }
    /// An operation needs a running supervisor.
    public static func notRunning(supervisor: String) -> Self {
        Self(.notRunning, supervisor: supervisor, child: "")
    }

    /// Compares by kind, ignoring names and detail: `error ~= .intensityExceeded`.
    public func isSameKind(as other: Self) -> Bool { code == other.code }

    public var description: String {
        switch code {
        case .intensityExceeded: "supervisor \(supervisor): restart intensity exceeded (last child: \(child))"
        case .startFailed: "supervisor \(supervisor): child \(child) failed to start: \(detail)"
        case .duplicateChild: "supervisor \(supervisor): child \(child) already exists"
        case .unknownChild: "supervisor \(supervisor): no child \(child)"
        case .notRunning: "supervisor \(supervisor) is not running"
        }
    }
}

/// The error a child ends with when it is killed from outside (fault injection).
public struct ChildKilled: Error, Hashable, CustomStringConvertible {
    /// The killed child's id.
    public let child: String
    public var description: String { "child \(child) was killed" }
}

/// Why a child counts as exited when it was killed and had still not ended its shutdown timeout
/// later: its task ignored cancellation and was left behind.
public struct ChildAbandoned: Error, Hashable, CustomStringConvertible {
    /// The abandoned child's id.
    public let child: String
    public var description: String { "child \(child) ignored cancellation and was abandoned" }
}
