import Actors
import HeraldTestSupport
import NIOCore
import RedisStore
import Testing

/// Herald's Redis module (`RedisModule/herald.c`, Docs/store.md "The Redis module") on a real
/// redis-server that loaded it. The conformance suites run on it too (`StoreKind.redisModule`);
/// these check that the module, not the script, did the work, and what its writes leave behind.
@Suite("Redis store with Herald's module", .timeLimit(.minutes(1)))
struct RedisModuleTests {
    /// Calls of each command in `INFO commandstats`.
    private func calls(_ server: RedisServer) async throws -> [String: Int] {
        commandCalls(inCommandStats: try await server.cli(["INFO", "commandstats"]))
    }

    /// A redis-server that loaded the module and an in-sync replica of it that did not.
    private func withMasterAndReplica(_ body: (RedisServer, RedisServer) async throws -> Void) async throws {
        try await RedisServer.with(arguments: try await HeraldRedisModule.arguments()) { master in
            try await RedisServer.with(arguments: ["--replicaof", "127.0.0.1", "\(master.port)"]) { replica in
                try await eventually("the replica is in sync", timeout: .seconds(30)) {
                    try await master.cli(["INFO", "replication"]).contains("state=online")
                }
                try await body(master, replica)
            }
        }
    }

    private func message(_ store: RedisPushStore, _ clientID: String, _ base: String, now: Int64) -> NewMessage {
        NewMessage(clientID: clientID, id: store.messageID(base, for: clientID), payload: ByteBuffer(string: base), expiresAtMillis: now + 60_000)
    }

    @Test("appends go through HERALD.APPEND, status included; the script runs only where it must decide (a full queue: 429)")
    func appendsThroughTheModule() async throws {
        try await RedisServer.with(arguments: try await HeraldRedisModule.arguments()) { server in
            try await withRedisClient(url: server.url) { client in
                let now = WallClock.millisecondsSinceEpoch()
                let store = RedisPushStore(client: client, maxPending: 3, receiptRetentionMillis: 60_000, now: { now })
                #expect(try await store.append([message(store, "a", "m1", now: now)]).map(\.sequence) == [1])
                let batch = try await store.append([message(store, "a", "m2", now: now), message(store, "b", "n1", now: now), message(store, "a", "m3", now: now)])
                #expect(batch.map(\.sequence) == [2, 1, 3])
                var seen = try await calls(server)
                #expect(seen["herald.append"] == 2)
                #expect(seen["eval"] == nil && seen["evalsha"] == nil, "no script ran")

                // What the module wrote reads as the script's would.
                #expect(try await store.pending(for: "a", after: 0, limit: 10).map(\.id) == ["m1", "m2", "m3"].map { store.messageID($0, for: "a") })
                let receipt = try #require(try await store.receipt(of: store.messageID("m2", for: "a")))
                #expect(receipt.state == .stored && receipt.clientID == "a" && receipt.acceptedAtMillis == now && receipt.expiresAtMillis == now + 60_000)
                let ttl = try #require(Int(try await server.cli(["PTTL", "herald:{a}:q"]).trimmingCharacters(in: .whitespacesAndNewlines)))
                #expect(ttl > 60_000, "the stream lives past its last message's expiry")

                // Device a is full (3): the module leaves it to the script, which refuses.
                func scripts(_ seen: [String: Int]) -> Int { (seen["eval"] ?? 0) + (seen["evalsha"] ?? 0) }
                let before = scripts(try await calls(server))
                await #expect(throws: StoreError(.pendingFull, "")) { try await store.append([message(store, "a", "m4", now: now)]) }
                seen = try await calls(server)
                #expect(seen["herald.append"] == 3 && scripts(seen) == before + 1)
                #expect(try await store.pendingCount(for: "a") == 3)
                #expect(try await store.append([message(store, "b", "n2", now: now)]).map(\.sequence) == [2], "no gap after the refusal")
            }
        }
    }

    @Test("a replica without the module holds exactly what the module wrote (its writes replicate as plain commands), and WAIT covers them")
    func replicaWithoutModule() async throws {
        try await withMasterAndReplica { master, replica in
            try await withRedisClient(url: master.url) { client in
                let now = WallClock.millisecondsSinceEpoch()
                let store = RedisPushStore(client: client, maxPending: 100, replicas: 1, waitTimeoutMillis: 5_000, receiptRetentionMillis: 60_000, now: { now })
                _ = try await store.append([message(store, "a", "m1", now: now)])
                _ = try await store.append([message(store, "a", "m2", now: now), message(store, "b", "n1", now: now)])
                #expect(try await calls(master)["herald.append"] == 2)
                for key in ["herald:{a}:q", "herald:{b}:q"] {
                    let written = try await master.cli(["XRANGE", key, "-", "+"])
                    #expect(!written.isEmpty)
                    #expect(try await replica.cli(["XRANGE", key, "-", "+"]) == written, "\(key)")
                    let ttl = Int(try await replica.cli(["PTTL", key]).trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
                    #expect(ttl > 60_000, "\(key) expires on the replica too")
                }
                #expect(try await replica.cli(["GET", "herald:{a}:n"]) == master.cli(["GET", "herald:{a}:n"]))
                let statuses = try await master.cli(["KEYS", "herald:*:r:*"]).split(whereSeparator: \.isNewline).map(String.init)
                #expect(statuses.count == 3)
                for key in statuses {
                    #expect(try await replica.cli(["HGETALL", key]) == master.cli(["HGETALL", key]), "\(key)")
                }
            }
        }
    }

    @Test("ACKs with status go through HERALD.ACK, leave what the plain commands leave, replicate as plain commands; refused, the plain commands run instead")
    func acknowledgementsThroughTheModule() async throws {
        try await withMasterAndReplica { master, replica in
            try await withRedisClient(url: master.url) { client in
                let now = WallClock.millisecondsSinceEpoch()
                let store = RedisPushStore(client: client, maxPending: 100, receiptRetentionMillis: 60_000, now: { now })
                let stored = try await store.append(["m1", "m2", "m3", "m4", "m5"].map { message(store, "a", $0, now: now) })
                func ack(_ index: Int, sentAt: Int64?) -> Acknowledgement {
                    Acknowledgement(stored[index], sentAtMillis: sentAt)
                }
                func status(_ index: Int) async throws -> [String: String] {
                    let lines = try await master.cli(["HGETALL", "herald:{a}:r:\(stored[index].id)"]).split(whereSeparator: \.isNewline).map(String.init)
                    return Dictionary(uniqueKeysWithValues: stride(from: 0, to: lines.count - 1, by: 2).map { (lines[$0], lines[$0 + 1]) })
                }

                // Two messages, one ACK call: one HERALD.ACK; the send's time recorded where it came with it.
                #expect(try await store.acknowledge(clientID: "a", messages: [ack(0, sentAt: now - 5), ack(1, sentAt: nil)]) == 2)
                let seen = try await calls(master)
                #expect(seen["herald.ack"] == 1)
                #expect(seen["hsetnx"] == nil && seen["xdel"] == nil && seen["pexpire"] == nil, "no plain command ran")
                let first = try await status(0), second = try await status(1)
                #expect(first["s"] == "\(now - 5)" && first["k"] == "\(now)")
                #expect(second["s"] == nil && second["k"] == "\(now)" && second["c"] == "a")
                #expect(try await store.receipt(of: stored[0].id)?.state == .acked)
                let ttl = try #require(Int(try await master.cli(["PTTL", "herald:{a}:r:\(stored[0].id)"]).trimmingCharacters(in: .whitespacesAndNewlines)))
                #expect(ttl > 50_000 && ttl <= 60_000, "the status lives the retention from the ACK")
                #expect(try await store.pending(for: "a", after: 0, limit: 10).map(\.id) == stored[2...].map(\.id))
                // A second ACK of the same message deletes nothing and keeps the first ACK's time.
                #expect(try await store.acknowledge(clientID: "a", messages: [ack(0, sentAt: now - 1)]) == 0)
                #expect(try await status(0)["s"] == "\(now - 5)")

                // The replica, without the module, holds the same once it has all the master sent.
                func offset(_ server: RedisServer) async throws -> Int? {
                    try await server.cli(["INFO", "replication"]).split(whereSeparator: \.isNewline)
                        .first { $0.hasPrefix("master_repl_offset:") }.flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) }
                }
                let sent = try #require(try await offset(master))
                try await eventually("the replica has the master's writes", timeout: .seconds(10)) { try await offset(replica) ?? 0 >= sent }
                for index in 0..<2 {
                    let key = "herald:{a}:r:\(stored[index].id)"
                    #expect(try await replica.cli(["HGETALL", key]) == master.cli(["HGETALL", key]), "\(key)")
                }
                #expect(try await replica.cli(["XRANGE", "herald:{a}:q", "-", "+"]) == master.cli(["XRANGE", "herald:{a}:q", "-", "+"]))

                // A status key of another type than Herald writes: the module leaves the ACK to the
                // plain commands (-FALLBACK, nothing written), which still delete the message.
                _ = try await master.cli(["SET", "herald:{a}:r:\(stored[2].id)", "not a hash"])
                #expect(try await store.acknowledge(clientID: "a", messages: [ack(2, sentAt: nil)]) == 1)
                let errorstats = try await master.cli(["INFO", "errorstats"])
                // Redis counts a one-word error as ERR: the module's -FALLBACK; then the plain HSETNX's WRONGTYPE.
                #expect(errorstats.contains("errorstat_ERR:count=1") && errorstats.contains("errorstat_WRONGTYPE:count=1"), "\(errorstats)")
                #expect(try await calls(master)["xdel"] == 1)

                // A Redis that refuses HERALD.ACK (here an ACL; a module of an earlier release
                // has no such command): the plain commands, and the module is not tried again.
                _ = try await master.cli(["ACL", "SETUSER", "default", "-herald.ack"])
                #expect(try await store.acknowledge(clientID: "a", messages: [ack(3, sentAt: nil)]) == 1)
                #expect(try await store.acknowledge(clientID: "a", messages: [ack(4, sentAt: nil)]) == 1)
                #expect(try await master.cli(["INFO", "errorstats"]).contains("errorstat_NOPERM:count=1"))
                #expect(try await calls(master)["xdel"] == 3)
                #expect(try await status(4)["k"] == "\(now)")
                #expect(try await store.pendingCount(for: "a") == 0)
            }
        }
    }

    @Test("a module loaded into Redis, or unloaded, while the node runs is used, or no longer tried, once the node has reconnected")
    func moduleLoadedLater() async throws {
        try await RedisServer.with(arguments: ["--enable-module-command", "yes"]) { server in
            try await withRedisClient(url: server.url) { client in
                let now = WallClock.millisecondsSinceEpoch()
                let store = RedisPushStore(client: client, maxPending: 100, now: { now })
                func scripts() async throws -> Int {
                    let seen = try await calls(server)
                    return (seen["eval"] ?? 0) + (seen["evalsha"] ?? 0)
                }
                /// Closes the node's connections (CLIENT KILL) and waits until as many are open again.
                func reconnect() async throws {
                    let before = client.connectionGeneration
                    let killed = try #require(UInt64(try await server.cli(["CLIENT", "KILL", "TYPE", "normal"]).trimmingCharacters(in: .whitespacesAndNewlines)))
                    try #require(killed > 0)
                    try await eventually("reconnected") { client.connectionGeneration >= before + killed && client.isConnected }
                }
                _ = try await store.append([message(store, "a", "m1", now: now)])
                var seen = try await calls(server)
                #expect(try await scripts() == 1 && seen["herald.append"] == nil, "no module yet: the script")

                _ = try await server.cli(["MODULE", "LOAD", try await HeraldRedisModule.path()])
                try await reconnect()
                _ = try await store.append([message(store, "a", "m2", now: now)])
                seen = try await calls(server)
                #expect(seen["herald.append"] == 1, "loaded: the module")
                #expect(try await scripts() == 1)

                _ = try await server.cli(["MODULE", "UNLOAD", "herald"])
                try await reconnect()
                _ = try await store.append([message(store, "a", "m3", now: now)])
                #expect(try await scripts() == 2, "unloaded: the script")
                let errors = try await server.cli(["INFO", "errorstats"])
                #expect(!errors.contains("errorstat_ERR"), "no refused HERALD.APPEND first: \(errors)")
                #expect(try await store.pending(for: "a", after: 0, limit: 10).map(\.sequence) == [1, 2, 3])
            }
        }
    }

    @Test("on a Redis Cluster whose nodes loaded the module, appends and ACKs go through it on each device's own master (no MOVED), batches across masters too")
    func onACluster() async throws {
        try await RedisClusterSet.with(arguments: try await HeraldRedisModule.arguments()) { cluster in
            // Devices on different masters.
            let devices = ["a", "b", "c", "d", "e", "f"]
            var masters: [String: RedisServer] = [:]
            for device in devices { masters[device] = try await cluster.master(ofSlot: try await cluster.slot(of: "{\(device)}")) }
            let ports = Set(masters.values.map(\.port))
            try #require(ports.count > 1)
            try await withRedisClient(url: cluster.url) { client in
                let now = WallClock.millisecondsSinceEpoch()
                let store = RedisPushStore(client: client, maxPending: 2, receiptRetentionMillis: 60_000, now: { now })
                for device in devices { _ = try await store.append([message(store, device, "\(device)1", now: now)]) }
                let batch = try await store.append(devices.map { message(store, $0, "\($0)2", now: now) })
                #expect(batch.map(\.sequence) == devices.map { _ in 2 })
                // Full (2): the module leaves it to the script, which refuses; nothing of the batch stays.
                await #expect(throws: StoreError(.pendingFull, "")) {
                    try await store.append([message(store, "b", "b3", now: now), message(store, "a", "a3", now: now)])
                }
                for device in devices {
                    let pending = try await store.pending(for: device, after: 0, limit: 10)
                    #expect(pending.map(\.id) == ["1", "2"].map { store.messageID("\(device)\($0)", for: device) })
                    // Acknowledged through HERALD.ACK, on the device's own master.
                    let acks = pending.map { Acknowledgement($0, sentAtMillis: now) }
                    #expect(try await store.acknowledge(clientID: device, messages: acks) == 2)
                    #expect(try await store.receipt(of: pending[0].id)?.state == .acked)
                }
                var appended = 0
                for master in ports {
                    let server = try #require(cluster.nodes.first { $0.port == master })
                    let seen = try await calls(server)
                    appended += seen["herald.append"] ?? 0
                    #expect((seen["herald.append"] ?? 0) > 0, "master \(master) appended through the module")
                    #expect((seen["herald.ack"] ?? 0) > 0 && seen["xdel"] == nil, "master \(master) acknowledged through the module")
                    let errors = try await server.cli(["INFO", "errorstats"])
                    #expect(!errors.contains("errorstat_MOVED") && !errors.contains("errorstat_ASK"), "routed by the module's key: \(errors)")
                }
                #expect(appended >= 2 * devices.count)
            }
        }
    }
}
