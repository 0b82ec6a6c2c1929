import HeraldTestSupport
import Testing

@testable import PushApp

private func errorCode(_ response: HTTPTestResponse) throws -> String {
    let error = try #require(try JSONFields(response.body).object["error"] as? [String: Any], "error body in \(response.body)")
    #expect(error["message"] is String)
    return try #require(error["code"] as? String)
}

@Suite("HTTP API (protocol.md §2)", .timeLimit(.minutes(1)))
struct HTTPAPITests {
    @Test("with API keys, /v1/ needs a right Bearer key; /healthz, /readyz and /metrics do not")
    func apiKeys() async throws {
        try await TestNode.with(["HERALD_API_KEYS": "key-one, key-two"]) { node in
            let body = #"{"client_id": "alice", "data": "x"}"#
            for headers in [[], [("Authorization", "Bearer nope")], [("Authorization", "key-one")], [("Authorization", "Bearer key-on")]] {
                let response = try await HTTPTestClient.post("/v1/push", port: node.httpPort, json: body, headers: headers)
                #expect(response.status == 401)
                #expect(try errorCode(response) == "unauthorized")
            }
            for key in ["key-one", "key-two"] {
                let response = try await HTTPTestClient.post(
                    "/v1/push", port: node.httpPort, json: body, headers: [("Authorization", "Bearer \(key)")]
                )
                #expect(response.status == 202)
            }
            for path in ["/healthz", "/readyz", "/metrics"] {
                #expect(try await HTTPTestClient.get(path, port: node.httpPort).status == 200, "\(path)")
            }
            let stats = try await HTTPTestClient.get("/v1/stats", port: node.httpPort)
            #expect(stats.status == 401)
        }
    }

    @Test(
        "bad push bodies are 400 with a JSON error and store nothing",
        arguments: [
            "not json", #"{"data": "x"}"#, #"{"client_id": "alice"}"#, #"{"client_id": "alice", "data": "x", "data_base64": "eA=="}"#,
            #"{"client_id": "bad id", "data": "x"}"#, #"{"client_id": "alice", "data": 5}"#,
            #"{"client_id": "alice", "data_base64": "not base64!"}"#, #"{"client_id": "alice", "data": "x", "ttl_s": 0}"#,
            #"{"client_id": "alice", "data": "x", "ttl_s": "soon"}"#, "[]",
        ]
    )
    func badPushes(body: String) async throws {
        try await TestNode.with { node in
            let response = try await HTTPTestClient.post("/v1/push", port: node.httpPort, json: body)
            #expect(response.status == 400, "\(body) -> \(response.body)")
            #expect(response.header("content-type") == "application/json")
            _ = try errorCode(response)
            #expect(try await node.pending("alice") == 0)
        }
    }

    @Test("a payload of exactly max_payload bytes is accepted; one byte more is 413")
    func payloadLimit() async throws {
        try await TestNode.with(["HERALD_MAX_PAYLOAD": "16"]) { node in
            let ok = try await HTTPTestClient.post(
                "/v1/push", port: node.httpPort, json: #"{"client_id": "alice", "data": "\#(String(repeating: "a", count: 16))"}"#
            )
            #expect(ok.status == 202)
            let tooBig = try await HTTPTestClient.post(
                "/v1/push", port: node.httpPort, json: #"{"client_id": "alice", "data": "\#(String(repeating: "a", count: 17))"}"#
            )
            #expect(tooBig.status == 413)
            #expect(try errorCode(tooBig) == "payload_too_large")
            // 12 bytes of base64 decode to 9 bytes (the decoded size counts), 24 to 18.
            let base64 = try await HTTPTestClient.post(
                "/v1/push", port: node.httpPort, json: #"{"client_id": "alice", "data_base64": "AAAAAAAAAAAAAAAAAAAAAAAA"}"#
            )
            #expect(base64.status == 413)
            let broadcast = try await HTTPTestClient.post(
                "/v1/broadcast", port: node.httpPort, json: #"{"data": "\#(String(repeating: "a", count: 17))"}"#
            )
            #expect(broadcast.status == 413)
            #expect(try await node.pending("alice") == 1)
        }
    }

    @Test("data_base64 delivers the decoded bytes")
    func base64Payload() async throws {
        try await TestNode.with { node in
            let device = try await node.device("alice")
            let response = try await HTTPTestClient.post(
                "/v1/push", port: node.httpPort, json: #"{"client_id": "alice", "data_base64": "aGVsbG8="}"#
            )
            #expect(response.status == 202)
            #expect(try await device.pushes(1)[0].text == "hello")
            await device.close()
        }
    }

    @Test("a batch returns ids in request order, and is all or nothing")
    func batch() async throws {
        try await TestNode.with { node in
            let good = try await HTTPTestClient.post(
                "/v1/push/batch", port: node.httpPort,
                json: #"{"messages": [{"client_id": "a", "data": "1"}, {"client_id": "b", "data": "2"}, {"client_id": "a", "data": "3"}]}"#
            )
            #expect(good.status == 202)
            let ids = try #require(try JSONFields(good.body).object["ids"] as? [String])
            #expect(ids.count == 3)
            let device = try await node.device("a")
            #expect(try await device.pushes(2).map(\.id) == [ids[0], ids[2]])
            await device.close()
            let bad = try await HTTPTestClient.post(
                "/v1/push/batch", port: node.httpPort,
                json: #"{"messages": [{"client_id": "c", "data": "1"}, {"client_id": "bad id", "data": "2"}]}"#
            )
            #expect(bad.status == 400)
            #expect(try await node.pending("c") == 0)
        }
    }

    @Test("a full pending queue is 429 and the whole batch is refused")
    func pendingCap() async throws {
        try await TestNode.with(["HERALD_MAX_PENDING": "2"]) { node in
            try await node.push("full", "1")
            try await node.push("full", "2")
            let refused = try await HTTPTestClient.post("/v1/push", port: node.httpPort, json: #"{"client_id": "full", "data": "3"}"#)
            #expect(refused.status == 429)
            #expect(try errorCode(refused) == "too_many_requests")
            let batch = try await HTTPTestClient.post(
                "/v1/push/batch", port: node.httpPort,
                json: #"{"messages": [{"client_id": "other", "data": "1"}, {"client_id": "full", "data": "2"}]}"#
            )
            #expect(batch.status == 429)
            #expect(try await node.pending("other") == 0)
            #expect(try await node.pending("full") == 2)
        }
    }

    @Test("client status: a never-seen id is offline with nothing pending; a connected one names this node")
    func clientStatus() async throws {
        try await TestNode.with { node in
            let unknown = try JSONFields(try await HTTPTestClient.get("/v1/clients/nobody", port: node.httpPort).body)
            #expect(try unknown.bool("online") == false)
            #expect(unknown.isNull("node"))
            #expect(try unknown.int("pending") == 0)
            #expect(try unknown.string("client_id") == "nobody")
            let device = try await node.device("some.one@x:y-z_")
            let known = try JSONFields(try await HTTPTestClient.get("/v1/clients/some.one@x:y-z_", port: node.httpPort).body)
            #expect(try known.bool("online"))
            #expect(try known.string("node") == "test-node")
            await device.close()
        }
    }

    @Test("DELETE of a client's connection closes it and answers 204; the device may reconnect")
    func kick() async throws {
        try await TestNode.with { node in
            let device = try await node.device("kicked")
            let response = try await HTTPTestClient.request(.DELETE, "/v1/clients/kicked/connection", port: node.httpPort)
            #expect(response.status == 204)
            #expect(try await device.next() == .closed)
            let again = try await node.device("kicked")
            await again.close()
            let none = try await HTTPTestClient.request(.DELETE, "/v1/clients/ghost/connection", port: node.httpPort)
            #expect(none.status == 204)
        }
    }

    @Test("a known path with another method is 405 with Allow; a percent-encoded client id is the same id")
    func methodsAndEscapes() async throws {
        try await TestNode.with { node in
            let trace = try await HTTPTestClient.request(.RAW(value: "TRACE"), "/v1/stats", port: node.httpPort)
            #expect(trace.status == 405)
            #expect(trace.header("Allow") == "GET")
            #expect(try errorCode(trace) == "method_not_allowed")
            let put = try await HTTPTestClient.request(.PUT, "/v1/clients/alice", port: node.httpPort)
            #expect(put.status == 405 && put.header("Allow") == "GET")
            try await node.push("a:b", "escaped")
            let status = try JSONFields(try await HTTPTestClient.get("/v1/clients/a%3Ab", port: node.httpPort).body)
            #expect(try status.string("client_id") == "a:b")
            #expect(try status.int("pending") == 1)
            let broken = try await HTTPTestClient.get("/v1/clients/a%3", port: node.httpPort)
            #expect(broken.status == 400)
            // An optional field is absent or of its type, never null; a refused push stores nothing.
            for body in [#"{"client_id": "n", "data": "x", "ttl_s": null}"#, #"{"client_id": "n", "data": "x", "data_base64": null}"#] {
                let response = try await HTTPTestClient.post("/v1/push", port: node.httpPort, json: body)
                #expect(response.status == 400, "\(body)")
            }
            #expect(try await node.pending("n") == 0)
        }
    }

    @Test("an unknown path is 404 with a JSON error; stats, health and metrics answer")
    func operations() async throws {
        try await TestNode.with { node in
            let missing = try await HTTPTestClient.get("/v2/nothing", port: node.httpPort)
            #expect(missing.status == 404)
            #expect(try errorCode(missing) == "not_found")
            let device = try await node.device("counted")
            let stats = try JSONFields(try await HTTPTestClient.get("/v1/stats", port: node.httpPort).body)
            #expect(try stats.string("node") == "test-node")
            #expect(try stats.int("connections") == 1)
            let health = try await HTTPTestClient.get("/healthz", port: node.httpPort)
            #expect(health.status == 200)
            #expect(try JSONFields(health.body).bool("healthy"))
            try await node.push("counted", "x")
            _ = try await device.pushes(1)
            let metrics = try await HTTPTestClient.get("/metrics", port: node.httpPort)
            #expect(metrics.body.contains("herald_pushes_accepted_total 1"))
            #expect(metrics.body.contains("herald_connections 1"))
            await device.close()
        }
    }
}
