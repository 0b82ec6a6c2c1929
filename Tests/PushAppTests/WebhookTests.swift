import Actors
import Foundation
import HeraldTestSupport
import NIOCore
import Testing

@testable import PushApp

/// The webhook receiver of Tests/Webhooks/receiver.py: a Python HTTP server that checks each
/// request's signature with Python's hmac and prints what it got.
final class WebhookReceiver: @unchecked Sendable {
    struct Request {
        var status: Int
        var signatureOK: Bool
        var events: [[String: Any]]
    }

    static let secret = "a webhook secret for the tests"
    let process = Process()
    private let output: PipeReader
    let port: Int

    /// Starts a receiver answering the statuses of `script` (then 200), on `port` (0: any).
    init(script: [String] = [], port: Int = 0) async throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [
            "python3", repositoryRoot.appendingPathComponent("Tests/Webhooks/receiver.py").path, "--secret", Self.secret,
            "--port", String(port), "--script", script.joined(separator: ","),
        ]
        let pipe = ChildProcesses.pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        output = PipeReader(pipe)
        try ChildProcesses.run(process)
        var bound: Int?
        let output = output
        try await eventually("the receiver listens") {
            bound = output.text.split(separator: "\n").first { $0.hasPrefix("LISTENING ") }.flatMap { Int($0.dropFirst(10)) }
            return bound != nil
        }
        self.port = bound!
    }

    var url: String { "http://127.0.0.1:\(port)/hooks?source=herald" }

    /// Every request so far, in order.
    var requests: [Request] {
        output.text.split(separator: "\n").compactMap { line -> Request? in
            let parts = line.split(separator: " ", maxSplits: 3)
            guard parts.count == 4, parts[0] == "REQUEST", let status = Int(parts[1]) else { return nil }
            let body = try? JSONSerialization.jsonObject(with: Data(parts[3].utf8)) as? [String: Any]
            return Request(status: status, signatureOK: parts[2] == "1", events: body?["events"] as? [[String: Any]] ?? [])
        }
    }

    /// How many connections it accepted.
    var connections: Int { output.text.split(separator: "\n").count { $0 == "CONNECTION" } }

    /// The events of the requests it answered 2xx, in order.
    var delivered: [[String: Any]] {
        requests.filter { (200..<300).contains($0.status) }.flatMap(\.events)
    }

    /// SIGKILL: a child of a process that ignores SIGTERM (the test runner's signal handling)
    /// inherits the ignoring.
    func stop() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}

private func data(_ event: [String: Any]) -> [String: Any] { event["data"] as? [String: Any] ?? [:] }

@Suite("Webhooks (a lone node)", .timeLimit(.minutes(2)))
struct WebhookTests {
    private func environment(_ receiver: WebhookReceiver, _ extra: [String: String] = [:]) -> [String: String] {
        ["HERALD_WEBHOOK_URL": receiver.url, "HERALD_WEBHOOK_SECRET": WebhookReceiver.secret].merging(extra) { $1 }
    }

    @Test("every ACK of N messages makes exactly one message.acked, signed so that Python's hmac verifies it")
    func ackedEvents() async throws {
        let receiver = try await WebhookReceiver()
        defer { receiver.stop() }
        try await TestNode.with(environment(receiver, ["HERALD_WEBHOOK_EVENTS": "message.acked"])) { node in
            let device = try await node.device("hooked", autoAcknowledge: true)
            var ids: [String] = []
            for index in 0..<20 { ids.append(try await node.push("hooked", "m\(index)")) }
            _ = try await device.pushes(20)
            try await eventually("20 events delivered") { receiver.delivered.count >= 20 }
            let events = receiver.delivered
            #expect(events.count == 20)
            #expect(Set(events.compactMap { $0["id"] as? String }).count == 20, "event ids are unique")
            #expect(events.allSatisfy { $0["type"] as? String == "message.acked" && $0["at"] is Int })
            // One device's events arrive in the order they happened.
            #expect(events.compactMap { data($0)["message_id"] as? String } == ids)
            #expect(events.allSatisfy { data($0)["client_id"] as? String == "hooked" && data($0)["acked_at"] is Int })
            #expect(receiver.requests.allSatisfy { $0.signatureOK })
            // A later batch goes on the same connection (kept alive), one lane, one connection.
            ids.append(try await node.push("hooked", "later"))
            _ = try await device.pushes(1)
            try await eventually("the 21st event") { receiver.delivered.count >= 21 }
            #expect(receiver.requests.count >= 2 && receiver.connections == 1)
            await device.close()
        }
    }

    @Test("a receiver that answers 500, drops the connection, then 200: every event arrives, once, in order")
    func retries() async throws {
        let receiver = try await WebhookReceiver(script: ["500", "drop", "503"])
        defer { receiver.stop() }
        try await TestNode.with(environment(receiver, ["HERALD_WEBHOOK_EVENTS": "message.acked"])) { node in
            let device = try await node.device("patient", autoAcknowledge: true)
            var ids: [String] = []
            for index in 0..<5 { ids.append(try await node.push("patient", "m\(index)")) }
            _ = try await device.pushes(5)
            try await eventually("every event delivered", timeout: .seconds(30)) { receiver.delivered.count >= 5 }
            #expect(receiver.delivered.compactMap { data($0)["message_id"] as? String } == ids)
            #expect(receiver.requests.prefix(3).map(\.status) == [500, 0, 503])
            let metrics = try await HTTPTestClient.get("/metrics", port: node.httpPort).body
            #expect(metric("herald_webhook_attempts_failed_total", in: metrics) >= 3)
            #expect(metric("herald_webhook_events_sent_total", in: metrics) == 5)
            await device.close()
        }
    }

    @Test("the receiver down for a while, then up: everything queued meanwhile arrives")
    func receiverDown() async throws {
        // Nothing listens on the port until the receiver starts. It comes from below the
        // ephemeral range: a port inside it could meanwhile become the source port of some
        // outgoing connection, even of the node's own attempt to connect to it (TCP's
        // simultaneous open connects a socket to itself), which would then wait for an answer.
        let port = try LoopbackPort.free()
        try await TestNode.with([
            "HERALD_WEBHOOK_URL": "http://127.0.0.1:\(port)/hooks", "HERALD_WEBHOOK_SECRET": WebhookReceiver.secret,
            "HERALD_WEBHOOK_EVENTS": "message.acked,device.connected,device.disconnected",
        ]) { node in
            let device = try await node.device("waiting", autoAcknowledge: true)
            let id = try await node.push("waiting", "while the receiver is down")
            _ = try await device.pushes(1)
            await device.close()
            try await eventually("the refused attempts are counted") {
                metric("herald_webhook_attempts_failed_total", in: try await HTTPTestClient.get("/metrics", port: node.httpPort).body) >= 1
            }
            let receiver = try await WebhookReceiver(port: port)
            defer { receiver.stop() }
            try await eventually("all three events arrive", timeout: .seconds(60)) { receiver.delivered.count >= 3 }
            let types = receiver.delivered.compactMap { $0["type"] as? String }
            #expect(types == ["device.connected", "message.acked", "device.disconnected"])
            #expect(data(receiver.delivered[1])["message_id"] as? String == id)
            #expect(data(receiver.delivered[0])["node"] as? String == "test-node")
            #expect(data(receiver.delivered[2])["reason"] as? String == "device_closed")
        }
    }

    @Test("410 Gone stops the webhook; a 4xx drops that batch and goes on")
    func goneAndRejected() async throws {
        let receiver = try await WebhookReceiver(script: ["400", "200", "410"])
        defer { receiver.stop() }
        try await TestNode.with(environment(receiver, ["HERALD_WEBHOOK_EVENTS": "message.rejected", "HERALD_MAX_PENDING": "1"])) { node in
            try await node.push("full", "fills the queue")
            for expected in 1...3 {
                let refused = try await HTTPTestClient.post("/v1/push", port: node.httpPort, json: #"{"client_id": "full", "data": "x"}"#)
                #expect(refused.status == 429)
                try await eventually("request \(expected) made") { receiver.requests.count >= expected }
            }
            let metrics = { try await HTTPTestClient.get("/metrics", port: node.httpPort).body }
            try await eventually("stopped") { metric("herald_webhook_stopped", in: try await metrics()) == 1 }
            #expect(receiver.requests.map(\.status) == [400, 200, 410])
            #expect(data(receiver.requests[1].events[0])["reason"] as? String == "pending_full")
            #expect(metric("herald_webhook_events_rejected_total", in: try await metrics()) == 1)
            // Stopped: a fourth event is queued but never sent.
            _ = try await HTTPTestClient.post("/v1/push", port: node.httpPort, json: #"{"client_id": "full", "data": "x"}"#)
            try await eventually("the fourth is queued") { metric("herald_webhook_queue_depth", in: try await metrics()) >= 1 }
            #expect(receiver.requests.count == 3)
        }
    }

    @Test("an expired message makes message.expired")
    func expired() async throws {
        let receiver = try await WebhookReceiver()
        defer { receiver.stop() }
        try await TestNode.with(environment(receiver, ["HERALD_WEBHOOK_EVENTS": "message.expired"])) { node in
            let id = try await node.push("absent", "never fetched", ttl: 1)
            // The sweeper finds it within its 10 s round; a read of the device's list finds it at once.
            try await eventually("expired", timeout: .seconds(30)) {
                _ = try await HTTPTestClient.get("/v1/clients/absent/messages", port: node.httpPort)
                return receiver.delivered.count >= 1
            }
            #expect(receiver.delivered.first?["type"] as? String == "message.expired")
            #expect(data(receiver.delivered[0])["message_id"] as? String == id)
            #expect(data(receiver.delivered[0])["expires_at"] is Int)
        }
    }

    @Test("a webhook URL needs a secret, and takes only http or https")
    func configuration() throws {
        #expect(throws: (any Error).self) { try NodeConfiguration.load(["HERALD_WEBHOOK_URL": "http://127.0.0.1:1/x"]) }
        #expect(throws: (any Error).self) {
            try NodeConfiguration.load(["HERALD_WEBHOOK_URL": "ftp://host/x", "HERALD_WEBHOOK_SECRET": WebhookReceiver.secret])
        }
        #expect(throws: (any Error).self) {
            try NodeConfiguration.load([
                "HERALD_WEBHOOK_URL": "http://h/x", "HERALD_WEBHOOK_SECRET": WebhookReceiver.secret, "HERALD_WEBHOOK_EVENTS": "message.sent",
            ])
        }
        let loaded = try NodeConfiguration.load(["HERALD_WEBHOOK_URL": "https://[::1]:8443/in?x=1", "HERALD_WEBHOOK_SECRET": WebhookReceiver.secret])
        let target = try #require(loaded.webhook?.target)
        #expect(target == WebhookTarget("https://[::1]:8443/in?x=1"))
        #expect(target.host == "::1" && target.port == 8443 && target.path == "/in?x=1" && target.hostHeader == "[::1]:8443")
    }

    @Test("an event's JSON: quoting and escapes, integers of every size, null; JSONSerialization reads it back")
    func eventJSON() throws {
        let event = WebhookEvent(
            id: "ev-1", type: .messageAcked, atMillis: 1_796_574_538_528, clientID: "a\"b\\c\n",
            data: [("min", .integer(.min)), ("max", .integer(.max)), ("zero", .integer(0)), ("minus", .integer(-42)), ("none", .null), ("s", .string("é\u{1}"))]
        )
        #expect(
            event.json
                == #"{"id":"ev-1","type":"message.acked","at":1796574538528,"data":{"client_id":"a\"b\\c\n","min":-9223372036854775808,"max":9223372036854775807,"zero":0,"minus":-42,"none":null,"s":"é\u0001"}}"#
        )
        let parsed = try #require(try JSONSerialization.jsonObject(with: Data(event.json.utf8)) as? [String: Any])
        #expect(data(parsed)["client_id"] as? String == "a\"b\\c\n" && data(parsed)["s"] as? String == "é\u{1}")
    }

    @Test("the signature is HMAC-SHA256 of \"<t>.<body>\" in lowercase hex, as Python's hmac computes it")
    func signature() {
        #expect(
            WebhookSender.signature(secret: "key", timestamp: 1_700_000_000, body: ByteBuffer(string: "{}"))
                == hmacHex(key: "key", message: "1700000000.{}")
        )
    }
}

/// HMAC-SHA256 by Python's hmac, for the signature test: an implementation that is not Herald's.
private func hmacHex(key: String, message: String) -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["python3", "-c", "import hmac,hashlib,sys; print(hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha256).hexdigest())", key, message]
    // Started as every child of the tests is (ChildProcesses), or a child started meanwhile
    // could hold this pipe open and the read below would wait for that child to end.
    let pipe = ChildProcesses.pipe()
    process.standardOutput = pipe
    try? ChildProcesses.run(process)
    process.waitUntilExit()
    return String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
}

@Suite("Webhooks on Redis: events queued in Redis, sent by whichever node holds their lane", .serialized, .timeLimit(.minutes(3)))
struct RedisWebhookTests {
    private func environment(_ url: String, _ extra: [String: String] = [:]) -> [String: String] {
        [
            "HERALD_WEBHOOK_URL": url, "HERALD_WEBHOOK_SECRET": WebhookReceiver.secret, "HERALD_WEBHOOK_EVENTS": "message.acked",
            "HERALD_WEBHOOK_LEASE_S": "2",
        ].merging(extra) { $1 }
    }

    @Test(
        "every ACK taken on one node makes one message.acked, sent from Redis, in order; the status reads acked on the other node",
        arguments: RedisDeployment.allCases
    )
    func ackedAcrossNodes(redis: RedisDeployment) async throws {
        let receiver = try await WebhookReceiver()
        defer { receiver.stop() }
        // The default lease (10 s): no lane changes hands during the test, so no batch is sent twice.
        let events = environment(
            receiver.url, ["HERALD_WEBHOOK_LEASE_S": "10", "HERALD_WEBHOOK_EVENTS": "message.acked,device.connected,device.disconnected"]
        )
        try await TestCluster.with(count: 2, redis: redis, environment: events) { cluster in
            let device = try await cluster.device("hooked", on: 0)
            var ids: [String] = []
            for index in 0..<20 { ids.append(try await cluster.push("hooked", "m\(index)", via: 1)) }
            _ = try await device.pushes(20)
            func delivered(_ type: String) -> [[String: Any]] { receiver.delivered.filter { $0["type"] as? String == type } }
            try await eventually("20 events delivered", timeout: .seconds(30)) { delivered("message.acked").count >= 20 }
            let acked = delivered("message.acked")
            #expect(acked.count == 20, "one event per ACK")
            #expect(acked.compactMap { $0["id"] as? String } == ids.map { "ack-\($0)" }, "named after their message, in order")
            #expect(acked.compactMap { data($0)["message_id"] as? String } == ids)
            #expect(acked.allSatisfy { data($0)["client_id"] as? String == "hooked" && data($0)["acked_at"] is Int })
            // Sent and acknowledged on one connection: the event knows when it was written.
            #expect(acked.allSatisfy { event in (data(event)["sent_at"] as? Int).map { $0 <= data(event)["acked_at"] as! Int } ?? false })
            #expect(receiver.requests.allSatisfy { $0.signatureOK })
            let status = try JSONFields(try await HTTPTestClient.get("/v1/messages/\(ids[19])", port: cluster.nodes[1].httpPort).body)
            #expect(try status.string("state") == "acked")
            await device.close()
            // The device's own events, queued in Redis by the node it used.
            try await eventually("device.disconnected delivered", timeout: .seconds(30)) { delivered("device.disconnected").count == 1 }
            let connected = delivered("device.connected")
            #expect(connected.count == 1 && data(connected[0])["node"] as? String == "node-0")
            #expect(data(delivered("device.disconnected")[0])["reason"] as? String == "device_closed")
        }
    }

    @Test("a message that expires on a device that never comes back makes message.expired, from the sweep of the node holding its lane")
    func expiredOnRedis() async throws {
        let receiver = try await WebhookReceiver()
        defer { receiver.stop() }
        try await TestCluster.with(count: 2, environment: environment(receiver.url, ["HERALD_WEBHOOK_EVENTS": "message.expired"])) { cluster in
            let response = try await HTTPTestClient.post(
                "/v1/push", port: cluster.nodes[0].httpPort, json: #"{"client_id": "absent", "data": "never fetched", "ttl_s": 1}"#
            )
            let id = try JSONFields(response.body).string("id")
            // The sweeper runs every 10 s on every node; the one holding the lane reports it.
            try await eventually("expired", timeout: .seconds(40)) { receiver.delivered.count >= 1 }
            #expect(receiver.delivered.map { $0["id"] as? String } == ["exp-\(id)"])
            #expect(data(receiver.delivered[0])["expires_at"] is Int)
            #expect(try await cluster.client("absent", via: 1).int("pending") == 0)
            let status = try JSONFields(try await HTTPTestClient.get("/v1/messages/\(id)", port: cluster.nodes[1].httpPort).body)
            #expect(try status.string("state") == "expired")
        }
    }

    @Test("kill -9 of the node sending a lane while the receiver is down: the other node takes the lane and delivers every event")
    func killSendingNode() async throws {
        // Below the ephemeral range, as in `receiverDown`.
        let port = try LoopbackPort.free()
        try await TestCluster.with(count: 2, environment: environment("http://127.0.0.1:\(port)/hooks")) { cluster in
            let device = try await cluster.device("orphan", on: 0)
            var ids: [String] = []
            for index in 0..<30 { ids.append(try await cluster.push("orphan", "m\(index)", via: 0)) }
            _ = try await device.pushes(30)
            try await eventually("30 acknowledged") { try await cluster.client("orphan", via: 1).int("pending") == 0 }
            await device.close()
            // The node holding the device's lane has taken its events (from memory when it wrote
            // them itself, else through the group) and failed to send them: that is the one to kill.
            var sender: Int?
            try await eventually("a node tried to send", timeout: .seconds(20)) {
                for (index, node) in cluster.nodes.enumerated() {
                    let metrics = try await HTTPTestClient.get("/metrics", port: node.httpPort).body
                    if metric("herald_webhook_attempts_failed_total", in: metrics) >= 1 { sender = index }
                }
                return sender != nil
            }
            let victim = try #require(sender)
            kill(cluster.nodes[victim].process.process.processIdentifier, SIGKILL)
            _ = try await cluster.nodes[victim].process.waitForExit()
            let receiver = try await WebhookReceiver(port: port)
            defer { receiver.stop() }
            try await eventually("every event arrives from the survivor", timeout: .seconds(60)) {
                Set(receiver.delivered.compactMap { $0["id"] as? String }).count >= 30
            }
            // At least once: a batch may come twice (the dead node's answer was lost); the
            // receiver drops the copy by its event id, and then has each message once, in order.
            var seen = Set<String>()
            let unique = receiver.delivered.filter { seen.insert($0["id"] as? String ?? "").inserted }
            #expect(unique.compactMap { data($0)["message_id"] as? String } == ids)
            let survivor = cluster.nodes[1 - victim]
            // Once the dead node's leases have run out, the survivor sends every lane, and the
            // streams are empty (the figures are read from Redis every third of the lease).
            try await eventually("the survivor holds every lane, with nothing left to send", timeout: .seconds(30)) {
                let metrics = try await HTTPTestClient.get("/metrics", port: survivor.httpPort).body
                return metric("herald_webhook_lanes_held", in: metrics) == 4 && metric("herald_webhook_queue_depth", in: metrics) == 0
                    && metric("herald_webhook_oldest_event_age_seconds", in: metrics) == 0
            }
        }
    }
}
