import NIOCore

/// Where a device is connected, as the cluster's route table says.
public struct DeviceLocation: Sendable, Hashable {
    /// The owning node's id.
    public var nodeID: String
    /// Whether that node is this one.
    public var isLocal: Bool

    /// Creates a location.
    public init(nodeID: String, isLocal: Bool) {
        self.nodeID = nodeID
        self.isLocal = isLocal
    }
}

extension ClusterLink {
    /// A link routes connections unless it says otherwise.
    public var routesConnections: Bool { true }
}

/// What a node does about devices that are not connected to it: the route table and the
/// relay links (the `Cluster` target). A lone node uses `LoneNode`, which does nothing.
///
/// Nothing here is needed for durability: a message is in the store before any of these
/// calls, so a lost route write or relay frame delays a delivery until the device's next
/// read of the store; it never loses the message.
public protocol ClusterLink: Sendable {
    /// A device finished HELLO on this node as connection `session`. Returns once the route
    /// table names this connection (or the write failed and will be retried): the
    /// connection makes its first read of the store only then, so that every message
    /// stored after that read is routed here.
    func connected(clientID: String, session: UInt64) async

    /// Whether `connected` has anything to do (a route table to write). When false, a
    /// connection makes its first read at once, without a task to await `connected`.
    var routesConnections: Bool { get }

    /// The connection `session` of the device ended. Removes the route only if it still
    /// names this connection.
    func disconnected(clientID: String, session: UInt64)

    /// Messages just stored for devices that are not connected to this node: hand each to
    /// the node that holds its device, if any. Never blocks the caller.
    func forward(_ messages: [StoredMessage])

    /// A broadcast this node accepted and already sent to its own devices: send it to
    /// every other live node's devices.
    func broadcast(messageID: String, payload: ByteBuffer)

    /// The node holding `clientID`, if any live node does.
    func locate(_ clientID: String) async throws(StoreError) -> DeviceLocation?

    /// Closes `clientID`'s connection on whichever node holds it. Returns whether one did.
    func disconnect(_ clientID: String) async throws(StoreError) -> Bool
}

/// A node without peers: nothing to route, nothing to relay.
public struct LoneNode: ClusterLink {
    /// Creates the no-op link.
    public init() {}
    public func connected(clientID: String, session: UInt64) async {}
    public var routesConnections: Bool { false }
    public func disconnected(clientID: String, session: UInt64) {}
    public func forward(_ messages: [StoredMessage]) {}
    public func broadcast(messageID: String, payload: ByteBuffer) {}
    public func locate(_ clientID: String) async throws(StoreError) -> DeviceLocation? { nil }
    public func disconnect(_ clientID: String) async throws(StoreError) -> Bool { false }
}
