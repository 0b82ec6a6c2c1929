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

    /// `value` as JSON, keys sorted.
    static func bytes(_ value: some Encodable) -> ByteBuffer {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
        return ByteBuffer(bytes: data)
    }
}
