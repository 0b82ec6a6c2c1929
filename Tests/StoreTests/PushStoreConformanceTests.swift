import Actors
import HeraldTestSupport
import Logging
import NIOCore
import NIOPosix
import RedisStore
import Synchronization
import Testing

/// A wall clock a test moves by hand.
final class TestWallClock: Sendable {
    private let millis = Atomic<Int64>(1_000_000)
    var now: Int64 { millis.load(ordering: .relaxed) }
    func advance(byMillis delta: Int64) { millis.add(delta, ordering: .relaxed) }
}

/// Every `PushStore` implementation, made fresh for one test.
enum StoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case memory
    case redis
    /// A single redis-server that loaded Herald's module: appends go through `HERALD.APPEND`.
    case redisModule
    case redisCluster

    var testDescription: String { rawValue }

    /// Whether a batch across devices is written per device and taken back on refusal.
    var takesBackAcrossShards: Bool { self == .redisCluster }

    /// Runs `body` with a fresh store of this kind (keeping message status for
    /// `receiptRetentionMillis`, if given); for Redis, a real redis-server of its own, stopped
    /// afterwards.
    func with(
        maxPending: Int, receiptRetentionMillis retention: Int64? = nil, clock: TestWallClock,
        _ body: @Sendable (any PushStore) async throws -> Void
    ) async throws {
        switch self {
        case .memory:
            try await body(InMemoryPushStore(maxPending: maxPending, receiptRetentionMillis: retention, now: { clock.now }))
        case .redis, .redisModule:
            try await withRedisClient(module: self == .redisModule) { client in
                try await body(RedisPushStore(client: client, maxPending: maxPending, receiptRetentionMillis: retention, now: { clock.now }))
            }
        case .redisCluster:
            // One cluster for the tests running at once, so each test has keys of its own. The
            // tests' devices "a" and "b" hash to slots on different masters.
            try await RedisClusterSet.withShared { cluster in
                try await withRedisClient(url: cluster.url) { client in
                    let prefix = "t\(UInt64.random(in: 0...UInt64.max))"
                    try await body(
                        RedisPushStore(client: client, maxPending: maxPending, prefix: prefix, receiptRetentionMillis: retention, now: { clock.now })
                    )
                }
            }
        }
    }
}

/// Runs `body` with a client of `url`, connected.
func withRedisClient(
    url: String, commandTimeout: TimeAmount = .seconds(2), _ body: @Sendable (RedisClient) async throws -> Void
) async throws {
    var logger = Logger(label: "redis-test")
    logger.logLevel = .critical
    var configuration = RedisConfiguration(url: url)!
    configuration.commandTimeout = commandTimeout
    let client = RedisClient(configuration: configuration, group: MultiThreadedEventLoopGroup.singleton, logger: logger)
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await client.run() }
        try await eventually("redis connected") { client.isConnected }
        try await body(client)
        group.cancelAll()
    }
}

/// Runs `body` with a client connected to a real redis-server of its own (one that loaded
/// Herald's module, with `module`), stopped afterwards.
func withRedisClient(module: Bool = false, _ body: @Sendable (RedisClient) async throws -> Void) async throws {
    try await RedisServer.with(arguments: module ? try await HeraldRedisModule.arguments() : []) { server in
        try await withRedisClient(url: server.url, body)
    }
}

/// Calls of each command so far (`INFO commandstats`): Redis's own count of what a store sent.
func commandCalls(_ client: RedisClient) async throws -> [String: Int] {
    commandCalls(inCommandStats: try #require(try await client.send([.string("INFO"), .string("commandstats")]).string))
}

/// Scripts Redis has run so far (`EVAL` and `EVALSHA`).
func scriptCalls(_ client: RedisClient) async throws -> Int {
    let calls = try await commandCalls(client)
    return (calls["evalsha"] ?? 0) + (calls["eval"] ?? 0)
}

/// Calls of each command in the text of `INFO commandstats` (`cmdstat_<name>:calls=N,...`).
func commandCalls(inCommandStats info: String) -> [String: Int] {
    var calls: [String: Int] = [:]
    for line in info.split(whereSeparator: \.isNewline) {
        guard line.hasPrefix("cmdstat_"), let colon = line.firstIndex(of: ":") else { continue }
        let name = String(line[line.index(line.startIndex, offsetBy: 8)..<colon])
        calls[name] = line[colon...].split(separator: ",").first?.split(separator: "=").last.flatMap { Int($0) }
    }
    return calls
}

/// A message for the store tests: its payload names its id, and it expires `ttlMillis` from now.
func new(_ clientID: String, _ id: String, ttlMillis: Int64 = 60_000, clock: TestWallClock) -> NewMessage {
    NewMessage(clientID: clientID, id: id, payload: ByteBuffer(string: "payload-\(id)"), expiresAtMillis: clock.now + ttlMillis)
}

/// The `PushStore` contract (its doc comment), checked against every implementation.
@Suite("PushStore conformance", .timeLimit(.minutes(1)))
struct PushStoreConformanceTests {
    @Test("messages come back in the order they were accepted, with increasing sequences", arguments: StoreKind.allCases)
    func ordering(kind: StoreKind) async throws {
        let clock = TestWallClock()
        try await kind.with(maxPending: 100, clock: clock) { store in
            _ = try await store.append([new("a", "1", clock: clock), new("a", "2", clock: clock)])
            _ = try await store.append([new("a", "3", clock: clock)])
            let pending = try await store.pending(for: "a", after: 0, limit: 10)
            #expect(pending.map(\.id) == ["1", "2", "3"])
            #expect(pending.map(\.sequence) == pending.map(\.sequence).sorted())
            #expect(Set(pending.map(\.sequence)).count == 3)
            #expect(pending[0].payload == ByteBuffer(string: "payload-1"))
            let after = try await store.pending(for: "a", after: pending[0].sequence, limit: 1)
            #expect(after.map(\.id) == ["2"])
        }
    }

    @Test("delivery is not deletion: a message stays until acknowledged", arguments: StoreKind.allCases)
    func atLeastOnce(kind: StoreKind) async throws {
        let clock = TestWallClock()
        try await kind.with(maxPending: 100, clock: clock) { store in
            _ = try await store.append([new("a", "1", clock: clock), new("a", "2", clock: clock)])
            _ = try await store.pending(for: "a", after: 0, limit: 10)
            #expect(try await store.pendingCount(for: "a") == 2)
            #expect(try await store.acknowledge(clientID: "a", messageID: "1"))
            #expect(try await store.pending(for: "a", after: 0, limit: 10).map(\.id) == ["2"])
            #expect(try await store.acknowledge(clientID: "a", messageID: "1") == false, "idempotent")
        }
    }

    @Test("an ACK of a foreign or unknown id deletes nothing", arguments: StoreKind.allCases)
    func isolation(kind: StoreKind) async throws {
        let clock = TestWallClock()
        try await kind.with(maxPending: 100, clock: clock) { store in
            _ = try await store.append([new("a", "1", clock: clock), new("b", "2", clock: clock)])
            #expect(try await store.acknowledge(clientID: "a", messageID: "2") == false)
            #expect(try await store.acknowledge(clientID: "a", messageID: "nope") == false)
            #expect(try await store.acknowledge(clientID: "c", messageID: "1") == false)
            #expect(try await store.pendingCount(for: "a") == 1)
            #expect(try await store.pendingCount(for: "b") == 1)
        }
    }

    @Test("one ACK of several ids removes exactly the device's own, and counts them", arguments: StoreKind.allCases)
    func batchAcknowledge(kind: StoreKind) async throws {
        let clock = TestWallClock()
        try await kind.with(maxPending: 2000, clock: clock) { store in
            let own = (0..<1200).map { new("a", "a\($0)", clock: clock) }
            _ = try await store.append(own + [new("b", "b0", clock: clock)])
            let ids = own.dropLast().map(\.id) + ["b0", "nope", "a0"]
            #expect(try await store.acknowledge(clientID: "a", messageIDs: ids) == 1199, "duplicates and foreign ids don't count")
            #expect(try await store.pending(for: "a", after: 0, limit: 10).map(\.id) == ["a1199"])
            #expect(try await store.pendingCount(for: "b") == 1)
            #expect(try await store.acknowledge(clientID: "a", messageIDs: []) == 0)
        }
    }

    @Test("an expired message is never returned nor counted, and the sweep removes it", arguments: StoreKind.allCases)
    func ttl(kind: StoreKind) async throws {
        let clock = TestWallClock()
        try await kind.with(maxPending: 100, clock: clock) { store in
            _ = try await store.append([new("a", "short", ttlMillis: 1000, clock: clock), new("a", "long", ttlMillis: 10_000, clock: clock)])
            clock.advance(byMillis: 1000)
            #expect(try await store.pending(for: "a", after: 0, limit: 10).map(\.id) == ["long"])
            #expect(try await store.pendingCount(for: "a") == 1)
            #expect(try await store.removeExpired() <= 1)
            clock.advance(byMillis: 9000)
            #expect(try await store.pending(for: "a", after: 0, limit: 10).isEmpty)
            _ = try await store.removeExpired()
            #expect(try await store.pendingCount(for: "a") == 0)
        }
    }

    @Test("past the cap, append refuses and stores nothing; expired messages do not count", arguments: StoreKind.allCases)
    func cap(kind: StoreKind) async throws {
        let clock = TestWallClock()
        try await kind.with(maxPending: 2, clock: clock) { store in
            _ = try await store.append([new("a", "1", ttlMillis: 500, clock: clock), new("a", "2", clock: clock)])
            await #expect(throws: StoreError(.pendingFull, "")) { try await store.append([new("a", "3", clock: clock)]) }
            #expect(try await store.pendingCount(for: "a") == 2)
            clock.advance(byMillis: 500)
            _ = try await store.append([new("a", "3", clock: clock)])
            #expect(try await store.pending(for: "a", after: 0, limit: 10).map(\.id) == ["2", "3"])
        }
    }

    @Test("a batch is all or nothing, across devices", arguments: StoreKind.allCases)
    func batchAtomicity(kind: StoreKind) async throws {
        let clock = TestWallClock()
        try await kind.with(maxPending: 2, clock: clock) { store in
            _ = try await store.append([new("b", "b1", clock: clock), new("b", "b2", clock: clock)])
            await #expect(throws: StoreError(.pendingFull, "")) {
                try await store.append([new("a", "a1", clock: clock), new("b", "b3", clock: clock)])
            }
            #expect(try await store.pendingCount(for: "a") == 0, "a's message of the refused batch was not stored")
            let stored = try await store.append([new("a", "a1", clock: clock), new("c", "c1", clock: clock), new("a", "a2", clock: clock)])
            #expect(stored.map(\.id) == ["a1", "c1", "a2"])
        }
    }

    @Test("concurrent writers to one device: every message stored once, sequences unique", arguments: StoreKind.allCases)
    func concurrentWriters(kind: StoreKind) async throws {
        let clock = TestWallClock()
        try await kind.with(maxPending: 10_000, clock: clock) { store in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for writer in 0..<8 {
                    group.addTask {
                        for index in 0..<50 {
                            _ = try await store.append([new("a", "w\(writer)-\(index)", clock: clock)])
                        }
                    }
                }
                try await group.waitForAll()
            }
            let pending = try await store.pending(for: "a", after: 0, limit: 1000)
            #expect(pending.count == 400)
            #expect(Set(pending.map(\.id)).count == 400)
            #expect(pending.map(\.sequence) == pending.map(\.sequence).sorted())
            // Each writer's own messages keep their order.
            for writer in 0..<8 {
                let mine = pending.filter { $0.id.hasPrefix("w\(writer)-") }.map(\.id)
                #expect(mine == (0..<50).map { "w\(writer)-\($0)" })
            }
        }
    }

    @Test("a device's sequences are consecutive, a refused append leaving no gap", arguments: StoreKind.allCases)
    func consecutiveSequences(kind: StoreKind) async throws {
        let clock = TestWallClock()
        try await kind.with(maxPending: 3, clock: clock) { store in
            let first = try await store.append([new("a", "1", clock: clock), new("b", "b1", clock: clock), new("a", "2", clock: clock)])
            await #expect(throws: StoreError(.pendingFull, "")) {
                try await store.append([new("a", "3", clock: clock), new("b", "b2", clock: clock), new("b", "b3", clock: clock), new("b", "b4", clock: clock)])
            }
            let next = try await store.append([new("a", "3", clock: clock), new("b", "b2", clock: clock)])
            let a = first.filter { $0.clientID == "a" }.map(\.sequence) + [next[0].sequence]
            #expect(next[1].sequence == first[1].sequence + 1)
            if kind.takesBackAcrossShards {
                // a's part of the refused batch was written on its shard and taken back: its
                // sequence stays used, never handed out twice.
                #expect(a == [a[0], a[0] + 1, a[0] + 3], "a gap where the taken-back message was")
                #expect(try await store.pending(for: "a", after: 0, limit: 10).map(\.id) == ["1", "2", "3"])
            } else {
                #expect(a == [a[0], a[0] + 1, a[0] + 2], "a connection tells from sequence + 1 that nothing came between")
            }
        }
    }

    @Test("an ACK with the sequence the store returned removes exactly that message", arguments: StoreKind.allCases)
    func acknowledgeWithSequence(kind: StoreKind) async throws {
        let clock = TestWallClock()
        try await kind.with(maxPending: 100, clock: clock) { store in
            let stored = try await store.append((1...4).map { new("a", "\($0)", clock: clock) })
            let acks = [stored[2], stored[0]].map { Acknowledgement($0) } + [Acknowledgement(id: "4")]
            #expect(try await store.acknowledge(clientID: "a", messages: acks) == 3)
            #expect(try await store.pending(for: "a", after: 0, limit: 10).map(\.id) == ["2"])
            #expect(try await store.acknowledge(clientID: "a", messages: acks) == 0, "idempotent")
            #expect(try await store.pendingCount(for: "a") == 1)
        }
    }

    @Test("an unknown device has nothing pending", arguments: StoreKind.allCases)
    func unknownDevice(kind: StoreKind) async throws {
        let clock = TestWallClock()
        try await kind.with(maxPending: 10, clock: clock) { store in
            #expect(try await store.pendingCount(for: "nobody") == 0)
            #expect(try await store.pending(for: "nobody", after: 0, limit: 10).isEmpty)
            try await store.ping()
        }
    }
}
