import Actors
import HeraldTestSupport
import NIOCore
import RedisStore
import Testing

/// A node of this version on a Redis that holds queues of the previous schema (a `seq`
/// counter, `ids` and `exp` sorted sets and a `data` hash per device, as every release before
/// the stream schema wrote them): it delivers them, in order, before anything newer.
@Suite("Redis store: queues of the previous schema", .timeLimit(.minutes(1)))
struct RedisSchemaMigrationTests {
    /// A store on a redis-server of its own; with `module`, one that loaded Herald's module
    /// (which leaves a migration to the script).
    private func withStore(module: Bool, _ body: @Sendable (RedisClient, RedisPushStore, Int64) async throws -> Void) async throws {
        try await withRedisClient(module: module) { client in
            let now: Int64 = 1_000_000
            try await body(client, RedisPushStore(client: client, maxPending: 100, now: { now }), now)
        }
    }

    /// Writes device `clientID`'s queue as the previous schema did: `ids` (sequence 1, 2, ...
    /// after `acked` acknowledged ones), `exp`, `data`, the counter at the last sequence.
    private func writeOld(_ client: RedisClient, _ clientID: String, ids: [String], acked: Int, expires: Int64) async throws {
        let tag = "herald:{\(clientID)}"
        for (offset, id) in ids.enumerated() {
            let sequence = Int64(acked + offset + 1)
            _ = try await client.send([.string("ZADD"), .string("\(tag):ids"), .integer(sequence), .string(id)])
            _ = try await client.send([.string("ZADD"), .string("\(tag):exp"), .integer(expires), .string(id)])
            _ = try await client.send([.string("HSET"), .string("\(tag):data"), .string(id), .string("old-\(id)")])
        }
        _ = try await client.send([.string("SET"), .string("\(tag):seq"), .integer(Int64(acked + ids.count))])
        for key in ["ids", "exp", "data"] {
            _ = try await client.send([.string("PEXPIRE"), .string("\(tag):\(key)"), .integer(3_600_000)])
        }
    }

    private func exists(_ client: RedisClient, _ key: String) async throws -> Bool {
        try await client.send([.string("EXISTS"), .string(key)]).int64 == 1
    }

    @Test("a device first read: its old queue comes back in order, and later messages follow it", arguments: [false, true])
    func readFirst(module: Bool) async throws {
        try await withStore(module: module) { client, store, now in
            try await writeOld(client, "a", ids: ["m3", "m4"], acked: 2, expires: now + 60_000)
            let pending = try await store.pending(for: "a", after: 0, limit: 10)
            #expect(pending.map(\.id) == ["m3", "m4"])
            #expect(pending.map(\.sequence) == [3, 4], "the old sequences are kept")
            #expect(pending[0].payload == ByteBuffer(string: "old-m3"))
            #expect(pending[0].expiresAtMillis == now + 60_000)
            let next = try await store.append([NewMessage(clientID: "a", id: "m5", payload: ByteBuffer(string: "new"), expiresAtMillis: now + 60_000)])
            #expect(next.map(\.sequence) == [5])
            for key in ["seq", "ids", "exp", "data"] { #expect(try await exists(client, "herald:{a}:\(key)") == false, "\(key) deleted") }
            #expect(try await store.acknowledge(clientID: "a", messages: [Acknowledgement(id: "m3", sequence: 3)]) == 1)
            #expect(try await store.pending(for: "a", after: 0, limit: 10).map(\.id) == ["m4", "m5"])
        }
    }

    @Test("a device first pushed to: the old queue goes first, the new message after it", arguments: [false, true])
    func appendFirst(module: Bool) async throws {
        try await withStore(module: module) { client, store, now in
            try await writeOld(client, "b", ids: ["x1", "x2"], acked: 0, expires: now + 60_000)
            let stored = try await store.append([NewMessage(clientID: "b", id: "x3", payload: ByteBuffer(string: "new"), expiresAtMillis: now + 60_000)])
            #expect(stored.map(\.sequence) == [3])
            #expect(try await store.pending(for: "b", after: 0, limit: 10).map(\.id) == ["x1", "x2", "x3"])
            #expect(try await store.pendingCount(for: "b") == 3)
            #expect(try await store.acknowledge(clientID: "b", messageIDs: ["x1"]) == 1, "by id alone too")
        }
    }

    @Test("expired old messages are not brought back", arguments: [false, true])
    func expiredOld(module: Bool) async throws {
        try await withStore(module: module) { client, store, now in
            try await writeOld(client, "c", ids: ["gone"], acked: 0, expires: now - 1)
            try await writeOld(client, "c", ids: ["kept"], acked: 1, expires: now + 60_000)
            #expect(try await store.pending(for: "c", after: 0, limit: 10).map(\.id) == ["kept"])
            #expect(try await store.pendingCount(for: "c") == 1)
        }
    }
}
