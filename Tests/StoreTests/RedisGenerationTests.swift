import Actors
import HeraldTestSupport
import NIOCore
import Testing

@testable import RedisStore

/// A sequence read before Redis was reconnected may name another message afterwards: a Redis
/// restarted from an older snapshot, or a replica promoted before it copied the last writes,
/// gives a device's sequences again (Docs/store.md, "When Redis comes back with fewer
/// writes"). What the store deletes by such a sequence it must find by id instead.
@Suite("Redis store generations", .timeLimit(.minutes(1)))
struct RedisGenerationTests {
    /// Runs `body` with a store on a redis-server of its own, in which the device's message
    /// `old` was stored and Redis then "came back with fewer writes": every connection of the
    /// store's client was cut (it reconnected: a new generation) and the device's queue and
    /// counter are gone, as after a restart from a snapshot taken before them; then `accepted`
    /// was stored, under the same sequence.
    private static func withSequenceGivenAgain(
        status: Bool, _ body: @Sendable (RedisPushStore, _ old: StoredMessage, _ accepted: StoredMessage) async throws -> Void
    ) async throws {
        try await RedisServer.with { server in
            try await withRedisClient(url: server.url) { client in
                let store = RedisPushStore(client: client, maxPending: 100, receiptRetentionMillis: status ? 60_000 : nil)
                let old = try await store.append([message("old", store)])[0]
                let before = client.connectionGeneration
                _ = try await RedisServer.cli(port: server.port, ["DEL", "herald:{d}:n", "herald:{d}:q"])
                _ = try await RedisServer.cli(port: server.port, ["CLIENT", "KILL", "TYPE", "normal"])
                try await eventually("the store's client reconnected on every loop") {
                    client.connectionGeneration >= before + UInt64(client.loops.count) && client.isConnected
                }
                let accepted = try await store.append([message("accepted", store)])[0]
                try #require(accepted.sequence == old.sequence && accepted.generation != old.generation, "Redis gave the sequence again")
                try await body(store, old, accepted)
            }
        }
    }

    private static func message(_ id: String, _ store: RedisPushStore) -> NewMessage {
        NewMessage(clientID: "d", id: store.messageID(id, for: "d"), payload: ByteBuffer(string: id), expiresAtMillis: WallClock.millisecondsSinceEpoch() + 60_000)
    }

    @Test("taking back a message written before Redis lost it deletes nothing that was accepted since under the same sequence", arguments: [false, true])
    func takeBackAcrossGenerations(status: Bool) async throws {
        try await Self.withSequenceGivenAgain(status: status) { store, old, accepted async throws in
            await store.takeBack([old])
            #expect(try await store.pending(for: "d", after: 0, limit: 10).map(\.id) == [accepted.id])
            if status { #expect(try await store.receipt(of: accepted.id)?.state == .stored) }
            // In its own generation a take-back still deletes by sequence.
            await store.takeBack([accepted])
            #expect(try await store.pending(for: "d", after: 0, limit: 10).isEmpty)
        }
    }

    @Test("an ACK of a message sent before Redis lost it deletes nothing that was accepted since under the same sequence", arguments: [false, true])
    func acknowledgeAcrossGenerations(status: Bool) async throws {
        try await Self.withSequenceGivenAgain(status: status) { store, old, accepted async throws in
            #expect(try await store.acknowledge(clientID: "d", messages: [Acknowledgement(old, sentAtMillis: nil)]) == 0)
            #expect(try await store.pending(for: "d", after: 0, limit: 10).map(\.id) == [accepted.id])
            if status { #expect(try await store.receipt(of: accepted.id)?.state == .stored) }
            #expect(try await store.acknowledge(clientID: "d", messages: [Acknowledgement(accepted, sentAtMillis: nil)]) == 1)
            #expect(try await store.pending(for: "d", after: 0, limit: 10).isEmpty)
            if status { #expect(try await store.receipt(of: accepted.id)?.state == .acked) }
        }
    }
}
