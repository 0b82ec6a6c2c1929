import Actors
import RedisStore

/// One entry of the route table: the connection a device has, named by its node, the
/// node's incarnation and the connection's session number.
public struct Route: Sendable, Hashable, CustomStringConvertible {
    /// The node holding the connection.
    public var nodeID: String
    /// That node's process (random per start).
    public var incarnation: UInt64
    /// The connection's number within that process.
    public var session: UInt64

    /// Creates a route.
    public init(nodeID: String, incarnation: UInt64, session: UInt64) {
        self.nodeID = nodeID
        self.incarnation = incarnation
        self.session = session
    }

    /// Parses the stored form, `"<node_id> <incarnation hex> <session>"`.
    public init?(_ text: String) {
        let parts = text.split(separator: " ")
        guard parts.count == 3, let incarnation = UInt64(parts[1], radix: 16), let session = UInt64(parts[2]) else { return nil }
        self.init(nodeID: String(parts[0]), incarnation: incarnation, session: session)
    }

    /// The stored form.
    public var description: String { "\(nodeID) \(String(incarnation, radix: 16)) \(session)" }
}

/// The route table in Redis: `<prefix>:{<client_id>}:route` -> `Route`, with a TTL that the
/// owning node keeps extending (Docs/cluster.md has the arithmetic). Same hash tag as the
/// device's queue keys.
final class RouteTable: Sendable {
    private let client: RedisClient
    private let prefix: String
    private let ttlMillis: Int64

    init(client: RedisClient, prefix: String, ttl: Duration) {
        self.client = client
        self.prefix = prefix
        self.ttlMillis = ttl.components.seconds * 1000
    }

    private func key(_ clientID: String) -> String { "\(prefix):{\(clientID)}:route" }

    /// Makes the table name `route` for `clientID`; returns the route it replaced.
    func claim(_ clientID: String, _ route: Route) async throws(StoreError) -> Route? {
        let reply = try await client.send([
            .string("SET"), .string(key(clientID)), .string(route.description), .string("PX"), .integer(ttlMillis), .string("GET"),
        ])
        if case .error(let message) = reply { throw StoreError(.unavailable, "route write failed: \(message)") }
        return reply.string.flatMap(Route.init)
    }

    /// Removes `clientID`'s route if it is still `route` (a newer connection keeps its own).
    func release(_ clientID: String, _ route: Route) async throws(StoreError) {
        let reply = try await client.run(Self.releaseScript, keys: [key(clientID)], arguments: [.string(route.description)])
        if case .error(let message) = reply { throw StoreError(.unavailable, "route release failed: \(message)") }
    }

    /// What `refresh` found for one route.
    enum RefreshOutcome: Sendable, Hashable {
        /// Still this connection's: TTL extended.
        case extended
        /// Missing (Redis lost it, or the first write failed): written back.
        case restored
        /// Another connection's: left alone.
        case another
    }

    /// Extends the TTL of each route that still names its connection, and writes back one
    /// that is missing; another connection's route is left alone. Outcomes in order.
    func refresh(_ entries: [(clientID: String, route: Route)]) async throws(StoreError) -> [RefreshOutcome] {
        let ttl = ttlMillis
        let outcome: Result<[RefreshOutcome], StoreError> = await withTaskGroup(of: (Int, Result<RefreshOutcome, StoreError>).self) { group in
            for (index, entry) in entries.enumerated() {
                let key = key(entry.clientID)
                group.addTask {
                    do throws(StoreError) {
                        let reply = try await self.client.run(
                            Self.refreshScript, keys: [key], arguments: [.string(entry.route.description), .integer(ttl)]
                        )
                        switch reply.int64 {
                        case 1: return (index, .success(.extended))
                        case 2: return (index, .success(.restored))
                        case 0: return (index, .success(.another))
                        default: return (index, .failure(StoreError(.unavailable, "unexpected reply to route refresh: \(reply)")))
                        }
                    } catch {
                        return (index, .failure(error))
                    }
                }
            }
            var outcomes = [RefreshOutcome](repeating: .extended, count: entries.count)
            for await (index, result) in group {
                switch result {
                case .success(let value): outcomes[index] = value
                case .failure(let error): return .failure(error)
                }
            }
            return .success(outcomes)
        }
        return try outcome.get()
    }

    /// The routes of `clientIDs`, in order (nil where there is none). An error reply throws:
    /// it is never read as "no route", which would leave a connected device's message waiting
    /// for its next connection (the caller retries a failed lookup on its next tick).
    func lookup(_ clientIDs: [String]) async throws(StoreError) -> [Route?] {
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
