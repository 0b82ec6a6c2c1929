import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// One keep-alive HTTP/1.1 connection to a node's API, one request at a time: for the
/// bench's control requests (readiness, a broadcast, stats). The load itself goes through
/// `PushLoad`, which drives its connections on their event loops without a task per request.
final class HTTPConnection: Sendable {
    private let channel: any Channel
    private let handler: NIOLoopBound<ResponseCollector>
    private let host: String
    private let apiKey: String?

    private init(channel: any Channel, handler: NIOLoopBound<ResponseCollector>, host: String, apiKey: String?) {
        self.channel = channel
        self.handler = handler
        self.host = host
        self.apiKey = apiKey
    }

    static func connect(host: String, port: Int, apiKey: String?, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> HTTPConnection {
        let channel = try await ClientBootstrap(group: group)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(5))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(ResponseCollector())
                }
            }
            .connect(host: host, port: port).get()
        let handler = try await channel.eventLoop.submit {
            NIOLoopBound(try channel.pipeline.syncOperations.handler(type: ResponseCollector.self), eventLoop: channel.eventLoop)
        }.get()
        return HTTPConnection(channel: channel, handler: handler, host: host, apiKey: apiKey)
    }

    /// Sends one request and returns the status and body of its response.
    func request(_ method: HTTPMethod, _ path: String, json body: String? = nil) async throws -> (status: Int, body: String) {
        let head = requestHead(method: method, path: path, host: host, apiKey: apiKey, bodyLength: body?.utf8.count)
        let promise = channel.eventLoop.makePromise(of: (Int, String).self)
        let handler = handler
        let channel = channel
        channel.eventLoop.execute {
            handler.value.waiting.append(promise)
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            if let body {
                channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(string: body))), promise: nil)
            }
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        }
        let (status, text) = try await promise.futureResult.get()
        return (status, text)
    }

    func close() async {
        try? await channel.close()
    }
}

/// The head of a request to Herald's API.
func requestHead(method: HTTPMethod, path: String, host: String, apiKey: String?, bodyLength: Int?) -> HTTPRequestHead {
    var head = HTTPRequestHead(version: .http1_1, method: method, uri: path)
    head.headers.add(name: "Host", value: host)
    if let apiKey { head.headers.add(name: "Authorization", value: "Bearer \(apiKey)") }
    if let bodyLength {
        head.headers.add(name: "Content-Type", value: "application/json")
        head.headers.add(name: "Content-Length", value: "\(bodyLength)")
    }
    return head
}

/// Completes the oldest waiting request with each whole response.
private final class ResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    var waiting: CircularBuffer<EventLoopPromise<(Int, String)>> = []
    private var status = 0
    private var body = ""

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = Int(head.status.code)
            body = ""
        case .body(let buffer):
            body += String(buffer: buffer)
        case .end:
            waiting.popFirst()?.succeed((status, body))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        while let promise = waiting.popFirst() { promise.fail(BenchError("HTTP connection closed")) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
