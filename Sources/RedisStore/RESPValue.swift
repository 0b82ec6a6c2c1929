import CHiredis
import NIOCore

/// A Redis reply, turned into a Swift value once, where hiredis parsed it.
public enum RESPValue: Sendable, Hashable {
    case simpleString(String)
    case error(String)
    case integer(Int64)
    case bulk(ByteBuffer)
    case null
    case array([RESPValue])

    /// Converts a hiredis reply tree. Only called from `RESPParser`, on the reply it owns.
    init(reply: UnsafePointer<redisReply>) {
        let value = reply.pointee
        switch value.type {
        case REDIS_REPLY_STRING:
            self = .bulk(ByteBuffer(bytes: UnsafeRawBufferPointer(start: value.str, count: value.len)))
        case REDIS_REPLY_STATUS:
            self = .simpleString(String(decoding: UnsafeRawBufferPointer(start: value.str, count: value.len), as: UTF8.self))
        case REDIS_REPLY_ERROR:
            self = .error(String(decoding: UnsafeRawBufferPointer(start: value.str, count: value.len), as: UTF8.self))
        case REDIS_REPLY_INTEGER:
            self = .integer(Int64(value.integer))
        case REDIS_REPLY_ARRAY:
            self = .array((0..<value.elements).map { RESPValue(reply: UnsafePointer(value.element[$0]!)) })
        default:
            self = .null
        }
    }

    /// The value as an integer, if it is one (or a bulk string of digits).
    public var int64: Int64? {
        switch self {
        case .integer(let value): value
        case .bulk(let buffer): Int64(String(buffer: buffer))
        default: nil
        }
    }

    /// The value as text, if it is a string.
    public var string: String? {
        switch self {
        case .bulk(let buffer): String(buffer: buffer)
        case .simpleString(let text): text
        default: nil
        }
    }
}

/// hiredis's reply reader, fed with bytes from the socket: a pure parser, no I/O, no threads.
/// Confined to one event loop (owned by one channel handler).
final class RESPParser {
    private let reader: UnsafeMutablePointer<redisReader>

    init() {
        reader = redisReaderCreate()
    }

    deinit {
        redisReaderFree(reader)
    }

    /// Feeds `buffer` and returns every complete reply. Throws on a protocol error.
    func parse(_ buffer: ByteBuffer) throws(StoreProtocolError) -> [RESPValue] {
        let fed = buffer.withUnsafeReadableBytes { bytes in
            redisReaderFeed(reader, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count)
        }
        guard fed == REDIS_OK else { throw StoreProtocolError() }
        var replies: [RESPValue] = []
        while true {
            var reply: UnsafeMutableRawPointer?
            guard redisReaderGetReply(reader, &reply) == REDIS_OK else { throw StoreProtocolError() }
            guard let reply else { break }
            replies.append(RESPValue(reply: reply.assumingMemoryBound(to: redisReply.self)))
            freeReplyObject(reply)
        }
        return replies
    }
}

/// Redis sent something that is not RESP.
struct StoreProtocolError: Error {}

/// One argument of a Redis command.
public enum RedisArgument: Sendable {
    case string(String)
    case bytes(ByteBuffer)
    case integer(Int64)
}

extension ByteBuffer {
    /// Appends a command as a RESP array of bulk strings: its size first, then every byte in
    /// one pass over the buffer's memory (every command of the push path comes here, and a
    /// `ByteBuffer` write per piece cost more than the copying).
    mutating func writeRedisCommand(_ arguments: [RedisArgument]) {
        var size = RESPWriter.headerSize(arguments.count)
        for argument in arguments {
            let length = argument.encodedLength
            size += RESPWriter.headerSize(length) + length + 2
        }
        writeWithUnsafeMutableBytes(minimumWritableBytes: size) { raw in
            var writer = RESPWriter(bytes: raw)
            writer.header(UInt8(ascii: "*"), arguments.count)
            for argument in arguments {
                writer.header(UInt8(ascii: "$"), argument.encodedLength)
                switch argument {
                case .string(let text):
                    if text.utf8.withContiguousStorageIfAvailable({ writer.copy(UnsafeRawBufferPointer($0)) }) == nil {
                        for byte in text.utf8 { writer.byte(byte) }
                    }
                case .bytes(let bytes):
                    bytes.withUnsafeReadableBytes { writer.copy($0) }
                case .integer(let value):
                    if value < 0 { writer.byte(UInt8(ascii: "-")) }
                    writer.decimal(value.magnitude)
                }
                writer.byte(UInt8(ascii: "\r"))
                writer.byte(UInt8(ascii: "\n"))
            }
            return writer.offset
        }
    }
}

extension RedisArgument {
    /// The bytes of the bulk string it is sent as.
    fileprivate var encodedLength: Int {
        switch self {
        case .string(let text): text.utf8.count
        case .bytes(let bytes): bytes.readableBytes
        case .integer(let value): RESPWriter.digits(value.magnitude) + (value < 0 ? 1 : 0)
        }
    }
}

/// Writes RESP into memory sized beforehand.
private struct RESPWriter {
    let bytes: UnsafeMutableRawBufferPointer
    var offset = 0

    /// The bytes of `*<count>\r\n` (or `$`).
    static func headerSize(_ count: Int) -> Int { 3 + digits(UInt64(count)) }

    static func digits(_ value: UInt64) -> Int {
        var digits = 1
        var rest = value
        while rest >= 10 {
            rest /= 10
            digits += 1
        }
        return digits
    }

    mutating func byte(_ value: UInt8) {
        bytes[offset] = value
        offset += 1
    }

    mutating func copy(_ source: UnsafeRawBufferPointer) {
        guard let base = source.baseAddress, !source.isEmpty else { return }
        (bytes.baseAddress! + offset).copyMemory(from: base, byteCount: source.count)
        offset += source.count
    }

    mutating func decimal(_ value: UInt64) {
        let count = Self.digits(value)
        var rest = value
        var index = offset + count
        repeat {
            index -= 1
            bytes[index] = UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: rest % 10)
            rest /= 10
        } while index > offset
        offset += count
    }

    mutating func header(_ kind: UInt8, _ count: Int) {
        byte(kind)
        decimal(UInt64(count))
        byte(UInt8(ascii: "\r"))
        byte(UInt8(ascii: "\n"))
    }
}
