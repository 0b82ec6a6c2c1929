import NIOCore

/// The frames of the relay link between two Herald nodes (Docs/cluster.md).
///
/// Same framing as the device protocol (`u32 length`, `u8 type`, body), other type codes
/// (0x41...), and one direction of traffic per link: the node that dialled sends, the node
/// that accepted answers only PONG. Nothing on a relay link is needed for durability: every
/// message it carries is already in the store.
public enum RelayFrame: Sendable, Hashable {
    /// First frame of a link: the sender's node id, its incarnation (random per process
    /// start) and the cluster token (HMAC of the cluster secret), compared in constant time.
    case hello(version: UInt8, nodeID: String, incarnation: UInt64, token: String)
    /// A message stored for a device that the receiving node holds (by the route table).
    case deliver(RelayedMessage)
    /// The store may hold messages for this device that were not relayed: read them.
    case nudge(clientID: String)
    /// Like `nudge` for every device of the receiving node (after too many missed ones).
    case resync
    /// A broadcast to the receiving node's own devices (never relayed further).
    case broadcast(messageID: String, payload: ByteBuffer)
    /// Close the device's connection if it is the one named by `route` (empty: any).
    /// `replaced` true: ERROR 409 (a takeover); false: a plain close (the API's kick).
    case kick(clientID: String, route: String, replaced: Bool)
    /// Liveness probe from the dialling side; answered by `pong`.
    case ping
    /// The answer to `ping`.
    case pong

    /// The wire type codes.
    public enum Kind: UInt8, Sendable {
        case hello = 0x41
        case deliver = 0x42
        case nudge = 0x43
        case resync = 0x44
        case broadcast = 0x45
        case kick = 0x46
        case ping = 0x47
        case pong = 0x48
    }
}

/// One stored message as a relay DELIVER carries it.
public struct RelayedMessage: Sendable, Hashable {
    /// The device.
    public var clientID: String
    /// The message id.
    public var messageID: String
    /// The store's sequence number for the device.
    public var sequence: UInt64
    /// When it expires (ms since the epoch).
    public var expiresAtMillis: Int64
    /// The payload.
    public var payload: ByteBuffer

    /// Creates a relayed message.
    public init(clientID: String, messageID: String, sequence: UInt64, expiresAtMillis: Int64, payload: ByteBuffer) {
        self.clientID = clientID
        self.messageID = messageID
        self.sequence = sequence
        self.expiresAtMillis = expiresAtMillis
        self.payload = payload
    }
}

/// A sans-IO decoder of relay frames, with the same limits and errors as `FrameDecoder`.
public struct RelayFrameDecoder: Sendable {
    /// The largest accepted `length` (type byte + body).
    public let maxFrame: Int

    /// Creates a decoder.
    public init(maxFrame: Int) {
        precondition(maxFrame >= 1)
        self.maxFrame = maxFrame
    }

    /// Takes the next complete frame off `buffer`, or returns nil when more bytes are needed.
    public func decode(_ buffer: inout ByteBuffer) throws(FrameError) -> RelayFrame? {
        guard let (typeByte, frameBody) = try buffer.readFrameBody(maxFrame: maxFrame) else { return nil }
        var body = frameBody
        guard let kind = RelayFrame.Kind(rawValue: typeByte) else {
            throw FrameError(.badRequest, "unknown relay frame type \(typeByte)")
        }
        let frame: RelayFrame
        switch kind {
        case .hello:
            let version = try body.readFrameInteger(as: UInt8.self, "RELAY_HELLO")
            let nodeID = try body.readFrameString("RELAY_HELLO node_id")
            let incarnation = try body.readFrameInteger(as: UInt64.self, "RELAY_HELLO")
            frame = .hello(version: version, nodeID: nodeID, incarnation: incarnation, token: try body.readFrameString("RELAY_HELLO token"))
        case .deliver:
            let clientID = try body.readFrameString("DELIVER client_id")
            let messageID = try body.readFrameString("DELIVER msg_id")
            let sequence = try body.readFrameInteger(as: UInt64.self, "DELIVER")
            let expires = try body.readFrameInteger(as: Int64.self, "DELIVER")
            let payload = body.readSlice(length: body.readableBytes)!
            return .deliver(
                RelayedMessage(clientID: clientID, messageID: messageID, sequence: sequence, expiresAtMillis: expires, payload: payload)
            )
        case .nudge:
            frame = .nudge(clientID: try body.readFrameString("NUDGE client_id"))
        case .resync:
            frame = .resync
        case .broadcast:
            let messageID = try body.readFrameString("BROADCAST msg_id")
            return .broadcast(messageID: messageID, payload: body.readSlice(length: body.readableBytes)!)
        case .kick:
            let clientID = try body.readFrameString("KICK client_id")
            let route = try body.readFrameString("KICK route")
            frame = .kick(clientID: clientID, route: route, replaced: try body.readFrameInteger(as: UInt8.self, "KICK") != 0)
        case .ping:
            frame = .ping
        case .pong:
            frame = .pong
        }
        guard body.readableBytes == 0 else {
            throw FrameError(.badRequest, "\(body.readableBytes) trailing bytes in relay frame \(kind)")
        }
        return frame
    }
}

extension ByteBuffer {
    /// Appends `frame` in the relay wire format.
    @discardableResult
    public mutating func writeRelayFrame(_ frame: RelayFrame) -> Int {
        let start = writerIndex
        writeInteger(UInt32(0))  // length, patched below
        switch frame {
        case .hello(let version, let nodeID, let incarnation, let token):
            writeInteger(RelayFrame.Kind.hello.rawValue)
            writeInteger(version)
            writeShortString(nodeID)
            writeInteger(incarnation)
            writeShortString(token)
        case .deliver(let message):
            writeInteger(RelayFrame.Kind.deliver.rawValue)
            writeShortString(message.clientID)
            writeShortString(message.messageID)
            writeInteger(message.sequence)
            writeInteger(message.expiresAtMillis)
            writeImmutableBuffer(message.payload)
        case .nudge(let clientID):
            writeInteger(RelayFrame.Kind.nudge.rawValue)
            writeShortString(clientID)
        case .resync:
            writeInteger(RelayFrame.Kind.resync.rawValue)
        case .broadcast(let messageID, let payload):
            writeInteger(RelayFrame.Kind.broadcast.rawValue)
            writeShortString(messageID)
            writeImmutableBuffer(payload)
        case .kick(let clientID, let route, let replaced):
            writeInteger(RelayFrame.Kind.kick.rawValue)
            writeShortString(clientID)
            writeShortString(route)
            writeInteger(UInt8(replaced ? 1 : 0))
        case .ping:
            writeInteger(RelayFrame.Kind.ping.rawValue)
        case .pong:
            writeInteger(RelayFrame.Kind.pong.rawValue)
        }
        setInteger(UInt32(writerIndex - start - 4), at: start)
        return writerIndex - start
    }
}
