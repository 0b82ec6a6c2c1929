import Logging
import Synchronization

/// What every connection of a node shares: passed to each `Connection` as one reference.
public final class DeviceServices: Sendable {
    /// The session rules' settings.
    public let configuration: SessionConfiguration
    /// Where messages wait for their ACK.
    public let store: any PushStore
    /// `store`, when it answers at once (the in-memory store): called inline, with no task.
    public let synchronousStore: (any SynchronousPushStore)?
    /// `store`, when it keeps message status and does not answer at once (Redis): told of each
    /// send by a task, off the delivery's path.
    public let asynchronousReceipts: (any ReceiptStore)?
    /// Where `device.connected` and `device.disconnected` go; nil without a webhook.
    public let events: (any WebhookSink)?
    /// Client id -> connection.
    public let registry: ConnectionRegistry
    /// Checks HELLO tokens.
    public let authenticator: any DeviceAuthenticator
    /// The node's metrics.
    public let metrics: NodeMetrics
    /// The node's logger (`herald.node` set).
    public let logger: Logger
    /// The route table and relays (`LoneNode` without a cluster).
    public let cluster: any ClusterLink
    /// Failed authentications per remote address (ERROR 429 past its budget).
    public let authFailures: AuthFailureLimiter
    /// Each event loop's sweep for silent sessions.
    public let heartbeats: HeartbeatSweeps
    private let sessions = Atomic<UInt64>(0)

    /// Creates the shared services.
    public init(
        configuration: SessionConfiguration, store: any PushStore, registry: ConnectionRegistry,
        authenticator: any DeviceAuthenticator, metrics: NodeMetrics, logger: Logger, cluster: any ClusterLink = LoneNode(),
        authFailures: AuthFailureLimiter = AuthFailureLimiter(burst: 0), heartbeats: HeartbeatSweeps = HeartbeatSweeps(),
        events: (any WebhookSink)? = nil
    ) {
        self.events = events
        self.heartbeats = heartbeats
        self.cluster = cluster
        self.authFailures = authFailures
        self.configuration = configuration
        self.store = store
        self.synchronousStore = store as? any SynchronousPushStore
        let receipts = store as? any ReceiptStore
        self.asynchronousReceipts = synchronousStore == nil && receipts?.keepsReceipts == true ? receipts : nil
        self.registry = registry
        self.authenticator = authenticator
        self.metrics = metrics
        self.logger = logger
    }

    /// A number for a new connection, unique within this process (the route table tells
    /// connections of one device apart by it).
    func nextSession() -> UInt64 {
        sessions.add(1, ordering: .relaxed).newValue
    }
}
