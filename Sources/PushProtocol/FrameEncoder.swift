import NIOCore

extension ByteBuffer {
    /// Appends `frame` in the wire format of protocol.md §1. Strings longer than 65535
    /// bytes cannot be encoded and are cut at a character boundary (the server never sends
    /// such strings: ids and reasons are short).
    @discardableResult
    public mutating func writeFrame(_ frame: Frame) -> Int {
        let start = writerIndex
        writeInteger(UInt32(0))  // length, patched below
        writeInteger(frame.type.rawValue)
        switch frame {
        case .hello(let hello):
            writeInteger(hello.version)
            writeShortString(hello.clientID)
            writeShortString(hello.token)
            writeInteger(hello.heartbeatSeconds)
        case .welcome(let heartbeat, let nodeID):
            writeInteger(heartbeat)
            writeShortString(nodeID)
        case .ping, .pong:
            break
        case .push(let id, let payload):
            writeShortString(id)
            writeImmutableBuffer(payload)
        case .ack(let id):
            writeShortString(id)
        case .error(let code, let reason):
            writeInteger(code)
            writeShortString(reason)
        case .goaway(let after, let reason):
            writeInteger(after)
            writeShortString(reason)
        }
        let length = writerIndex - start - 4
        setInteger(UInt32(length), at: start)
        return writerIndex - start
    }

    /// Appends a PUSH frame without building a `Frame` first (the delivery hot path).
    /// Message ids are at most 64 bytes (protocol.md), so the id's length always fits.
    @discardableResult
    public mutating func writePushFrame(messageID: String, payload: ByteBuffer) -> Int {
        let idLength = messageID.utf8.count
        precondition(idLength <= Identifiers.maxMessageIDLength, "message ids are at most 64 bytes")
        let length = 1 + 2 + idLength + payload.readableBytes
        writeInteger(UInt32(length))
        writeInteger(FrameType.push.rawValue)
        writeInteger(UInt16(idLength))
        writeString(messageID)
        writeImmutableBuffer(payload)
        return 4 + length
    }

    /// Appends a protocol `str`: a `u16` byte length and the UTF-8 bytes.
    public mutating func writeShortString(_ string: String) {
        var utf8 = Substring(string).utf8
        if utf8.count > Int(UInt16.max) {
            var end = utf8.index(utf8.startIndex, offsetBy: Int(UInt16.max))
            while end > utf8.startIndex && (utf8[end] & 0xC0) == 0x80 { end = utf8.index(before: end) }
            utf8 = utf8[..<end]
        }
        writeInteger(UInt16(utf8.count))
        writeBytes(utf8)
    }
}

extension Frame {
    /// The frame's wire bytes.
    public func encoded(allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 16)
        buffer.writeFrame(self)
        return buffer
    }
}
