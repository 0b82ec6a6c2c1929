import NIOCore

/// The session rules' knobs (protocol.md §1), shared by every connection of a node.
public struct SessionConfiguration: Sendable {
    /// This node's id, sent in WELCOME.
    public var nodeID: String
    /// The largest accepted frame length.
    public var maxFrame: Int
    /// At most this many unacknowledged PUSH frames per connection.
    public var window: Int
    /// How long a device has to send a complete HELLO.
    public var helloTimeout: TimeAmount
    /// The heartbeat used when a device asks for 0.
    public var defaultHeartbeatSeconds: UInt16
    /// The range a requested heartbeat is clamped into.
    public var heartbeatRange: ClosedRange<UInt16>
    /// How long a device may leave the server's write buffer above its high-water mark
    /// before it is closed.
    public var stallTimeout: TimeAmount
    /// How long after GOAWAY a device is told to wait before reconnecting.
    public var reconnectAfterMilliseconds: UInt32
    /// Open device sockets allowed on this node; beyond it a new one gets ERROR 429 (0: no limit).
    public var maxConnections: Int
    /// Frames other than ACK a device may send per second, sustained (bursts of twice as many
    /// are allowed); beyond it ERROR 429. ACKs are not limited: their rate is the delivery rate.
    public var maxFramesPerSecond: Int

    /// Creates a configuration with the protocol's defaults.
    public init(
        nodeID: String,
        maxFrame: Int = 65536,
        window: Int = 64,
        helloTimeout: TimeAmount = .seconds(10),
        defaultHeartbeatSeconds: UInt16 = 30,
        heartbeatRange: ClosedRange<UInt16> = 5...600,
        stallTimeout: TimeAmount = .seconds(60),
        reconnectAfterMilliseconds: UInt32 = 1000,
        maxConnections: Int = 0,
        maxFramesPerSecond: Int = 20
    ) {
        self.nodeID = nodeID
        self.maxFrame = maxFrame
        self.window = window
        self.helloTimeout = helloTimeout
        self.defaultHeartbeatSeconds = defaultHeartbeatSeconds
        self.heartbeatRange = heartbeatRange
        self.stallTimeout = stallTimeout
        self.reconnectAfterMilliseconds = reconnectAfterMilliseconds
        self.maxConnections = maxConnections
        self.maxFramesPerSecond = maxFramesPerSecond
    }

    /// The heartbeat a device gets for what it asked: 0 means the default; the rest is clamped.
    public func clampedHeartbeat(_ requested: UInt16) -> UInt16 {
        Self.clampedHeartbeat(requested, default: defaultHeartbeatSeconds, range: heartbeatRange)
    }

    /// The rule itself, for holders of the three values (`ConnectionStateMachine`).
    public static func clampedHeartbeat(_ requested: UInt16, default: UInt16, range: ClosedRange<UInt16>) -> UInt16 {
        min(max(requested == 0 ? `default` : requested, range.lowerBound), range.upperBound)
    }
}
