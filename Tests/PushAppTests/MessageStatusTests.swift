import Actors
import HeraldTestSupport
import Testing

@testable import PushApp

/// `GET /v1/messages/{id}` and `GET /v1/clients/{id}/messages` against a real node, its
/// sockets and a real device (Docs/http-api.md, "Message status").
@Suite("Message status", .timeLimit(.minutes(1)))
struct MessageStatusTests {
    private func status(_ id: String, _ node: TestNode) async throws -> (code: Int, body: JSONFields) {
        let response = try await HTTPTestClient.get("/v1/messages/\(id)", port: node.httpPort)
        return (response.status, try JSONFields(response.body))
    }

    private func state(_ id: String, _ node: TestNode) async throws -> String? {
        let (code, body) = try await status(id, node)
        return code == 200 ? try body.string("state") : nil
    }

    @Test("a message reads stored, then sent once written to its device, then acked with its times")
    func lifecycle() async throws {
        try await TestNode.with { node in
            let before = WallClock.millisecondsSinceEpoch()
            let id = try await node.push("alice", "hello", ttl: 600)
            var (code, body) = try await status(id, node)
            #expect(code == 200)
            #expect(try body.string("id") == id && body.string("client_id") == "alice" && body.string("state") == "stored")
            let accepted = try body.int("accepted_at")
            #expect(accepted >= before && accepted <= WallClock.millisecondsSinceEpoch())
            let expires = try body.int("expires_at")
            #expect(expires >= before + 600_000 && expires <= accepted + 600_000)
            #expect(body.isNull("sent_at") && body.isNull("acked_at"))

            let device = try await node.device("alice")
            #expect(try await device.pushes(1).map(\.id) == [id])
            try await eventually("sent") { try await state(id, node) == "sent" }
            (_, body) = try await status(id, node)
            let sent = try body.int("sent_at")
            #expect(sent >= accepted && body.isNull("acked_at"))

            device.acknowledge(id)
            try await eventually("acked") { try await state(id, node) == "acked" }
            (_, body) = try await status(id, node)
            #expect(try body.int("sent_at") == sent && body.int("acked_at") >= sent)
            await device.close()
        }
    }

    @Test("a device's pending messages page by sequence, with their states and ages")
    func pendingList() async throws {
        try await TestNode.with { node in
            var ids: [String] = []
            for index in 1...5 { ids.append(try await node.push("bob", "m\(index)")) }
            let first = try await HTTPTestClient.get("/v1/clients/bob/messages?limit=2", port: node.httpPort)
            #expect(first.status == 200)
            let page = try JSONFields(first.body)
            let entries = try #require(page.object["messages"] as? [[String: Any]])
            #expect(entries.compactMap { $0["id"] as? String } == Array(ids.prefix(2)))
            #expect(entries.allSatisfy { $0["state"] as? String == "stored" && ($0["age_ms"] as? Int ?? -1) >= 0 })
            let after = try page.int("next_after")
            let rest = try JSONFields(try await HTTPTestClient.get("/v1/clients/bob/messages?after=\(after)&limit=10", port: node.httpPort).body)
            #expect((rest.object["messages"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == Array(ids.suffix(3)))
            #expect(rest.isNull("next_after"))
            for query in ["limit=0", "limit=1001", "after=-1", "after=x", "after=9223372036854775808"] {
                #expect(try await HTTPTestClient.get("/v1/clients/bob/messages?\(query)", port: node.httpPort).status == 400, "\(query)")
            }
            let metrics = try await HTTPTestClient.get("/metrics", port: node.httpPort).body
            #expect(metrics.contains("herald_receipts 5"), "\(metrics)")
            let unknown = try JSONFields(try await HTTPTestClient.get("/v1/clients/nobody/messages", port: node.httpPort).body)
            #expect((unknown.object["messages"] as? [Any])?.isEmpty == true)
        }
    }

    @Test("an unknown id is 404 not_found; a wrong method on the path is still 405")
    func unknown() async throws {
        try await TestNode.with { node in
            let response = try await HTTPTestClient.get("/v1/messages/no-such-id", port: node.httpPort)
            #expect(response.status == 404)
            #expect(try (JSONFields(response.body).object["error"] as? [String: Any])?["code"] as? String == "not_found")
            let wrongMethod = try await HTTPTestClient.post("/v1/messages/no-such-id", port: node.httpPort, json: "{}")
            #expect(wrongMethod.status == 405)
        }
    }

    @Test("a broadcast reads as one: accepted, and written to how many connections of each node")
    func broadcast() async throws {
        try await TestNode.with { node in
            let devices = [try await node.device("carol"), try await node.device("dave")]
            let response = try await HTTPTestClient.post("/v1/broadcast", port: node.httpPort, json: #"{"data": "all"}"#)
            let id = try JSONFields(response.body).string("id")
            let (code, body) = try await status(id, node)
            #expect(code == 200)
            #expect(try body.string("type") == "broadcast")
            #expect(body.object["sent"] as? [String: Int] == ["test-node": 2])
            for device in devices { await device.close() }
        }
    }

    @Test("HERALD_RECEIPT_RETENTION_S=0 keeps no status: the reads say so")
    func off() async throws {
        try await TestNode.with(["HERALD_RECEIPT_RETENTION_S": "0"]) { node in
            let id = try await node.push("erin", "x")
            for path in ["/v1/messages/\(id)", "/v1/clients/erin/messages"] {
                let response = try await HTTPTestClient.get(path, port: node.httpPort)
                #expect(response.status == 404)
                #expect(try (JSONFields(response.body).object["error"] as? [String: Any])?["code"] as? String == "receipts_off")
            }
        }
    }
}
