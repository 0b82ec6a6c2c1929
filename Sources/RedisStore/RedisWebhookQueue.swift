import Actors
import Logging
import NIOCore
import Synchronization

/// The webhook events of a cluster (or of a lone node on Redis), queued durably in Redis so
/// that any node can send what a dead node had queued or claimed (Docs/webhooks.md).
///
/// Per lane `n` (`HERALD_WEBHOOK_CONCURRENCY` lanes, the same on every node), under the hash
/// tag `{wh<n>}` (the lanes spread over a Redis Cluster's masters):
/// - `herald:{wh<n>}:events`  stream, one entry per event with the fields `i` (event id) and
///   `j` (the event's JSON), read through the consumer group `herald`, one consumer per node
/// - `herald:{wh<n>}:sender`  string, the node that sends this lane: a lease it renews every
///   third of `HERALD_WEBHOOK_LEASE_S`
/// - with `message.expired`: `herald:{wh<n>}:expiring`, a sorted set of the lane's devices by
///   the earliest expiry of their pending messages (written before each append), and
///   `herald:{wh<n>}:touched`, a hash of device -> the last append's token; the node holding the
///   lane sweeps it (`RedisPushStore.removeExpired`)
///
/// A node sends only the lanes it holds, one batch at a time, so a device's events go out in
/// order. A node that takes a lane first claims every entry still pending in the group
/// (`XAUTOCLAIM`): a dead node's unanswered batch is sent again, first. A delivered batch is
/// `XACK`ed and `XDEL`eted. The ACK's event is written before the ACK's delete, in the same
/// `MULTI` on a single Redis (RedisPushStore).
public final class RedisWebhookQueue: WebhookQueue {
    private struct Lane {
        /// This node holds the lane's lease.
        var held = false
        /// The group exists and the entries other consumers had pending are ours.
        var prepared = false
        /// This node's pending list may hold entries `handedOut` does not: read it (`0`) first.
        var readPending = true
        /// What `next` returned and `remove` has not removed yet, oldest first: all of this
        /// node's pending list unless `readPending`. Asked for again (the sender lingering for
        /// a fuller batch), it is not read from Redis a second time.
        var handedOut: [WebhookEvent] = []
        /// When this node last claimed the lane's stale entries.
        var lastClaim = ContinuousClock.now
        var waiter: CheckedContinuation<Void, Never>?
        var woken = false
    }

    private final class LaneLock: Sendable {
        let mutex = Mutex(Lane())
        func withLock<T: Sendable>(_ body: (inout Lane) -> T) -> T { mutex.withLock { body(&$0) } }
    }

    public let laneCount: Int
    private let lanes: [LaneLock]
    private let client: RedisClient
    private let prefix: String
    /// Each lane's stream key, made once: every ACK names one.
    private let streamKeys: [String]
    private let node: String
    private let types: Set<WebhookEventType>
    private let lease: Duration
    private let ids = WebhookEventIDs()
    private let now: @Sendable () -> Int64
    private let logger: Logger
    private let queuedTotal = Atomic<Int>(0)
    private let droppedTotal = Atomic<Int>(0)
    /// Rounds of lease renewal `maintain` has run, and times a lane went to sleep (for tests).
    let leaseRounds = Atomic<Int>(0)
    let pauses = Atomic<Int>(0)
    private let seen = Mutex<(depth: Int, oldest: Int64?)>((0, nil))
    /// How long a lane with nothing to send waits before it looks again (events this node
    /// queues for a lane it holds wake it at once).
    let pollInterval: Duration
    /// Entries another consumer has held unanswered this long are claimed by the lane's holder.
    let staleAfter: Duration

    static let group = "herald"

    /// Creates the queue of node `node` (its consumer name and lease value).
    public init(
        client: RedisClient, node: String, lanes: Int, types: Set<WebhookEventType>, lease: Duration = .seconds(10),
        pollInterval: Duration = .milliseconds(250), staleAfter: Duration? = nil, prefix: String = "herald",
        logger: Logger = Logger(label: "herald.webhooks"),
        now: @escaping @Sendable () -> Int64 = WallClock.millisecondsSinceEpoch
    ) {
        precondition(lanes > 0)
        laneCount = lanes
        self.lanes = (0..<lanes).map { _ in LaneLock() }
        self.client = client
        self.node = node
        self.types = types
        self.lease = lease
        self.pollInterval = pollInterval
        self.staleAfter = staleAfter ?? lease * 2
        self.prefix = prefix
        streamKeys = (0..<lanes).map { "\(prefix):{wh\($0)}:events" }
        self.logger = logger
        self.now = now
    }

    /// Lane `lane`'s stream.
    public func streamKey(_ lane: Int) -> String { streamKeys[lane] }

    /// Lane `lane`'s lease.
    public func leaseKey(_ lane: Int) -> String { "\(prefix):{wh\(lane)}:sender" }

    /// Lane `lane`'s devices by the earliest expiry of their pending messages.
    public func expiringKey(_ lane: Int) -> String { "\(prefix):{wh\(lane)}:expiring" }

    /// Lane `lane`'s devices -> the token of their last append.
    public func touchedKey(_ lane: Int) -> String { "\(prefix):{wh\(lane)}:touched" }

    /// Whether expiries are watched (`message.expired` is wanted).
    public var watchesExpiry: Bool { types.contains(.messageExpired) }

    /// The lanes this node holds now.
    public var heldLanes: [Int] { (0..<laneCount).filter { lanes[$0].withLock { $0.held } } }

    /// What an append writes first, with expiries watched: the device in its lane's index with
    /// at most `earliest` as its score, and `token` (unique to this append) as its last append.
    public func expiryIndexCommands(clientID: String, earliest: Int64, token: String) -> [[RedisArgument]] {
        let lane = lane(of: clientID)
        return [
            [.string("ZADD"), .string(expiringKey(lane)), .string("LT"), .integer(earliest), .string(clientID)],
            [.string("HSET"), .string(touchedKey(lane)), .string(clientID), .string(token)],
        ]
    }

    // MARK: Queueing

    public func wants(_ type: WebhookEventType) -> Bool { types.contains(type) }

    /// Queues the event with one `XADD`, not awaited: an event that Redis did not take is
    /// counted as dropped (and logged), like a full memory queue's.
    public func emit(_ type: WebhookEventType, clientID: String, message: String?, data: [(String, WebhookValue)]) {
        guard let command = command(type, clientID: clientID, message: message, data: data) else { return }
        let lane = lane(of: clientID)
        client.sendDetached([command]) { [self] in
            queuedTotal.subtract(1, ordering: .relaxed)
            dropped(type)
        }
        queued(1, lane: lane)
    }

    /// The `XADD` queueing an event of `type`, for a caller that writes it with more (the ACK's
    /// delete); nil when the type is not wanted. Call `queued` once it is written.
    public func command(_ type: WebhookEventType, clientID: String, message: String?, data: [(String, WebhookValue)]) -> [RedisArgument]? {
        guard types.contains(type) else { return nil }
        let event = WebhookEvent(id: ids.id(of: type, message: message), type: type, atMillis: now(), clientID: clientID, data: data)
        return [.string("XADD"), .string(streamKey(lane(of: clientID))), .string("*"), .string("i"), .string(event.id), .string("j"), .string(event.json)]
    }

    /// Counts `count` events written to lane `lane`, and wakes the lane when this node sends it.
    public func queued(_ count: Int, lane: Int) {
        queuedTotal.add(count, ordering: .relaxed)
        // A lane another node sends (in a cluster, most of them): its holder reads the event.
        // Waking this node's lane would only put it back to sleep, with one more timer, for
        // every event. (A lane taken after this check is woken by the renewal that took it.)
        if lanes[lane].withLock({ $0.held }) { wake(lane) }
    }

    private func dropped(_ type: WebhookEventType) {
        let dropped = droppedTotal.add(1, ordering: .relaxed).newValue
        if dropped % 1000 == 1 {
            logger.warning(
                "a webhook event could not be queued in Redis and is dropped",
                metadata: ["dropped": "\(dropped)", "type": "\(type.rawValue)"]
            )
        }
    }

    // MARK: Sending

    public var figures: WebhookQueueFigures {
        let (depth, oldest) = seen.withLock { $0 }
        return WebhookQueueFigures(
            depth: depth, queued: queuedTotal.load(ordering: .relaxed), dropped: droppedTotal.load(ordering: .relaxed),
            oldestQueuedAt: oldest, lanesHeld: lanes.count(where: { $0.withLock { $0.held } })
        )
    }

    public func next(lane: Int, limit: Int) async -> [WebhookEvent] {
        while !Task.isCancelled {
            if lanes[lane].withLock({ $0.held }) {
                do throws(StoreError) {
                    let batch = try await read(lane: lane, limit: limit)
                    if !batch.isEmpty { return batch }
                } catch {
                    logger.debug("reading a webhook lane failed", metadata: ["lane": "\(lane)", "error": "\(error)"])
                }
            }
            await pause(lane: lane)
        }
        return []
    }

    /// The lane's oldest events this node has claimed and not removed, then new ones, at most
    /// `limit` in all. Entries already handed out come from memory; the pending list is read
    /// (`XREADGROUP ... 0`) only after a takeover or a claim, so an event is read from Redis
    /// once.
    private func read(lane: Int, limit: Int) async throws(StoreError) -> [WebhookEvent] {
        if !lanes[lane].withLock({ $0.prepared }) {
            try await prepare(lane: lane)
            lanes[lane].withLock {
                $0.prepared = true
                $0.readPending = true
                $0.lastClaim = .now
            }
        } else if lanes[lane].withLock({ ContinuousClock.now - $0.lastClaim >= staleAfter / 2 }) {
            // Entries left in another consumer's pending list: read by a node that believed it
            // still held the lane after its lease had run out (and then died, or lost the lane
            // between its read and its send). Nobody else would ever send them.
            let claimed = try await claim(lane: lane, idleFor: staleAfter)
            lanes[lane].withLock {
                $0.lastClaim = .now
                if claimed > 0 { $0.readPending = true }
            }
        }
        var events = lanes[lane].withLock { state -> [WebhookEvent] in
            if state.readPending { state.handedOut = [] }
            return state.handedOut
        }
        // A smaller limit than before (never, with one sender per lane): the first of them, the
        // rest stay handed out.
        if events.count >= limit { return Array(events.prefix(limit)) }
        if lanes[lane].withLock({ $0.readPending }) {
            events = try await readGroup(lane: lane, start: "0", count: limit)
            if events.count < limit { lanes[lane].withLock { $0.readPending = false } }
        }
        if events.count < limit {
            events += try await readGroup(lane: lane, start: ">", count: limit - events.count)
        }
        lanes[lane].withLock { $0.handedOut = events }
        return events
    }

    /// One `XREADGROUP` of lane `lane` from `start` (`0`: this node's pending list; `>`: new
    /// entries). Entries deleted while pending (by a node that had removed them) are forgotten.
    private func readGroup(lane: Int, start: String, count: Int) async throws(StoreError) -> [WebhookEvent] {
        let key = streamKey(lane)
        let reply = try await client.send([
            .string("XREADGROUP"), .string("GROUP"), .string(Self.group), .string(node), .string("COUNT"), .integer(Int64(count)),
            .string("STREAMS"), .string(key), .string(start),
        ])
        if case .error(let text) = reply {
            if text.hasPrefix("NOGROUP") { lanes[lane].withLock { $0.prepared = false } }
            throw StoreError(.unavailable, "XREADGROUP: \(text)")
        }
        let (events, gone) = Self.entries(reply)
        if !gone.isEmpty { _ = try await client.sendAll(removal(lane: lane, ids: gone)) }
        return events
    }

    /// Makes the group (reading the stream from its start) and takes over every entry pending
    /// in it, whoever claimed it: this node now holds the lane, so nobody else sends them.
    private func prepare(lane: Int) async throws(StoreError) {
        let key = streamKey(lane)
        let created = try await client.send([.string("XGROUP"), .string("CREATE"), .string(key), .string(Self.group), .string("0"), .string("MKSTREAM")])
        if case .error(let text) = created, !text.hasPrefix("BUSYGROUP") { throw StoreError(.unavailable, "XGROUP CREATE: \(text)") }
        try await claim(lane: lane, idleFor: .zero)
    }

    /// Moves to this node every entry of the lane pending for at least `idleFor` (`XAUTOCLAIM`).
    @discardableResult
    private func claim(lane: Int, idleFor: Duration) async throws(StoreError) -> Int {
        let key = streamKey(lane)
        let idleMillis = idleFor.components.seconds * 1000 + idleFor.components.attoseconds / 1_000_000_000_000_000
        var start = "0-0"
        var claimed = 0
        repeat {
            let reply = try await client.send([
                .string("XAUTOCLAIM"), .string(key), .string(Self.group), .string(node), .integer(idleMillis), .string(start), .string("COUNT"),
                .string("1000"),
            ])
            guard case .array(let parts) = reply, parts.count >= 2, let next = parts[0].string else {
                throw StoreError(.unavailable, "unexpected reply to XAUTOCLAIM: \(reply)")
            }
            if case .array(let entries) = parts[1] { claimed += entries.count }
            start = next
        } while start != "0-0"
        if claimed > 0 { logger.info("took over pending webhook events", metadata: ["lane": "\(lane)", "events": "\(claimed)"]) }
        return claimed
    }

    public func remove(lane: Int, batch: [WebhookEvent]) async -> Bool {
        let ids = batch.compactMap(\.queueID)
        guard !ids.isEmpty else { return true }
        guard let replies = try? await client.sendAll(removal(lane: lane, ids: ids)),
            !replies.contains(where: { if case .error = $0 { true } else { false } })
        else { return false }
        let removed = Set(ids)
        lanes[lane].withLock { state in state.handedOut.removeAll { $0.queueID.map(removed.contains) ?? false } }
        return true
    }

    private func removal(lane: Int, ids: [String]) -> [[RedisArgument]] {
        let key = streamKey(lane)
        return [
            [.string("XACK"), .string(key), .string(Self.group)] + ids.map { .string($0) },
            [.string("XDEL"), .string(key)] + ids.map { .string($0) },
        ]
    }

    /// The events of an `XREADGROUP` reply, and the ids of entries deleted since they were read.
    static func entries(_ reply: RESPValue) -> (events: [WebhookEvent], gone: [String]) {
        guard case .array(let streams) = reply, case .array(let stream)? = streams.first, stream.count == 2,
            case .array(let entries) = stream[1]
        else { return ([], []) }
        var events: [WebhookEvent] = []
        var gone: [String] = []
        for entry in entries {
            guard case .array(let parts) = entry, parts.count == 2, let queueID = parts[0].string else { continue }
            guard case .array(let fields) = parts[1] else {
                gone.append(queueID)
                continue
            }
            var id: String?
            var json: String?
            var position = 0
            while position + 1 < fields.count {
                switch fields[position].string {
                case "i": id = fields[position + 1].string
                case "j": json = fields[position + 1].string
                default: break
                }
                position += 2
            }
            if let id, let json {
                events.append(WebhookEvent(id: id, clientID: "", json: json, queueID: queueID))
            } else {
                gone.append(queueID)
            }
        }
        return (events, gone)
    }

    /// Waits until the lane is woken or `pollInterval` has passed.
    private func pause(lane: Int) async {
        pauses.add(1, ordering: .relaxed)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let wait = lanes[lane].withLock { state -> Bool in
                if state.woken || Task.isCancelled {
                    state.woken = false
                    return false
                }
                state.waiter = continuation
                return true
            }
            guard wait else { return continuation.resume() }
            let nanoseconds = pollInterval.components.seconds * 1_000_000_000 + pollInterval.components.attoseconds / 1_000_000_000
            client.loops[lane % client.loops.count].scheduleTask(in: .nanoseconds(nanoseconds)) { self.wake(lane) }
        }
    }

    private func wake(_ lane: Int) {
        lanes[lane].withLock { state -> CheckedContinuation<Void, Never>? in
            guard let waiter = state.waiter else {
                state.woken = true
                return nil
            }
            state.waiter = nil
            return waiter
        }?.resume()
    }

    // MARK: Leases

    /// Takes free lanes and renews held ones every third of the lease, refreshes the figures,
    /// and at the end (cancelled) gives the held lanes back so that another node takes them at
    /// once.
    ///
    /// Until Redis has answered every lane (a node starting while its Redis connections are
    /// still opening, or Redis away), it looks again every `pollInterval`, not a third of a
    /// lease later: a starting node's lanes would otherwise sit idle for seconds.
    public func maintain() async {
        var laneCountChecked = false
        while !Task.isCancelled {
            if !laneCountChecked { laneCountChecked = await checkLaneCount() }
            let answered = await renewLeases()
            leaseRounds.add(1, ordering: .relaxed)
            await refreshFigures()
            try? await Task.sleep(for: answered && laneCountChecked ? lease / 3 : min(pollInterval, lease / 3))
        }
        await releaseLeases()
    }

    /// Every node must split events into the same lanes; a node configured otherwise says so.
    /// False when Redis did not answer.
    private func checkLaneCount() async -> Bool {
        let key = "\(prefix):webhook-lanes"
        guard let replies = try? await client.sendAll([[.string("SET"), .string(key), .integer(Int64(laneCount)), .string("NX")], [.string("GET"), .string(key)]]),
            let recorded = replies.last?.int64
        else { return false }
        if recorded != Int64(laneCount) {
            logger.error(
                "HERALD_WEBHOOK_CONCURRENCY differs from the cluster's: a device's events may go to two lanes and out of order; set it alike on every node (or delete the key once all agree)",
                metadata: ["herald.webhook_lanes": "\(laneCount)", "cluster": "\(recorded)", "key": "\(key)"]
            )
        }
        return true
    }

    /// Renews the held lanes and takes free ones. False when Redis did not answer for a lane.
    private func renewLeases() async -> Bool {
        let millis = Int64(lease.components.seconds * 1000 + lease.components.attoseconds / 1_000_000_000_000_000)
        let outcomes = await concurrently(Array(0..<laneCount)) { lane async throws(StoreError) -> Int64 in
            let reply = try await self.client.run(Self.leaseScript, keys: [self.leaseKey(lane)], arguments: [.string(self.node), .integer(millis)])
            guard let outcome = reply.int64 else { throw StoreError(.unavailable, "unexpected reply to the lease script: \(reply)") }
            return outcome
        }
        for (lane, outcome) in outcomes.enumerated() {
            // Redis unreachable: keep sending what we hold until the lease would have run out
            // (the sends fail anyway while Redis is away); another node's name: let go.
            guard case .success(let result) = outcome else { continue }
            let (was, isHeld) = lanes[lane].withLock { state -> (Bool, Bool) in
                let was = state.held
                state.held = result != 0
                if !state.held || !was { state.prepared = false }
                return (was, state.held)
            }
            if was != isHeld {
                logger.info(isHeld ? "sending a webhook lane" : "another node sends this webhook lane now", metadata: ["lane": "\(lane)"])
                if isHeld { wake(lane) }
            }
        }
        return outcomes.allSatisfy { if case .success = $0 { true } else { false } }
    }

    private func releaseLeases() async {
        let held = (0..<laneCount).filter { lane in lanes[lane].withLock { state in defer { state.held = false }; return state.held } }
        _ = await concurrently(held) { lane async throws(StoreError) in
            _ = try await self.client.run(Self.releaseScript, keys: [self.leaseKey(lane)], arguments: [.string(self.node)])
        }
    }

    /// The depth (entries in every lane) and the oldest entry's time, from its stream id.
    private func refreshFigures() async {
        var commands: [[RedisArgument]] = []
        for lane in 0..<laneCount {
            commands.append([.string("XLEN"), .string(streamKey(lane))])
            commands.append([.string("XRANGE"), .string(streamKey(lane)), .string("-"), .string("+"), .string("COUNT"), .string("1")])
        }
        guard let replies = try? await client.sendAll(commands) else { return }
        var depth = 0
        var oldest: Int64?
        for lane in 0..<laneCount {
            depth += Int(replies[2 * lane].int64 ?? 0)
            if case .array(let entries) = replies[2 * lane + 1], case .array(let entry)? = entries.first,
                let id = entry.first?.string, let millis = id.split(separator: "-").first.flatMap({ Int64($0) })
            {
                oldest = min(oldest ?? millis, millis)
            }
        }
        seen.withLock { $0 = (depth, oldest) }
    }

    /// Renews the lease when this node holds it (1), takes it when free (2), else 0.
    static let leaseScript = RedisScript(
        """
        local holder = redis.call('GET', KEYS[1])
        if holder == ARGV[1] then
          redis.call('PEXPIRE', KEYS[1], ARGV[2])
          return 1
        end
        if not holder then
          redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
          return 2
        end
        return 0
        """
    )

    /// After a sweep of one device, unless it was appended to since (its token changed): KEYS
    /// the lane's index and tokens; ARGV device, token seen, the earliest expiry left (-1: none),
    /// now + the settling time. A device with messages left gets their earliest expiry as its
    /// score. One found empty is kept, marked, for the settling time (an append whose index write
    /// came before the sweep may still be on its way), and removed when found empty again with
    /// no append since. Returns 1 when it changed something.
    static let settleScript = RedisScript(
        """
        local token = redis.call('HGET', KEYS[2], ARGV[1]) or ''
        if token ~= ARGV[2] then return 0 end
        if tonumber(ARGV[3]) >= 0 then
          redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
        elseif string.sub(token, 1, 2) == 'E:' then
          redis.call('ZREM', KEYS[1], ARGV[1])
          redis.call('HDEL', KEYS[2], ARGV[1])
        else
          redis.call('HSET', KEYS[2], ARGV[1], 'E:' .. token)
          redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
        end
        return 1
        """
    )

    /// Deletes the lease when this node holds it.
    static let releaseScript = RedisScript(
        """
        if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
        return 0
        """
    )
}
