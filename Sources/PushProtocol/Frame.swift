import NIOCore

/// The frame type byte of protocol.md §1.
public enum FrameType: UInt8, Sendable, CaseIterable {
    case hello = 0x01
    case welcome = 0x02
    case ping = 0x03
    case pong = 0x04
    case push = 0x05
    case ack = 0x06
    case error = 0x07
    case goaway = 0x08
}

/// The body of a HELLO frame.
public struct Hello: Sendable, Hashable {
    /// Protocol version; only 1 exists.
    public var version: UInt8
    /// The device's id, as sent (validated by the server's session rules, not the codec).
    public var clientID: String
    /// A JWT, or anything when device authentication is off.
    public var token: String
    /// The requested heartbeat in seconds; 0 asks for the server's default.
    public var heartbeatSeconds: UInt16

    /// Creates a HELLO body.
    public init(version: UInt8 = 1, clientID: String, token: String = "", heartbeatSeconds: UInt16 = 0) {
        self.version = version
        self.clientID = clientID
        self.token = token
        self.heartbeatSeconds = heartbeatSeconds
    }
}

/// One frame of the device protocol (protocol.md §1), in either direction.
public enum Frame: Sendable, Hashable {
    /// C -> S: opens the session.
    case hello(Hello)
    /// S -> C: the session is open, with the heartbeat both sides use.
    case welcome(heartbeatSeconds: UInt16, nodeID: String)
    /// Both ways: are you there?
    case ping
    /// Both ways: yes.
    case pong
    /// S -> C: one message; the payload is every byte after the id.
    case push(messageID: String, payload: ByteBuffer)
    /// C -> S: the device has the message.
    case ack(messageID: String)
    /// S -> C: the last frame before the server closes.
    case error(code: UInt16, reason: String)
    /// S -> C: the server is draining; reconnect after the given delay.
    case goaway(reconnectAfterMilliseconds: UInt32, reason: String)

    /// The frame's type byte.
    public var type: FrameType {
        switch self {
        case .hello: .hello
        case .welcome: .welcome
        case .ping: .ping
        case .pong: .pong
        case .push: .push
        case .ack: .ack
        case .error: .error
        case .goaway: .goaway
        }
    }

    /// An ERROR frame for a wire error code.
    public static func error(_ code: ErrorCode, _ reason: String) -> Frame {
        .error(code: code.rawValue, reason: reason)
    }
}
