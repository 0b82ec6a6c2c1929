import Actors
import NIOCore
import Synchronization

/// `PushStore` on Redis (Docs/store.md has the key schema, the measurements behind it and the
/// guarantees).
///
/// Per device, both under the hash tag `{client_id}` (one slot):
/// - `herald:{id}:n`  string, INCRBY: the device's last sequence (never expires, so a
///   device's sequences never start again)
/// - `herald:{id}:q`  stream, one entry `<sequence>-0` per message with the fields `i` (id),
///   `e` (expiry, ms since the epoch) and `p` (payload); it expires once its last message has
///   expired, plus a minute of slack
///
/// An append is one Lua script (atomic: the deadline, the caps, the sequences, the entries),
/// shared on a single Redis by the appends one event loop starts in one tick, each still all
/// or nothing on its own (`AppendGroups`, Docs/store.md "Group commit"); an ACK of a message the connection sent is a plain `XDEL` of its entry. Expired entries are
/// skipped and deleted by reads, and by an append that finds its queue full. A queue of the
/// previous schema (`seq`, `ids`, `exp`, `data`) is moved into the stream the first time the
/// device is touched (Docs/operations.md, "Upgrading").
///
/// With a receipt retention it also keeps each message's status (`ReceiptStore`): a hash
/// `herald:{tag}:r:<message id>` with the fields `c` (client id), `q` (sequence), `a`
/// (accepted), `e` (expiry), `s` (sent), `k` (acknowledged), written by the append's script,
/// in the same step as the message. `tag` is the one that hashes to the device's slot, and the
/// message id ends with it (`<id>.<tag>`), so that a read by id alone finds the key, and every
/// script touching a device touches one slot (Docs/store.md, "Message status").
///
/// A broadcast's status (`BroadcastReceiptStore`) is a hash `herald:{<id>}:b`: `a` (accepted,
/// from the node that accepted it) and `n:<node>` (connections each node wrote it to).
public final class RedisPushStore: ReceiptStore, BroadcastReceiptStore {
    private let client: RedisClient
    private let prefix: String
    private let maxPending: Int
    private let now: @Sendable () -> Int64
    private let replicas: Int
    private let waitTimeoutMillis: Int64
    private let groups: AppendGroups
    private let receiptRetentionMillis: Int64?
    private let events: RedisWebhookQueue?
    /// The webhook queue when `message.expired` is wanted: appends index their device, reads
    /// leave expired entries, and `removeExpired` sweeps the lanes this node holds.
    private let expiryEvents: RedisWebhookQueue?
    /// How long a queue lives past its last message's expiry: a minute, or an hour with
    /// expiries watched (the sweep must find the entries before Redis drops the key).
    private let slackMillis: Int64
    private let appendTokens = WebhookEventIDs()
    /// When an append is too late for Redis to run (ms since the epoch, by the wall clock):
    /// half the command timeout from now by default, so a 503 never turns into a stored message
    /// as long as the node's and Redis's clocks agree within that half (Docs/store.md).
    private let appendDeadline: @Sendable () -> Int64
    /// `appendScript` with this store's settings.
    private let appendScript: RedisScript
    /// Whether appends go through Herald's Redis module (`runAppend`; Docs/store.md, "The Redis
    /// module"): asked of Redis (`COMMAND INFO`) before the first append on each generation of
    /// the client's connections (`moduleAskedAt`), then yes until Redis refuses the command
    /// (on a Redis Cluster, one master is asked: every master must have it, or a refusal sends
    /// the node to the script until it reconnects).
    private let moduleLoaded = Atomic<Bool>(false)
    /// Whether ACKs with message status go through the module (`HERALD.ACK`), asked and
    /// given up on as `moduleLoaded` is (a module of an earlier release may lack the command).
    private let moduleAcknowledges = Atomic<Bool>(false)
    /// The client's `connectionGeneration` when Redis was last asked for the module.
    private let moduleAskedAt = Atomic<UInt64>(.max)
    /// The version of `HERALD.APPEND`'s arguments this node sends (`RedisModule/herald.c`).
    static let moduleInterface: Int64 = 1

    /// Creates the store. `prefix` starts every key (`herald` by default; tests use their own).
    /// With `replicas` > 0, an append returns only once that many replicas acknowledged it
    /// (`WAIT`, at most `waitTimeoutMillis`); otherwise it is removed again and the append fails
    /// (Docs/store.md, "Redis Sentinel"). With `events`, an ACK queues its `message.acked`
    /// event in Redis before it deletes the message (Docs/webhooks.md). `appendDeadline`
    /// replaces the deadline of appends (tests).
    public init(
        client: RedisClient, maxPending: Int, prefix: String = "herald", replicas: Int = 0, waitTimeoutMillis: Int64 = 500,
        receiptRetentionMillis: Int64? = nil, events: RedisWebhookQueue? = nil,
        now: @escaping @Sendable () -> Int64 = WallClock.millisecondsSinceEpoch,
        appendDeadline: (@Sendable () -> Int64)? = nil
    ) {
        let halfTimeout = client.configuration.commandTimeout.nanoseconds / 2_000_000
        self.appendDeadline = appendDeadline ?? { WallClock.millisecondsSinceEpoch() + halfTimeout }
        self.receiptRetentionMillis = receiptRetentionMillis
        self.events = events.flatMap { $0.wants(.messageAcked) ? $0 : nil }
        expiryEvents = events.flatMap { $0.watchesExpiry ? $0 : nil }
        slackMillis = expiryEvents == nil ? Self.expirySlackMillis : Self.watchedExpirySlackMillis
        self.client = client
        self.maxPending = maxPending
        self.prefix = prefix
        self.replicas = replicas
        self.waitTimeoutMillis = waitTimeoutMillis
        self.now = now
        groups = AppendGroups(loops: client.loops.count)
        appendScript = Self.appendScript(
            cap: maxPending, slackMillis: slackMillis, retentionMillis: receiptRetentionMillis ?? 0, keep: expiryEvents != nil
        )
    }

    /// The device's counter and stream.
    private func keys(_ clientID: String) -> [String] {
        let tag = "\(prefix):{\(clientID)}"
        return ["\(tag):n", "\(tag):q"]
    }

    public func append(_ messages: [NewMessage]) async throws(StoreError) -> [StoredMessage] {
        guard !messages.isEmpty else { return [] }
        guard client.configuration.isCluster else {
            return try await groups.append(messages, loop: client.callerLoopIndex()) { requests in await self.appendGroup(requests) }
        }
        // On a cluster one script reaches one slot: no group commit, a batch per device.
        if let first = messages.first?.clientID, messages.contains(where: { $0.clientID != first }) {
            return try await appendAcrossSlots(messages)
        }
        return try await appendGroup([messages])[0].get()
    }

    /// Runs `requests` as one script call (`appendScript`): one outcome per request, each all
    /// or nothing. The deadline, the `WAIT` and a failure to reach Redis are the group's.
    private func appendGroup(_ requests: [[NewMessage]]) async -> [AppendGroups.Outcome] {
        var devices: [String] = []
        var index: [String: Int] = [:]
        var counts: [Int64] = []
        var latest: [Int64] = []
        for request in requests {
            for message in request {
                if let known = index[message.clientID] {
                    counts[known - 1] += 1
                    latest[known - 1] = max(latest[known - 1], message.expiresAtMillis)
                } else {
                    devices.append(message.clientID)
                    index[message.clientID] = devices.count
                    counts.append(1)
                    latest.append(message.expiresAtMillis)
                }
            }
        }
        do throws(StoreError) { try await askForModule() } catch { return requests.map { _ in .failure(error) } }
        // Read before the call: a reconnection after it (a Redis that may have lost writes)
        // makes the sequences it returns older than the store's generation.
        let generation = generation
        let now = now()
        // A request that times out is answered 503, but its bytes may still reach a paused Redis
        // and run later. The script refuses to run after `appendDeadline` (by Redis's clock).
        let deadline = appendDeadline()
        var arguments: [RedisArgument] = [
            .integer(deadline / 1000), .integer(deadline % 1000), .integer(now), .integer(Int64(devices.count)),
        ]
        arguments += counts.map { .integer($0) }
        // Each stream's TTL: until the latest expiry the group brings it, plus the slack (a
        // refused request's messages count too: a TTL a little longer, never one too short).
        arguments += latest.map { .integer(max($0 - now, 0) + slackMillis) }
        var keys = devices.flatMap(keys)
        if receiptRetentionMillis != nil { arguments += devices.map { .string($0) } }
        for request in requests {
            arguments.append(.integer(Int64(request.count)))
            for message in request {
                arguments += [
                    .integer(Int64(index[message.clientID]!)), .string(message.id), .integer(message.expiresAtMillis), .bytes(message.payload),
                ]
                guard receiptRetentionMillis != nil else { continue }
                var status: Int64 = 0
                if let key = statusKey(message.id, of: message.clientID) {
                    keys.append(key)
                    status = Int64(keys.count)
                }
                arguments.append(.integer(status))
            }
        }
        let wait: [[RedisArgument]] = replicas > 0 ? [[.string("WAIT"), .integer(Int64(replicas)), .integer(waitTimeoutMillis)]] : []
        let replies: [RESPValue]
        do throws(StoreError) {
            var index: [[RedisArgument]] = []
            if let expiryEvents {
                // Each device in its lane's expiry index before its messages exist: on a single
                // Redis in the same write, ahead of the script; on a cluster (another slot),
                // confirmed first.
                let token = appendTokens.id(of: .messageExpired, message: nil)
                var earliest: [String: Int64] = [:]
                for request in requests {
                    for message in request { earliest[message.clientID] = min(earliest[message.clientID] ?? .max, message.expiresAtMillis) }
                }
                index = devices.flatMap { expiryEvents.expiryIndexCommands(clientID: $0, earliest: earliest[$0]!, token: token) }
                if client.configuration.isCluster {
                    let written = try await client.sendAll(index)
                    if let failure = written.first(where: { if case .error = $0 { true } else { false } }) {
                        throw StoreError(.unavailable, "indexing the expiry failed: \(failure); nothing was stored")
                    }
                    index = []
                }
            }
            replies = try await runAppend(keys: keys, arguments: arguments, before: index, then: wait)
        } catch {
            await waitOutDeadline(deadline, after: error)
            return requests.map { _ in .failure(error) }
        }
        let perRequest: [RESPValue]
        switch replies[0] {
        case .array(let array) where array.count == requests.count:
            perRequest = array
        case .error(let text) where text.hasPrefix("LATE") || text.hasPrefix("ERR LATE"):
            // Redis 7 puts ERR before an error a script raises without a code of its own.
            return requests.map { _ in .failure(StoreError(.unavailable, "redis ran the append after its deadline; nothing was stored")) }
        case let reply:
            return requests.map { _ in .failure(StoreError(.unavailable, "unexpected reply to append: \(reply)")) }
        }
        var outcomes = zip(requests, perRequest).map { request, reply -> AppendGroups.Outcome in
            switch reply {
            case .array(let sequences) where sequences.count == request.count:
                .success(zip(request, sequences).map { StoredMessage($0, sequence: UInt64($1.int64 ?? 0), generation: generation) })
            case .integer(let sequence) where sequence > 0 && request.count == 1:
                .success([StoredMessage(request[0], sequence: UInt64(sequence), generation: generation)])
            case .integer(let refused) where refused < 0 && refused >= -Int64(devices.count):
                .failure(
                    StoreError(.pendingFull, "pending queue of \(devices[Int(-refused) - 1]) is full (\(maxPending))", clientID: devices[Int(-refused) - 1])
                )
            default:
                .failure(StoreError(.unavailable, "unexpected reply to append: \(reply)"))
            }
        }
        // A WAIT that failed (an error reply) counts as no replica: fail closed.
        if replicas > 0, case let acknowledged = replies[1].int64 ?? 0, acknowledged < replicas {
            // Not on enough replicas: a failover could lose it. Take it back, so that the
            // failed request stores nothing (as protocol.md promises).
            await takeBack(outcomes.flatMap { (try? $0.get()) ?? [] })
            let failure = StoreError(
                .unavailable, "not acknowledged by \(replicas) replica(s) within \(waitTimeoutMillis) ms (\(acknowledged) did); nothing was kept"
            )
            outcomes = outcomes.map { outcome in
                if case .success = outcome { .failure(failure) } else { outcome }
            }
        }
        return outcomes
    }

    /// Holds a failed append's answer until its deadline has passed (by this node's clock) when
    /// its bytes may have reached Redis: a connection is closed when its *oldest* command times
    /// out, failing the later ones too, whose deadlines may still be ahead; a paused Redis that
    /// resumes then would still run them, and their 503 would have become a stored message.
    /// An append that was never written fails at once.
    private func waitOutDeadline(_ deadline: Int64, after error: StoreError) async {
        guard error.mayHaveTakenEffect else { return }
        let left = deadline - WallClock.millisecondsSinceEpoch()
        // One millisecond past it: the script refuses only once Redis's clock is beyond it.
        if left >= 0 { try? await Task.sleep(for: .milliseconds(left + 1)) }
    }

    /// Whether `error` is Redis refusing a module command outright (no such command, a module
    /// of another interface version, an ACL): the node then keeps to the script or the plain
    /// commands until it reconnects.
    private static func refusesModule(_ error: String) -> Bool {
        error.contains("unknown command") || error.contains("interface version mismatch") || error.hasPrefix("NOPERM")
    }

    /// Asks Redis whether it has Herald's module (`COMMAND INFO`): once, and again after the
    /// client (re)connected, since the Redis may be another now (a failover) or restarted with
    /// or without the module.
    private func askForModule() async throws(StoreError) {
        let generation = client.connectionGeneration
        guard moduleAskedAt.load(ordering: .relaxed) != generation else { return }
        let info = try await client.send([.string("COMMAND"), .string("INFO"), .string("HERALD.APPEND"), .string("HERALD.ACK")])
        func known(_ index: Int) -> Bool {
            if case .array(let entries) = info, entries.count > index, case .array = entries[index] { true } else { false }
        }
        moduleLoaded.store(known(0), ordering: .relaxed)
        moduleAcknowledges.store(known(1), ordering: .relaxed)
        moduleAskedAt.store(generation, ordering: .relaxed)
    }

    /// Runs an append's call: by Herald's Redis module where Redis has it (`HERALD.APPEND`, the
    /// script's keys and arguments after its settings), else by the script. The module leaves
    /// to the script what goes beyond the common path (-FALLBACK, before it wrote anything).
    /// Whether Redis has the module is asked before the first append and again after each
    /// reconnection (`askForModule`, before the append's deadline is set, so the question does
    /// not eat into it; not learnt from a refused call, whose followers, a `WAIT`, would then
    /// have waited for nothing). A Redis that refuses the command all the same (one of another
    /// interface, an ACL that does not allow it, a module unloaded) sends this store to the
    /// script until the client reconnects.
    private func runAppend(
        keys: [String], arguments: [RedisArgument], before leaders: [[RedisArgument]], then followers: [[RedisArgument]]
    ) async throws(StoreError) -> [RESPValue] {
        if moduleLoaded.load(ordering: .relaxed) {
            let settings: [RedisArgument] = [
                .string("HERALD.APPEND"), .integer(Self.moduleInterface), .integer(Int64(maxPending)), .integer(slackMillis),
                .integer(receiptRetentionMillis ?? 0), .integer(expiryEvents == nil ? 0 : 1), .integer(Int64(keys.count)),
            ]
            let replies = try await client.sendAll(leaders + [settings + keys.map { .string($0) } + arguments] + followers).dropFirst(leaders.count)
            switch replies.first {
            case .error(let text)? where text.hasPrefix("FALLBACK"):
                break
            case .error(let text)? where Self.refusesModule(text):
                moduleLoaded.store(false, ordering: .relaxed)
            default:
                return Array(replies)
            }
        }
        return try await client.run(appendScript, keys: keys, arguments: arguments, before: leaders, then: followers)
    }

    /// On a Redis Cluster, one script cannot touch two devices (two slots): a batch for several
    /// devices is one append per device, all at once, and when any of them fails, the others
    /// are taken back, so the batch still stores all or nothing (Docs/store.md, "Batches on a
    /// Redis Cluster", says what a reader can see meanwhile). A refused device (429) wins over
    /// an unavailable one (503) in the error.
    private func appendAcrossSlots(_ messages: [NewMessage]) async throws(StoreError) -> [StoredMessage] {
        var byDevice: [String: [Int]] = [:]
        var order: [String] = []
        for (index, message) in messages.enumerated() {
            if byDevice[message.clientID] == nil { order.append(message.clientID) }
            byDevice[message.clientID, default: []].append(index)
        }
        let outcomes = await concurrently(order) { [byDevice] device async throws(StoreError) in
            try await self.append(byDevice[device]!.map { messages[$0] })
        }
        var stored: [StoredMessage] = []
        var failure: StoreError?
        for outcome in outcomes {
            switch outcome {
            case .success(let messages): stored += messages
            case .failure(let error): if failure == nil || error.code == .pendingFull && failure?.code != .pendingFull { failure = error }
            }
        }
        if let failure {
            await takeBack(stored)
            throw failure
        }
        var result = [StoredMessage?](repeating: nil, count: messages.count)
        for (device, outcome) in zip(order, outcomes) {
            guard case .success(let own) = outcome else { continue }
            for (index, message) in zip(byDevice[device]!, own) { result[index] = message }
        }
        return result.map { $0! }
    }

    /// Deletes what an append wrote that must not stay (a batch refused on another shard, or
    /// not acknowledged by enough replicas). The sequences stay taken (a gap): a connection
    /// may have read the message meanwhile, and must never see its sequence again on another
    /// one. Best effort: what it cannot delete stays, as a message delivered at least once.
    /// Their status goes with them: they were never accepted. As for an ACK, a message written
    /// in an older generation (another Redis process since, `generation`) is found by its id,
    /// never deleted by its sequence, which a Redis that lost writes may have given to a
    /// message accepted since.
    func takeBack(_ stored: [StoredMessage]) async {
        let generation = generation
        var byDevice: [String: [StoredMessage]] = [:]
        for message in stored { byDevice[message.clientID, default: []].append(message) }
        for (device, messages) in byDevice {
            let stream = keys(device)[1]
            let (current, older) = (messages.filter { $0.generation == generation }, messages.filter { $0.generation != generation })
            var commands: [[RedisArgument]] = []
            if !current.isEmpty { commands.append([.string("XDEL"), .string(stream)] + current.map { .string("\($0.sequence)-0") }) }
            let statusKeys = messages.compactMap { statusKey($0.id, of: device) }
            if !statusKeys.isEmpty { commands.append([.string("DEL")] + statusKeys.map { .string($0) }) }
            if !commands.isEmpty { _ = try? await client.sendAll(commands) }
            if !older.isEmpty { _ = try? await client.run(Self.acknowledgeByIDScript, keys: [stream], arguments: older.map { .string($0.id) }) }
        }
    }

    public func pending(for clientID: String, after sequence: UInt64, limit: Int) async throws(StoreError) -> [StoredMessage] {
        let generation = generation  // before the call, as for an append
        let reply = try await client.run(
            Self.pendingScript, keys: keys(clientID),
            arguments: [.integer(now()), .integer(Int64(sequence)), .integer(Int64(limit)), .integer(expiryEvents == nil ? 0 : 1)]
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
                StoredMessage(clientID: clientID, id: id, sequence: UInt64(sequence), payload: payload, expiresAtMillis: expires, generation: generation)
            )
            position += 4
        }
        return result
    }

    /// The client's `dataGeneration`: it changes when a connection opens to a Redis that may
    /// have lost writes since (a restart from an older snapshot or AOF, a failover to a replica
    /// that lagged), which gives sequences again; not after a network blip to the same server.
    public var generation: UInt64 { client.dataGeneration }

    public func acknowledge(clientID: String, messages sent: [Acknowledgement]) async throws(StoreError) -> Int {
        guard !sent.isEmpty else { return 0 }
        // A sequence read in an older generation (another Redis process since) may now name
        // another message: such an ACK finds its message by id (a script), never deletes by it.
        let generation = generation
        var messages = sent
        for index in messages.indices where messages[index].sequence != nil && messages[index].generation != generation {
            messages[index].sequence = nil
        }
        let stream = keys(clientID)[1]
        if let events {
            return try await acknowledgeWithEvents(clientID: clientID, stream: stream, messages: messages, events: events)
        }
        if let retention = receiptRetentionMillis {
            return try await acknowledgeWithStatus(clientID: clientID, stream: stream, messages: messages, retention: retention)
        }
        var entries: [RedisArgument] = [.string("XDEL"), .string(stream)]
        var unsent: [RedisArgument] = []
        for message in messages {
            if let sequence = message.sequence {
                entries.append(.string("\(sequence)-0"))
            } else {
                unsent.append(.string(message.id))
            }
        }
        var removed: Int64 = 0
        if entries.count > 2 {
            let reply = try await client.send(entries)
            guard let count = reply.int64 else { throw StoreError(.unavailable, "unexpected reply to XDEL: \(reply)") }
            removed += count
        }
        if !unsent.isEmpty {
            let reply = try await client.run(Self.acknowledgeByIDScript, keys: [stream], arguments: unsent)
            guard let count = reply.int64 else { throw StoreError(.unavailable, "unexpected reply to ack: \(reply)") }
            removed += count
        }
        return Int(removed)
    }

    public func pendingCount(for clientID: String) async throws(StoreError) -> Int {
        let reply = try await client.run(Self.pendingCountScript, keys: keys(clientID), arguments: [.integer(now())])
        guard let count = reply.int64 else { throw StoreError(.unavailable, "unexpected reply to pending count: \(reply)") }
        return Int(count)
    }

    // MARK: Message status

    public var keepsReceipts: Bool { receiptRetentionMillis != nil }

    public func messageID(_ base: String, for clientID: String) -> String {
        "\(base).\(Self.tag(of: clientID))"
    }

    /// The hash tag naming `clientID`'s slot.
    private static func tag(of clientID: String) -> String {
        RedisCluster.tag(forSlot: RedisCluster.slot(of: Array(clientID.utf8)))
    }

    /// The status key of message `id` of `clientID`: nil unless the id ends with the device's
    /// tag (an id made by `messageID` for it), so a device's scripts only ever name keys of its
    /// own slot, whatever ids it sends.
    private func statusKey(_ id: String, of clientID: String) -> String? {
        guard let key = statusKey(id), id.hasSuffix(".\(Self.tag(of: clientID))") else { return nil }
        return key
    }

    /// The status key of message `id`, from the tag its id ends with; nil for an id without one.
    private func statusKey(_ id: String) -> String? {
        let utf8 = id.utf8
        guard let dot = utf8.lastIndex(of: UInt8(ascii: ".")) else { return nil }
        let tag = utf8[utf8.index(after: dot)...]
        guard (1...4).contains(tag.count), tag.allSatisfy({ Self.isTagByte($0) }) else { return nil }
        return "\(prefix):{\(Substring(tag))}:r:\(id)"
    }

    private static func isTagByte(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
            || (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
    }

    private func acknowledgeWithStatus(
        clientID: String, stream: String, messages: [Acknowledgement], retention: Int64
    ) async throws(StoreError) -> Int {
        var keys = [stream]
        var sendTimes: [Int64?] = []
        // Per message, for HERALD.ACK and the script alike: its sequence (an entry id: `XDEL`
        // reads 5 as 5-0), or its id to find, then its status key's index and its send time
        // (0: none).
        var sent: [RedisArgument] = []
        var unsent: [RedisArgument] = []
        for message in messages {
            var index: Int64 = 0
            if let key = statusKey(message.id, of: clientID) {
                keys.append(key)
                sendTimes.append(message.unmarkedSentAtMillis)
                index = Int64(keys.count)
            }
            let sentAt: Int64 = index > 0 ? message.unmarkedSentAtMillis ?? 0 : 0
            if let sequence = message.sequence {
                sent += [.integer(Int64(sequence)), .integer(index), .integer(sentAt)]
            } else {
                unsent += [.string(message.id), .integer(index), .integer(sentAt)]
            }
        }
        let now = now()
        if unsent.isEmpty, let removed = try await acknowledgeThroughModule(keys: keys, messages: sent, now: now, retention: retention) {
            return removed
        }
        guard unsent.isEmpty else {
            // ACKs of ids this connection did not send (rare) need the queue searched: a script.
            let arguments: [RedisArgument] = [.integer(now), .integer(retention), .integer(Int64(sent.count / 3))] + sent + unsent
            let reply = try await client.run(Self.acknowledgeWithStatusScript, keys: keys, arguments: arguments)
            guard let count = reply.int64 else { throw StoreError(.unavailable, "unexpected reply to ack: \(reply)") }
            return Int(count)
        }
        // The common ACK: plain commands in one write, no script. The status first, then the
        // delete: should the write be cut between them, the status says acked (the device did
        // acknowledge) and the message is delivered again, never the other way round. An ACK
        // whose status was forgotten (or taken back) makes only a key without `c`, `q`, `a`, `e`,
        // which reads as no status and goes after the retention. A send this connection has not
        // recorded yet (it waits for the ACK: `Acknowledgement.sentAtMillis`) is recorded here.
        var commands = zip(keys.dropFirst(), sendTimes).flatMap { key, sentAt in
            Self.ackStatusCommands(key: key, sentAt: sentAt, now: now, retention: retention)
        }
        commands.append([.string("XDEL"), .string(stream)] + stride(from: 0, to: sent.count, by: 3).map { sent[$0] })
        let replies = try await client.sendAll(commands)
        guard let count = replies.last?.int64 else { throw StoreError(.unavailable, "unexpected reply to XDEL: \(replies.last ?? .null)") }
        return Int(count)
    }

    /// The ACK with webhook events: each removed message's `message.acked` event is queued
    /// before its delete, so no crash can lose it (one may make it twice, with the same event
    /// id). On a single Redis all of it is one `MULTI`, in one write; on a cluster the events
    /// (on their lanes' masters) are kept first, then the status and the delete are written.
    private func acknowledgeWithEvents(
        clientID: String, stream: String, messages: [Acknowledgement], events: RedisWebhookQueue
    ) async throws(StoreError) -> Int {
        // Each with its sequence: the ones this connection sent, then the others found in the queue.
        var found = messages.filter { $0.sequence != nil }
        if found.count < messages.count {
            // Ids this connection did not send (rare): find them in the queue, so that only a
            // message that is there makes an event.
            var wanted: [String: Acknowledgement] = [:]
            for message in messages where message.sequence == nil { wanted[message.id] = message }
            found += try await pending(for: clientID, after: 0, limit: maxPending).compactMap { stored in
                // Found by id, with the send time the connection held for it.
                wanted[stored.id].map { Acknowledgement(id: stored.id, sequence: stored.sequence, sentAtMillis: $0.sentAtMillis, sendMarked: $0.sendMarked, generation: stored.generation) }
            }
        }
        guard !found.isEmpty else { return 0 }
        let now = now()
        let queued = found.compactMap { message in
            events.write(
                .messageAcked, clientID: clientID, message: message.id,
                data: [("message_id", .string(message.id)), ("sent_at", message.sentAtMillis.map { .integer($0) } ?? .null), ("acked_at", .integer(now))]
            )
        }
        let eventCommands = queued.flatMap(\.commands)
        var writes: [[RedisArgument]] = []
        if let retention = receiptRetentionMillis {
            for message in found {
                guard let key = statusKey(message.id, of: clientID) else { continue }
                writes += Self.ackStatusCommands(key: key, sentAt: message.unmarkedSentAtMillis, now: now, retention: retention)
            }
        }
        writes.append([.string("XDEL"), .string(stream)] + found.compactMap { $0.sequence.map { .string("\($0)-0") } })
        let removed: RESPValue
        if client.configuration.isCluster {
            let kept = try await client.sendAll(eventCommands)
            if let failure = kept.first(where: { if case .error = $0 { true } else { false } }) {
                throw StoreError(.unavailable, "queueing a webhook event failed: \(failure)")
            }
            events.queued(queued, replies: kept)
            removed = try await client.sendAll(writes).last ?? .null
        } else {
            let replies = try await client.sendAll([[.string("MULTI")]] + eventCommands + writes + [[.string("EXEC")]])
            guard case .array(let results) = replies.last, results.count == eventCommands.count + writes.count else {
                throw StoreError(.unavailable, "the ACK's transaction failed: \(replies.last ?? .null)")
            }
            events.queued(queued, replies: results.prefix(eventCommands.count))
            removed = results.last ?? .null
        }
        guard let count = removed.int64 else { throw StoreError(.unavailable, "unexpected reply to XDEL: \(removed)") }
        return Int(count)
    }

    /// The common ACK with status as one `HERALD.ACK` where Redis has it (the same writes as
    /// the plain commands below, in one command: Docs/store.md, "The Redis module"); nil where
    /// it has not, or leaves the call to the plain commands (-FALLBACK: a key of another type).
    /// A Redis that refuses the command (a module without it, of another interface, an ACL)
    /// sends this store to the plain commands until the client reconnects.
    private func acknowledgeThroughModule(keys: [String], messages: [RedisArgument], now: Int64, retention: Int64) async throws(StoreError) -> Int? {
        try await askForModule()
        guard moduleAcknowledges.load(ordering: .relaxed) else { return nil }
        let command: [RedisArgument] =
            [.string("HERALD.ACK"), .integer(Self.moduleInterface), .integer(now), .integer(retention), .integer(Int64(keys.count))]
            + keys.map { .string($0) } + messages
        switch try await client.send(command) {
        case .integer(let removed):
            return Int(removed)
        case .error(let text) where text.hasPrefix("FALLBACK"):
            return nil
        case .error(let text) where Self.refusesModule(text):
            moduleAcknowledges.store(false, ordering: .relaxed)
            return nil
        case let reply:
            throw StoreError(.unavailable, "unexpected reply to HERALD.ACK: \(reply)")
        }
    }

    /// An acknowledged message's status: its send first when the ACK brings it (not recorded
    /// yet), then the ACK; first write wins (`HSETNX`), and the status lives the retention on.
    private static func ackStatusCommands(key: String, sentAt: Int64?, now: Int64, retention: Int64) -> [[RedisArgument]] {
        var commands: [[RedisArgument]] = []
        if let sentAt { commands.append([.string("HSETNX"), .string(key), .string("s"), .integer(sentAt)]) }
        commands += [
            [.string("HSETNX"), .string(key), .string("k"), .integer(now)],
            [.string("PEXPIRE"), .string(key), .integer(retention)],
        ]
        return commands
    }

    public func markSent(clientID: String, sends: [Acknowledgement]) async throws(StoreError) {
        let commands = markSentCommands(clientID: clientID, sends: sends)
        guard !commands.isEmpty else { return }
        let replies = try await client.sendAll(commands)
        if case .error(let text)? = replies.first { throw StoreError(.unavailable, "recording a send failed: \(text)") }
    }

    public func markSentDetached(clientID: String, sends: [Acknowledgement]) {
        let commands = markSentCommands(clientID: clientID, sends: sends)
        if !commands.isEmpty { client.sendDetached(commands) }
    }

    /// Plain commands, no script: the first send's time only (an ACK that came first already
    /// set `k`, which reads as sent too). A status gone meanwhile (taken back) is made again as
    /// a key with `s` alone, which reads as no status and expires (NX: an existing status's
    /// TTL is untouched).
    private func markSentCommands(clientID: String, sends: [Acknowledgement]) -> [[RedisArgument]] {
        guard let retention = receiptRetentionMillis else { return [] }
        let now = now()
        return sends.flatMap { send -> [[RedisArgument]] in
            guard let key = statusKey(send.id, of: clientID) else { return [] }
            return [
                [.string("HSETNX"), .string(key), .string("s"), .integer(send.sentAtMillis ?? now)],
                [.string("PEXPIRE"), .string(key), .integer(retention + Self.expirySlackMillis), .string("NX")],
            ]
        }
    }

    public func receipt(of id: String) async throws(StoreError) -> MessageReceipt? {
        guard receiptRetentionMillis != nil, let key = statusKey(id) else { return nil }
        return try await receipts(ofKeys: [(id, key)]).first ?? nil
    }

    public func pendingReceipts(for clientID: String, after sequence: UInt64, limit: Int) async throws(StoreError) -> [MessageReceipt] {
        guard receiptRetentionMillis != nil else { return [] }
        let pending = try await pending(for: clientID, after: sequence, limit: limit)
        let keyed = pending.compactMap { message in statusKey(message.id, of: clientID).map { (message.id, $0) } }
        return try await receipts(ofKeys: keyed).compactMap { $0 }
    }

    /// The status hashes of `keyed` (one slot, or any on a single Redis), read in one write.
    private func receipts(ofKeys keyed: [(id: String, key: String)]) async throws(StoreError) -> [MessageReceipt?] {
        guard !keyed.isEmpty else { return [] }
        let replies = try await client.sendAll(keyed.map { [.string("HGETALL"), .string($0.key)] })
        let now = now()
        return try zip(keyed, replies).map { (entry, reply) throws(StoreError) -> MessageReceipt? in
            guard case .array(let pairs) = reply else { throw StoreError(.unavailable, "unexpected reply to HGETALL: \(reply)") }
            var fields: [String: String] = [:]
            var position = 0
            while position + 1 < pairs.count {
                if let name = pairs[position].string, let value = pairs[position + 1].string { fields[name] = value }
                position += 2
            }
            guard let clientID = fields["c"], let sequence = fields["q"].flatMap(UInt64.init),
                let accepted = fields["a"].flatMap(Int64.init), let expires = fields["e"].flatMap(Int64.init)
            else { return nil }
            let acked = fields["k"].flatMap(Int64.init)
            // An ACK recorded before its send (the send's write came later) stands for both.
            let sent = fields["s"].flatMap(Int64.init) ?? acked
            let state: MessageState = acked != nil ? .acked : sent != nil ? .sent : .stored
            return MessageReceipt(
                id: entry.id, clientID: clientID, sequence: sequence, state: state, acceptedAtMillis: accepted,
                sentAtMillis: sent, ackedAtMillis: acked, expiresAtMillis: expires
            ).at(now)
        }
    }

    public func recordBroadcast(id: String, node: String, sent: Int, acceptedAtMillis: Int64?) async throws(StoreError) {
        guard let retention = receiptRetentionMillis else { return }
        let key = "\(prefix):{\(id)}:b"
        var write: [RedisArgument] = [.string("HSET"), .string(key), .string("n:\(node)"), .integer(Int64(sent))]
        if let acceptedAtMillis { write += [.string("a"), .integer(acceptedAtMillis)] }
        let replies = try await client.sendAll([write, [.string("PEXPIRE"), .string(key), .integer(retention)]])
        if case .error(let text) = replies[0] { throw StoreError(.unavailable, "recording a broadcast failed: \(text)") }
    }

    public func broadcastReceipt(of id: String) async throws(StoreError) -> BroadcastReceipt? {
        guard receiptRetentionMillis != nil else { return nil }
        let reply = try await client.send([.string("HGETALL"), .string("\(prefix):{\(id)}:b")])
        guard case .array(let pairs) = reply else { throw StoreError(.unavailable, "unexpected reply to HGETALL: \(reply)") }
        var accepted: Int64?
        var sent: [String: Int] = [:]
        var position = 0
        while position + 1 < pairs.count {
            if let name = pairs[position].string, let value = pairs[position + 1].int64 ?? pairs[position + 1].string.flatMap(Int64.init) {
                if name == "a" { accepted = value } else if name.hasPrefix("n:") { sent[String(name.dropFirst(2))] = Int(value) }
            }
            position += 2
        }
        // Until the accepting node's own write lands, only other nodes' counts may be there.
        guard let accepted else { return nil }
        return BroadcastReceipt(id: id, acceptedAtMillis: accepted, sent: sent)
    }

    /// Without expiries watched, nothing to sweep: Redis deletes a device's expired queue by
    /// itself (key TTLs), and reads and full queues delete the expired entries they meet. With
    /// them watched, sweeps the expiry index of each lane this node holds: for every device
    /// due, the `message.expired` events of its expired messages are queued first, then the
    /// messages deleted, then its index entry moved to its next expiry (or, found empty twice
    /// with no append between, removed). Returns how many messages expired.
    public func removeExpired() async throws(StoreError) -> Int {
        guard let events = expiryEvents else { return 0 }
        var expired = 0
        for lane in events.heldLanes {
            // A bounded amount per sweep; what is left is due at the next.
            for _ in 0..<20 {
                let now = now()
                let due = try await client.send([
                    .string("ZRANGE"), .string(events.expiringKey(lane)), .string("-inf"), .integer(now), .string("BYSCORE"), .string("LIMIT"),
                    .string("0"), .string("100"),
                ])
                guard case .array(let members) = due, !members.isEmpty else { break }
                let devices = members.compactMap(\.string)
                let tokens = try await client.send([.string("HMGET"), .string(events.touchedKey(lane))] + devices.map { .string($0) })
                guard case .array(let seen) = tokens, seen.count == devices.count else { throw StoreError(.unavailable, "unexpected reply to HMGET: \(tokens)") }
                let counts = await concurrently(Array(zip(devices, seen.map { $0.string ?? "" }))) { device, token async throws(StoreError) -> Int in
                    try await self.sweep(device, token: token, lane: lane, events: events, now: now)
                }
                for count in counts { expired += (try? count.get()) ?? 0 }
                if devices.count < 100 { break }
            }
        }
        return expired
    }

    /// Sweeps one device of lane `lane` (see `removeExpired`).
    private func sweep(_ clientID: String, token: String, lane: Int, events: RedisWebhookQueue, now: Int64) async throws(StoreError) -> Int {
        let stream = keys(clientID)[1]
        let reply = try await client.run(Self.expiredScript, keys: [stream], arguments: [.integer(now), .integer(500)])
        guard case .array(let fields) = reply, let earliest = fields.first?.int64, fields.count % 3 == 1 else {
            throw StoreError(.unavailable, "unexpected reply to the expiry scan: \(reply)")
        }
        var entries: [RedisArgument] = []
        var queued: [RedisWebhookQueue.EventWrite] = []
        for position in stride(from: 1, to: fields.count, by: 3) {
            guard let entry = fields[position].string, let id = fields[position + 1].string, let expires = fields[position + 2].int64 else { continue }
            entries.append(.string(entry))
            if let write = events.write(
                .messageExpired, clientID: clientID, message: id, data: [("message_id", .string(id)), ("expires_at", .integer(expires))]
            ) {
                queued.append(write)
            }
        }
        if !entries.isEmpty {
            // The events first: a crash before the delete finds the entries again next time,
            // and writes the same events (same ids) again.
            let written = try await client.sendAll(queued.flatMap(\.commands))
            if let failure = written.first(where: { if case .error = $0 { true } else { false } }) {
                throw StoreError(.unavailable, "queueing message.expired failed: \(failure)")
            }
            events.queued(queued, replies: written)
            _ = try await client.send([.string("XDEL"), .string(stream)] + entries)
        }
        let settle = now + Self.expirySlackMillis + client.configuration.commandTimeout.nanoseconds / 1_000_000
        _ = try await client.run(
            RedisWebhookQueue.settleScript, keys: [events.expiringKey(lane), events.touchedKey(lane)],
            arguments: [.string(clientID), .string(token), .integer(earliest), .integer(settle)]
        )
        return entries.count
    }

    /// The keys in Redis and the memory it uses (`DBSIZE`, `INFO memory`); nil on a Redis
    /// Cluster, where each master has its own (read them there).
    public func footprint() async throws(StoreError) -> (keys: Int, usedMemoryBytes: Int)? {
        guard !client.configuration.isCluster else { return nil }
        let replies = try await client.sendAll([[.string("DBSIZE")], [.string("INFO"), .string("memory")]])
        guard let keys = replies[0].int64, let info = replies[1].string,
            let line = info.split(whereSeparator: \.isNewline).first(where: { $0.hasPrefix("used_memory:") }),
            let bytes = Int(line.dropFirst("used_memory:".count))
        else { throw StoreError(.unavailable, "unexpected reply to DBSIZE / INFO memory") }
        return (Int(keys), bytes)
    }

    public func ping() async throws(StoreError) {
        let reply = try await client.send([.string("PING")])
        guard case .simpleString("PONG") = reply else { throw StoreError(.unavailable, "PING answered \(reply)") }
    }

    /// Keys live this long past their last message's expiry (clock skew between nodes and Redis).
    static let expirySlackMillis: Int64 = 60_000

    /// The same with expiries watched: the sweep may be late by the time a dead node's lanes
    /// take to move, or a receiver-side outage of Redis; an hour leaves room.
    static let watchedExpirySlackMillis: Int64 = 3_600_000
}
