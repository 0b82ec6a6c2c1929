import Foundation
import HeraldClient
import HeraldTestSupport
import Testing

@Suite("Redis Sentinel: the node follows a failover", .timeLimit(.minutes(2)))
struct SentinelTests {
    @Test("kill -9 of the master: the node finds the promoted replica through the sentinels, and every replicated message is delivered in order")
    func failover() async throws {
        let redis = try await RedisSentinelSet.start()
        do {
            try await TestNode.with(["HERALD_REDIS_URL": redis.url]) { node in
                var ids: [String] = []
                for index in 0..<10 { ids.append(try await node.push("failover", "before \(index)")) }
                // What this test does not cover is asynchronous replication's own window
                // (Docs/store.md): the replica has these ten before the master dies. (Not `WAIT`
                // from redis-cli: it waits only for that client's own writes, and it made none.)
                try await eventually("the replica has the ten", poll: .milliseconds(20)) {
                    try await redis.replica.cli(["XLEN", "herald:{failover}:q"]).trimmingCharacters(in: .whitespacesAndNewlines) == "10"
                }
                redis.master.kill(signal: SIGKILL)
                try await eventually("the sentinels promoted the replica", timeout: .seconds(30), poll: .milliseconds(100)) {
                    try await redis.currentMasterPort() == redis.replica.port
                }
                // Pushes fail (503) until the node has reconnected to the new master, then succeed.
                for index in 0..<10 {
                    var id: String?
                    try await eventually("push after the failover", timeout: .seconds(30), poll: .milliseconds(100)) {
                        let response = try await HTTPTestClient.post(
                            "/v1/push", port: node.httpPort, json: #"{"client_id": "failover", "data": "after \#(index)"}"#
                        )
                        #expect(response.status == 202 || response.status == 503, "\(response.status) \(response.body)")
                        if response.status == 202 { id = try JSONFields(response.body).string("id") }
                        return id != nil
                    }
                    ids.append(id!)
                }
                let device = try await node.device("failover", autoAcknowledge: true)
                let pushes = try await device.pushes(20)
                #expect(pushes.map(\.id) == ids)
                await device.close()
            }
        } catch {
            await redis.stop()
            throw error
        }
        await redis.stop()
    }

    @Test("HERALD_REDIS_WAIT_REPLICAS=1: a push is 202 only once a replica has it; without a replica it is 503 and nothing is kept")
    func waitForReplica() async throws {
        try await RedisServer.with { master in
            try await TestNode.with(["HERALD_REDIS_URL": master.url, "HERALD_REDIS_WAIT_REPLICAS": "1", "HERALD_REDIS_WAIT_TIMEOUT_MS": "900"]) { node in
                let lonely = try await HTTPTestClient.post("/v1/push", port: node.httpPort, json: #"{"client_id": "w", "data": "alone"}"#)
                #expect(lonely.status == 503, "\(lonely.body)")
                #expect(lonely.body.contains("replica"))
                #expect(try await node.pending("w") == 0, "a refused push is taken back")
                let replica = try RedisServer(arguments: ["--replicaof", "127.0.0.1", "\(master.port)"])
                try await replica.start()
                defer { Task { try? await replica.stop() } }
                // In sync as the master sees it: its own WAIT is answered by the replica.
                try await eventually("replica in sync", poll: .milliseconds(100)) {
                    try await master.cli(["WAIT", "1", "100"]).trimmingCharacters(in: .whitespacesAndNewlines) == "1"
                }
                try await node.push("w", "replicated")
                #expect(try await replica.cli(["XLEN", "herald:{w}:q"]).trimmingCharacters(in: .whitespacesAndNewlines) == "1")
            }
        }
    }
}
