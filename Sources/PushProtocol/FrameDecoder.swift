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
        guard let (typeByte, frameBody) = try buffer.readFrameBody(maxFrame: maxFrame) else { return nil }
        var body = frameBody
        guard let type = FrameType(rawValue: typeByte) else {
            throw FrameError(.badRequest, "unknown frame type \(typeByte)")
        }
        return try Self.decodeBody(type, &body)
    }

    private static func decodeBody(_ type: FrameType, _ body: inout ByteBuffer) throws(FrameError) -> Frame {
        let frame: Frame
        switch type {
        case .hello:
            let version = try body.readFrameInteger(as: UInt8.self, "HELLO")
            let clientID = try body.readFrameString("HELLO client_id")
            let token = try body.readFrameString("HELLO token")
            let heartbeat = try body.readFrameInteger(as: UInt16.self, "HELLO")
            frame = .hello(Hello(version: version, clientID: clientID, token: token, heartbeatSeconds: heartbeat))
        case .welcome:
            let heartbeat = try body.readFrameInteger(as: UInt16.self, "WELCOME")
            frame = .welcome(heartbeatSeconds: heartbeat, nodeID: try body.readFrameString("WELCOME node_id"))
        case .ping:
            frame = .ping
        case .pong:
            frame = .pong
        case .push:
            let id = try body.readFrameString("PUSH msg_id")
            let payload = body.readSlice(length: body.readableBytes)!
            return .push(messageID: id, payload: payload)
        case .ack:
            frame = .ack(messageID: try body.readFrameString("ACK msg_id"))
        case .error:
            let code = try body.readFrameInteger(as: UInt16.self, "ERROR")
            frame = .error(code: code, reason: try body.readFrameString("ERROR reason"))
        case .goaway:
            let after = try body.readFrameInteger(as: UInt32.self, "GOAWAY")
            frame = .goaway(reconnectAfterMilliseconds: after, reason: try body.readFrameString("GOAWAY reason"))
        }
        guard body.readableBytes == 0 else {
            throw FrameError(.badRequest, "\(body.readableBytes) trailing bytes in \(type)")
        }
        return frame
    }
}

extension ByteBuffer {
    /// Takes one `u32 length, u8 type, body` frame off the front: its type byte and body, or nil
    /// while incomplete. A length of 0 is a 400, one above `maxFrame` a 413 (as soon as the
    /// four length bytes are there).
    mutating func readFrameBody(maxFrame: Int) throws(FrameError) -> (type: UInt8, body: ByteBuffer)? {
        guard let length = getInteger(at: readerIndex, as: UInt32.self) else { return nil }
        guard length >= 1 else { throw FrameError(.badRequest, "frame length 0") }
        guard length <= maxFrame else { throw FrameError(.frameTooLarge, "frame length \(length) above \(maxFrame)") }
        guard readableBytes >= 4 + Int(length) else { return nil }
        moveReaderIndex(forwardBy: 4)
        var body = readSlice(length: Int(length))!
        return (body.readInteger(as: UInt8.self)!, body)
    }

    /// Reads a big-endian integer of a frame body; a missing one is a truncated frame (400).
    mutating func readFrameInteger<T: FixedWidthInteger>(as: T.Type, _ what: String) throws(FrameError) -> T {
        guard let value = readInteger(as: T.self) else { throw FrameError(.badRequest, "truncated \(what)") }
        return value
    }

    /// Reads a protocol `str` (u16 length, UTF-8); truncated or invalid UTF-8 is a 400.
    mutating func readFrameString(_ what: String) throws(FrameError) -> String {
        guard let length = readInteger(as: UInt16.self), let bytes = readSlice(length: Int(length)) else {
            throw FrameError(.badRequest, "truncated \(what)")
        }
        guard let string = bytes.withUnsafeReadableBytes({ String(validating: $0, as: UTF8.self) }) else {
            throw FrameError(.badRequest, "\(what) is not UTF-8")
        }
        return string
    }
}
