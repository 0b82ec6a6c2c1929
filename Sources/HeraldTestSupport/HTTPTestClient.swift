import NIOCore
import NIOHTTP1
import NIOPosix

/// The answer to one HTTP request.
public struct HTTPTestResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: String

    public init(status: Int, headers: [(String, String)], body: String) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    public func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }
}

/// A minimal HTTP/1.1 client for tests: one connection per request, closed by the client after the answer.
public enum HTTPTestClient {
    public static func request(
        _ method: HTTPMethod, _ path: String, host: String = "127.0.0.1", port: Int,
        headers: [(String, String)] = [], body: String? = nil, timeout: Duration = .seconds(10)
    ) async throws -> HTTPTestResponse {
        try await withTimeout("\(method) \(path)", timeout) {
            let promise = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: HTTPTestResponse.self)
            let channel: any Channel
            do {
                channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(ResponseCollector(promise: promise))
                    }
                }
                .connect(host: host, port: port).get()
            } catch {
                promise.fail(error)
                throw error
            }
            var head = HTTPRequestHead(version: .http1_1, method: method, uri: path)
            head.headers.add(name: "Host", value: "\(host):\(port)")
            // No `Connection: close`: the client closes after the answer, and a keep-alive request
            // is what backends send (and what the server's fast path serves).
            for (name, value) in headers { head.headers.add(name: name, value: value) }
            if let body {
                head.headers.add(name: "Content-Type", value: "application/json")
                head.headers.add(name: "Content-Length", value: "\(body.utf8.count)")
            }
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            if let body { channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(string: body))), promise: nil) }
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
            defer { channel.close(promise: nil) }
            return try await promise.futureResult.get()
        }
    }

    /// POST with a JSON body.
    public static func post(_ path: String, port: Int, json: String, headers: [(String, String)] = []) async throws -> HTTPTestResponse {
        try await request(.POST, path, port: port, headers: headers, body: json)
    }

    /// GET.
    public static func get(
        _ path: String, port: Int, headers: [(String, String)] = [], timeout: Duration = .seconds(10)
    ) async throws -> HTTPTestResponse {
        try await request(.GET, path, port: port, headers: headers, timeout: timeout)
    }
}

private final class ResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    private let promise: EventLoopPromise<HTTPTestResponse>
    private var response = HTTPTestResponse(status: 0, headers: [], body: "")
    private var body = ByteBuffer()

    init(promise: EventLoopPromise<HTTPTestResponse>) { self.promise = promise }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            response.status = Int(head.status.code)
            response.headers = head.headers.map { ($0.name, $0.value) }
        case .body(var part):
            body.writeBuffer(&part)
        case .end:
            response.body = String(buffer: body)
            promise.succeed(response)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(ChannelError.eof)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise.fail(error)
        context.close(promise: nil)
    }
}
