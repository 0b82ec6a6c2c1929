import Actors
import HeraldTestSupport
import RedisStore
import NIOCore
import Testing

/// Every store keeps message status (`ReceiptStore`): the conformance suite's kinds, made with a
/// retention.
extension StoreKind {
    /// Whether a status is forgotten by the store's clock (the test's); Redis forgets by its
    /// own, through key TTLs (`RedisReceiptTests` checks those).
    var forgetsByTestClock: Bool { self == .memory }

    func withReceipts(
        maxPending: Int = 10, retentionMillis: Int64 = 60_000, clock: TestWallClock, _ body: @Sendable (any ReceiptStore) async throws -> Void
    ) async throws {
        try await with(maxPending: maxPending, receiptRetentionMillis: retentionMillis, clock: clock) { store in
            try await body(try #require(store as? any ReceiptStore))
        }
    }
}

extension ReceiptStore {
    /// A message for `clientID` whose id the store made from `base` (as the router does).
    func message(_ clientID: String, _ base: String, ttlMillis: Int64 = 60_000, clock: TestWallClock) -> NewMessage {
        new(clientID, messageID(base, for: clientID), ttlMillis: ttlMillis, clock: clock)
    }

    func id(_ base: String, _ clientID: String = "a") -> String { messageID(base, for: clientID) }
}

/// The status contract of `ReceiptStore`: what `GET /v1/messages/{id}` and
/// `GET /v1/clients/{id}/messages` report, on a manual clock.
@Suite("ReceiptStore conformance", .timeLimit(.minutes(1)))
struct ReceiptStoreTests {
    @Test("a message goes stored, sent, acked, with the time of each step", arguments: StoreKind.allCases)
    func lifecycle(kind: StoreKind) async throws {
        let clock = TestWallClock()
        try await kind.withReceipts(clock: clock) { store in
            let accepted = clock.now
            let stored = try await store.append([store.message("a", "m1", clock: clock)])
            var receipt = try #require(try await store.receipt(of: store.id("m1")))
            #expect(receipt.state == .stored && receipt.clientID == "a" && receipt.acceptedAtMillis == accepted)
            #expect(receipt.sentAtMillis == nil && receipt.ackedAtMillis == nil && receipt.expiresAtMillis == accepted + 60_000)

            clock.advance(byMillis: 5)
            try await store.markSent(clientID: "a", messages: stored)
            receipt = try #require(try await store.receipt(of: store.id("m1")))
            #expect(receipt.state == .sent && receipt.sentAtMillis == accepted + 5)

            clock.advance(byMillis: 7)
            #expect(try await store.acknowledge(clientID: "a", messageID: store.id("m1")))
            receipt = try #require(try await store.receipt(of: store.id("m1")))
            #expect(receipt.state == .acked && receipt.sentAtMillis == accepted + 5 && receipt.ackedAtMillis == accepted + 12)
            #expect(try await store.pendingReceipts(for: "a", after: 0, limit: 10).isEmpty)

            // A late "sent" (a redelivery racing the ACK) does not undo the ACK.
            try await store.markSent(clientID: "a", messages: stored)
            #expect(try await store.receipt(of: store.id("m1"))?.state == .acked)
        }
    }

    @Test("a send recorded later keeps its own time; an ACK that brings its send's time records both, unless the send was recorded", arguments: StoreKind.allCases)
    func heldBackSends(kind: StoreKind) async throws {
        let clock = TestWallClock()
        try await kind.withReceipts(clock: clock) { store in
            let accepted = clock.now
            let stored = try await store.append((1...3).map { store.message("a", "m\($0)", clock: clock) })
            let sends = stored.map { Acknowledgement($0, sentAtMillis: accepted + 3) }

            // m1: the connection records its send a while after writing it, at the write's time.
            clock.advance(byMillis: 2_000)
            try await store.markSent(clientID: "a", sends: [sends[0]])
            #expect(try await store.receipt(of: store.id("m1"))?.sentAtMillis == accepted + 3)
            // Another device's connection records nothing.
            try await store.markSent(clientID: "b", sends: [sends[1]])
            #expect(try await store.receipt(of: store.id("m2"))?.state == .stored)

            // m2: the ACK brings the send, which nothing had recorded.
            #expect(try await store.acknowledge(clientID: "a", messages: [sends[1]]) == 1)
            var receipt = try #require(try await store.receipt(of: store.id("m2")))
            #expect(receipt.state == .acked && receipt.sentAtMillis == accepted + 3 && receipt.ackedAtMillis == accepted + 2_000)

            // m3: a send recorded earlier (a redelivery's first write) is kept.
            try await store.markSent(clientID: "a", messages: [stored[2]])
            #expect(try await store.acknowledge(clientID: "a", messages: [sends[2]]) == 1)
            receipt = try #require(try await store.receipt(of: store.id("m3")))
            #expect(receipt.state == .acked && receipt.sentAtMillis == accepted + 2_000)
        }
    }

    @Test("a final status is kept for the retention, then forgotten", arguments: StoreKind.allCases)
    func retention(kind: StoreKind) async throws {
        let clock = TestWallClock()
        try await kind.withReceipts(retentionMillis: 10_000, clock: clock) { store in
            _ = try await store.append([store.message("a", "m1", ttlMillis: 1_000_000, clock: clock)])
            // Pending, it is kept however long it waits.
            clock.advance(byMillis: 500_000)
            #expect(try await store.receipt(of: store.id("m1"))?.state == .stored)
            _ = try await store.acknowledge(clientID: "a", messageID: store.id("m1"))
            clock.advance(byMillis: 9_999)
            #expect(try await store.receipt(of: store.id("m1"))?.state == .acked)
            clock.advance(byMillis: 1)
            if kind.forgetsByTestClock { #expect(try await store.receipt(of: store.id("m1")) == nil) }
        }
    }

    @Test("an expired message reads as expired, before and after the sweep", arguments: StoreKind.allCases)
    func expiry(kind: StoreKind) async throws {
        let clock = TestWallClock()
        try await kind.withReceipts(retentionMillis: 10_000, clock: clock) { store in
            let stored = try await store.append([store.message("a", "m1", ttlMillis: 1_000, clock: clock), store.message("a", "m2", ttlMillis: 100_000, clock: clock)])
            try await store.markSent(clientID: "a", messages: stored)
            clock.advance(byMillis: 1_000)
            #expect(try await store.receipt(of: store.id("m1"))?.state == .expired)
            #expect(try await store.receipt(of: store.id("m2"))?.state == .sent)
            #expect(try await store.pendingReceipts(for: "a", after: 0, limit: 10).map(\.id) == [store.id("m2")])
            _ = try await store.removeExpired()
            #expect(try await store.receipt(of: store.id("m1"))?.state == .expired)
            // Kept for the retention after the sweep found it expired, then forgotten.
            clock.advance(byMillis: 10_000)
            _ = try await store.removeExpired()
            if kind.forgetsByTestClock { #expect(try await store.receipt(of: store.id("m1")) == nil) }
            #expect(try await store.receipt(of: store.id("m2"))?.state == .sent)
        }
    }

    @Test("a device's pending list pages in order; another device's sends and ACKs change nothing", arguments: StoreKind.allCases)
    func pendingList(kind: StoreKind) async throws {
        let clock = TestWallClock()
        try await kind.withReceipts(clock: clock) { store in
            let stored = try await store.append((1...5).map { store.message("a", "m\($0)", clock: clock) })
            try await store.markSent(clientID: "a", messages: Array(stored.prefix(2)))
            try await store.markSent(clientID: "b", messages: Array(stored.suffix(3)))
            #expect(try await store.acknowledge(clientID: "b", messageIDs: [store.id("m1")]) == 0)
            let first = try await store.pendingReceipts(for: "a", after: 0, limit: 3)
            #expect(first.map(\.id) == ["m1", "m2", "m3"].map { store.id($0) })
            #expect(first.map(\.state) == [.sent, .sent, .stored])
            let second = try await store.pendingReceipts(for: "a", after: first[2].sequence, limit: 3)
            #expect(second.map(\.id) == ["m4", "m5"].map { store.id($0) })
            #expect(second.allSatisfy { $0.state == .stored })
            #expect(try await store.pendingReceipts(for: "b", after: 0, limit: 3).isEmpty)
        }
    }

    @Test("a refused push leaves no status", arguments: StoreKind.allCases)
    func refusedAppend(kind: StoreKind) async throws {
        let clock = TestWallClock()
        try await kind.withReceipts(maxPending: 1, clock: clock) { store in
            _ = try await store.append([store.message("a", "m1", clock: clock)])
            await #expect(throws: StoreError(.pendingFull, "")) {
                _ = try await store.append([store.message("b", "m2", clock: clock), store.message("a", "m3", clock: clock)])
            }
            #expect(try await store.receipt(of: store.id("m2", "b")) == nil)
            #expect(try await store.receipt(of: store.id("m3")) == nil)
            #expect(try await store.receipt(of: store.id("m1"))?.state == .stored)
        }
    }
}

@Suite("In-memory receipts")
struct InMemoryReceiptTests {
    @Test("beyond the cap the oldest final status is forgotten first, and counted")
    func cap() throws {
        let clock = TestWallClock()
        let store = InMemoryPushStore(maxPending: 10, receiptRetentionMillis: 60_000, maxReceipts: 2, now: { clock.now })
        _ = try store.appendNow((1...4).map { new("a", "m\($0)", clock: clock) })
        _ = store.acknowledgeNow(clientID: "a", messages: [Acknowledgement(id: "m1"), Acknowledgement(id: "m2")])
        #expect(store.receiptCounts == (kept: 4, forgottenEarly: 0))
        _ = store.acknowledgeNow(clientID: "a", messages: [Acknowledgement(id: "m3")])
        #expect(store.receipt(of: store.id("m1")) == nil)
        #expect(store.receipt(of: store.id("m2"))?.state == .acked)
        #expect(store.receipt(of: store.id("m4"))?.state == .stored)
        #expect(store.receiptCounts == (kept: 3, forgottenEarly: 1))
    }

    @Test("without a retention the store keeps no status")
    func off() throws {
        let store = InMemoryPushStore(maxPending: 10)
        let stored = try store.appendNow([NewMessage(clientID: "a", id: "m1", payload: ByteBuffer(), expiresAtMillis: .max)])
        store.markSentNow(clientID: "a", messages: stored)
        #expect(!store.keepsReceipts)
        #expect(store.receipt(of: store.id("m1")) == nil)
        #expect(store.receiptCounts == (kept: 0, forgottenEarly: 0))
    }
}

@Suite("Redis receipts", .timeLimit(.minutes(1)))
struct RedisReceiptTests {
    private func statusKey(_ id: String) -> String {
        "herald:{\(id.split(separator: ".").last!)}:r:\(id)"
    }

    private func ttl(_ key: String, _ client: RedisClient) async throws -> Int64 {
        try #require(try await client.send([.string("PTTL"), .string(key)]).int64)
    }

    @Test("a status lives in Redis until the message expires plus the retention, and the retention after its ACK")
    func keyLifetimes() async throws {
        let clock = TestWallClock()
        try await withRedisClient { client in
            let store = RedisPushStore(client: client, maxPending: 10, receiptRetentionMillis: 3_600_000, now: { clock.now })
            let id = store.messageID("m1", for: "a")
            #expect(id.hasPrefix("m1.") && id.count <= 8)
            // Redis counts a TTL down in real time: what passed between the write and the read
            // (a loaded machine can stall for seconds) is measured, not assumed.
            func millis(since start: ContinuousClock.Instant) -> Int64 {
                let passed = ContinuousClock.now - start
                return passed.components.seconds * 1000 + passed.components.attoseconds / 1_000_000_000_000_000 + 1
            }
            var start = ContinuousClock.now
            _ = try await store.append([new("a", id, ttlMillis: 600_000, clock: clock)])
            // TTL + retention + the store's minute of slack, less what passed since.
            let pending = try await ttl(statusKey(id), client)
            #expect(pending >= 4_260_000 - millis(since: start) && pending <= 4_260_000, "\(pending)")
            start = ContinuousClock.now
            #expect(try await store.acknowledge(clientID: "a", messageID: id))
            let acked = try await ttl(statusKey(id), client)
            #expect(acked >= 3_600_000 - millis(since: start) && acked <= 3_600_000, "\(acked)")
            // Once forgotten (the key gone), a late send or ACK leaves no status to read, and what
            // it writes expires by itself.
            _ = try await client.send([.string("DEL"), .string(statusKey(id))])
            try await store.markSent(clientID: "a", messages: [StoredMessage(clientID: "a", id: id, sequence: 1, payload: ByteBuffer(), expiresAtMillis: .max)])
            #expect(try await store.receipt(of: id) == nil)
            let late = try await ttl(statusKey(id), client)
            #expect(late > 0 && late <= 3_660_000, "\(late)")
            _ = try await store.acknowledge(clientID: "a", messages: [Acknowledgement(id: id, sequence: 1, generation: store.generation)])
            #expect(try await store.receipt(of: id) == nil)
            #expect(try await ttl(statusKey(id), client) <= 3_600_000)
        }
    }

    @Test("a device's ids carry the tag of its slot, so its status keys share the device's slot")
    func slotTags() async throws {
        // CLUSTER KEYSLOT is Redis's own slot function, on a real cluster.
        try await RedisClusterSet.withShared { cluster in
            try await withRedisClient(url: cluster.url) { client in
                let redis = RedisPushStore(client: client, maxPending: 1, receiptRetentionMillis: 1000)
                for device in ["a", "b", "alice", "device-42", "x:y@z.example"] {
                    let id = redis.messageID("1-2-3", for: device)
                    let deviceSlot = try #require(try await client.send([.string("CLUSTER"), .string("KEYSLOT"), .string("herald:{\(device)}:q")]).int64)
                    let statusSlot = try #require(try await client.send([.string("CLUSTER"), .string("KEYSLOT"), .string(statusKey(id))]).int64)
                    #expect(deviceSlot == statusSlot, "\(device): \(id)")
                }
            }
        }
    }
}
