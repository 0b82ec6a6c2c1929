import FoundationEssentials
import Hummingbird

/// JSON responses of the API.
enum JSONBody {
    /// A response whose body is `value` as JSON.
    static func response(status: HTTPResponse.Status, _ value: some Encodable) -> Response {
        response(status: status, bytes: bytes(value))
    }

    /// A response whose body is `bytes`, already JSON.
    static func response(status: HTTPResponse.Status, bytes: ByteBuffer) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: bytes))
    }

    /// `{"<key>":"<value>"}`, the same bytes as `bytes(_:)` writes, without its encoder when
    /// nothing needs escaping (message ids never do): the answer to every push.
    static func bytes(_ key: String, _ value: String) -> ByteBuffer {
        guard isPlain(key), isPlain(value) else { return bytes([key: value]) }
        var buffer = ByteBufferAllocator().buffer(capacity: key.utf8.count + value.utf8.count + 7)
        // Written piece by piece: string interpolation would cast each value at run time.
        buffer.writeStaticString("{\"")
        buffer.writeString(key)
        buffer.writeStaticString("\":\"")
        buffer.writeString(value)
        buffer.writeStaticString("\"}")
        return buffer
    }

    /// `{"<key>":["<value>",...]}`, as `bytes(_:)` writes it: the answer to a batch.
    static func bytes(_ key: String, _ values: [String]) -> ByteBuffer {
        guard isPlain(key), values.allSatisfy(isPlain) else { return bytes([key: values]) }
        var buffer = ByteBuffer()
        buffer.reserveCapacity(key.utf8.count + 6 + values.reduce(0) { $0 + $1.utf8.count + 3 })
        buffer.writeStaticString("{\"")
        buffer.writeString(key)
        buffer.writeStaticString("\":[")
        for (index, value) in values.enumerated() {
            if index > 0 { buffer.writeStaticString(",") }
            buffer.writeStaticString("\"")
            buffer.writeString(value)
            buffer.writeStaticString("\"")
        }
        buffer.writeStaticString("]}")
        return buffer
    }

    /// Printable ASCII that JSON writes as itself (no quote, backslash or slash).
    private static func isPlain(_ text: String) -> Bool {
        text.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "\"") && $0 != UInt8(ascii: "\\") && $0 != UInt8(ascii: "/") }
    }

    /// `value` as JSON, keys sorted.
    static func bytes(_ value: some Encodable) -> ByteBuffer {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
        return ByteBuffer(bytes: data)
    }
}
