import Actors
import PushProtocol
import RedisStore

/// The route table in Redis: `<prefix>:{<client_id>}:route` -> `Route`, with a TTL that the
/// owning node keeps extending (Docs/cluster.md has the arithmetic). Same hash tag as the
/// device's queue keys, so on a Redis Cluster a route lives on its device's shard.
public final class RedisRouteTable: RouteTable {
    private let client: RedisClient
    private let prefix: String
    private let ttlMillis: Int64

    /// A table under `prefix` whose routes live `ttl` unless refreshed.
    public init(client: RedisClient, prefix: String, ttl: Duration) {
        self.client = client
        self.prefix = prefix
        self.ttlMillis = ttl.wholeMilliseconds
    }

    private func key(_ clientID: String) -> String { "\(prefix):{\(clientID)}:route" }

    public func claim(_ clientID: String, _ route: Route) async throws(StoreError) -> Route? {
        let reply = try await client.send([
            .string("SET"), .string(key(clientID)), .string(route.description), .string("PX"), .integer(ttlMillis), .string("GET"),
        ])
        if case .error(let message) = reply { throw StoreError(.unavailable, "route write failed: \(message)") }
        return reply.string.flatMap(Route.init)
    }

    public func release(_ clientID: String, _ route: Route) async throws(StoreError) {
        let reply = try await client.run(Self.releaseScript, keys: [key(clientID)], arguments: [.string(route.description)])
        if case .error(let message) = reply { throw StoreError(.unavailable, "route release failed: \(message)") }
    }

    public func refresh(_ entries: [(clientID: String, route: Route)]) async throws(StoreError) -> [RouteRefreshOutcome] {
        let ttl = ttlMillis
        let outcomes = await concurrently(entries) { entry async throws(StoreError) -> RouteRefreshOutcome in
            let reply = try await self.client.run(
                Self.refreshScript, keys: [self.key(entry.clientID)], arguments: [.string(entry.route.description), .integer(ttl)]
            )
            switch reply.int64 {
            case 1: return .extended
            case 2: return .restored
            case 0: return .another
            default: throw StoreError(.unavailable, "unexpected reply to route refresh: \(reply)")
            }
        }
        return try outcomes.map { outcome throws(StoreError) in try outcome.get() }
    }

    /// An error reply throws: it is never read as "no route", which would leave a connected
    /// device's message waiting for its next connection (the caller retries a failed lookup on
    /// its next tick).
    public func lookup(_ clientIDs: [String]) async throws(StoreError) -> [Route?] {
        let replies = try await client.sendAll(clientIDs.map { [.string("GET"), .string(key($0))] })
        return try replies.map { reply throws(StoreError) in
            switch reply {
            case .null: return nil
            case .error(let message): throw StoreError(.unavailable, "route lookup failed: \(message)")
            default: return reply.string.flatMap(Route.init)
            }
        }
    }

    /// KEYS: route. ARGV: expected value.
    static let releaseScript = RedisScript(
        """
        if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
        return 0
        """
    )

    /// KEYS: route. ARGV: expected value, TTL ms. 1: extended, 2: written back, 0: another's.
    static let refreshScript = RedisScript(
        """
        local current = redis.call('GET', KEYS[1])
        if current == ARGV[1] then
          redis.call('PEXPIRE', KEYS[1], ARGV[2])
          return 1
        elseif not current then
          redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
          return 2
        end
        return 0
        """
    )
}
