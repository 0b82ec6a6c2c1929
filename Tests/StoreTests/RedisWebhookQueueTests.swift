import Actors
import Foundation
import HeraldTestSupport
import Logging
import NIOCore
import NIOPosix
import Testing

@testable import RedisStore

/// The webhook queue in Redis (`RedisWebhookQueue`) against a real redis-server: what the ACK
/// writes, and how a lane passes from one node to another with its unanswered batch.
@Suite("Webhook events in Redis", .timeLimit(.minutes(1)))
struct RedisWebhookQueueTests {
    /// A lease far longer than any test: a lane changes hands only when its holder lets go,
    /// never because a loaded machine delayed a renewal.
    private func queue(
        _ client: RedisClient, node: String, types: Set<WebhookEventType> = [.messageAcked], staleAfter: Duration? = nil
    ) -> RedisWebhookQueue {
        RedisWebhookQueue(
            client: client, node: node, lanes: 1, types: types, lease: .seconds(60), pollInterval: .milliseconds(50), staleAfter: staleAfter
        )
    }

    /// Has `queue` hold its lane (the lease taken), as its node's `maintain` does.
    private func hold(_ queue: RedisWebhookQueue) async throws -> Task<Void, Never> {
        let holding = Task { await queue.maintain() }
        try await eventually("the lane is held") { queue.figures.lanesHeld == 1 }
        return holding
    }

    /// Stores a message `name` for `dev` and acknowledges it on the connection that sent it, so
    /// that `store` queues its `message.acked` event; returns the event's id.
    private func ackOne(_ name: String, on store: RedisPushStore, clock: TestWallClock) async throws -> String {
        let stored = try await store.append([new("dev", store.messageID(name, for: "dev"), clock: clock)])
        _ = try await store.acknowledge(clientID: "dev", messages: [Acknowledgement(stored[0])])
        return "ack-\(stored[0].id)"
    }

    private func length(_ queue: RedisWebhookQueue, _ client: RedisClient) async throws -> Int64 {
        try #require(try await client.send([.string("XLEN"), .string(queue.streamKey(0))]).int64)
    }

    @Test("an ACK queues one event per message it removed: none for an unknown id or a second ACK")
    func eventPerRemovedMessage() async throws {
        let clock = TestWallClock()
        try await withRedisClient { client in
            let events = queue(client, node: "n1")
            let store = RedisPushStore(client: client, maxPending: 10, receiptRetentionMillis: 60_000, events: events, now: { clock.now })
            let ids = ["m1", "m2", "m3"].map { store.messageID($0, for: "a") }
            let stored = try await store.append(ids.map { new("a", $0, clock: clock) })
            // Sent on this connection (with its sequence): one event.
            #expect(try await store.acknowledge(clientID: "a", messages: [Acknowledgement(id: ids[0], sequence: stored[0].sequence, generation: stored[0].generation)]) == 1)
            #expect(try await length(events, client) == 1)
            // An id from an earlier connection (no sequence) is found in the queue; an unknown id makes nothing.
            #expect(try await store.acknowledge(clientID: "a", messages: [Acknowledgement(id: ids[1]), Acknowledgement(id: "nope")]) == 1)
            #expect(try await length(events, client) == 2)
            // The same ACK again: the message is gone, no second event.
            #expect(try await store.acknowledge(clientID: "a", messages: [Acknowledgement(id: ids[1])]) == 0)
            #expect(try await length(events, client) == 2)
            // The status says acked, as without a webhook.
            #expect(try await store.receipt(of: ids[0])?.state == .acked)
            #expect(try await store.receipt(of: ids[2])?.state == .stored)
        }
    }

    @Test("a lane's batch read by one node and never removed is sent by the next node that holds the lane, first and in order")
    func handOver() async throws {
        let clock = TestWallClock()
        try await withRedisClient { client in
            let first = queue(client, node: "n1")
            let store = RedisPushStore(client: client, maxPending: 10, events: first, now: { clock.now })
            let ids = (1...5).map { store.messageID("m\($0)", for: "dev") }
            let stored = try await store.append(ids.map { new("dev", $0, clock: clock) })
            _ = try await store.acknowledge(clientID: "dev", messages: stored.map { Acknowledgement($0) })

            let holding = Task { await first.maintain() }
            let batch = await first.next(lane: 0, limit: 3)
            #expect(batch.map(\.id) == ids.prefix(3).map { "ack-\($0)" })
            // The first node stops without removing its batch (its receiver never answered).
            holding.cancel()
            await holding.value
            #expect(first.figures.lanesHeld == 0)

            let second = queue(client, node: "n2")
            let taking = Task { await second.maintain() }
            // The unanswered batch first, then new entries up to the limit; asked again before
            // a removal (the sender lingering), the same batch.
            let again = await second.next(lane: 0, limit: 4)
            #expect(again.map(\.id) == ids.prefix(4).map { "ack-\($0)" }, "the unanswered batch first")
            #expect(await second.next(lane: 0, limit: 4).map(\.id) == again.map(\.id))
            #expect(await second.remove(lane: 0, batch: again))
            let rest = await second.next(lane: 0, limit: 4)
            #expect(rest.map(\.id) == ids.suffix(1).map { "ack-\($0)" })
            #expect(await second.remove(lane: 0, batch: rest))
            #expect(try await length(second, client) == 0, "delivered events leave the stream")
            let pending = try await client.send([.string("XPENDING"), .string(second.streamKey(0)), .string("herald")])
            #expect(pending.array?.first?.int64 == 0, "and the group's pending list")
            #expect(second.figures.lanesHeld == 1)
            taking.cancel()
            await taking.value
        }
    }

    @Test("with message.expired: the lane holder's sweep queues the event of each expired message, then deletes it; the index follows the device")
    func expirySweep() async throws {
        let clock = TestWallClock()
        try await withRedisClient { client in
            let events = queue(client, node: "n1", types: [.messageExpired])
            let store = RedisPushStore(client: client, maxPending: 2, events: events, now: { clock.now })
            let start = clock.now
            let stored = try await store.append([new("a", "m1", ttlMillis: 1_000, clock: clock), new("a", "m2", ttlMillis: 5_000, clock: clock)])
            func score() async throws -> Int64? {
                try await client.send([.string("ZSCORE"), .string(events.expiringKey(0)), .string("a")]).int64
            }
            #expect(try await score() == start + 1_000, "indexed by its earliest expiry before the messages exist")
            // A node that does not hold the lane sweeps nothing.
            clock.advance(byMillis: 2_000)
            #expect(try await store.removeExpired() == 0)
            let holding = Task { await events.maintain() }
            try await eventually("the lane is held") { events.figures.lanesHeld == 1 }

            // A read skips the expired message but leaves it for the sweep to report.
            #expect(try await store.pending(for: "a", after: 0, limit: 10).map(\.id) == ["m2"])
            // The queue counts it until then: the cap (2) refuses a third message.
            await #expect(throws: StoreError.self) { try await store.append([new("a", "m3", clock: clock)]) }
            #expect(try await store.removeExpired() == 1)
            #expect(try await length(events, client) == 1)
            #expect(try await score() == start + 5_000, "the next expiry")
            let first = await events.next(lane: 0, limit: 10)
            #expect(first.map(\.id) == ["exp-m1"])
            #expect(first.first?.json.contains(#""expires_at":\#(start + 1_000)"#) == true)
            #expect(await events.remove(lane: 0, batch: first))
            _ = try await store.append([new("a", "m3", clock: clock)])

            // An ACKed message makes no event; m2 expires, and the device is left empty.
            _ = try await store.acknowledge(clientID: "a", messages: [Acknowledgement(id: "m3", sequence: stored[1].sequence + 1, generation: stored[1].generation)])
            clock.advance(byMillis: 4_000)
            #expect(try await store.removeExpired() == 1)
            #expect(await events.next(lane: 0, limit: 10).map(\.id) == ["exp-m2"])
            // Found empty: kept for the settling time (an append may be on its way), then removed.
            #expect(try await score() ?? 0 > clock.now)
            clock.advance(byMillis: 120_000)
            #expect(try await store.removeExpired() == 0)
            #expect(try await score() == nil)
            holding.cancel()
            await holding.value
        }
    }

    @Test("entries left unanswered in another consumer's pending list (a node that read past its lease, then died) are claimed by the holder once stale")
    func staleEntriesClaimed() async throws {
        let clock = TestWallClock()
        try await withRedisClient { client in
            let holder = queue(client, node: "n1", staleAfter: .milliseconds(300))
            // The events come from another node: the holder reads them through the group (its
            // own it would send from memory, whoever read them).
            let other = queue(client, node: "n2")
            let store = RedisPushStore(client: client, maxPending: 10, events: other, now: { clock.now })
            func acked(_ ids: [String]) async throws {
                let stored = try await store.append(ids.map { new("dev", $0, clock: clock) })
                _ = try await store.acknowledge(clientID: "dev", messages: stored.map { Acknowledgement($0) })
            }
            let holding = try await hold(holder)
            try await acked(["m1"])
            let first = await holder.next(lane: 0, limit: 10)
            #expect(first.map(\.id) == ["ack-m1"])
            _ = await holder.remove(lane: 0, batch: first)
            // Now a node that believed it still held the lane reads two entries, and is never
            // heard of again.
            try await acked(["m2", "m3", "m4", "m5"])
            let ghostRead = try await client.send([
                .string("XREADGROUP"), .string("GROUP"), .string("herald"), .string("ghost"), .string("COUNT"), .string("2"), .string("STREAMS"),
                .string(holder.streamKey(0)), .string(">"),
            ])
            // The ghost holds two of them now: only a claim gets those out.
            guard case .array(let streams) = ghostRead, case .array(let stream)? = streams.first, case .array(let entries)? = stream.last else {
                Issue.record("unexpected reply to the ghost's read: \(ghostRead)")
                return
            }
            #expect(entries.count == 2)
            // The holder sends what nobody holds, and the ghost's two once they are stale: each
            // once. (In which order depends on how long the holder takes to start reading: a
            // loaded machine can let the ghost's entries turn stale before its first read.)
            var sent: [String] = []
            try await eventually("all four sent", timeout: .seconds(10)) {
                let batch = await holder.next(lane: 0, limit: 10)
                sent += batch.map(\.id)
                _ = await holder.remove(lane: 0, batch: batch)
                return sent.count >= 4
            }
            #expect(sent.sorted() == ["ack-m2", "ack-m3", "ack-m4", "ack-m5"])
            #expect(try await length(holder, client) == 0)
            holding.cancel()
            await holding.value
        }
    }

    /// How many times Redis has run `XREADGROUP` so far (`INFO commandstats`).
    private func groupReads(_ client: RedisClient) async throws -> Int {
        try await commandCalls(client)["xreadgroup"] ?? 0
    }

    @Test("the holder sends the events it wrote itself from memory, in order, without reading them back from Redis")
    func ownEventsFromMemory() async throws {
        let clock = TestWallClock()
        try await withRedisClient { client in
            let holder = queue(client, node: "n1")
            let store = RedisPushStore(client: client, maxPending: 100, events: holder, now: { clock.now })
            let holding = try await hold(holder)
            // A lane just taken is read through the group to its end first.
            let event = try await ackOne("m0", on: store, clock: clock)
            let first = await holder.next(lane: 0, limit: 100)
            #expect(first.map(\.id) == [event])
            #expect(await holder.remove(lane: 0, batch: first))

            let reads = try await groupReads(client)
            var ids: [String] = []
            for index in 1...20 { ids.append(try await ackOne("m\(index)", on: store, clock: clock)) }
            let batch = await holder.next(lane: 0, limit: 100)
            #expect(batch.map(\.id) == ids)
            #expect(await holder.remove(lane: 0, batch: batch))
            #expect(try await groupReads(client) == reads, "no XREADGROUP: the holder had them in memory")
            #expect(try await length(holder, client) == 0, "sent events leave the stream")
            holding.cancel()
            await holding.value
        }
    }

    @Test("an event another node wrote before the holder's own goes out first: the foreign counter sends the holder to the stream")
    func foreignBeforeOwn() async throws {
        let clock = TestWallClock()
        try await withRedisClient { client in
            let holder = queue(client, node: "n1")
            let other = queue(client, node: "n2")
            let holderStore = RedisPushStore(client: client, maxPending: 100, events: holder, now: { clock.now })
            let otherStore = RedisPushStore(client: client, maxPending: 100, events: other, now: { clock.now })
            let holding = try await hold(holder)
            // The lane read to its end once (nothing there), so the next own events would come
            // from memory.
            let own = try await ackOne("m0", on: holderStore, clock: clock)
            let first = await holder.next(lane: 0, limit: 100)
            #expect(first.map(\.id) == [own])
            #expect(await holder.remove(lane: 0, batch: first))
            // The device moved: its next ACK was taken on n2, the one after on the holder.
            let foreign = try await ackOne("m1", on: otherStore, clock: clock)
            let after = try await ackOne("m2", on: holderStore, clock: clock)
            let batch = await holder.next(lane: 0, limit: 100)
            #expect(batch.map(\.id) == [foreign, after], "n2's older event first, and the holder's own once")
            #expect(await holder.remove(lane: 0, batch: batch))
            #expect(try await length(holder, client) == 0)
            let pending = try await client.send([.string("XPENDING"), .string(holder.streamKey(0)), .string("herald")])
            #expect(pending.array?.first?.int64 == 0, "what was read through the group is acknowledged")
            holding.cancel()
            await holding.value
        }
    }

    @Test("an entry written unannounced (by a node that believed it held the lane) is found by the holder's periodic read")
    func unannouncedEntryFound() async throws {
        try await withRedisClient { client in
            let holder = queue(client, node: "n1", staleAfter: .milliseconds(300))
            let holding = try await hold(holder)
            let reading = Task { await holder.next(lane: 0, limit: 10) }
            try await eventually("the lane read to its end, asleep") { holder.pauses.load(ordering: .relaxed) >= 1 }
            // No foreign counter raised: only the read every half staleAfter finds it.
            _ = try await client.send([
                .string("XADD"), .string(holder.streamKey(0)), .string("*"), .string("i"), .string("late-1"), .string("j"), .string(#"{"id":"late-1"}"#),
            ])
            let batch = try await withTimeout("the late entry", .seconds(10)) { await reading.value }
            #expect(batch.map(\.id) == ["late-1"])
            holding.cancel()
            await holding.value
        }
    }

    @Test("a node that starts before its Redis answers takes its lanes once Redis does, not a third of a lease later")
    func startsBeforeRedis() async throws {
        let server = try RedisServer()
        do {
            var logger = Logger(label: "redis-test")
            logger.logLevel = .critical
            let client = RedisClient(configuration: RedisConfiguration(url: server.url)!, group: MultiThreadedEventLoopGroup.singleton, logger: logger)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                // The lease is 60 s: the next regular renewal would come 20 s after the first.
                let events = queue(client, node: "n1")
                group.addTask { await events.maintain() }
                try await eventually("the first renewal, Redis not there") { events.leaseRounds.load(ordering: .relaxed) >= 1 }
                #expect(events.figures.lanesHeld == 0)
                try await server.start()
                // The client reconnects within 2 s (its backoff's ceiling); the lanes follow.
                try await eventually("the lane taken once Redis answers", timeout: .seconds(10)) { events.figures.lanesHeld == 1 }
                group.cancelAll()
            }
        } catch {
            try? await server.stop()
            throw error
        }
        try await server.stop()
    }

    @Test("events queued for a lane another node sends do not wake this node's lane: its holder reads them")
    func notHeldNotWoken() async throws {
        let clock = TestWallClock()
        try await withRedisClient { client in
            let holder = queue(client, node: "n1")
            let holding = Task { await holder.maintain() }
            try await eventually("n1 holds the lane") { holder.figures.lanesHeld == 1 }
            // n2 polls once a minute: any further pause of its lane is a wake by an event.
            let other = RedisWebhookQueue(client: client, node: "n2", lanes: 1, types: [.messageAcked], lease: .seconds(60), pollInterval: .seconds(60))
            let store = RedisPushStore(client: client, maxPending: 100, events: other, now: { clock.now })
            // Not awaited: it returns at its next poll, a minute on, when it sees it is cancelled.
            let waiting = Task { await other.next(lane: 0, limit: 10) }
            defer { waiting.cancel() }
            try await eventually("n2's lane asleep") { other.pauses.load(ordering: .relaxed) == 1 }
            for index in 0..<20 {
                let stored = try await store.append([new("dev", store.messageID("m\(index)", for: "dev"), clock: clock)])
                #expect(try await store.acknowledge(clientID: "dev", messages: [Acknowledgement(stored[0])]) == 1)
            }
            #expect(other.figures.queued == 20)
            #expect(other.pauses.load(ordering: .relaxed) == 1, "no wake for a lane n2 does not hold")
            let batch = await holder.next(lane: 0, limit: 100)
            #expect(batch.count == 20, "the holder reads them")
            holding.cancel()
            await holding.value
        }
    }

    @Test("a lane held by one node is refused to another, and passes once the holder lets go")
    func exclusive() async throws {
        try await withRedisClient { client in
            let first = queue(client, node: "n1")
            let holding = Task { await first.maintain() }
            try await eventually("the first node holds the lane") { first.figures.lanesHeld == 1 }
            // The script every node's maintain runs: renewed for the holder, refused to another.
            func lease(_ node: String) async throws -> Int64? {
                try await client.run(RedisWebhookQueue.leaseScript, keys: [first.leaseKey(0)], arguments: [.string(node), .integer(60_000)]).int64
            }
            #expect(try await lease("n2") == 0)
            #expect(try await lease("n1") == 1)
            holding.cancel()
            await holding.value
            #expect(try await client.send([.string("GET"), .string(first.leaseKey(0))]) == .null, "a node that stops gives its lanes back")
            #expect(try await lease("n2") == 2)
        }
    }
}

extension RESPValue {
    fileprivate var array: [RESPValue]? {
        if case .array(let values) = self { values } else { nil }
    }
}
