import Actors
import Foundation
import HeraldTestSupport
import NIOCore
import Testing

@testable import RedisStore

/// The cluster-aware client against a real Redis Cluster (three masters, three replicas).
/// The tests that move slots or kill a master start a cluster of their own; the others share one.
@Suite("Redis Cluster client", .timeLimit(.minutes(2)))
struct RedisClusterTests {
    @Test("a key's slot is the one Redis computes (CRC16 of the hash tag)")
    func slots() async throws {
        try await RedisClusterSet.withShared { cluster in
            for key in ["a", "herald:{alice}:q", "herald:{alice}:n", "{}x", "x{}{y}", "{user1000}.following", "é", "x{y", "123456789"] {
                let expected = try await cluster.slot(of: key)
                #expect(RedisCluster.slot(of: Array(key.utf8)) == expected, "\(key)")
            }
            #expect(RedisCluster.slot(of: [.string("EVALSHA"), .string("sha"), .integer(2), .string("h:{d}:n")]) == RedisCluster.slot(of: Array("d".utf8)))
            #expect(RedisCluster.slot(of: [.string("WAIT"), .integer(1), .integer(100)]) == nil)
            #expect(
                RedisCluster.slot(of: [
                    .string("HERALD.APPEND"), .integer(1), .integer(100), .integer(60_000), .integer(0), .integer(0), .integer(2), .string("h:{d}:n"),
                    .string("h:{d}:q"),
                ]) == RedisCluster.slot(of: Array("d".utf8)), "Herald's module: its first key after the settings")
            #expect(
                RedisCluster.slot(of: [
                    .string("HERALD.ACK"), .integer(1), .integer(1_000), .integer(60_000), .integer(2), .string("h:{d}:q"), .string("h:{d}:r:m.x"),
                    .integer(1), .integer(2), .integer(0),
                ]) == RedisCluster.slot(of: Array("d".utf8)), "HERALD.ACK: its stream, after the settings")
            // The stream commands whose key is not the first argument.
            let lane = RedisCluster.slot(of: Array("wh3".utf8))
            #expect(RedisCluster.slot(of: [.string("XGROUP"), .string("CREATE"), .string("h:{wh3}:events"), .string("g"), .string("0")]) == lane)
            #expect(
                RedisCluster.slot(of: [
                    .string("XREADGROUP"), .string("GROUP"), .string("g"), .string("c"), .string("COUNT"), .integer(5), .string("STREAMS"),
                    .string("h:{wh3}:events"), .string(">"),
                ]) == lane
            )
        }
    }

    @Test("redirect replies are read as the cluster spec says")
    func redirects() {
        let endpoint = RedisConfiguration.Endpoint(host: "127.0.0.1", port: 7001)
        #expect(RedisCluster.Redirect(error: "MOVED 3999 127.0.0.1:7001") == .moved(slot: 3999, to: endpoint))
        #expect(RedisCluster.Redirect(error: "ASK 12 127.0.0.1:7001") == .ask(slot: 12, to: endpoint))
        #expect(RedisCluster.Redirect(error: "TRYAGAIN Multiple keys request during rehashing of slot") == .tryAgain)
        #expect(RedisCluster.Redirect(error: "CLUSTERDOWN The cluster is down") == .clusterDown)
        #expect(RedisCluster.Redirect(error: "ERR wrong number of arguments") == nil)
        #expect(RedisCluster.Redirect(error: "MOVED 99999 127.0.0.1:7001") == nil)
    }

    @Test("a slot moved behind the client's back (MOVED) and a key in migration (ASK, then TRYAGAIN) are followed")
    func movedAndAsk() async throws {
        try await RedisClusterSet.with(nodeTimeout: .seconds(5)) { cluster in try await withRedisClient(url: cluster.url, commandTimeout: .seconds(10)) { client in
            let store = RedisPushStore(client: client, maxPending: 100)
            // MOVED: the slot of "mover" goes to another master while the client's map still
            // names the old one.
            let first = try await store.append([NewMessage(clientID: "mover", id: "m1", payload: ByteBuffer(string: "1"), expiresAtMillis: inAnHour)])
            let slot = try await cluster.slot(of: "{mover}")
            let source = try await cluster.master(ofSlot: slot)
            let target = try await anotherMaster(than: source, in: cluster)
            try await migrate(slot: slot, keys: ["herald:{mover}:n", "herald:{mover}:q"], from: source, to: target, in: cluster, finish: true)
            #expect(try await store.pending(for: "mover", after: 0, limit: 10).map(\.id) == ["m1"])
            #expect(try await store.acknowledge(clientID: "mover", messages: [Acknowledgement(first[0])]) == 1)

            // ASK: the device's keys are already on the importing master, the slot not yet.
            _ = try await store.append([NewMessage(clientID: "asker", id: "a1", payload: ByteBuffer(string: "1"), expiresAtMillis: inAnHour)])
            let askSlot = try await cluster.slot(of: "{asker}")
            let askSource = try await cluster.master(ofSlot: askSlot)
            let askTarget = try await anotherMaster(than: askSource, in: cluster)
            try await migrate(slot: askSlot, keys: ["herald:{asker}:n", "herald:{asker}:q"], from: askSource, to: askTarget, in: cluster, finish: false)
            #expect(try await store.pending(for: "asker", after: 0, limit: 10).map(\.id) == ["a1"])
            let asked = try await askSource.cli(["INFO", "errorstats"])
            #expect(asked.contains("errorstat_ASK:count="), "the source answered ASK: \(asked)")

            // TRYAGAIN: a script over two keys of which only one has moved is retried until
            // the other one follows.
            _ = try await store.append([NewMessage(clientID: "split", id: "s1", payload: ByteBuffer(string: "1"), expiresAtMillis: inAnHour)])
            let splitSlot = try await cluster.slot(of: "{split}")
            let splitSource = try await cluster.master(ofSlot: splitSlot)
            let splitTarget = try await anotherMaster(than: splitSource, in: cluster)
            try await migrate(slot: splitSlot, keys: ["herald:{split}:n"], from: splitSource, to: splitTarget, in: cluster, finish: false)
            let read = Task { try await store.pending(for: "split", after: 0, limit: 10).map(\.id) }
            try await eventually("the read is told TRYAGAIN") {
                let stats = try await splitTarget.cli(["INFO", "errorstats"]) + (try await splitSource.cli(["INFO", "errorstats"]))
                return stats.contains("errorstat_TRYAGAIN:count=")
            }
            _ = try await splitSource.cli(["MIGRATE", "127.0.0.1", "\(splitTarget.port)", "", "0", "5000", "KEYS", "herald:{split}:q"])
            #expect(try await read.value == ["s1"])
        } }
    }

    @Test("a master killed with kill -9: its replica takes over, the client finds it, nothing acknowledged by WAIT is lost")
    func failover() async throws {
        try await RedisClusterSet.with { cluster in try await withRedisClient(url: cluster.url) { client in
            let store = RedisPushStore(client: client, maxPending: 1000, replicas: 1, waitTimeoutMillis: 1000)
            var ids: [String] = []
            for index in 0..<20 {
                let id = "f\(index)"
                _ = try await store.append([NewMessage(clientID: "faller", id: id, payload: ByteBuffer(string: id), expiresAtMillis: inAnHour)])
                ids.append(id)
            }
            let master = try await cluster.master(ofSlot: try await cluster.slot(of: "{faller}"))
            master.kill(signal: SIGKILL)
            // Its replica is now a master without a replica, so WAIT could not succeed there.
            let unreplicated = RedisPushStore(client: client, maxPending: 1000)
            try await eventually("a push to the device is accepted again", timeout: .seconds(30)) {
                (try? await unreplicated.append([NewMessage(clientID: "faller", id: "after", payload: ByteBuffer(string: "x"), expiresAtMillis: inAnHour)])) != nil
            }
            let pending = try await store.pending(for: "faller", after: 0, limit: 100).map(\.id)
            #expect(Array(pending.prefix(20)) == ids, "every message acknowledged by a replica survived")
            #expect(pending.last == "after")
        } }
    }

    @Test("a batch across two masters, one of them dead: 503, and the live master's part is taken back, so nothing of it is ever delivered")
    func batchWithAMasterDown() async throws {
        // Node timeout 5 s, longer than the command timeout (2 s): the dead master's slots are
        // not failed over while the batch runs, so its part fails, deterministically, after the
        // other master has stored its own.
        try await RedisClusterSet.with(nodeTimeout: .seconds(5)) { cluster in try await withRedisClient(url: cluster.url) { client in
            let store = RedisPushStore(client: client, maxPending: 1000)
            let dead = try await cluster.master(ofSlot: try await cluster.slot(of: "{down}"))
            let live = try await cluster.master(ofSlot: try await cluster.slot(of: "{up}"))
            try #require(dead.port != live.port, "the two devices' slots are on different masters")
            _ = try await store.append([NewMessage(clientID: "up", id: "before", payload: ByteBuffer(string: "x"), expiresAtMillis: inAnHour)])
            dead.kill(signal: SIGKILL)
            let batch = [
                NewMessage(clientID: "up", id: "u1", payload: ByteBuffer(string: "x"), expiresAtMillis: inAnHour),
                NewMessage(clientID: "down", id: "d1", payload: ByteBuffer(string: "x"), expiresAtMillis: inAnHour),
                NewMessage(clientID: "up", id: "u2", payload: ByteBuffer(string: "x"), expiresAtMillis: inAnHour),
            ]
            await #expect(throws: StoreError(.unavailable, "")) { try await store.append(batch) }
            #expect(try await store.pending(for: "up", after: 0, limit: 10).map(\.id) == ["before"], "u1 and u2 taken back")
            // Once the dead master's replica has taken over, the batch's part there was never stored either.
            try await eventually("the replica took over", timeout: .seconds(30)) {
                (try? await store.pending(for: "down", after: 0, limit: 10)) != nil
            }
            #expect(try await store.pending(for: "down", after: 0, limit: 10).isEmpty)
            _ = try await store.append(batch)
            #expect(try await store.pending(for: "up", after: 0, limit: 10).map(\.id) == ["before", "u1", "u2"])
            #expect(try await store.pending(for: "down", after: 0, limit: 10).map(\.id) == ["d1"])
        } }
    }

    private func anotherMaster(than node: RedisServer, in cluster: RedisClusterSet) async throws -> RedisServer {
        for slot in [0, 8000, 16000] {
            let master = try await cluster.master(ofSlot: slot)
            if master.port != node.port { return master }
        }
        throw RedisClusterError(description: "no other master")
    }

    /// Moves `keys` of `slot` from `source` to `target` the way `redis-cli --cluster reshard`
    /// does; with `finish`, the slot then belongs to `target` on every master.
    private func migrate(
        slot: Int, keys: [String], from source: RedisServer, to target: RedisServer, in cluster: RedisClusterSet, finish: Bool
    ) async throws {
        let sourceID = try await cluster.id(of: source)
        let targetID = try await cluster.id(of: target)
        #expect(try await target.cli(["CLUSTER", "SETSLOT", "\(slot)", "IMPORTING", sourceID]).contains("OK"))
        #expect(try await source.cli(["CLUSTER", "SETSLOT", "\(slot)", "MIGRATING", targetID]).contains("OK"))
        let moved = try await source.cli(["MIGRATE", "127.0.0.1", "\(target.port)", "", "0", "5000", "AUTH", RedisClusterSet.password, "KEYS"] + keys)
        #expect(moved.contains("OK"), "MIGRATE: \(moved)")
        guard finish else { return }
        for node in [target, source] {
            #expect(try await node.cli(["CLUSTER", "SETSLOT", "\(slot)", "NODE", targetID]).contains("OK"))
        }
    }
}

private var inAnHour: Int64 { Int64(Date().timeIntervalSince1970 * 1000) + 3_600_000 }
