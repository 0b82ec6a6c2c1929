import Foundation
import HeraldClient
import HeraldTestSupport
import NIOCore
import PushProtocol
import Testing

/// One `herald serve` process of a test cluster.
struct ClusterMember: Sendable {
    let id: String
    let process: HeraldTestProcess
    let devicePort: Int
    let httpPort: Int
    let relayPort: Int
    /// The fault proxy peers dial instead of the relay port, when the test asked for one.
    let proxy: FaultProxy?
}

/// Where a test cluster's nodes keep their data: one redis-server, or a Redis Cluster of six
/// (three masters, each with a replica) of the test's own.
enum RedisDeployment: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case single
    case cluster

    var testDescription: String { rawValue }

    /// Runs `body` with the URL of a fresh deployment of this kind, stopped afterwards.
    func with(_ body: (String) async throws -> Void) async throws {
        switch self {
        case .single: try await RedisServer.with { try await body($0.url) }
        case .cluster: try await RedisClusterSet.with(nodeTimeout: .seconds(5)) { try await body($0.url) }
        }
    }
}

/// A real Redis (one server, or a cluster) and several Herald processes on loopback, each with
/// its own ports (Docs/testing.md). Nodes are `node-0`, `node-1`, ...; relay links PING every second.
struct TestCluster: Sendable {
    let redisURL: String
    let nodes: [ClusterMember]

    /// Starts Redis and `count` nodes (those in `proxied` behind a fault proxy), waits until
    /// every node sees every other and every relay link is up, runs `body`, stops them all.
    static func with(
        count: Int = 3, proxied: Set<Int> = [], redis: RedisDeployment = .single, environment: [String: String] = [:],
        _ body: @Sendable (TestCluster) async throws -> Void
    ) async throws {
        try await redis.with { redisURL in
            var nodes: [ClusterMember] = []
            defer { for node in nodes { if node.process.process.isRunning { node.process.process.terminate() } } }
            for index in 0..<count {
                let proxy = proxied.contains(index) ? try await FaultProxy.start() : nil
                nodes.append(try await startMember(index, redisURL: redisURL, proxy: proxy, environment: environment))
            }
            let cluster = TestCluster(redisURL: redisURL, nodes: nodes)
            try await cluster.waitUntilFormed()
            try await body(cluster)
            for node in nodes { await node.proxy?.close() }
        }
    }

    /// Starts the process `node-<index>` on Redis (its relay behind `proxy`, if given), with
    /// the fault hooks on, and `extra` in its environment; returns once its listeners are bound.
    static func startMember(
        _ index: Int, redisURL: String, proxy: FaultProxy? = nil, environment extra: [String: String] = [:]
    ) async throws -> ClusterMember {
        var environment = [
            "HERALD_NODE_ID": "node-\(index)", "HERALD_REDIS_URL": redisURL, "HERALD_TCP_ADDR": "127.0.0.1:0",
            "HERALD_HTTP_ADDR": "127.0.0.1:0", "HERALD_RELAY_ADDR": "127.0.0.1:0", "HERALD_RELAY_PING_S": "1",
            "HERALD_DRAIN_TIMEOUT_S": "1", "HERALD_CLUSTER_SECRET": "a cluster secret of at least 32 bytes",
            "HERALD_FAULT_HOOKS": "1",
        ].merging(extra) { $1 }
        if let proxy { environment["HERALD_RELAY_ADVERTISE_ADDR"] = "127.0.0.1:\(proxy.port)" }
        let process = try HeraldTestProcess(environment: environment)
        let relayPort = try await process.boundPort("relay listener bound")
        proxy?.setUpstream(port: relayPort)
        return ClusterMember(
            id: "node-\(index)", process: process, devicePort: try await process.boundPort("device listener bound"),
            httpPort: try await process.boundPort("HTTP API bound"), relayPort: relayPort, proxy: proxy
        )
    }

    /// Every node lists every node as live, and has a relay link up to each peer.
    func waitUntilFormed() async throws {
        try await eventually("the cluster formed", timeout: .seconds(20), poll: .milliseconds(100)) {
            for node in nodes where node.process.process.isRunning {
                let stats = try await HTTPTestClient.get("/v1/stats", port: node.httpPort)
                guard stats.body.contains("\"live_nodes\":\(nodes.count)") else { return false }
                let metrics = try await HTTPTestClient.get("/metrics", port: node.httpPort).body
                guard metric("herald_relay_links_up_total", in: metrics) >= nodes.count - 1 else { return false }
            }
            return true
        }
    }

    func device(_ clientID: String, on node: Int, autoAcknowledge: Bool = true) async throws -> DeviceClient {
        try await DeviceClient.connect(
            DeviceClientConfiguration(
                port: nodes[node].devicePort, clientID: clientID, autoAcknowledge: autoAcknowledge, sendsPings: false
            )
        )
    }

    @discardableResult
    func push(_ clientID: String, _ data: String, via node: Int) async throws -> String {
        let response = try await HTTPTestClient.post(
            "/v1/push", port: nodes[node].httpPort, json: #"{"client_id": "\#(clientID)", "data": "\#(data)"}"#
        )
        try #require(response.status == 202, "push via node-\(node) answered \(response.status) \(response.body)")
        return try JSONFields(response.body).string("id")
    }

    func client(_ clientID: String, via node: Int) async throws -> JSONFields {
        try JSONFields(try await HTTPTestClient.get("/v1/clients/\(clientID)", port: nodes[node].httpPort).body)
    }
}

/// The value of an unlabelled counter in Prometheus text, 0 when absent.
func metric(_ name: String, in text: String) -> Int {
    for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
        return Int(Double(line.split(separator: " ").last ?? "") ?? 0)
    }
    return 0
}

@Suite("Cluster: three processes on one Redis or a Redis Cluster (issue: cluster)", .serialized, .timeLimit(.minutes(2)))
struct ClusterTests {
    @Test("a push through any node reaches a device on any node, in order, and any node knows where it is", arguments: RedisDeployment.allCases)
    func pushAnywhere(redis: RedisDeployment) async throws {
        try await TestCluster.with(redis: redis) { cluster in
            let devices = try await (0..<3).asyncMap { try await cluster.device("d\($0)", on: $0) }
            var sent: [[String]] = [[], [], []]
            for via in 0..<3 {
                for target in 0..<3 {
                    sent[target].append(try await cluster.push("d\(target)", "from \(via) to \(target)", via: via))
                }
            }
            for target in 0..<3 {
                let pushes = try await devices[target].pushes(3)
                #expect(pushes.map(\.id) == sent[target])
                #expect(pushes.map(\.text) == (0..<3).map { "from \($0) to \(target)" })
            }
            for via in 0..<3 {
                let status = try await cluster.client("d2", via: via)
                #expect(try status.bool("online"))
                #expect(try status.string("node") == "node-2")
            }
            let stats = try JSONFields(try await HTTPTestClient.get("/v1/stats", port: cluster.nodes[0].httpPort).body)
            let view = try #require(stats.object["cluster"] as? [String: Any])
            #expect(view["live_nodes"] as? Int == 3)
            // DELETE through another node closes the device's connection where it is.
            let response = try await HTTPTestClient.request(.DELETE, "/v1/clients/d1/connection", port: cluster.nodes[0].httpPort)
            #expect(response.status == 204)
            #expect(try await devices[1].next() == .closed)
            try await eventually("d1 offline everywhere") { try await !cluster.client("d1", via: 2).bool("online") }
            for device in devices { await device.close() }
        }
    }

    @Test("HELLO on another node takes over: the old connection gets ERROR 409, the new one the unacknowledged messages in order", arguments: RedisDeployment.allCases)
    func takeoverAcrossNodes(redis: RedisDeployment) async throws {
        try await TestCluster.with(redis: redis) { cluster in
            let old = try await cluster.device("roamer", on: 0, autoAcknowledge: false)
            let ids = try await (0..<3).asyncMap { try await cluster.push("roamer", "m\($0)", via: 2) }
            #expect(try await old.pushes(3).map(\.id) == ids)
            let new = try await cluster.device("roamer", on: 1, autoAcknowledge: false)
            guard case .error(409, _) = try await old.next() else {
                Issue.record("the old connection was not replaced with ERROR 409")
                return
            }
            #expect(try await new.pushes(3).map(\.id) == ids)
            // The old connection's close must not delete the route the new one wrote.
            #expect(try await old.next() == .closed)
            try await eventually("node-0 let the old connection go") {
                try JSONFields(try await HTTPTestClient.get("/v1/stats", port: cluster.nodes[0].httpPort).body).int("connections") == 0
            }
            #expect(try await cluster.client("roamer", via: 2).string("node") == "node-1")
            let later = try await cluster.push("roamer", "after", via: 0)
            #expect(try await new.pushes(1).map(\.id) == [later])
            await new.close()
            await old.close()
        }
    }

    @Test("message status is one truth across the cluster: pushed through one node, sent and acked on another, read on a third", arguments: RedisDeployment.allCases)
    func statusAcrossNodes(redis: RedisDeployment) async throws {
        try await TestCluster.with(redis: redis) { cluster in
            func state(_ id: String, via node: Int) async throws -> String? {
                let response = try await HTTPTestClient.get("/v1/messages/\(id)", port: cluster.nodes[node].httpPort)
                return response.status == 200 ? try JSONFields(response.body).string("state") : nil
            }
            let id = try await cluster.push("watched", "status", via: 0)
            #expect(try await state(id, via: 2) == "stored")
            let listed = try JSONFields(try await HTTPTestClient.get("/v1/clients/watched/messages", port: cluster.nodes[1].httpPort).body)
            #expect((listed.object["messages"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == [id])

            let device = try await cluster.device("watched", on: 1, autoAcknowledge: false)
            #expect(try await device.pushes(1).map(\.id) == [id])
            try await eventually("sent, seen on node-2") { try await state(id, via: 2) == "sent" }
            device.acknowledge(id)
            try await eventually("acked, seen on node-0") { try await state(id, via: 0) == "acked" }
            let status = try JSONFields(try await HTTPTestClient.get("/v1/messages/\(id)", port: cluster.nodes[2].httpPort).body)
            #expect(try status.string("client_id") == "watched")
            #expect(try status.int("accepted_at") <= status.int("sent_at") && status.int("sent_at") <= status.int("acked_at"))
            let after = try JSONFields(try await HTTPTestClient.get("/v1/clients/watched/messages", port: cluster.nodes[2].httpPort).body)
            #expect((after.object["messages"] as? [Any])?.isEmpty == true)
            await device.close()
        }
    }

    @Test("a broadcast through one node reaches the devices of every node, and any node reports how many each reached")
    func broadcastEverywhere() async throws {
        try await TestCluster.with { cluster in
            let devices = try await (0..<3).asyncMap { try await cluster.device("b\($0)", on: $0) }
            let response = try await HTTPTestClient.post("/v1/broadcast", port: cluster.nodes[1].httpPort, json: #"{"data": "to all"}"#)
            #expect(response.status == 202)
            let id = try JSONFields(response.body).string("id")
            for device in devices {
                let pushes = try await device.pushes(1)
                #expect(pushes.map(\.id) == [id])
                #expect(pushes.map(\.text) == ["to all"])
                await device.close()
            }
            // Its status, read on another node: how many connections of each node it reached.
            try await eventually("every node's count recorded") {
                let response = try await HTTPTestClient.get("/v1/messages/\(id)", port: cluster.nodes[2].httpPort)
                guard response.status == 200 else { return false }
                let status = try JSONFields(response.body)
                return try status.string("type") == "broadcast" && status.object["sent"] as? [String: Int] == ["node-0": 1, "node-1": 1, "node-2": 1]
            }
        }
    }

    @Test("kill -9 of the owning node with messages in flight: on another node the device gets every unacknowledged one, in order", arguments: RedisDeployment.allCases)
    func killOwningNode(redis: RedisDeployment) async throws {
        try await TestCluster.with(redis: redis) { cluster in
            let device = try await cluster.device("mover", on: 0, autoAcknowledge: false)
            var ids: [String] = []
            for index in 0..<20 { ids.append(try await cluster.push("mover", "m\(index)", via: 1)) }
            let first = try await device.pushes(20)
            #expect(first.map(\.id) == ids)
            for push in first.prefix(10) { device.acknowledge(push.id) }
            try await eventually("10 acknowledged") { try await cluster.client("mover", via: 2).int("pending") == 10 }
            // More messages while the owning node dies: each is stored (202) before the kill.
            for index in 20..<40 { ids.append(try await cluster.push("mover", "m\(index)", via: 2)) }
            kill(cluster.nodes[0].process.process.processIdentifier, SIGKILL)
            _ = try await cluster.nodes[0].process.waitForExit()
            await device.close()
            let moved = try await cluster.device("mover", on: 1, autoAcknowledge: true)
            let pushes = try await moved.pushes(30)
            #expect(pushes.map(\.id) == Array(ids[10...]), "every unacknowledged message, in order, nothing lost")
            try await eventually("all acknowledged") { try await cluster.client("mover", via: 2).int("pending") == 0 }
            await moved.close()
        }
    }

    @Test("a node that stored a message and left without relaying it: the device connected elsewhere gets it once the node is gone")
    func storedNeverRelayed() async throws {
        try await TestCluster.with(count: 2) { cluster in
            let device = try await cluster.device("stranded", on: 0)
            let hook = try await HTTPTestClient.post("/debug/stop-relaying", port: cluster.nodes[1].httpPort, json: "{}")
            #expect(hook.status == 202)
            let id = try await cluster.push("stranded", "stored, never relayed", via: 1)
            // node-1 leaves the cluster; node-0 sees it gone at its next member-list read, and
            // its devices re-read their queues (the message would otherwise wait for the
            // device's next connection, or its next message).
            cluster.nodes[1].process.process.terminate()
            _ = try await cluster.nodes[1].process.waitForExit()
            #expect(try await device.pushes(1).map(\.id) == [id])
            await device.close()
        }
    }

    @Test("a node that has just joined, before its relay links exist, still gets its first pushes to a device connected elsewhere")
    func pushThroughJoiningNode() async throws {
        try await TestCluster.with(count: 2) { cluster in
            let device = try await cluster.device("early", on: 0)
            let joining = try await TestCluster.startMember(2, redisURL: cluster.redisURL)
            defer { joining.process.process.terminate() }
            // As soon as its store answers: typically before its first member-list read has
            // started a relay to node-0 (a 503 before that stores nothing).
            var id: String?
            try await eventually("the joining node accepts a push", poll: .milliseconds(10)) {
                let response = try await HTTPTestClient.post(
                    "/v1/push", port: joining.httpPort, json: #"{"client_id": "early", "data": "first"}"#
                )
                if response.status == 202 { id = try JSONFields(response.body).string("id") }
                return id != nil
            }
            #expect(try await device.pushes(1).map(\.id) == [try #require(id)])
            await device.close()
        }
    }

    @Test("a cut relay link loses nothing: the messages wait in Redis and arrive when the link heals")
    func cutRelayLink() async throws {
        try await TestCluster.with(proxied: [1]) { cluster in
            let proxy = try #require(cluster.nodes[1].proxy)
            let device = try await cluster.device("far", on: 1)
            let before = try await cluster.push("far", "before", via: 0)
            #expect(try await device.pushes(1).map(\.id) == [before])
            proxy.set(.cut)
            var ids: [String] = []
            for index in 0..<10 { ids.append(try await cluster.push("far", "cut \(index)", via: 0)) }
            proxy.set(.pass)
            #expect(try await device.pushes(10, timeout: .seconds(20)).map(\.id) == ids)
            await device.close()
        }
    }

    @Test("a black-holed relay link (no RST, nothing answers) is noticed by its PINGs; nothing is lost")
    func blackholedRelayLink() async throws {
        try await TestCluster.with(count: 2, proxied: [1]) { cluster in
            let proxy = try #require(cluster.nodes[1].proxy)
            let device = try await cluster.device("dark", on: 1)
            proxy.set(.blackhole)
            var ids: [String] = []
            for index in 0..<10 { ids.append(try await cluster.push("dark", "dark \(index)", via: 0)) }
            // The link looks up; what went into it is only known lost once PINGs go unanswered.
            let downs = { metric("herald_relay_links_down_total", in: try await HTTPTestClient.get("/metrics", port: cluster.nodes[0].httpPort).body) }
            try await eventually("node-0 gives the silent link up", timeout: .seconds(15), poll: .milliseconds(200)) { try await downs() >= 1 }
            proxy.set(.pass)
            #expect(try await device.pushes(10, timeout: .seconds(20)).map(\.id) == ids)
            await device.close()
        }
    }

    @Test("a node that stops leaves the member list at once, one that dies when its lease runs out; their relays stop")
    func membership() async throws {
        try await TestCluster.with { cluster in
            func view(from node: Int) async throws -> (live: Int, health: String) {
                let stats = try JSONFields(try await HTTPTestClient.get("/v1/stats", port: cluster.nodes[node].httpPort).body)
                let live = (stats.object["cluster"] as? [String: Any])?["live_nodes"] as? Int ?? -1
                return (live, try await HTTPTestClient.get("/healthz", port: cluster.nodes[node].httpPort).body)
            }
            #expect(try await view(from: 0).health.contains("relay:node-2"))
            kill(cluster.nodes[1].process.process.processIdentifier, SIGTERM)
            #expect(try await cluster.nodes[1].process.waitForExit() == 0)
            try await eventually("node-1 deregistered", timeout: .seconds(5), poll: .milliseconds(100)) {
                let (live, health) = try await view(from: 0)
                return live == 2 && !health.contains("relay:node-1")
            }
            kill(cluster.nodes[2].process.process.processIdentifier, SIGKILL)
            _ = try await cluster.nodes[2].process.waitForExit()
            try await eventually("node-2's lease ran out", timeout: .seconds(20), poll: .milliseconds(200)) {
                let (live, health) = try await view(from: 0)
                return live == 1 && !health.contains("relay:node-2")
            }
        }
    }

    @Test("a stranger on the relay port (wrong token, or no RELAY_HELLO) is closed and delivers nothing")
    func strangerOnRelayPort() async throws {
        try await TestCluster.with(count: 2) { cluster in
            let victim = try await cluster.device("victim", on: 1)
            let forged = RelayFrame.deliver(
                RelayedMessage(clientID: "victim", messageID: "forged", sequence: 1, expiresAtMillis: Int64.max, payload: ByteBuffer(string: "x"))
            )
            for opening in [RelayFrame.hello(version: 1, nodeID: "node-0", incarnation: 1, token: "not the token"), forged] {
                let stranger = try await RawConnection.connect(port: cluster.nodes[1].relayPort)
                var bytes = ByteBuffer()
                bytes.writeRelayFrame(opening)
                bytes.writeRelayFrame(forged)
                try await stranger.send(Array(buffer: bytes))
                _ = try await stranger.waitForClose()
            }
            let metrics = try await HTTPTestClient.get("/metrics", port: cluster.nodes[1].httpPort).body
            #expect(metric("herald_relay_links_refused_total", in: metrics) == 2)
            let real = try await cluster.push("victim", "real", via: 0)
            #expect(try await victim.pushes(1).map(\.id) == [real], "the forged DELIVER never reached the device")
            await victim.close()
        }
    }
}

extension Sequence {
    /// `map` with an async transform, in order.
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var result: [T] = []
        for element in self { result.append(try await transform(element)) }
        return result
    }
}
