import Foundation
import HeraldClient
import HeraldTestSupport
import PushProtocol
import Testing

@testable import PushApp

@Suite("A node on Redis", .timeLimit(.minutes(2)))
struct RedisNodeTests {
    @Test("pushes are stored in Redis and delivered in order; ACKs delete them")
    func storeAndDeliver() async throws {
        try await RedisServer.with { redis in
            try await TestNode.with(["HERALD_REDIS_URL": redis.url]) { node in
                var ids: [String] = []
                for index in 0..<30 { ids.append(try await node.push("rita", "m\(index)")) }
                #expect(try await node.pending("rita") == 30)
                let device = try await node.device("rita", autoAcknowledge: true)
                #expect(try await device.pushes(30).map(\.id) == ids)
                try await eventually("all acknowledged") { try await node.pending("rita") == 0 }
                let stats = try JSONFields(try await HTTPTestClient.get("/v1/stats", port: node.httpPort).body)
                #expect(try stats.string("store") == "redis")
                // Redis's size, read by the store monitor (every 5 s): the 30 statuses kept, and more.
                try await eventually("Redis's size in /metrics", timeout: .seconds(20)) {
                    let metrics = try await HTTPTestClient.get("/metrics", port: node.httpPort).body
                    return metric("herald_redis_keys", in: metrics) >= 30 && metric("herald_redis_used_memory_bytes", in: metrics) > 100_000
                }
                await device.close()
            }
        }
    }

    @Test("on a Redis that loaded Herald's module: pushes and a batch are stored through HERALD.APPEND and delivered in order; ACKs delete them through HERALD.ACK")
    func throughTheModule() async throws {
        try await RedisServer.with(arguments: try await HeraldRedisModule.arguments()) { redis in
            try await TestNode.with(["HERALD_REDIS_URL": redis.url]) { node in
                var ids: [String] = []
                for index in 0..<20 { ids.append(try await node.push("mona", "m\(index)")) }
                let batch = try await HTTPTestClient.post(
                    "/v1/push/batch", port: node.httpPort,
                    json: #"{"messages": [{"client_id": "mona", "data": "b0"}, {"client_id": "nils", "data": "n0"}, {"client_id": "mona", "data": "b1"}]}"#
                )
                #expect(batch.status == 202)
                let device = try await node.device("mona", autoAcknowledge: true)
                #expect(try await device.pushes(22).map(\.text) == (0..<20).map { "m\($0)" } + ["b0", "b1"])
                try await eventually("all acknowledged") { try await node.pending("mona") == 0 }
                let stats = try await redis.cli(["INFO", "commandstats"])
                #expect(stats.contains("cmdstat_herald.append:"), "the module did the appends")
                #expect(stats.contains("cmdstat_herald.ack:") && !stats.contains("cmdstat_xdel:"), "and the ACKs (status on, the default)")
                let status = try JSONFields(try await HTTPTestClient.get("/v1/messages/\(ids[0])", port: node.httpPort).body)
                #expect(try status.string("state") == "acked")
                #expect(try status.int("accepted_at") <= status.int("sent_at") && status.int("sent_at") <= status.int("acked_at"))
                await device.close()
            }
        }
    }

    @Test("on a Redis Cluster (redis+cluster://, with AUTH): pushes stored and delivered, a batch across masters is one 202, a full device refuses it; a wrong password keeps the node unready")
    func onRedisCluster() async throws {
        try await RedisClusterSet.withShared { cluster in
            // "a" and "b" hash to slots on different masters. The cluster requires AUTH.
            try await TestNode.with(["HERALD_REDIS_URL": cluster.url, "HERALD_MAX_PENDING": "3"]) { node in
                let batch = try await HTTPTestClient.post(
                    "/v1/push/batch", port: node.httpPort,
                    json: #"{"messages": [{"client_id": "a", "data": "1"}, {"client_id": "b", "data": "2"}, {"client_id": "a", "data": "3"}]}"#
                )
                #expect(batch.status == 202, "\(batch.body)")
                let ids = try #require(try JSONFields(batch.body).object["ids"] as? [String])
                let device = try await node.device("a", autoAcknowledge: true)
                #expect(try await device.pushes(2).map(\.id) == [ids[0], ids[2]])
                try await eventually("a's messages acknowledged") { try await node.pending("a") == 0 }
                await device.close()
                for index in 0..<2 { try await node.push("b", "fill \(index)") }
                let refused = try await HTTPTestClient.post(
                    "/v1/push/batch", port: node.httpPort,
                    json: #"{"messages": [{"client_id": "a", "data": "4"}, {"client_id": "b", "data": "5"}]}"#
                )
                #expect(refused.status == 429)
                #expect(try await node.pending("a") == 0, "a's message of the refused batch was taken back")
                #expect(try await node.pending("b") == 3)
            }
            // The cluster requires a password (cluster.url carries it): a wrong one is refused
            // by every node, so the node stays unready and stores nothing.
            let wrong = cluster.url.replacingOccurrences(of: ":\(RedisClusterSet.password)@", with: ":wrong@")
            try await TestNode.with(["HERALD_REDIS_URL": wrong], waitForStore: false) { node in
                let response = try await HTTPTestClient.post("/v1/push", port: node.httpPort, json: #"{"client_id": "a", "data": "x"}"#)
                #expect(response.status == 503)
                #expect(try await HTTPTestClient.get("/readyz", port: node.httpPort).status == 503)
            }
        }
        #expect(throws: ConfigurationError.self, "a cluster has no SELECT") {
            try NodeConfiguration.load(["HERALD_REDIS_URL": "redis+cluster://127.0.0.1:7000/2"])
        }
    }

    @Test("a password in the URL is sent with AUTH; a wrong one keeps the node unready")
    func auth() async throws {
        try await RedisServer.with(arguments: ["--requirepass", "s3cret"]) { redis in
            try await TestNode.with(["HERALD_REDIS_URL": "redis://:s3cret@127.0.0.1:\(redis.port)"]) { node in
                try await node.push("authed", "ok")
                #expect(try await node.pending("authed") == 1)
            }
            try await TestNode.with(["HERALD_REDIS_URL": "redis://:wrong@127.0.0.1:\(redis.port)"], waitForStore: false) { node in
                let response = try await HTTPTestClient.post("/v1/push", port: node.httpPort, json: #"{"client_id": "a", "data": "x"}"#)
                #expect(response.status == 503)
                #expect(try await HTTPTestClient.get("/readyz", port: node.httpPort).status == 503)
            }
        }
    }

    @Test("unix:// reaches a Redis that has no TCP port through its socket, with AUTH and SELECT: pushes stored in that database and delivered, ACKs delete them; a Redis restarted on the socket is found again")
    func throughAUnixSocket() async throws {
        try await RedisServer.with(password: "s3cret", unixSocketOnly: true) { redis in
            let socket = try #require(redis.socketPath)
            try await TestNode.with(["HERALD_REDIS_URL": "unix://:s3cret@\(socket)?db=3"]) { node in
                let ids = [try await node.push("sol", "one"), try await node.push("sol", "two")]
                #expect(try await redis.cli(["-n", "3", "XLEN", "herald:{sol}:q"]).trimmingCharacters(in: .whitespacesAndNewlines) == "2")
                #expect(try await redis.cli(["-n", "0", "DBSIZE"]).trimmingCharacters(in: .whitespacesAndNewlines) == "0", "nothing in database 0")
                let device = try await node.device("sol", autoAcknowledge: true)
                #expect(try await device.pushes(2).map(\.id) == ids)
                try await eventually("both acknowledged") { try await node.pending("sol") == 0 }
                await device.close()
                try await redis.stop()
                try await redis.start()
                try await node.pushOnceAccepted("sol", "three")
                let again = try await node.device("sol")
                #expect(try await again.pushes(1)[0].text == "three")
                await again.close()
            }
        }
    }

    @Test(
        "Redis restarted from an older snapshot gives a device's sequences again: a connected device still gets what is pushed after, and its ACK of a message sent before deletes nothing newer",
        arguments: [["HERALD_RECEIPT_RETENTION_S": "0"], [:]]
    )
    func redisWentBack(settings: [String: String]) async throws {
        try await RedisServer.with { redis in
            try await TestNode.with(["HERALD_REDIS_URL": redis.url].merging(settings) { $1 }) { node in
                let device = try await node.device("vera")
                let first = try await node.push("vera", "first")
                #expect(try await device.pushes(1).map(\.id) == [first])
                device.acknowledge(first)
                try await eventually("first acknowledged") { try await node.pending("vera") == 0 }
                _ = try await redis.cli(["SAVE"])  // the snapshot: the counter at 1
                let second = try await node.push("vera", "second")  // sequence 2, sent, not acknowledged
                #expect(try await device.pushes(1).map(\.id) == [second])
                try await redis.stop()
                try await redis.start()  // from the snapshot: the counter at 1 again
                let third = try await node.pushOnceAccepted("vera", "third")
                #expect(try await redis.cli(["XRANGE", "herald:{vera}:q", "-", "+"]).hasPrefix("2-0"), "sequence 2 given again, to the third")
                // The device, still connected, gets it though its connection had sent a 2 ...
                #expect(try await device.pushes(1).map(\.id) == [third])
                // ... and its ACK of the second (whose 2 now names the third) deletes nothing: it
                // goes by id, through a script that names the id (Redis's slow log, set to log
                // every command, shows it; a plain XDEL by sequence would name no id).
                _ = try await redis.cli(["CONFIG", "SET", "slowlog-log-slower-than", "0", "slowlog-max-len", "10000"])
                device.acknowledge(second)
                try await eventually("the second's ACK looked up by id") {
                    try await redis.cli(["SLOWLOG", "GET", "10000"]).split(whereSeparator: \.isNewline).contains { $0 == second }
                }
                #expect(try await node.pending("vera") == 1, "the third is still stored")
                device.acknowledge(third)
                try await eventually("the third acknowledged") { try await node.pending("vera") == 0 }
                await device.close()
            }
        }
    }

    @Test("an ACK made while Redis is down is not recorded: after Redis returns, the device's connection does not send that message again (its next connection does), and gets what is pushed after")
    func acknowledgedWhileRedisWasDown() async throws {
        try await RedisServer.with { redis in
            try await TestNode.with(["HERALD_REDIS_URL": redis.url]) { node in
                let device = try await node.device("walt")
                let first = try await node.push("walt", "first")
                #expect(try await device.pushes(1).map(\.id) == [first])
                _ = try await redis.cli(["SAVE"])  // Redis comes back with the first still stored
                try await redis.stop()
                try await eventually("the node sees Redis gone") { node.node.redis?.isConnected == false }
                device.acknowledge(first)
                try await eventually("the ACK could not be recorded") {
                    metric("herald_acks_unrecorded_total", in: try await HTTPTestClient.get("/metrics", port: node.httpPort).body) >= 1
                }
                try await redis.start()
                let second = try await node.pushOnceAccepted("walt", "second")
                // A new generation: the connection reads the queue from the start, which holds the
                // first (its ACK was lost) and the second; it sends only the second.
                #expect(try await device.pushes(1).map(\.id) == [second], "the first is not sent twice on one connection")
                device.acknowledge(second)
                try await eventually("the second acknowledged") { try await node.pending("walt") == 1 }
                await device.close()
                let next = try await node.device("walt")
                #expect(try await next.pushes(1).map(\.id) == [first], "delivered again on the next connection")
                await next.close()
            }
        }
    }

    @Test("while Redis is down: push 503, readyz 503, devices stay connected; when it returns, service resumes")
    func redisKilledAndRestarted() async throws {
        try await RedisServer.with { redis in
            try await TestNode.with(["HERALD_REDIS_URL": redis.url]) { node in
                let device = try await node.device("steady")
                redis.kill(signal: SIGKILL)
                try await eventually("pushes refused with 503") {
                    let response = try await HTTPTestClient.post("/v1/push", port: node.httpPort, json: #"{"client_id": "steady", "data": "x"}"#)
                    return response.status == 503
                }
                let refused = try await HTTPTestClient.post("/v1/push", port: node.httpPort, json: #"{"client_id": "steady", "data": "x"}"#)
                #expect(refused.status == 503)
                #expect(refused.body.contains("unavailable"))
                #expect(try await HTTPTestClient.get("/readyz", port: node.httpPort).status == 503)
                #expect(try await HTTPTestClient.get("/healthz", port: node.httpPort).status == 200, "a declared degraded state")
                #expect(device.isActive)
                try await redis.stop()
                try await redis.start()
                try await node.pushOnceAccepted("steady", "back")
                #expect(try await device.pushes(1)[0].text == "back")
                // Ready again once the store answers and (in a cluster) the member list has been
                // read once, which is retried within a refresh interval (2 s).
                try await eventually("ready again", timeout: .seconds(5)) {
                    try await HTTPTestClient.get("/readyz", port: node.httpPort).status == 200
                }
                await device.close()
            }
        }
    }

    @Test("a paused Redis (SIGSTOP) makes pushes answer 503 within the command timeout, and SIGCONT heals it")
    func redisPaused() async throws {
        try await RedisServer.with { redis in
            try await TestNode.with(["HERALD_REDIS_URL": redis.url]) { node in
                let stored = try await node.push("paula", "before")
                redis.kill(signal: SIGSTOP)
                let start = ContinuousClock.now
                let refused = try await HTTPTestClient.post("/v1/push", port: node.httpPort, json: #"{"client_id": "paula", "data": "x"}"#)
                #expect(refused.status == 503)
                // The command timeout is 2 s; the bound only tells "answered by the timeout" from
                // "held until Redis came back", with room for a machine loaded by the suite.
                #expect(ContinuousClock.now - start < .seconds(10))
                redis.kill(signal: SIGCONT)
                try await node.pushOnceAccepted("paula", "after")
                let device = try await node.device("paula")
                let texts = try await device.pushes(2).map(\.text)
                #expect(texts == ["before", "after"], "the 503 stored nothing; \(stored) is still first")
                await device.close()
            }
        }
    }

    @Test("pipelining: 1,000 concurrent pushes are all stored, each device's in order")
    func concurrentPushes() async throws {
        try await RedisServer.with { redis in
            try await TestNode.with(["HERALD_REDIS_URL": redis.url, "HERALD_MAX_PENDING": "10000"]) { node in
                let router = node.node.router
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for index in 0..<1000 {
                        group.addTask {
                            _ = try await router.push([.init(clientID: "pipe\(index % 10)", payload: .init(string: "\(index)"), ttlSeconds: 60)])
                        }
                    }
                    try await group.waitForAll()
                }
                for device in 0..<10 { #expect(try await node.pending("pipe\(device)") == 100) }
            }
        }
    }

    @Test("SIGTERM while a device holds messages it has not acknowledged: their sends are recorded before the node exits")
    func gracefulStopRecordsHeldSends() async throws {
        try await RedisServer.with { redis in
            let environment = [
                "HERALD_REDIS_URL": redis.url, "HERALD_TCP_ADDR": "127.0.0.1:0", "HERALD_HTTP_ADDR": "127.0.0.1:0",
                "HERALD_RELAY_ADDR": "127.0.0.1:0", "HERALD_DRAIN_TIMEOUT_S": "10",
            ]
            let first = try HeraldTestProcess(environment: environment)
            let devicePort = try await first.boundPort("device listener bound")
            let httpPort = try await first.boundPort("HTTP API bound")
            let device = try await DeviceClient.connect(DeviceClientConfiguration(port: devicePort, clientID: "holder", sendsPings: false))
            var ids: [String] = []
            for index in 0..<3 {
                let response = try await HTTPTestClient.post("/v1/push", port: httpPort, json: #"{"client_id": "holder", "data": "m\#(index)"}"#)
                try #require(response.status == 202)
                ids.append(try JSONFields(response.body).string("id"))
            }
            #expect(try await device.pushes(3).map(\.id) == ids)
            // At once, before the loop's sweep would record the sends: they are still held back
            // for ACKs that never come, and the connection's teardown must record them.
            kill(first.process.processIdentifier, SIGTERM)
            while let event = try await withTimeout("events", .seconds(10), { await device.nextEvent() }) {
                if case .goaway = event { await device.close() }
            }
            #expect(try await first.waitForExit() == 0, "\(first.stderr)")

            let second = try HeraldTestProcess(environment: environment)
            let secondHTTP = try await second.boundPort("HTTP API bound")
            for id in ids {
                let status = try JSONFields(try await HTTPTestClient.get("/v1/messages/\(id)", port: secondHTTP).body)
                #expect(try status.string("state") == "sent", "\(id)")
                #expect(try status.int("sent_at") >= status.int("accepted_at"))
            }
            kill(second.process.processIdentifier, SIGTERM)
            #expect(try await second.waitForExit() == 0)
        }
    }

    @Test("kill -9 of a node with pending messages: a fresh node delivers every one, in order")
    func killNineLosesNothing() async throws {
        try await RedisServer.with { redis in
            let environment = [
                "HERALD_REDIS_URL": redis.url, "HERALD_TCP_ADDR": "127.0.0.1:0", "HERALD_HTTP_ADDR": "127.0.0.1:0",
                "HERALD_RELAY_ADDR": "127.0.0.1:0",
            ]
            let first = try HeraldTestProcess(environment: environment)
            let firstHTTP = try await first.boundPort("HTTP API bound")
            var ids: [String] = []
            for index in 0..<50 {
                let response = try await HTTPTestClient.post(
                    "/v1/push", port: firstHTTP, json: #"{"client_id": "survivor", "data": "m\#(index)"}"#
                )
                try #require(response.status == 202)
                ids.append(try JSONFields(response.body).string("id"))
            }
            kill(first.process.processIdentifier, SIGKILL)
            _ = try await first.waitForExit()

            let second = try HeraldTestProcess(environment: environment)
            let devicePort = try await second.boundPort("device listener bound")
            let device = try await DeviceClient.connect(
                DeviceClientConfiguration(port: devicePort, clientID: "survivor", autoAcknowledge: true, sendsPings: false)
            )
            let pushes = try await device.pushes(50)
            #expect(pushes.map(\.id) == ids)
            #expect(pushes.map(\.text) == (0..<50).map { "m\($0)" })
            await device.close()
            kill(second.process.processIdentifier, SIGTERM)
            #expect(try await second.waitForExit() == 0)
        }
    }
}
