import Foundation
import Hummingbird
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTPTypes
import PushProtocol
import Testing

@testable import PushApp

/// `PushFastPath` alone on NIO's testing channel, in front of nothing: HTTP request parts in,
/// response parts out, with a real node's acceptor and in-memory store behind it (the node is
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
        let fastPath = PushFastPath(api: HTTPAPI(node: node), keys: SecretSet(configuration.apiKeys), serverName: "herald")
        channel = NIOAsyncTestingChannel(loop: loop)
        try await channel.pipeline.addHandler(fastPath)
    }

    func request(_ path: String, _ body: String, fields: HTTPFields = [:]) async throws {
        var headers = fields
        headers[.contentLength] = String(body.utf8.count)
        try await channel.writeInbound(HTTPRequestPart.head(HTTPRequest(method: .post, scheme: nil, authority: "h", path: path, headerFields: headers)))
        try await channel.writeInbound(HTTPRequestPart.body(ByteBuffer(string: body)))
        try await channel.writeInbound(HTTPRequestPart.end(nil))
    }

    /// The next response the handler wrote: its status and JSON body.
    func response() async throws -> (status: Int, json: [String: Any])? {
        guard case .head(let head)? = try await channel.readOutbound(as: HTTPResponsePart.self) else { return nil }
        guard case .body(let body)? = try await channel.readOutbound(as: HTTPResponsePart.self),
            case .end? = try await channel.readOutbound(as: HTTPResponsePart.self)
        else { return nil }
        let json = try JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any] ?? [:]
        #expect(head.headerFields[.contentLength] == String(body.readableBytes))
        return (head.status.code, json)
    }

    /// The request parts passed on to the router (the next handler).
    func passedOn() async throws -> [HTTPRequestPart] {
        var parts: [HTTPRequestPart] = []
        while let part = try await channel.readInbound(as: HTTPRequestPart.self) { parts.append(part) }
        return parts
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
        #expect(try await harness.channel.readOutbound(as: HTTPResponsePart.self) == nil)
        // The router answers; the answer passes through the fast path unchanged.
        try await harness.channel.writeOutbound(HTTPResponsePart.head(HTTPResponse(status: .unauthorized)))
        try await harness.channel.writeOutbound(HTTPResponsePart.end(nil))
        guard case .head(let head)? = try await harness.channel.readOutbound(as: HTTPResponsePart.self) else {
            Issue.record("the router's answer did not pass")
            return
        }
        #expect(head.status == .unauthorized)
        _ = try await harness.channel.readOutbound(as: HTTPResponsePart.self)
        // With the key, the fast path serves it.
        try await harness.request("/v1/push", #"{"client_id":"a","data":"x"}"#, fields: [.authorization: "Bearer secret-key-0123456789abcdef"])
        #expect(try await harness.response()?.status == 202)
        for fields: HTTPFields in [[.expect: "100-continue", .authorization: "Bearer secret-key-0123456789abcdef"], [.transferEncoding: "chunked"]] {
            try await harness.request("/v1/push", #"{"client_id":"a","data":"x"}"#, fields: fields)
            #expect(try await harness.passedOn().count == 3)
            try await harness.channel.writeOutbound(HTTPResponsePart.head(HTTPResponse(status: .badRequest)))
            try await harness.channel.writeOutbound(HTTPResponsePart.end(nil))
            while try await harness.channel.readOutbound(as: HTTPResponsePart.self) != nil {}
        }
    }

    @Test("while the router owes an answer, a push is passed on too, so that answers keep the requests' order")
    func keepsOrder() async throws {
        let harness = try await Harness()
        try await harness.request("/v1/stats", "")
        try await harness.request("/v1/push", #"{"client_id":"a","data":"x"}"#)
        #expect(try await harness.passedOn().count == 6, "both went to the router")
        #expect(try await harness.channel.readOutbound(as: HTTPResponsePart.self) == nil)
        // The router answers the first; the next push is the fast path's again.
        try await harness.channel.writeOutbound(HTTPResponsePart.head(HTTPResponse(status: .ok)))
        try await harness.channel.writeOutbound(HTTPResponsePart.end(nil))
        try await harness.channel.writeOutbound(HTTPResponsePart.head(HTTPResponse(status: .accepted)))
        try await harness.channel.writeOutbound(HTTPResponsePart.end(nil))
        while try await harness.channel.readOutbound(as: HTTPResponsePart.self) != nil {}
        try await harness.request("/v1/push", #"{"client_id":"a","data":"y"}"#)
        #expect(try await harness.response()?.status == 202)
    }
}
