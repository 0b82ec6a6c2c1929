import Actors
import Foundation
import HeraldTestSupport
import NIOCore
import Testing

@testable import RedisStore

/// A sequence read before Redis restarted or failed over may name another message afterwards:
/// a Redis restarted from an older snapshot, or a replica promoted before it copied the last
/// writes, gives a device's sequences again (Docs/store.md, "When Redis comes back with fewer
/// writes"). What the store deletes by such a sequence it must find by id instead; a blip to
/// the same server changes nothing.
@Suite("Redis store generations", .timeLimit(.minutes(1)))
struct RedisGenerationTests {
    /// What happens to the store's Redis between two steps of a test.
    enum Interruption {
        /// Every connection of the store's client is cut (`CLIENT KILL`): the same server after it.
        case blip
        /// Redis restarts from a snapshot taken just before (`SAVE`): another process, same data.
        case restartKeepingData
        /// Redis restarts with nothing (no persistence): it gives the device's sequences again.
        case restartLosingData
    }

    /// Runs `body` with a store on a redis-server of its own (message status kept with
    /// `status`; `message.acked` events queued with `events`), and `interrupt`, which does that
    /// to Redis and waits until the store's client has reconnected on every loop.
    private static func withInterruptedStore(
        status: Bool, events: Bool = false,
        _ body: @Sendable (RedisPushStore, RedisClient, _ interrupt: @Sendable (Interruption) async throws -> Void) async throws -> Void
    ) async throws {
        try await RedisServer.with { server in
            try await withRedisClient(url: server.url) { client in
                let queue =
                    events
                    ? RedisWebhookQueue(client: client, node: "n1", lanes: 1, types: [.messageAcked], lease: .seconds(60), pollInterval: .milliseconds(50)) : nil
                let store = RedisPushStore(client: client, maxPending: 100, receiptRetentionMillis: status ? 60_000 : nil, events: queue)
                try await body(store, client) { interruption in
                    let before = client.connectionGeneration
                    switch interruption {
                    case .blip:
                        _ = try await server.cli(["CLIENT", "KILL", "TYPE", "normal"])
                    case .restartKeepingData, .restartLosingData:
                        if case .restartKeepingData = interruption { _ = try await server.cli(["SAVE"]) }
                        try await server.stop()
                        if case .restartLosingData = interruption { try? FileManager.default.removeItem(at: server.directory.appendingPathComponent("dump.rdb")) }
                        try await server.start()
                    }
                    try await eventually("the store's client reconnected on every loop", timeout: .seconds(10)) {
                        client.connectionGeneration >= before + UInt64(client.loops.count) && client.isConnected
                    }
                }
            }
        }
    }

    /// Runs `body` with a store in which the device's message `old` was stored, then Redis lost
    /// it (a restart without its data), then `accepted` was stored under the same sequence.
    private static func withSequenceGivenAgain(
        status: Bool, _ body: @Sendable (RedisPushStore, _ old: StoredMessage, _ accepted: StoredMessage) async throws -> Void
    ) async throws {
        try await withInterruptedStore(status: status) { store, _, interrupt in
            let old = try await store.append([message("old", store)])[0]
            try await interrupt(.restartLosingData)
            let accepted = try await store.append([message("accepted", store)])[0]
            try #require(accepted.sequence == old.sequence && accepted.generation != old.generation, "Redis gave the sequence again")
            try await body(store, old, accepted)
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

    @Test("an ACK after Redis restarted records the send the connection held back for it, with status and with webhook events", arguments: [false, true])
    func sendTimeAcrossGenerations(events: Bool) async throws {
        try await Self.withInterruptedStore(status: true, events: events) { store, client, interrupt in
            let message = try await store.append([Self.message("m", store)])[0]
            try await interrupt(.restartKeepingData)
            try #require(store.generation != message.generation)
            let sentAt = WallClock.millisecondsSinceEpoch() - 5_000
            #expect(try await store.acknowledge(clientID: "d", messages: [Acknowledgement(message, sentAtMillis: sentAt)]) == 1)
            let receipt = try #require(try await store.receipt(of: message.id))
            #expect(receipt.state == .acked)
            #expect(receipt.sentAtMillis == sentAt, "the ACK went by id and recorded the send at \(receipt.sentAtMillis.map(String.init) ?? "nil")")
            if events {
                let queued = try await client.send([.string("XRANGE"), .string("herald:{wh0}:events"), .string("-"), .string("+")])
                guard case .array(let entries) = queued, entries.count == 1, case .array(let entry) = entries[0], case .array(let fields) = entry[1],
                    let event = fields.last?.string
                else { Issue.record("one event queued, not \(queued)"); return }
                #expect(event.contains("\"sent_at\":\(sentAt)"), "the event: \(event)")
            }
        }
    }

    @Test("a network blip keeps the store's generation, so an ACK still deletes by sequence; a restart changes it")
    func blipKeepsTheGeneration() async throws {
        try await Self.withInterruptedStore(status: false) { store, client, interrupt in
            let message = try await store.append([Self.message("m", store)])[0]
            try await interrupt(.blip)
            #expect(store.generation == message.generation)
            let scripts = try await scriptCalls(client)
            #expect(try await store.acknowledge(clientID: "d", messages: [Acknowledgement(message)]) == 1)
            #expect(try await scriptCalls(client) == scripts, "the ACK was a plain XDEL, not the script that searches by id")
            try await interrupt(.restartKeepingData)
            #expect(store.generation != message.generation)
        }
    }
}
