import HeraldTestSupport
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
import Testing

@testable import PushApp

/// One keep-alive HTTP connection that writes requests (several at once, to pipeline them)
/// and reads the responses in order.
private final class RawHTTPConnection: Sendable {
    struct Request: Sendable {
        var method: HTTPMethod
        var path: String
        var body: String?
        var headers: [(String, String)] = []
    }

    let channel: any Channel
    let responses: AsyncStream<HTTPTestResponse>

    private init(channel: any Channel, responses: AsyncStream<HTTPTestResponse>) {
        self.channel = channel
        self.responses = responses
    }

    static func connect(port: Int) async throws -> RawHTTPConnection {
        let (stream, continuation) = AsyncStream.makeStream(of: HTTPTestResponse.self)
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(Collector(continuation))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        return RawHTTPConnection(channel: channel, responses: stream)
    }

    static func request(_ method: HTTPMethod, _ path: String, body: String? = nil, headers: [(String, String)] = []) -> Request {
        Request(method: method, path: path, body: body, headers: headers)
    }

    /// Writes `requests` in one flush, keep-alive, `Content-Length` set.
    func send(_ requests: Request...) {
        for request in requests {
            var head = HTTPRequestHead(version: .http1_1, method: request.method, uri: request.path)
            head.headers.add(name: "Host", value: "herald")
            for (name, value) in request.headers { head.headers.add(name: name, value: value) }
            if let body = request.body {
                head.headers.add(name: "Content-Type", value: "application/json")
                head.headers.add(name: "Content-Length", value: "\(body.utf8.count)")
            }
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            if let body = request.body { channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(string: body))), promise: nil) }
            channel.write(HTTPClientRequestPart.end(nil), promise: nil)
        }
        channel.flush()
    }

    /// The next `count` responses, in order.
    func read(_ count: Int) async throws -> [HTTPTestResponse] {
        try await withTimeout("\(count) HTTP responses", .seconds(10)) {
            var result: [HTTPTestResponse] = []
            for await response in self.responses {
                result.append(response)
                if result.count == count { break }
            }
            return result
        }
    }

    /// Whether the server closes the connection within `timeout`.
    func closedByServer(within timeout: Duration) async -> Bool {
        (try? await withTimeout("server closes", timeout) { try await self.channel.closeFuture.get() }) != nil
    }

    func close() { channel.close(promise: nil) }

    private final class Collector: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPClientResponsePart
        private let continuation: AsyncStream<HTTPTestResponse>.Continuation
        private var response = HTTPTestResponse(status: 0, headers: [], body: "")

        init(_ continuation: AsyncStream<HTTPTestResponse>.Continuation) { self.continuation = continuation }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                response = HTTPTestResponse(status: Int(head.status.code), headers: head.headers.map { ($0.name, $0.value) }, body: "")
            case .body(let part):
                response.body += String(buffer: part)
            case .end:
                continuation.yield(response)
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            continuation.finish()
            context.fireChannelInactive()
        }
    }
}

@Suite("HTTP: pushes answered on the event loop (PushFastPath)", .timeLimit(.minutes(1)))
struct HTTPFastPathTests {
    @Test("pipelined requests on one connection, fast and routed mixed, are answered in order; the device gets the accepted pushes in order")
    func pipelinedInOrder() async throws {
        try await TestNode.with { node in
            let device = try await node.device("pipe", autoAcknowledge: true)
            let http = try await RawHTTPConnection.connect(port: node.httpPort)
            typealias Raw = RawHTTPConnection
            http.send(
                Raw.request(.POST, "/v1/push", body: #"{"client_id": "pipe", "data": "one"}"#),
                Raw.request(.POST, "/v1/push", body: #"{"client_id": "pipe", "data": "two"}"#),
                Raw.request(.GET, "/v1/stats"),
                Raw.request(.POST, "/v1/push", body: #"{"client_id": "pipe"}"#),
                Raw.request(.POST, "/v1/push/batch", body: #"{"messages": [{"client_id": "pipe", "data": "three"}, {"client_id": "pipe", "data": "four"}]}"#),
                Raw.request(.POST, "/v1/push?x=1", body: #"{"client_id": "pipe", "data": "five"}"#)
            )
            let responses = try await http.read(6)
            #expect(responses.map(\.status) == [202, 202, 200, 400, 202, 202])
            #expect(responses[3].body.contains("one of data or data_base64 is required"), "\(responses[3].body)")
            #expect(responses.allSatisfy { $0.header("Content-Type") == "application/json" })
            var ids = try [responses[0], responses[1]].map { try JSONFields($0.body).string("id") }
            ids += try JSONFields(responses[4].body).strings("ids")
            ids.append(try JSONFields(responses[5].body).string("id"))
            let pushes = try await device.pushes(5)
            #expect(pushes.map(\.id) == ids)
            #expect(pushes.map(\.text) == ["one", "two", "three", "four", "five"])
            http.close()
            await device.close()
        }
    }

    @Test("the fast path answers exactly as the router does: status, JSON body, content type and server, for good and bad requests")
    func sameAnswersAsTheRouter() async throws {
        let requests: [(path: String, body: String, headers: [(String, String)])] = [
            ("/v1/push", #"{"client_id": "same", "data": "x"}"#, [("Authorization", "Bearer k1")]),
            ("/v1/push", #"{"client_id": "same", "data": "x"}"#, []),
            ("/v1/push", #"{"client_id": "same", "data": "x"}"#, [("Authorization", "Bearer wrong")]),
            ("/v1/push", #"{"client_id": "bad id!", "data": "x"}"#, [("Authorization", "Bearer k1")]),
            ("/v1/push", #"{"client_id": "same", "data": 5}"#, [("Authorization", "Bearer k1")]),
            ("/v1/push", #"{"client_id": "same", "data": "x", "data_base64": "eA=="}"#, [("Authorization", "Bearer k1")]),
            ("/v1/push", #"{"client_id": "same", "data": "x", "ttl_s": 0}"#, [("Authorization", "Bearer k1")]),
            ("/v1/push", #"{"client_id": "same", "data": "#, [("Authorization", "Bearer k1")]),
            ("/v1/push", #"{"client_id": "same", "data": "0123456789a"}"#, [("Authorization", "Bearer k1")]),
            ("/v1/push/batch", #"{"messages": []}"#, [("Authorization", "Bearer k1")]),
            ("/v1/push/batch", #"{"messages": [{"client_id": "same", "data": "x"}, {"client_id": "same"}]}"#, [("Authorization", "Bearer k1")]),
            ("/v1/broadcast", #"{"data": "hello"}"#, [("Authorization", "Bearer k1")]),
            ("/v1/broadcast", #"{}"#, [("Authorization", "Bearer k1")]),
        ]
        let answers = Mutex<[String: [HTTPTestResponse]]>([:])
        for fastPath in ["1", "0"] {
            try await TestNode.with(["HERALD_HTTP_FAST_PATH": fastPath, "HERALD_API_KEYS": "k1", "HERALD_MAX_PAYLOAD": "10"]) { node in
                let http = try await RawHTTPConnection.connect(port: node.httpPort)
                var received: [HTTPTestResponse] = []
                for request in requests {
                    http.send(RawHTTPConnection.request(.POST, request.path, body: request.body, headers: request.headers))
                    received += try await http.read(1)
                }
                answers.withLock { $0[fastPath] = received }
                http.close()
            }
        }
        let fast = try #require(answers.withLock { $0["1"] }), routed = try #require(answers.withLock { $0["0"] })
        #expect(fast.map(\.status) == [202, 401, 401, 400, 400, 400, 400, 400, 413, 400, 400, 202, 400])
        for (index, (one, other)) in zip(fast, routed).enumerated() {
            #expect(one.status == other.status, "request \(index)")
            #expect(one.header("Content-Type") == other.header("Content-Type"), "request \(index)")
            #expect(one.header("Server") == other.header("Server"), "request \(index)")
            if one.status == 202 {
                #expect(one.body.count == other.body.count, "request \(index): \(one.body) vs \(other.body)")
            } else {
                #expect(one.body == other.body, "request \(index)")
            }
        }
    }

    @Test("a keep-alive push takes the fast path (counted in /metrics); Connection: close, Expect and a wrong method go to the router")
    func whichPath() async throws {
        try await TestNode.with { node in
            func served() async throws -> Int {
                let metrics = try await HTTPTestClient.get("/metrics", port: node.httpPort).body
                let line = metrics.split(separator: "\n").first { $0.hasPrefix("herald_http_fast_path_requests_total ") }
                return line.flatMap { Int($0.split(separator: " ").last ?? "") } ?? 0
            }
            let http = try await RawHTTPConnection.connect(port: node.httpPort)
            let push = #"{"client_id": "path", "data": "x"}"#
            http.send(RawHTTPConnection.request(.POST, "/v1/push", body: push))
            #expect(try await http.read(1).map(\.status) == [202])
            #expect(try await served() == 1)
            http.send(
                RawHTTPConnection.request(.POST, "/v1/push", body: push, headers: [("Expect", "100-continue")]),
                RawHTTPConnection.request(.PUT, "/v1/push", body: push),
                RawHTTPConnection.request(.POST, "/v1/push", body: push, headers: [("Connection", "close")])
            )
            let routed = try await http.read(3)
            #expect(routed.map(\.status) == [202, 405, 202])
            #expect(try await served() == 1)
            #expect(try await node.pending("path") == 3)
        }
    }

    @Test("the idle timeout counts fast-path requests as activity, and still closes the connection once it is idle")
    func idleTimeout() async throws {
        try await TestNode.with(["HERALD_HTTP_IDLE_TIMEOUT_S": "2"]) { node in
            // Fifteen requests paced over more than two idle timeouts (300 ms apart): every one
            // is answered on one connection only if the idle timeout counts them as activity.
            // Real time is what is under test here (the manual-clock tests are in
            // HTTPTimeoutHandlerTests), so a machine that stalls for a whole timeout closes the
            // connection rightly; such a round is tried again on a new connection, three at
            // most. Without the counting, every round closes 2 s after its accept.
            var most = 0
            for _ in 1...3 {
                let http = try await RawHTTPConnection.connect(port: node.httpPort)
                var answered = 0
                for _ in 0..<15 {
                    http.send(RawHTTPConnection.request(.POST, "/v1/push", body: #"{"client_id": "idle", "data": "x"}"#))
                    guard try await http.read(1).first?.status == 202 else { break }
                    answered += 1
                    try await Task.sleep(for: .milliseconds(300))
                }
                if answered == 15 {
                    #expect(await http.closedByServer(within: .seconds(6)), "closed once idle for the timeout")
                    return
                }
                http.close()
                most = max(most, answered)
            }
            Issue.record("no connection of three lived through 15 requests 300 ms apart: at most \(most) were answered")
        }
    }
}

@Suite("JSON answers written without the encoder")
struct PlainJSONTests {
    @Test("the push and batch answers are byte for byte what JSONEncoder writes, escaping included")
    func sameBytesAsTheEncoder() {
        let values = ["18f2a3b4c5d-0123456789abcdef-1a", "", "with \"quote\"", "back\\slash", "a/b", "tab\there", "é"]
        for value in values {
            #expect(String(buffer: JSONBody.bytes("id", value)) == String(buffer: JSONBody.bytes(["id": value])), "\(value)")
        }
        for list in [values, [], ["one"], ["a", "b", "c"]] {
            #expect(String(buffer: JSONBody.bytes("ids", list)) == String(buffer: JSONBody.bytes(["ids": list])), "\(list)")
        }
    }
}
