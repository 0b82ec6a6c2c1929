import Actors
import HeraldTestSupport
import Logging
import NIOPosix
import RedisStore
import Testing

@testable import Cluster

/// The route table against a real redis-server: what a lookup answers.
@Suite("Route table on Redis", .timeLimit(.minutes(1)))
struct RouteTableTests {
    private func withTable(_ body: @Sendable (RouteTable, RedisClient) async throws -> Void) async throws {
        try await RedisServer.with { server in
            var logger = Logger(label: "redis-test")
            logger.logLevel = .critical
            let client = RedisClient(
                configuration: RedisConfiguration(url: server.url)!, group: MultiThreadedEventLoopGroup.singleton, logger: logger
            )
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                try await eventually("redis connected") { client.isConnected }
                try await body(RouteTable(client: client, prefix: "herald", ttl: .seconds(60)), client)
                group.cancelAll()
            }
        }
    }

    @Test("a claimed route is found, a missing one is nil, and an error reply throws instead of reading as absent")
    func lookupErrors() async throws {
        try await withTable { table, client in
            let route = Route(nodeID: "a", incarnation: 0xabc, session: 7)
            #expect(try await table.claim("d1", route) == nil)
            #expect(try await table.lookup(["d1", "d2"]) == [route, nil])
            // A key of the wrong type makes Redis answer GET with WRONGTYPE: an error, which
            // must not make a connected device look offline.
            _ = try await client.send([.string("LPUSH"), .string("herald:{d3}:route"), .string("x")])
            await #expect(throws: StoreError(.unavailable, "")) { try await table.lookup(["d1", "d3"]) }
            await #expect(throws: StoreError(.unavailable, "")) { try await table.release("d3", route) }
        }
    }
}
