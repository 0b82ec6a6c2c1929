import Actors
import NIOCore

/// `PushStore` on Redis (Docs/store.md has the key schema and the guarantees).
///
/// Per device, all under the hash tag `{client_id}`:
/// - `herald:{id}:seq`  string, INCR: the device's sequence counter (never expires)
/// - `herald:{id}:ids`  sorted set, msg id -> sequence: the queue, in order
/// - `herald:{id}:exp`  sorted set, msg id -> expiry (ms since epoch)
/// - `herald:{id}:data` hash, msg id -> payload
///
/// Every change of several keys is one Lua script, so it is atomic. Expired messages are
/// removed lazily whenever a device's queue is touched, and Redis itself deletes a device's
/// queue keys once its last message has expired (each append extends their TTL to cover it).
public final class RedisPushStore: PushStore {
    private let client: RedisClient
    private let prefix: String
    private let maxPending: Int
    private let now: @Sendable () -> Int64
    private let replicas: Int
    private let waitTimeoutMillis: Int64

    /// Creates the store. `prefix` starts every key (`herald` by default; tests use their own).
    /// With `replicas` > 0, an append returns only once that many replicas acknowledged it
    /// (`WAIT`, at most `waitTimeoutMillis`); otherwise it is removed again and the append fails
    /// (Docs/store.md, "Redis Sentinel").
    public init(
        client: RedisClient, maxPending: Int, prefix: String = "herald", replicas: Int = 0, waitTimeoutMillis: Int64 = 500,
        now: @escaping @Sendable () -> Int64 = WallClock.millisecondsSinceEpoch
    ) {
        self.client = client
        self.maxPending = maxPending
        self.prefix = prefix
        self.replicas = replicas
        self.waitTimeoutMillis = waitTimeoutMillis
        self.now = now
    }

    private func keys(_ clientID: String) -> [String] {
        let tag = "\(prefix):{\(clientID)}"
        return ["\(tag):seq", "\(tag):ids", "\(tag):exp", "\(tag):data"]
    }

    public func append(_ messages: [NewMessage]) async throws(StoreError) -> [StoredMessage] {
        guard !messages.isEmpty else { return [] }
        var devices: [String] = []
        var index: [String: Int] = [:]
        var counts: [Int] = []
        for message in messages where index[message.clientID] == nil {
            index[message.clientID] = devices.count + 1
            devices.append(message.clientID)
            counts.append(0)
        }
        for message in messages { counts[index[message.clientID]! - 1] += 1 }
        // A request that times out is answered 503, but its bytes may still reach a paused Redis
        // and run later. The script refuses to run after this deadline (by Redis's clock), and
        // the deadline is half the command timeout, so a 503 never turns into a stored message
        // as long as the node's and Redis's clocks agree within that half (Docs/store.md).
        let deadline = WallClock.millisecondsSinceEpoch() + client.configuration.commandTimeout.nanoseconds / 2_000_000
        var arguments: [RedisArgument] = [
            .integer(now()), .integer(Int64(maxPending)), .integer(Self.expirySlackMillis), .integer(Int64(devices.count)),
            .integer(deadline),
        ]
        arguments += counts.map { .integer(Int64($0)) }
        for message in messages {
            arguments += [
                .integer(Int64(index[message.clientID]!)), .string(message.id), .integer(message.expiresAtMillis),
                .bytes(message.payload),
            ]
        }
        let wait: [[RedisArgument]] = replicas > 0 ? [[.string("WAIT"), .integer(Int64(replicas)), .integer(waitTimeoutMillis)]] : []
        let replies = try await client.run(Self.appendScript, keys: devices.flatMap(keys), arguments: arguments, then: wait)
        let reply = replies[0]
        // A WAIT that failed (an error reply) counts as no replica: fail closed.
        if replicas > 0, case .array = reply, case let acknowledged = replies[1].int64 ?? 0, acknowledged < replicas {
            // Not on enough replicas: a failover could lose it. Take it back, so that the
            // failed request stores nothing (as protocol.md promises).
            for device in devices {
                let ids = messages.filter { $0.clientID == device }.map(\.id)
                _ = try? await acknowledge(clientID: device, messageIDs: ids)
            }
            throw StoreError(
                .unavailable, "not acknowledged by \(replicas) replica(s) within \(waitTimeoutMillis) ms (\(acknowledged) did); nothing was kept"
            )
        }
        switch reply {
        case .array(let sequences) where sequences.count == messages.count:
            return zip(messages, sequences).map { message, sequence in
                StoredMessage(
                    clientID: message.clientID, id: message.id, sequence: UInt64(sequence.int64 ?? 0),
                    payload: message.payload, expiresAtMillis: message.expiresAtMillis
                )
            }
        case .error(let text) where text.hasPrefix("LATE"):
            throw StoreError(.unavailable, "redis ran the append after its deadline; nothing was stored")
        case .error(let text) where text.hasPrefix("FULL"):
            let position = Int(text.split(separator: " ").last ?? "") ?? 1
            let device = devices.indices.contains(position - 1) ? devices[position - 1] : "?"
            throw StoreError(.pendingFull, "pending queue of \(device) is full (\(maxPending))")
        default:
            throw StoreError(.unavailable, "unexpected reply to append: \(reply)")
        }
    }

    public func pending(for clientID: String, after sequence: UInt64, limit: Int) async throws(StoreError) -> [StoredMessage] {
        let keys = Array(keys(clientID).dropFirst())
        let reply = try await client.run(
            Self.pendingScript, keys: keys, arguments: [.integer(now()), .integer(Int64(sequence)), .integer(Int64(limit))]
        )
        guard case .array(let fields) = reply, fields.count % 4 == 0 else {
            throw StoreError(.unavailable, "unexpected reply to pending: \(reply)")
        }
        var result: [StoredMessage] = []
        result.reserveCapacity(fields.count / 4)
        var position = 0
        while position < fields.count {
            guard let id = fields[position].string, let sequence = fields[position + 1].int64,
                let expires = fields[position + 2].int64
            else { throw StoreError(.unavailable, "malformed pending entry") }
            let payload: ByteBuffer = if case .bulk(let bytes) = fields[position + 3] { bytes } else { ByteBuffer() }
            result.append(
                StoredMessage(clientID: clientID, id: id, sequence: UInt64(sequence), payload: payload, expiresAtMillis: expires)
            )
            position += 4
        }
        return result
    }

    public func acknowledge(clientID: String, messageIDs: [String]) async throws(StoreError) -> Int {
        guard !messageIDs.isEmpty else { return 0 }
        let reply = try await client.run(
            Self.acknowledgeScript, keys: Array(keys(clientID).dropFirst()), arguments: messageIDs.map { .string($0) }
        )
        guard let removed = reply.int64 else { throw StoreError(.unavailable, "unexpected reply to ack: \(reply)") }
        return Int(removed)
    }

    public func pendingCount(for clientID: String) async throws(StoreError) -> Int {
        let reply = try await client.send([.string("ZCOUNT"), .string(keys(clientID)[2]), .string("(\(now())"), .string("+inf")])
        guard let count = reply.int64 else { throw StoreError(.unavailable, "unexpected reply to ZCOUNT: \(reply)") }
        return Int(count)
    }

    /// Redis deletes a device's expired queue by itself (key TTLs) and every script removes a
    /// device's expired messages when it touches the queue, so there is nothing to sweep.
    public func removeExpired() async throws(StoreError) -> Int { 0 }

    public func ping() async throws(StoreError) {
        let reply = try await client.send([.string("PING")])
        guard case .simpleString("PONG") = reply else { throw StoreError(.unavailable, "PING answered \(reply)") }
    }

    /// Keys live this long past their last message's expiry (clock skew between nodes and Redis).
    static let expirySlackMillis: Int64 = 60_000
}
