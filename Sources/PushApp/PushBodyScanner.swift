import NIOCore

/// Reads the plain shape of a push body without `JSONDecoder`, which costs about 27,000
/// instructions per `/v1/push` (a sixth of a whole delivery: Docs/benchmarks.md).
///
/// It accepts only what it can read exactly: one object whose keys are among `client_id`,
/// `data`, `data_base64` and `ttl_s`, each at most once; strings of printable ASCII with no
/// escape; `ttl_s` a plain integer of at most 18 digits; whitespace anywhere JSON allows it.
/// Anything else (an escape, a non-ASCII byte, another key, `null`, a nested value, a
/// duplicate, a syntax error) returns nil, and the body goes to `JSONDecoder`, which decides
/// what it means and words every error: the scanner is a shortcut, never a second opinion.
/// Tests/PushAppTests/PushBodyScannerTests compares the two on generated bodies.
struct PushBodyScanner {
    /// One message's fields, as `JSONDecoder` would give them.
    struct Fields: Equatable {
        var clientID: String?
        var data: String?
        var dataBase64: String?
        var ttlSeconds: Int64?
    }

    /// The body's bytes, valid only inside `ByteBuffer.withUnsafeReadableBytes`.
    private let bytes: UnsafeRawBufferPointer
    private var index = 0

    private init(_ bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    /// The fields of a `/v1/push` body, or nil when it is not of the plain shape.
    static func push(_ body: ByteBuffer) -> Fields? {
        body.withUnsafeReadableBytes { bytes in
            var scanner = PushBodyScanner(bytes)
            guard let fields = scanner.object() else { return nil }
            scanner.skipWhitespace()
            return scanner.index == scanner.bytes.endIndex ? fields : nil
        }
    }

    /// The messages of a `/v1/push/batch` body (`{"messages": [...]}`, nothing else), or nil
    /// when it is not of the plain shape.
    static func batch(_ body: ByteBuffer) -> [Fields]? {
        body.withUnsafeReadableBytes { batch($0) }
    }

    private static func batch(_ bytes: UnsafeRawBufferPointer) -> [Fields]? {
        var scanner = PushBodyScanner(bytes)
        guard scanner.take(UInt8(ascii: "{")), scanner.string() == "messages", scanner.take(UInt8(ascii: ":")),
            scanner.take(UInt8(ascii: "["))
        else { return nil }
        var messages: [Fields] = []
        if !scanner.take(UInt8(ascii: "]")) {
            repeat {
                guard let fields = scanner.object() else { return nil }
                messages.append(fields)
            } while scanner.take(UInt8(ascii: ","))
            guard scanner.take(UInt8(ascii: "]")) else { return nil }
        }
        guard scanner.take(UInt8(ascii: "}")) else { return nil }
        scanner.skipWhitespace()
        return scanner.index == scanner.bytes.endIndex ? messages : nil
    }

    private mutating func object() -> Fields? {
        guard take(UInt8(ascii: "{")) else { return nil }
        var fields = Fields()
        if take(UInt8(ascii: "}")) { return fields }
        repeat {
            guard let key = string(), take(UInt8(ascii: ":")) else { return nil }
            switch key {
            case "client_id":
                guard fields.clientID == nil, let value = string() else { return nil }
                fields.clientID = value
            case "data":
                guard fields.data == nil, let value = string() else { return nil }
                fields.data = value
            case "data_base64":
                guard fields.dataBase64 == nil, let value = string() else { return nil }
                fields.dataBase64 = value
            case "ttl_s":
                guard fields.ttlSeconds == nil, let value = integer() else { return nil }
                fields.ttlSeconds = value
            default:
                return nil
            }
        } while take(UInt8(ascii: ","))
        return take(UInt8(ascii: "}")) ? fields : nil
    }

    /// Skips whitespace, then takes `byte` if it is next.
    private mutating func take(_ byte: UInt8) -> Bool {
        skipWhitespace()
        guard index < bytes.endIndex, bytes[index] == byte else { return false }
        index += 1
        return true
    }

    private mutating func skipWhitespace() {
        while index < bytes.endIndex {
            switch bytes[index] {
            case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\n"), UInt8(ascii: "\r"): index += 1
            default: return
            }
        }
    }

    /// A string of printable ASCII without escapes.
    private mutating func string() -> String? {
        guard take(UInt8(ascii: "\"")) else { return nil }
        let start = index
        while index < bytes.endIndex {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                let value = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
                index += 1
                return value
            }
            guard byte >= 0x20, byte < 0x7F, byte != UInt8(ascii: "\\") else { return nil }
            index += 1
        }
        return nil
    }

    /// `0` or `-`? a non-zero digit and at most 17 more: no fraction, no exponent.
    private mutating func integer() -> Int64? {
        skipWhitespace()
        var negative = false
        if index < bytes.endIndex, bytes[index] == UInt8(ascii: "-") {
            negative = true
            index += 1
        }
        var value: Int64 = 0
        var digits = 0
        while index < bytes.endIndex, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") {
            if digits == 1, value == 0 { return nil }   // a leading zero
            value = value * 10 + Int64(bytes[index] - UInt8(ascii: "0"))
            digits += 1
            guard digits <= 18 else { return nil }
            index += 1
        }
        guard digits > 0 else { return nil }
        if index < bytes.endIndex {
            switch bytes[index] {
            case UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E"): return nil
            default: break
            }
        }
        return negative ? -value : value
    }
}
