import Actors
import HeraldTestSupport
import Logging
import NIOPosix
import RedisStore
import Testing

@testable import Cluster

/// Every driver of the cluster's two stores, made fresh for one test.
enum ClusterStoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case memory
    case redis
    case redisCluster

    var testDescription: String { rawValue }

    /// One test's stores, and a way to make time pass for them.
    struct Fixture: Sendable {
        var routes: any RouteTable
        var membership: any MembershipStore
        /// Makes the routes of these client ids, and every lease, run out now: the manual
        /// clock moved past them in memory; in Redis, the expiry set in the past (Redis's
        /// clock cannot be moved, and what is under test is how the drivers treat an expired
        /// entry, not Redis's TTLs).
        var expire: @Sendable (_ clientIDs: [String]) async throws -> Void
        /// The Redis client and key prefix (nil in memory).
        var redis: (client: RedisClient, prefix: String)?
    }

    static let routeTTL = Duration.seconds(60)
    static let lease = Duration.seconds(10)

    /// Runs `body` with fresh stores of this kind: in memory on a manual clock, or on a real
    /// redis-server of its own, or on the shared real Redis Cluster under a prefix of its own.
    func with(_ body: @Sendable (Fixture) async throws -> Void) async throws {
        switch self {
        case .memory:
            let clock = ManualClock()
            try await body(
                Fixture(
                    routes: InMemoryRouteTable(clock: clock, ttl: Self.routeTTL), membership: InMemoryMembershipStore(clock: clock),
                    expire: { _ in clock.advance(by: max(Self.routeTTL, Self.lease)) }, redis: nil
                )
            )
        case .redis:
            try await RedisServer.with { server in try await Self.withRedis(url: server.url, body) }
        case .redisCluster:
            try await RedisClusterSet.withShared { cluster in try await Self.withRedis(url: cluster.url, body) }
        }
    }

    private static func withRedis(url: String, _ body: @Sendable (Fixture) async throws -> Void) async throws {
        var logger = Logger(label: "redis-test")
        logger.logLevel = .critical
        let client = RedisClient(configuration: RedisConfiguration(url: url)!, group: MultiThreadedEventLoopGroup.singleton, logger: logger)
        let prefix = "t\(UInt64.random(in: 0...UInt64.max))"
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await client.run() }
            try await eventually("redis connected") { client.isConnected }
            let nodes = "\(prefix):{cluster}:nodes"
            try await body(
                Fixture(
                    routes: RedisRouteTable(client: client, prefix: prefix, ttl: routeTTL),
                    membership: RedisMembershipStore(client: client, prefix: prefix),
                    expire: { clientIDs in
                        for clientID in clientIDs {
                            _ = try await client.send([.string("PEXPIREAT"), .string("\(prefix):{\(clientID)}:route"), .integer(1)])
                        }
                        for member in try await client.send([.string("ZRANGE"), .string(nodes), .integer(0), .integer(-1)]).elements ?? [] {
                            guard let id = member.string else { continue }
                            _ = try await client.send([.string("ZADD"), .string(nodes), .string("XX"), .integer(1), .string(id)])
                        }
                    },
                    redis: (client, prefix)
                )
            )
            group.cancelAll()
        }
    }
}

extension RESPValue {
    /// The elements of an array reply.
    fileprivate var elements: [RESPValue]? {
        if case .array(let elements) = self { elements } else { nil }
    }
}

private let a7 = Route(nodeID: "a", incarnation: 0xa1, session: 7)
private let a8 = Route(nodeID: "a", incarnation: 0xa1, session: 8)
private let b1 = Route(nodeID: "b", incarnation: 0xb1, session: 1)

private func member(_ nodeID: String, incarnation: UInt64, connections: Int = 0) -> Member {
    Member(nodeID: nodeID, incarnation: incarnation, relayAddress: "127.0.0.1:\(7000 + incarnation % 100)", connections: connections)
}

/// The `RouteTable` and `MembershipStore` contracts (their doc comments), checked against the
/// in-memory driver, a single redis-server and a real Redis Cluster.
@Suite("Cluster stores conformance", .timeLimit(.minutes(1)))
struct ClusterStoreConformanceTests {
    @Test("a claim returns the route it replaced, and a lookup answers each client id in order", arguments: ClusterStoreKind.allCases)
    func claimAndLookup(kind: ClusterStoreKind) async throws {
        try await kind.with { stores async throws in
            #expect(try await stores.routes.claim("d1", a7) == nil)
            #expect(try await stores.routes.claim("d2", b1) == nil)
            #expect(try await stores.routes.lookup(["d2", "none", "d1"]) == [b1, nil, a7])
            #expect(try await stores.routes.claim("d1", b1) == a7, "the takeover learns whom to KICK")
            #expect(try await stores.routes.lookup(["d1"]) == [b1])
            #expect(try await stores.routes.lookup([]) == [])
        }
    }

    @Test("a release removes only the route it names (compare-and-delete): a newer connection keeps its own", arguments: ClusterStoreKind.allCases)
    func releaseComparesFirst(kind: ClusterStoreKind) async throws {
        try await kind.with { stores in
            _ = try await stores.routes.claim("d1", a7)
            _ = try await stores.routes.claim("d1", a8)
            try await stores.routes.release("d1", a7)
            #expect(try await stores.routes.lookup(["d1"]) == [a8], "the older session's release left the newer route")
            try await stores.routes.release("d1", a8)
            #expect(try await stores.routes.lookup(["d1"]) == [nil])
            try await stores.routes.release("d1", a8)
        }
    }

    @Test("a refresh extends its own route, writes back a missing one, and leaves another connection's", arguments: ClusterStoreKind.allCases)
    func refreshOutcomes(kind: ClusterStoreKind) async throws {
        try await kind.with { stores in
            _ = try await stores.routes.claim("mine", a7)
            _ = try await stores.routes.claim("taken", b1)
            let outcomes = try await stores.routes.refresh([(clientID: "mine", route: a7), (clientID: "lost", route: a7), (clientID: "taken", route: a7)])
            #expect(outcomes == [.extended, .restored, .another])
            #expect(try await stores.routes.lookup(["mine", "lost", "taken"]) == [a7, a7, b1])
            #expect(try await stores.routes.refresh([]) == [])
        }
    }

    @Test("an expired route is no route: a lookup misses it, a claim replaces nothing, a refresh writes it back", arguments: ClusterStoreKind.allCases)
    func expiredRoutes(kind: ClusterStoreKind) async throws {
        try await kind.with { stores in
            _ = try await stores.routes.claim("d1", a7)
            _ = try await stores.routes.claim("d2", a7)
            _ = try await stores.routes.claim("d3", a7)
            try await stores.expire(["d1", "d2", "d3"])
            #expect(try await stores.routes.lookup(["d1"]) == [nil])
            #expect(try await stores.routes.claim("d2", b1) == nil)
            #expect(try await stores.routes.refresh([(clientID: "d3", route: a7)]) == [.restored])
            #expect(try await stores.routes.lookup(["d1", "d2", "d3"]) == [nil, b1, a7])
        }
    }

    @Test("a renewal lists every live member with what its lease says; a read-only renewal changes nothing", arguments: ClusterStoreKind.allCases)
    func renewAndList(kind: ClusterStoreKind) async throws {
        try await kind.with { stores in
            #expect(try await stores.membership.renew(nil, lease: ClusterStoreKind.lease).isEmpty)
            #expect(try await stores.membership.renew(member("a", incarnation: 1), lease: ClusterStoreKind.lease) == [member("a", incarnation: 1)])
            let both = try await stores.membership.renew(member("b", incarnation: 2, connections: 5), lease: ClusterStoreKind.lease)
            #expect(Set(both) == [member("a", incarnation: 1), member("b", incarnation: 2, connections: 5)])
            // A renewal replaces what the lease says (the connection count moves).
            _ = try await stores.membership.renew(member("a", incarnation: 1, connections: 9), lease: ClusterStoreKind.lease)
            #expect(Set(try await stores.membership.renew(nil, lease: ClusterStoreKind.lease)) == [
                member("a", incarnation: 1, connections: 9), member("b", incarnation: 2, connections: 5),
            ])
        }
    }

    @Test("leases that ran out are dropped at the next renewal; a member that renews stays", arguments: ClusterStoreKind.allCases)
    func leasesRunOut(kind: ClusterStoreKind) async throws {
        try await kind.with { stores in
            _ = try await stores.membership.renew(member("a", incarnation: 1), lease: ClusterStoreKind.lease)
            _ = try await stores.membership.renew(member("b", incarnation: 2), lease: ClusterStoreKind.lease)
            try await stores.expire([])
            #expect(try await stores.membership.renew(member("a", incarnation: 1), lease: ClusterStoreKind.lease) == [member("a", incarnation: 1)])
            #expect(try await stores.membership.renew(nil, lease: ClusterStoreKind.lease) == [member("a", incarnation: 1)])
            if let (client, prefix) = stores.redis {
                // Dropped from both keys, not only from the lease set.
                #expect(try await client.send([.string("HEXISTS"), .string("\(prefix):{cluster}:members"), .string("b")]).int64 == 0)
            }
        }
    }

    @Test("leaving removes a node's lease only if it is still that process's: a restarted node keeps its own", arguments: ClusterStoreKind.allCases)
    func leaveComparesIncarnation(kind: ClusterStoreKind) async throws {
        try await kind.with { stores in
            _ = try await stores.membership.renew(member("a", incarnation: 1), lease: ClusterStoreKind.lease)
            _ = try await stores.membership.renew(member("a", incarnation: 3), lease: ClusterStoreKind.lease)  // restarted
            #expect(try await stores.membership.leave(nodeID: "a", incarnation: 1) == false)
            #expect(try await stores.membership.renew(nil, lease: ClusterStoreKind.lease) == [member("a", incarnation: 3)])
            #expect(try await stores.membership.leave(nodeID: "a", incarnation: 3))
            #expect(try await stores.membership.renew(nil, lease: ClusterStoreKind.lease).isEmpty)
            #expect(try await stores.membership.leave(nodeID: "nobody", incarnation: 3) == false)
        }
    }

    @Test("in Redis, routes and leases get the TTL asked for", arguments: [ClusterStoreKind.redis, .redisCluster])
    func redisTTLs(kind: ClusterStoreKind) async throws {
        try await kind.with { stores in
            let (client, prefix) = try #require(stores.redis)
            _ = try await stores.routes.claim("d1", a7)
            let routeTTL = try #require(try await client.send([.string("PTTL"), .string("\(prefix):{d1}:route")]).int64)
            #expect((ClusterStoreKind.routeTTL.wholeMilliseconds - 5_000)...ClusterStoreKind.routeTTL.wholeMilliseconds ~= routeTTL)
            // Redis's clock read before and after the renewal bounds the renewal's own (however
            // long the calls take on a loaded machine).
            func redisNow() async throws -> Int64 {
                let time = try #require(try await client.send([.string("TIME")]).elements?.compactMap { $0.string.flatMap { Int64($0) } })
                return time[0] * 1000 + time[1] / 1000
            }
            let before = try await redisNow()
            _ = try await stores.membership.renew(member("a", incarnation: 1), lease: .milliseconds(1500))
            let after = try await redisNow()
            let score = try #require(try await client.send([.string("ZSCORE"), .string("\(prefix):{cluster}:nodes"), .string("a")]).string.flatMap { Double($0) })
            #expect((before + 1500)...(after + 1500) ~= Int64(score), "the lease runs out 1.5 s after the renewal, by Redis's clock")
        }
    }

    @Test("in Redis, an error reply throws: never read as no route, or as no members", arguments: [ClusterStoreKind.redis, .redisCluster])
    func redisErrors(kind: ClusterStoreKind) async throws {
        try await kind.with { stores in
            let (client, prefix) = try #require(stores.redis)
            // A key of the wrong type makes Redis answer with WRONGTYPE.
            _ = try await client.send([.string("LPUSH"), .string("\(prefix):{d3}:route"), .string("x")])
            _ = try await stores.routes.claim("d1", a7)
            await #expect(throws: StoreError(.unavailable, "")) { try await stores.routes.lookup(["d1", "d3"]) }
            await #expect(throws: StoreError(.unavailable, "")) { try await stores.routes.release("d3", a7) }
            await #expect(throws: StoreError(.unavailable, "")) { try await stores.routes.refresh([(clientID: "d3", route: a7)]) }
            _ = try await client.send([.string("SET"), .string("\(prefix):{cluster}:nodes"), .string("x")])
            await #expect(throws: StoreError(.unavailable, "")) { try await stores.membership.renew(nil, lease: ClusterStoreKind.lease) }
            _ = try await client.send([.string("SET"), .string("\(prefix):{cluster}:members"), .string("x")])
            await #expect(throws: StoreError(.unavailable, "")) { try await stores.membership.leave(nodeID: "a", incarnation: 1) }
        }
    }
}

/// The in-memory drivers' clocks: entries live exactly their TTL, and a refresh or renewal
/// counts from its own time.
@Suite("Cluster stores in memory: time", .timeLimit(.minutes(1)))
struct InMemoryClusterStoreTimeTests {
    @Test("a route lives its TTL from its last claim or refresh, and not a moment longer")
    func routeTTL() async throws {
        let clock = ManualClock()
        let table = InMemoryRouteTable(clock: clock, ttl: .seconds(60))
        _ = try await table.claim("d1", a7)
        clock.advance(by: .seconds(50))
        #expect(try await table.refresh([(clientID: "d1", route: a7)]) == [.extended])
        clock.advance(by: .seconds(59))
        #expect(try await table.lookup(["d1"]) == [a7], "109 s after the claim, 59 s after the refresh")
        clock.advance(by: .seconds(1))
        #expect(try await table.lookup(["d1"]) == [nil])
    }

    @Test("a lease lives its length from its last renewal")
    func leaseLength() async throws {
        let clock = ManualClock()
        let store = InMemoryMembershipStore(clock: clock)
        _ = try await store.renew(member("a", incarnation: 1), lease: .seconds(10))
        clock.advance(by: .seconds(9))
        _ = try await store.renew(member("b", incarnation: 2), lease: .seconds(10))
        clock.advance(by: .seconds(1))
        #expect(try await store.renew(nil, lease: .seconds(10)) == [member("b", incarnation: 2)], "a's ran out at 10 s")
        clock.advance(by: .seconds(8))
        #expect(try await store.renew(nil, lease: .seconds(10)) == [member("b", incarnation: 2)], "a read does not renew")
        clock.advance(by: .seconds(1))
        #expect(try await store.renew(nil, lease: .seconds(10)).isEmpty)
    }
}
