/// The settings of a node's cluster membership, route table and relay links
/// (Docs/cluster.md explains each figure).
public struct ClusterConfiguration: Sendable {
    /// This node's id (`HERALD_NODE_ID`), unique in the cluster.
    public var nodeID: String
    /// Random per process start: tells a restarted node from its previous life, whose
    /// routes and relay links are stale.
    public var incarnation: UInt64
    /// The relay links' shared token (HMAC of the cluster secret); empty: links are not
    /// authenticated.
    public var token: String
    /// A node is live while its lease runs; it renews it every `refreshInterval`.
    public var lease: Duration = .seconds(10)
    /// How often the lease is renewed and the member list read.
    public var refreshInterval: Duration = .seconds(2)
    /// How long a route lives in Redis unless refreshed.
    public var routeTTL: Duration = .seconds(3600)
    /// Every connection's route is rewritten once per this period, spread evenly over it.
    public var routeRefreshPeriod: Duration = .seconds(1800)
    /// A relay link sends PING this often when idle, and is given up after three missed PONGs.
    public var relayPingInterval: Duration = .seconds(5)
    /// The largest relay frame (a DELIVER of the largest payload, and then some).
    public var relayMaxFrame: Int
    /// Client ids whose relayed messages a down link remembers, to nudge them when it heals;
    /// past this, the peer is asked to re-read every device's queue.
    public var maxMissed: Int = 100_000
    /// Every Redis key starts with this.
    public var prefix: String = "herald"

    /// Creates the settings; the rest have their defaults.
    public init(nodeID: String, incarnation: UInt64, token: String, relayMaxFrame: Int) {
        self.nodeID = nodeID
        self.incarnation = incarnation
        self.token = token
        self.relayMaxFrame = relayMaxFrame
    }
}
