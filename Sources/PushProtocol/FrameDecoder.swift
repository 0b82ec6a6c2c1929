import NIOCore

/// A sans-IO decoder of device-protocol frames.
///
/// Feed it the bytes received so far; it takes whole frames off the front. It rejects a
/// length above `maxFrame` as soon as the 4 length bytes are there (ERROR 413), so the
/// caller never buffers more than one frame of `maxFrame` bytes plus one read.
public struct FrameDecoder: Sendable {
    /// The largest accepted `length` (type byte + body).
    public let maxFrame: Int

    /// Creates a decoder.
    public init(maxFrame: Int = 65536) {
        precondition(maxFrame >= 1)
        self.maxFrame = maxFrame
    }

    /// Takes the next complete frame off `buffer`, or returns nil when more bytes are needed.
    /// Throws `FrameError` (400 or 413) for input no later bytes could fix.
    public func decode(_ buffer: inout ByteBuffer) throws(FrameError) -> Frame? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        guard length >= 1 else { throw FrameError(.badRequest, "frame length 0") }
        guard length <= maxFrame else { throw FrameError(.frameTooLarge, "frame length \(length) above \(maxFrame)") }
        guard buffer.readableBytes >= 4 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        var body = buffer.readSlice(length: Int(length))!
        let typeByte = body.readInteger(as: UInt8.self)!
        guard let type = FrameType(rawValue: typeByte) else {
            throw FrameError(.badRequest, "unknown frame type \(typeByte)")
        }
        return try Self.decodeBody(type, &body)
    }

    private static func decodeBody(_ type: FrameType, _ body: inout ByteBuffer) throws(FrameError) -> Frame {
        let frame: Frame
        switch type {
        case .hello:
            let version = try readInteger(&body, as: UInt8.self, "HELLO")
            let clientID = try readString(&body, "HELLO client_id")
            let token = try readString(&body, "HELLO token")
            let heartbeat = try readInteger(&body, as: UInt16.self, "HELLO")
            frame = .hello(Hello(version: version, clientID: clientID, token: token, heartbeatSeconds: heartbeat))
        case .welcome:
            let heartbeat = try readInteger(&body, as: UInt16.self, "WELCOME")
            frame = .welcome(heartbeatSeconds: heartbeat, nodeID: try readString(&body, "WELCOME node_id"))
        case .ping:
            frame = .ping
        case .pong:
            frame = .pong
        case .push:
            let id = try readString(&body, "PUSH msg_id")
            let payload = body.readSlice(length: body.readableBytes)!
            return .push(messageID: id, payload: payload)
        case .ack:
            frame = .ack(messageID: try readString(&body, "ACK msg_id"))
        case .error:
            let code = try readInteger(&body, as: UInt16.self, "ERROR")
            frame = .error(code: code, reason: try readString(&body, "ERROR reason"))
        case .goaway:
            let after = try readInteger(&body, as: UInt32.self, "GOAWAY")
            frame = .goaway(reconnectAfterMilliseconds: after, reason: try readString(&body, "GOAWAY reason"))
        }
        guard body.readableBytes == 0 else {
            throw FrameError(.badRequest, "\(body.readableBytes) trailing bytes in \(type)")
        }
        return frame
    }

    private static func readInteger<T: FixedWidthInteger>(_ body: inout ByteBuffer, as: T.Type, _ what: String) throws(FrameError) -> T {
        guard let value = body.readInteger(as: T.self) else { throw FrameError(.badRequest, "truncated \(what)") }
        return value
    }

    private static func readString(_ body: inout ByteBuffer, _ what: String) throws(FrameError) -> String {
        guard let length = body.readInteger(as: UInt16.self), let bytes = body.readSlice(length: Int(length)) else {
            throw FrameError(.badRequest, "truncated \(what)")
        }
        guard let string = bytes.withUnsafeReadableBytes({ String(validating: $0, as: UTF8.self) }) else {
            throw FrameError(.badRequest, "\(what) is not UTF-8")
        }
        return string
    }
}
