import Actors
import Logging
import PushProtocol
import RedisStore
import ServiceLifecycle
import Synchronization

/// One live node, as its lease describes it.
public struct Member: Sendable, Hashable {
    /// Its node id.
    public var nodeID: String
    /// Its process's incarnation.
    public var incarnation: UInt64
    /// Where its relay listener is reached (`host:port`).
    public var relayAddress: String
    /// Its devices past HELLO, as of its last lease renewal.
    public var connections: Int

    /// Creates a member.
    public init(nodeID: String, incarnation: UInt64, relayAddress: String, connections: Int) {
        self.nodeID = nodeID
        self.incarnation = incarnation
        self.relayAddress = relayAddress
        self.connections = connections
    }

    /// The value stored in the members hash.
    var info: String { "\(String(incarnation, radix: 16)) \(relayAddress) \(connections)" }

    init?(nodeID: String, info: String) {
        let parts = info.split(separator: " ")
        guard parts.count == 3, let incarnation = UInt64(parts[0], radix: 16), let connections = Int(parts[2]) else { return nil }
        self.init(nodeID: nodeID, incarnation: incarnation, relayAddress: String(parts[1]), connections: connections)
    }
}

/// The live members as of the last lease renewal (this node included).
public final class ClusterView: Sendable {
    private let state = Mutex<(members: [String: Member], known: Bool)>(([:], false))

    /// Creates an empty view.
    public init() {}

    /// Every live member, this node included, by node id.
    public var members: [Member] { state.withLock { Array($0.members.values) }.sorted { $0.nodeID < $1.nodeID } }

    /// Whether the member list has been read at least once.
    public var isKnown: Bool { state.withLock { $0.known } }

    /// The live member `nodeID` if it is still the process `incarnation`.
    public func member(_ nodeID: String, incarnation: UInt64) -> Member? {
        state.withLock { $0.members[nodeID] }.flatMap { $0.incarnation == incarnation ? $0 : nil }
    }

    func update(_ members: [Member]) {
        state.withLock { $0 = (Dictionary(members.map { ($0.nodeID, $0) }, uniquingKeysWith: { $1 }), true) }
    }
}

/// The membership store's role: every node's lease and what it says of the node (its
/// incarnation, relay address and connections). A node is live while its lease runs; the
/// store's own clock decides when a lease has run out, so nodes' clocks need not agree. Every
/// driver passes the same conformance suite (Tests/ClusterUnitTests/ClusterStoreConformanceTests.swift).
public protocol MembershipStore: Sendable {
    /// Drops the leases that have run out, renews `member`'s for `lease` from now (nil: only
    /// reads), and returns the live members, `member` included.
    func renew(_ member: Member?, lease: Duration) async throws(StoreError) -> [Member]

    /// Removes `nodeID`'s lease if it is still the process `incarnation`'s (a restarted node
    /// with the same id keeps its own). Returns whether it was removed.
    func leave(nodeID: String, incarnation: UInt64) async throws(StoreError) -> Bool
}

/// Keeps this node's lease in the membership store, reads the member list, and tells the
/// cluster router about it every `refreshInterval` of `clock`. Deregisters on graceful shutdown.
final class Membership<C: Clock>: Service where C.Duration == Duration {
    private let configuration: ClusterConfiguration
    private let store: any MembershipStore
    private let clock: C
    private let relayAddress: @Sendable () -> String?
    private let connections: @Sendable () -> Int
    private let onRefresh: @Sendable ([Member]?, UInt64) async -> Void
    private let logger: Logger

    init(
        configuration: ClusterConfiguration, store: any MembershipStore, clock: C, relayAddress: @escaping @Sendable () -> String?,
        connections: @escaping @Sendable () -> Int, logger: Logger, onRefresh: @escaping @Sendable ([Member]?, UInt64) async -> Void
    ) {
        self.configuration = configuration
        self.store = store
        self.clock = clock
        self.relayAddress = relayAddress
        self.connections = connections
        self.logger = logger
        self.onRefresh = onRefresh
    }

    func run() async throws {
        await cancelWhenGracefulShutdown {
            var tick: UInt64 = 0
            var failures = 0
            var warned = false
            while !Task.isCancelled {
                var members: [Member]?
                do {
                    members = try await self.renew()
                    if warned { self.logger.info("cluster membership renewed again") }
                    failures = 0
                    warned = false
                } catch {
                    failures += 1
                    // The very first try often finds the Redis connections still opening: a
                    // warning at every start would teach operators to ignore it. Warn when a
                    // later try fails, or the second in a row at start.
                    if !warned && (tick > 0 || failures > 1) {
                        self.logger.warning("cluster membership renewal failed", metadata: ["error": "\(error)"])
                        warned = true
                    }
                }
                await self.onRefresh(members, tick)
                tick &+= 1
                // After a failure (typically the first try, while the Redis connections are
                // still opening) try again soon: 100 ms after the first, doubling up to the refresh interval.
                let retry = Duration.milliseconds(50) * (1 << min(failures, 10))
                try? await self.clock.sleep(for: failures == 0 ? self.configuration.refreshInterval : min(retry, self.configuration.refreshInterval))
            }
        }
        do {
            if try await store.leave(nodeID: configuration.nodeID, incarnation: configuration.incarnation) {
                logger.info("left the cluster")
            }
        } catch {
            logger.warning("could not deregister; the lease will expire", metadata: ["error": "\(error)"])
        }
    }

    /// Renews this node's lease (once its relay listener is bound) and returns the live members.
    func renew() async throws(StoreError) -> [Member] {
        let me = relayAddress().map {
            Member(nodeID: configuration.nodeID, incarnation: configuration.incarnation, relayAddress: $0, connections: connections())
        }
        return try await store.renew(me, lease: configuration.lease)
    }
}

/// The membership store in Redis: `<prefix>:{cluster}:nodes` (sorted set, node id -> lease
/// expiry by Redis's clock) and `<prefix>:{cluster}:members` (hash, node id -> incarnation,
/// relay address, connections). Both under one hash tag, so one script keeps them in step (on
/// a Redis Cluster, on one shard).
public final class RedisMembershipStore: MembershipStore {
    private let client: RedisClient
    private let keys: [String]

    /// The store under `prefix`.
    public init(client: RedisClient, prefix: String) {
        self.client = client
        self.keys = ["\(prefix):{cluster}:nodes", "\(prefix):{cluster}:members"]
    }

    public func renew(_ member: Member?, lease: Duration) async throws(StoreError) -> [Member] {
        let arguments: [RedisArgument] = [.string(member?.nodeID ?? ""), .string(member?.info ?? ""), .integer(lease.wholeMilliseconds)]
        let reply = try await client.run(Self.renewScript, keys: keys, arguments: arguments)
        guard case .array(let fields) = reply, fields.count % 2 == 0 else {
            throw StoreError(.unavailable, "unexpected reply to the lease renewal: \(reply)")
        }
        var members: [Member] = []
        for index in stride(from: 0, to: fields.count, by: 2) {
            guard let id = fields[index].string, let info = fields[index + 1].string, let member = Member(nodeID: id, info: info) else { continue }
            members.append(member)
        }
        return members
    }

    public func leave(nodeID: String, incarnation: UInt64) async throws(StoreError) -> Bool {
        let reply = try await client.run(Self.leaveScript, keys: keys, arguments: [.string(nodeID), .string(String(incarnation, radix: 16))])
        guard let removed = reply.int64 else { throw StoreError(.unavailable, "unexpected reply to leaving: \(reply)") }
        return removed == 1
    }

    /// KEYS: nodes, members. ARGV: node id ('' to only read), info, lease ms.
    /// Drops expired leases, renews this one, returns id, info pairs of the live ones.
    static let renewScript = RedisScript(
        """
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
        for _, id in ipairs(dead) do
          redis.call('ZREM', KEYS[1], id)
          redis.call('HDEL', KEYS[2], id)
        end
        if ARGV[1] ~= '' then
          redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
          redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
        end
        local out = {}
        for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
          out[#out + 1] = id
          out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''
        end
        return out
        """
    )

    /// KEYS: nodes, members. ARGV: node id, incarnation hex. Leaves only if the entry is
    /// still this process's (a restarted node with the same id keeps its own).
    static let leaveScript = RedisScript(
        """
        local info = redis.call('HGET', KEYS[2], ARGV[1])
        if info and string.sub(info, 1, #ARGV[2] + 1) == ARGV[2] .. ' ' then
          redis.call('ZREM', KEYS[1], ARGV[1])
          redis.call('HDEL', KEYS[2], ARGV[1])
          return 1
        end
        return 0
        """
    )
}
