import Actors
import Logging
import NIOCore
import NIOPosix
import PushProtocol
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
/// - `herald:{wh<n>}:foreign`  counter, raised with every entry written by a node that did not
///   hold the lane when it wrote it
///
/// A node sends only the lanes it holds, one batch at a time, so a device's events go out in
/// order. A node that takes a lane first claims every entry still pending in the group
/// (`XAUTOCLAIM`): a dead node's unanswered batch is sent again, first. A delivered batch is
/// `XDEL`eted (and `XACK`ed, what was read through the group). The ACK's event is written
/// before the ACK's delete, in the same `MULTI` on a single Redis (RedisPushStore).
///
/// The holder keeps the entries it writes itself in memory, with their stream ids, and sends
/// them from there: it reads the stream (`XREADGROUP`) only when the foreign counter has moved
/// (another node wrote to the lane), after a takeover or a claim, and once every half
/// `staleAfter` in any case. An own entry's `XADD` answered before the counter is read, so
/// any other node's entry older than it had moved the counter already: what is sent from
/// memory never overtakes an older entry of the stream (Docs/webhooks.md).
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
        /// Changes whenever `held` does: an own entry answered after the lane changed hands is
        /// not kept in memory (the stream has it).
        var epoch = 0
        /// This node's own entries, written while it held the lane, neither handed out nor
        /// read through the group, by stream id; `arrival` numbers them as their `XADD`s answer.
        var local: [(id: StreamID, arrival: Int, event: WebhookEvent)] = []
        var arrivals = 0
        /// The foreign counter when the group was last read to the stream's end; nil: read it.
        var foreignSeen: Int64?
        /// The highest id the group has handed this node (`>`): an own entry at or below it
        /// came through the group, not to be kept in memory as well.
        var lastGroupRead = StreamID.zero
        /// Handed-out ids read through the group, which `remove` acknowledges (`XACK`).
        var grouped: Set<String> = []
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
    /// Each lane's counter of entries written by nodes that did not hold it.
    private let foreignKeys: [String]
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
        foreignKeys = (0..<lanes).map { "\(prefix):{wh\($0)}:foreign" }
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

    /// One event's write: its `XADD`, followed, for an event this node will not send from
    /// memory, by an `INCR` of the lane's foreign counter. Send the commands (with more, in
    /// one `MULTI`, as the ACK does), then tell `queued` their replies.
    public struct EventWrite: Sendable {
        public let commands: [[RedisArgument]]
        let event: WebhookEvent
        let lane: Int
        /// The lane's epoch when this node held it; nil: written as another node's.
        let heldEpoch: Int?
    }

    /// Queues the event, not awaited: an event that Redis did not take is counted as dropped
    /// (and logged), like a full memory queue's.
    public func emit(_ type: WebhookEventType, clientID: String, message: String?, data: [(String, WebhookValue)]) {
        guard let write = write(type, clientID: clientID, message: message, data: data) else { return }
        if write.heldEpoch == nil {
            client.sendDetached(write.commands) { [self] replies in
                guard let replies, !replies.contains(where: { if case .error = $0 { true } else { false } }) else {
                    queuedTotal.subtract(1, ordering: .relaxed)
                    return dropped(type)
                }
            }
            queued([write], replies: [])
            return
        }
        client.sendDetached([write.commands[0]]) { [self] replies in
            guard let reply = replies?.first, reply.string != nil else { return dropped(type) }
            queued([write], replies: [reply])
        }
    }

    /// The write queueing an event of `type`, for a caller that sends it with more (the ACK's
    /// delete); nil when the type is not wanted.
    public func write(_ type: WebhookEventType, clientID: String, message: String?, data: [(String, WebhookValue)]) -> EventWrite? {
        guard types.contains(type) else { return nil }
        let event = WebhookEvent(id: ids.id(of: type, message: message), type: type, atMillis: now(), clientID: clientID, data: data)
        let lane = lane(of: clientID)
        let key = streamKeys[lane]
        let heldEpoch = lanes[lane].withLock { state in state.held && state.local.count < Self.localCapacity ? state.epoch : nil }
        var commands: [[RedisArgument]] = [[.string("XADD"), .string(key), .string("*"), .string("i"), .string(event.id), .string("j"), .string(event.json)]]
        if heldEpoch == nil { commands.append([.string("INCR"), .string(foreignKeys[lane])]) }
        return EventWrite(commands: commands, event: event, lane: lane, heldEpoch: heldEpoch)
    }

    /// Counts `writes` as queued, once Redis has taken them. `replies` are their commands'
    /// replies in order (needed for the writes of a lane this node held: their `XADD`s' ids;
    /// empty when none was). Wakes the lanes this node sends.
    public func queued(_ writes: [EventWrite], replies: some Collection<RESPValue>) {
        var next = replies.startIndex
        // The writes of one call are one device's, so of one lane.
        var wake: Int?
        for write in writes {
            queuedTotal.add(1, ordering: .relaxed)
            let reply = next
            next = replies.index(next, offsetBy: write.commands.count, limitedBy: replies.endIndex) ?? replies.endIndex
            // A lane another node sends (in a cluster, most of them): its holder reads the event.
            // Waking this node's lane would only put it back to sleep, with one more timer, for
            // every event. (A lane taken after this check is woken by the renewal that took it.)
            guard let epoch = write.heldEpoch else {
                if lanes[write.lane].withLock({ $0.held }) { wakeOnce(write.lane, &wake) }
                continue
            }
            guard reply != replies.endIndex, let text = replies[reply].string, let id = StreamID(text) else { continue }
            let kept = lanes[write.lane].withLock { state -> Bool in
                guard state.held, state.epoch == epoch, id > state.lastGroupRead else { return false }
                var event = write.event
                event.queueID = text
                var position = state.local.endIndex
                while position > state.local.startIndex, state.local[position - 1].id > id { position -= 1 }
                state.local.insert((id, state.arrivals, event), at: position)
                state.arrivals += 1
                return true
            }
            if kept { wakeOnce(write.lane, &wake) }
        }
    }

    private func wakeOnce(_ lane: Int, _ woken: inout Int?) {
        guard woken != lane else { return }
        woken = lane
        wake(lane)
    }

    /// At most this many own entries a lane keeps in memory (a receiver away): beyond them, this
    /// node writes its events as another node's, and reads them back from the stream.
    static let localCapacity = 4096

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
    /// `limit` in all, by stream id. Entries already handed out come from memory; the pending
    /// list is read (`XREADGROUP ... 0`) only after a takeover or a claim, so an event is read
    /// from Redis once. New entries come from memory when they are this node's own and no other
    /// node wrote to the lane since the group was last read to its end; else from the group.
    private func read(lane: Int, limit: Int) async throws(StoreError) -> [WebhookEvent] {
        if !lanes[lane].withLock({ $0.prepared }) {
            try await prepare(lane: lane)
            lanes[lane].withLock {
                $0.prepared = true
                $0.readPending = true
                $0.foreignSeen = nil
                $0.lastClaim = .now
            }
        } else if lanes[lane].withLock({ ContinuousClock.now - $0.lastClaim >= staleAfter / 2 }) {
            // Entries left in another consumer's pending list: read by a node that believed it
            // still held the lane after its lease had run out (and then died, or lost the lane
            // between its read and its send). Nobody else would ever send them. Such a node may
            // also have written entries as its own, unannounced: the group is read again too.
            let claimed = try await claim(lane: lane, idleFor: staleAfter)
            lanes[lane].withLock {
                $0.lastClaim = .now
                $0.foreignSeen = nil
                if claimed > 0 { $0.readPending = true }
            }
        }
        var events = lanes[lane].withLock { state -> [WebhookEvent] in
            if state.readPending {
                // Own entries handed out are not in the pending list: the group reads them again.
                state.handedOut = []
                state.grouped = []
            }
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
            // Which own entries may go: those whose XADD answered before the counter is read.
            let (seen, arrivals) = lanes[lane].withLock { ($0.foreignSeen, $0.arrivals) }
            let counter = try await foreignCount(lane: lane)
            if counter == seen {
                let room = limit - events.count
                events += lanes[lane].withLock { state -> [WebhookEvent] in
                    var taken: [WebhookEvent] = []
                    state.local.removeAll { entry in
                        guard entry.arrival < arrivals, taken.count < room else { return false }
                        taken.append(entry.event)
                        return true
                    }
                    return taken
                }
            } else {
                let wanted = limit - events.count
                let fresh = try await readGroup(lane: lane, start: ">", count: wanted)
                let handed = Set(events.compactMap(\.queueID))
                events += fresh.filter { !handed.contains($0.queueID ?? "") }
                if fresh.count < wanted { lanes[lane].withLock { $0.foreignSeen = counter } }
                // Each id parsed once, not at every comparison.
                events = events.map { (StreamID($0.queueID ?? "") ?? .zero, $0) }.sorted { $0.0 < $1.0 }.map(\.1)
            }
        }
        lanes[lane].withLock { $0.handedOut = events }
        return events
    }

    /// The lane's foreign counter (0 before any other node wrote to it).
    private func foreignCount(lane: Int) async throws(StoreError) -> Int64 {
        let reply = try await client.send([.string("GET"), .string(foreignKeys[lane])])
        if case .null = reply { return 0 }
        guard let count = reply.int64 else { throw StoreError(.unavailable, "unexpected reply to GET: \(reply)") }
        return count
    }

    /// One `XREADGROUP` of lane `lane` from `start` (`0`: this node's pending list; `>`: new
    /// entries). Entries deleted while pending (by a node that had removed them) are forgotten.
    /// What it returns is acknowledged on removal, and no longer kept in memory.
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
        let read = events.compactMap(\.queueID) + gone
        if !read.isEmpty {
            let highest = read.compactMap(StreamID.init).max() ?? .zero
            lanes[lane].withLock { state in
                state.grouped.formUnion(read)
                if start == ">" { state.lastGroupRead = max(state.lastGroupRead, highest) }
                let ids = Set(read)
                state.local.removeAll { ids.contains($0.event.queueID ?? "") }
            }
        }
        if !gone.isEmpty {
            _ = try await client.sendAll(removal(lane: lane, ids: gone))
            lanes[lane].withLock { $0.grouped.subtract(gone) }
        }
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
        let idleMillis = idleFor.wholeMilliseconds
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
        lanes[lane].withLock { state in
            state.handedOut.removeAll { $0.queueID.map(removed.contains) ?? false }
            state.grouped.subtract(removed)
        }
        return true
    }

    /// Deletes `ids` from the lane's stream, acknowledging (`XACK`) those read through the group.
    private func removal(lane: Int, ids: [String]) -> [[RedisArgument]] {
        let key = streamKey(lane)
        let acknowledged = lanes[lane].withLock { state in ids.filter(state.grouped.contains) }
        var commands: [[RedisArgument]] = []
        if !acknowledged.isEmpty { commands.append([.string("XACK"), .string(key), .string(Self.group)] + acknowledged.map { .string($0) }) }
        commands.append([.string("XDEL"), .string(key)] + ids.map { .string($0) })
        return commands
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
            // The timer on the loop the lane's task runs on (the sender gives each lane one), so
            // that the wake-up needs no other thread; any loop would do.
            let loop = MultiThreadedEventLoopGroup.currentEventLoop ?? client.loops[0]
            loop.scheduleTask(in: pollInterval.timeAmount) { self.wake(lane) }
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
        let millis = lease.wholeMilliseconds
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
                if state.held != was {
                    // Own entries in memory stay in the stream, for whoever holds the lane now.
                    state.epoch += 1
                    state.local = []
                }
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
        let held = (0..<laneCount).filter { lane in
            lanes[lane].withLock { state in
                defer {
                    state.held = false
                    state.epoch += 1
                    state.local = []
                }
                return state.held
            }
        }
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

/// A stream entry id, `<milliseconds>-<sequence>`, ordered as Redis orders them.
struct StreamID: Comparable, Sendable {
    let milliseconds: UInt64
    let sequence: UInt64

    static let zero = StreamID(milliseconds: 0, sequence: 0)

    init(milliseconds: UInt64, sequence: UInt64) {
        self.milliseconds = milliseconds
        self.sequence = sequence
    }

    init?(_ text: String) {
        guard let dash = text.utf8.firstIndex(of: UInt8(ascii: "-")),
            let milliseconds = UInt64(text[..<dash]), let sequence = UInt64(text[text.index(after: dash)...])
        else { return nil }
        self.init(milliseconds: milliseconds, sequence: sequence)
    }

    static func < (lhs: StreamID, rhs: StreamID) -> Bool {
        (lhs.milliseconds, lhs.sequence) < (rhs.milliseconds, rhs.sequence)
    }
}
