import Foundation
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import PushProtocol
import Synchronization
import Testing

@testable import PushApp

/// `PushFastPath` alone on NIO's testing channel, in front of nothing: NIO's HTTP/1 request
/// parts in (what its decoder passes on), response parts out, with a real node's acceptor and in-memory store behind it (the node is
/// made, not run: no socket anywhere).
private struct Harness {
    let channel: NIOAsyncTestingChannel
    let node: HeraldNode

    init(_ environment: [String: String] = [:]) async throws {
        let loop = NIOAsyncTestingEventLoop()
        var values = ["HERALD_NODE_ID": "fast", "HERALD_TCP_ADDR": "127.0.0.1:0", "HERALD_HTTP_ADDR": "127.0.0.1:0", "HERALD_RELAY_ADDR": "127.0.0.1:0"]
        values.merge(environment) { $1 }
        let configuration = try NodeConfiguration.load(values)
        var logger = Logger(label: "fast-path-test")
        logger.logLevel = .critical
        node = try await HeraldNode.make(configuration: configuration, logger: logger, group: loop)
        let api = HTTPAPI(node: node)
        let channel = NIOAsyncTestingChannel(loop: loop)
        try await loop.executeInContext {
            try channel.pipeline.syncOperations.addHandler(PushFastPath(api: api, keys: SecretSet(configuration.apiKeys), serverName: "herald"))
        }
        self.channel = channel
    }

    func request(_ path: String, _ body: String, fields: HTTPHeaders = [:], version: HTTPVersion = .http1_1) async throws {
        try await head(path, body, fields: fields, version: version)
        try await channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: body)))
        try await channel.writeInbound(HTTPServerRequestPart.end(nil))
    }

    func head(_ path: String, _ body: String, fields: HTTPHeaders = [:], version: HTTPVersion = .http1_1) async throws {
        var headers = fields
        headers.add(name: "Host", value: "h")
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        try await channel.writeInbound(HTTPServerRequestPart.head(HTTPRequestHead(version: version, method: .POST, uri: path, headers: headers)))
    }

    /// The next response the handler wrote: its status and JSON body.
    func response() async throws -> (status: Int, json: [String: Any])? {
        guard case .head(let head)? = try await channel.readOutbound(as: HTTPServerResponsePart.self) else { return nil }
        guard case .body(.byteBuffer(let body))? = try await channel.readOutbound(as: HTTPServerResponsePart.self),
            case .end? = try await channel.readOutbound(as: HTTPServerResponsePart.self)
        else { return nil }
        let json = try JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any] ?? [:]
        #expect(head.headers["Content-Length"] == [String(body.readableBytes)])
        #expect(head.version == .http1_1)
        return (Int(head.status.code), json)
    }

    /// The request parts passed on to the router (the next handler).
    func passedOn() async throws -> [HTTPServerRequestPart] {
        var parts: [HTTPServerRequestPart] = []
        while let part = try await channel.readInbound(as: HTTPServerRequestPart.self) { parts.append(part) }
        return parts
    }

    /// The router's answer to a request it was passed, written back through the fast path.
    func routerAnswers(_ status: HTTPResponseStatus) async throws {
        try await channel.writeOutbound(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: status)))
        try await channel.writeOutbound(HTTPServerResponsePart.end(nil))
    }
}

@Suite("PushFastPath on NIO's testing channel: requests in, responses out, no socket", .timeLimit(.minutes(1)))
struct PushFastPathChannelTests {
    @Test("a plain /v1/push is answered 202 with its id, stored before the answer, and never reaches the router")
    func accepted() async throws {
        let harness = try await Harness()
        try await harness.request("/v1/push", #"{"client_id":"alice","data":"hi"}"#)
        let answer = try await harness.response()
        #expect(answer?.status == 202)
        #expect((answer?.json["id"] as? String)?.isEmpty == false)
        #expect(try await harness.node.router.status(of: "alice").pending == 1)
        #expect(try await harness.passedOn().isEmpty)
    }

    @Test("a batch is answered with every id in order; bad bodies get the router's errors and store nothing")
    func batchAndErrors() async throws {
        let harness = try await Harness()
        try await harness.request("/v1/push/batch", #"{"messages":[{"client_id":"a","data":"1"},{"client_id":"b","data":"2"}]}"#)
        #expect((try await harness.response()?.json["ids"] as? [String])?.count == 2)
        try await harness.request("/v1/push", #"{"client_id":"a","data":1}"#)
        let wrongType = try await harness.response()
        #expect(wrongType?.status == 400)
        #expect((wrongType?.json["error"] as? [String: Any])?["message"] as? String == "wrong type for data")
        try await harness.request("/v1/push", #"{"client_id":"a""#)
        #expect((try await harness.response()?.json["error"] as? [String: Any])?["code"] as? String == "malformed_json")
        try await harness.request("/v1/push", #"{"client_id":"bad id","data":"x"}"#)
        #expect(try await harness.response()?.status == 400)
        #expect(try await harness.node.router.status(of: "a").pending == 1, "only the batch's message")
    }

    @Test("a request it does not serve (other path, no key, Expect, chunked) is passed on untouched, and its answer passes back")
    func passesOn() async throws {
        let harness = try await Harness(["HERALD_API_KEYS": "secret-key-0123456789abcdef"])
        try await harness.request("/v1/push", #"{"client_id":"a","data":"x"}"#)   // no key: the router's 401
        #expect(try await harness.passedOn().count == 3)
        #expect(try await harness.channel.readOutbound(as: HTTPServerResponsePart.self) == nil)
        // The router answers; the answer passes through the fast path unchanged.
        try await harness.routerAnswers(.unauthorized)
        guard case .head(let head)? = try await harness.channel.readOutbound(as: HTTPServerResponsePart.self) else {
            Issue.record("the router's answer did not pass")
            return
        }
        #expect(head.status == .unauthorized)
        _ = try await harness.channel.readOutbound(as: HTTPServerResponsePart.self)
        // With the key, the fast path serves it.
        let key = "Bearer secret-key-0123456789abcdef"
        try await harness.request("/v1/push", #"{"client_id":"a","data":"x"}"#, fields: ["authorization": key])
        #expect(try await harness.response()?.status == 202)
        // Header names in any case; anything the fast path does not handle itself goes on.
        try await harness.request("/v1/push", #"{"client_id":"a","data":"x"}"#, fields: ["AUTHORIZATION": key, "Connection": "Keep-Alive"])
        #expect(try await harness.response()?.status == 202)
        let routed: [(HTTPHeaders, HTTPVersion)] = [
            (["Expect": "100-continue", "Authorization": key], .http1_1),
            (["Transfer-Encoding": "chunked", "Authorization": key], .http1_1),
            (["Connection": "close", "Authorization": key], .http1_1),
            (["Authorization": key, "authorization": key], .http1_1),
            (["Authorization": key], .http1_0),
        ]
        for (fields, version) in routed {
            try await harness.request("/v1/push", #"{"client_id":"a","data":"x"}"#, fields: fields, version: version)
            #expect(try await harness.passedOn().count == 3, "\(fields) \(version)")
            try await harness.routerAnswers(.badRequest)
            while try await harness.channel.readOutbound(as: HTTPServerResponsePart.self) != nil {}
        }
        #expect(try await harness.node.router.status(of: "a").pending == 2)
    }

    @Test("while the router owes an answer, a push is passed on too, so that answers keep the requests' order")
    func keepsOrder() async throws {
        let harness = try await Harness()
        try await harness.request("/v1/stats", "")
        try await harness.request("/v1/push", #"{"client_id":"a","data":"x"}"#)
        #expect(try await harness.passedOn().count == 6, "both went to the router")
        #expect(try await harness.channel.readOutbound(as: HTTPServerResponsePart.self) == nil)
        // The router answers the first; the next push is the fast path's again.
        try await harness.routerAnswers(.ok)
        try await harness.routerAnswers(.accepted)
        while try await harness.channel.readOutbound(as: HTTPServerResponsePart.self) != nil {}
        try await harness.request("/v1/push", #"{"client_id":"a","data":"y"}"#)
        #expect(try await harness.response()?.status == 202)
    }
}

/// Counts the quiesce events that reach the handler after the fast path (Hummingbird's, in
/// the server, which closes the connection at one once its router owes nothing).
private final class QuiesceRecorder: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    let seen = Mutex(0)

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent { seen.withLock { $0 += 1 } }
        context.fireUserInboundEventTriggered(event)
    }
}

extension PushFastPathChannelTests {
    @Test("a graceful shutdown's quiesce waits while a push of the fast path is under way, and goes on once it is answered")
    func quiesceWaitsForTheAnswer() async throws {
        let harness = try await Harness()
        let recorder = QuiesceRecorder()
        try await harness.channel.pipeline.addHandler(recorder)
        // Idle: it goes on at once.
        harness.channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        try await harness.channel.testingEventLoop.executeInContext {}
        #expect(recorder.seen.withLock { $0 } == 1)
        // A push's head is in, its body not yet: the event waits for the 202.
        let body = #"{"client_id":"q","data":"x"}"#
        try await harness.head("/v1/push", body)
        harness.channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        try await harness.channel.testingEventLoop.executeInContext {}
        #expect(recorder.seen.withLock { $0 } == 1, "held while the request is read")
        try await harness.channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: body)))
        try await harness.channel.writeInbound(HTTPServerRequestPart.end(nil))
        #expect(try await harness.response()?.status == 202)
        #expect(recorder.seen.withLock { $0 } == 2, "passed on after the answer")
    }
}

/// `HTTPTimeoutHandler` alone on NIO's testing channel, its timer on the testing loop's manual
/// clock: request parts in, response parts out, time moved by hand.
@Suite("HTTP connection time limits on NIO's testing channel, the clock moved by hand", .timeLimit(.minutes(1)))
struct HTTPTimeoutHandlerTests {
    private let channel: NIOAsyncTestingChannel

    init() async throws {
        let channel = NIOAsyncTestingChannel()
        try await channel.testingEventLoop.executeInContext {
            try channel.pipeline.syncOperations.addHandler(HTTPTimeoutHandler(timeout: .seconds(1)))
        }
        self.channel = channel
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1))
    }

    private func advance(_ milliseconds: Int64) async {
        await channel.testingEventLoop.advanceTime(by: .milliseconds(milliseconds))
    }

    private func read(_ parts: HTTPServerRequestPart...) async throws {
        for part in parts { try await channel.writeInbound(part) }
        channel.pipeline.fireChannelReadComplete()
    }

    private func answer() async throws {
        try await channel.writeOutbound(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: .accepted)))
        try await channel.writeOutbound(HTTPServerResponsePart.end(nil))
    }

    private var head: HTTPServerRequestPart {
        .head(HTTPRequestHead(version: .http1_1, method: .POST, uri: "/v1/push"))
    }

    @Test("a connection with no request is closed after the timeout, not before")
    func idle() async throws {
        await advance(999)
        #expect(channel.isActive)
        await advance(1)
        #expect(!channel.isActive)
    }

    @Test("each answered request restarts the idle time")
    func activityRestartsIt() async throws {
        await advance(500)
        try await read(head, .end(nil))
        await advance(300)
        try await answer()
        await advance(999)
        #expect(channel.isActive, "idle since the answer, 999 ms")
        await advance(1)
        #expect(!channel.isActive)
    }

    @Test("while an answer is owed the connection is not idle, however long the store takes")
    func answerOwed() async throws {
        try await read(head, .end(nil))
        await advance(10_000)
        #expect(channel.isActive)
        try await answer()
        await advance(1_000)
        #expect(!channel.isActive)
    }

    @Test("a request whose body trickles in is closed the timeout after its head, though each part is within it")
    func bodyTrickle() async throws {
        await advance(200)
        try await read(head)
        for _ in 0..<3 {
            await advance(300)
            try await read(.body(ByteBuffer(string: "x")))
        }
        #expect(channel.isActive, "900 ms into the request")
        await advance(100)
        #expect(!channel.isActive, "1 s after the head")
    }
}
