import Actors
import HeraldTestSupport
import NIOCore
import RedisStore
import Testing

/// Docs/store.md, "Key schema": a device's stream expires when its last message has, plus the
/// slack (60 s), so a device that never comes back leaves nothing behind; its counter never
/// expires, so its sequences never start again.
@Suite("Redis store: a queue's TTL", .timeLimit(.minutes(1)))
struct RedisQueueTTLTests {
    private static let slack: Int64 = 60_000

    private static func ttl(_ client: RedisClient, _ key: String) async throws -> Int64 {
        try #require(try await client.send([.string("PTTL"), .string(key)]).int64)
    }

    private static func message(_ id: String, expires: Int64) -> NewMessage {
        NewMessage(clientID: "d", id: id, payload: ByteBuffer(string: id), expiresAtMillis: expires)
    }

    @Test("the stream lives until its last message expires plus the slack: a later one lengthens it, an earlier one never shortens it; an emptied stream is sized for what it holds again")
    func streamTTL() async throws {
        try await withRedisClient { client in
            let now: Int64 = 1_000_000
            let store = RedisPushStore(client: client, maxPending: 100, now: { now })
            let queue = "herald:{d}:q"
            // Redis counts the TTL down in real time: allow the test's own running time.
            func expectTTL(_ expected: Int64, _ comment: Comment) async throws {
                let ttl = try await Self.ttl(client, queue)
                #expect((expected - 5_000)...expected ~= ttl, comment)
            }
            let first = try await store.append([Self.message("a", expires: now + 600_000)])
            try await expectTTL(600_000 + Self.slack, "a new stream gets its TTL outright")
            _ = try await store.append([Self.message("b", expires: now + 3_600_000)])
            try await expectTTL(3_600_000 + Self.slack, "a later message lengthens it")
            let third = try await store.append([Self.message("c", expires: now + 10_000)])
            try await expectTTL(3_600_000 + Self.slack, "an earlier one does not shorten it")
            _ = try await store.acknowledge(
                clientID: "d", messages: ([first[0], third[0]] + (try await store.pending(for: "d", after: 0, limit: 10))).map {
                    Acknowledgement($0)
                })
            #expect(try await store.pending(for: "d", after: 0, limit: 10).isEmpty)
            _ = try await store.append([Self.message("d", expires: now + 120_000)])
            try await expectTTL(120_000 + Self.slack, "an emptied stream holds only the new message: its TTL is that message's")
            #expect(try await Self.ttl(client, "herald:{d}:n") == -1, "the counter never expires")
        }
    }
}
