import Actors

/// One entry of the route table: the connection a device has, named by its node, the
/// node's incarnation and the connection's session number.
public struct Route: Sendable, Hashable, CustomStringConvertible {
    /// The node holding the connection.
    public var nodeID: String
    /// That node's process (random per start).
    public var incarnation: UInt64
    /// The connection's number within that process.
    public var session: UInt64

    /// Creates a route.
    public init(nodeID: String, incarnation: UInt64, session: UInt64) {
        self.nodeID = nodeID
        self.incarnation = incarnation
        self.session = session
    }

    /// Parses the stored form, `"<node_id> <incarnation hex> <session>"`.
    public init?(_ text: String) {
        let parts = text.split(separator: " ")
        guard parts.count == 3, let incarnation = UInt64(parts[1], radix: 16), let session = UInt64(parts[2]) else { return nil }
        self.init(nodeID: String(parts[0]), incarnation: incarnation, session: session)
    }

    /// The stored form.
    public var description: String { "\(nodeID) \(String(incarnation, radix: 16)) \(session)" }
}

/// What `RouteTable.refresh` found for one route.
public enum RouteRefreshOutcome: Sendable, Hashable {
    /// Still this connection's: its lifetime extended.
    case extended
    /// Missing (the table lost it, or the first write failed): written back.
    case restored
    /// Another connection's: left alone.
    case another
}

/// The route table's role: which connection holds each device, each entry living for a TTL
/// that the owning node keeps extending (Docs/cluster.md). Every driver passes the same
/// conformance suite (Tests/ClusterUnitTests/ClusterStoreConformanceTests.swift). An error
/// throws: it is never read as "no route".
public protocol RouteTable: Sendable {
    /// Makes the table name `route` for `clientID`; returns the route it replaced.
    func claim(_ clientID: String, _ route: Route) async throws(StoreError) -> Route?

    /// Removes `clientID`'s route if it is still `route` (a newer connection keeps its own).
    func release(_ clientID: String, _ route: Route) async throws(StoreError)

    /// Extends the lifetime of each route that still names its connection, and writes back one
    /// that is missing; another connection's route is left alone. Outcomes in order.
    func refresh(_ entries: [(clientID: String, route: Route)]) async throws(StoreError) -> [RouteRefreshOutcome]

    /// The routes of `clientIDs`, in order (nil where there is none).
    func lookup(_ clientIDs: [String]) async throws(StoreError) -> [Route?]
}
