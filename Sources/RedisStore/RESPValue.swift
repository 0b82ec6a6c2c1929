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
    /// Appends a command as a RESP array of bulk strings.
    mutating func writeRedisCommand(_ arguments: [RedisArgument]) {
        writeString("*\(arguments.count)\r\n")
        for argument in arguments {
            switch argument {
            case .string(let text):
                writeString("$\(text.utf8.count)\r\n")
                writeString(text)
            case .bytes(let bytes):
                writeString("$\(bytes.readableBytes)\r\n")
                writeImmutableBuffer(bytes)
            case .integer(let value):
                let text = String(value)
                writeString("$\(text.utf8.count)\r\n")
                writeString(text)
            }
            writeStaticString("\r\n")
        }
    }
}
