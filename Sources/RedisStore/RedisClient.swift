import Actors
import Crypto
import Logging
import NIOCore
import NIOPosix
import PushProtocol
import ServiceLifecycle
import Supervision
import Synchronization

/// A Lua script run with EVALSHA, falling back to EVAL when Redis does not know it (after a
/// restart or a SCRIPT FLUSH), which also loads it again.
public struct RedisScript: Sendable {
    /// The Lua source.
    public let source: String
    /// Its SHA-1 in hex: the name Redis caches it under (`EVALSHA`). Computed once, here, so
    /// that a call never hashes the source (kilobytes) into a table, nor asks Redis for it.
    public let sha: String

    /// Creates a script.
    public init(_ source: String) {
        self.source = source
        let digits = Array("0123456789abcdef".utf8)
        let digest = Insecure.SHA1.hash(data: Array(source.utf8))
        sha = String(decoding: digest.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 0x0f)]] }, as: UTF8.self)
    }
}

/// Redis access for a node: one connection per event loop, kept up by `run()`.
///
/// Every command runs on the event loop of its connection; a caller on an event loop uses
/// that loop's connection, so a `Connection` actor reaches Redis with no thread hop.
/// Commands issued in one loop tick are written together (pipelining for free). While a
/// connection is down its commands fail at once with `.unavailable`; `run()` reconnects with
/// jittered exponential backoff and re-authenticates. Nothing here blocks a thread. With a
/// `redis+cluster://` configuration, commands are routed by slot instead (RedisClient+Cluster.swift).
public final class RedisClient: Service, HealthReporting {
    private final class Slot: Sendable {
        let loop: any EventLoop
        let channel = Mutex<(any Channel)?>(nil)
        /// The identity (`serverIdentity`) of the server this slot's last connection reached.
        let identity = Mutex<String?>(nil)
        init(loop: any EventLoop) { self.loop = loop }
    }

    public let configuration: RedisConfiguration
    private let group: any EventLoopGroup
    let logger: Logger
    private let slots: [Slot]
    /// The SHAs of the scripts Redis has run for this client (so has cached).
    private let loadedScripts = Mutex<Set<String>>([])
    /// The group's event loops, in a fixed order.
    let loops: [any EventLoop]
    /// Set in cluster mode.
    private let cluster: RedisClusterState?
    private let next = Atomic<Int>(0)
    private let connectionsOpened = Atomic<UInt64>(0)
    private let serversChanged = Atomic<UInt64>(0)
    /// With Sentinel: the master last connected to, and the sentinel that last answered.
    private let currentMaster = Mutex<RedisConfiguration.Endpoint?>(nil)
    private let preferredSentinel = Mutex(0)

    /// Creates a client; connections open when `run()` starts.
    public init(configuration: RedisConfiguration, group: any EventLoopGroup, logger: Logger) {
        self.configuration = configuration
        self.group = group
        self.logger = logger
        slots = group.makeIterator().map { Slot(loop: $0) }
        loops = slots.map(\.loop)
        cluster = configuration.isCluster ? RedisClusterState() : nil
    }

    /// Whether every connection is up (in cluster mode: every slot has a master, and every
    /// master a connection on every loop).
    public var isConnected: Bool {
        if let cluster { return clusterIsConnected(state: cluster) }
        return slots.allSatisfy { $0.channel.withLock { $0 } != nil }
    }

    /// How many connections this client has opened: it changes whenever one is established or
    /// re-established (a restart of Redis, a failover, on a cluster a master's first connection
    /// on a loop), after which what Redis offers (a module, say) may have changed.
    public var connectionGeneration: UInt64 { connectionsOpened.load(ordering: .acquiring) }

    /// Changes whenever a connection opens to a server that may not hold what its place's last
    /// connection saw written (a loop's connection; on a cluster, a master's on a loop): another
    /// process (a restart, a failover: INFO's `run_id`), the same process after a change of role
    /// (`master_replid`), one that would not say (INFO refused), or a place's first connection.
    /// A reconnection to the same server after a network blip keeps it: that server lost nothing.
    public var dataGeneration: UInt64 { serversChanged.load(ordering: .acquiring) }

    /// Counts a connection opened to the server `identity` (nil: unknown) where its place's last
    /// connection reached `previous`. Called before the connection carries a command, so a
    /// caller that read a generation before it existed never sees its own generation on it.
    func connectionOpened(reaching identity: String?, where previous: String?) {
        if identity == nil || identity != previous { serversChanged.add(1, ordering: .releasing) }
        connectionsOpened.add(1, ordering: .releasing)
    }

    /// The server's `run_id` and `master_replid` (INFO), which tell a server that may have lost
    /// writes since it was last reached from one reached again after a blip; nil if INFO is
    /// refused (an ACL, a renamed command) or lacks them.
    func serverIdentity(_ channel: any Channel) async -> String? {
        guard let info = try? await command(channel, [.string("INFO")]).string else { return nil }
        var runID: Substring?
        var replicationID: Substring?
        for line in info.split(whereSeparator: \.isNewline) {
            if line.hasPrefix("run_id:") { runID = line.dropFirst("run_id:".count) }
            if line.hasPrefix("master_replid:") { replicationID = line.dropFirst("master_replid:".count) }
        }
        guard let runID, let replicationID else { return nil }
        return "\(runID)/\(replicationID)"
    }

    // MARK: Commands

    /// Sends one command and returns its reply (an `.error` reply is returned, not thrown).
    /// Throws `.unavailable` when the connection is down or Redis does not answer in time.
    public func send(_ arguments: [RedisArgument]) async throws(StoreError) -> RESPValue {
        if let cluster { return try await clusterExecute([arguments], slot: RedisCluster.slot(of: arguments), state: cluster)[0] }
        let slot = slotForCaller()
        let promise = slot.loop.makePromise(of: RESPValue.self)
        Self.onLoop(of: slot) { Self.send(arguments, on: slot, promise: promise) }
        do {
            return try await promise.futureResult.get()
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError(.unavailable, "\(error)")
        }
    }

    /// Sends several commands in one write and returns their replies in order.
    public func sendAll(_ commands: [[RedisArgument]]) async throws(StoreError) -> [RESPValue] {
        guard !commands.isEmpty else { return [] }
        if commands.count == 1 { return [try await send(commands[0])] }
        if let cluster { return try await clusterSendAll(commands, state: cluster) }
        guard let channel = slotForCaller().channel.withLock({ $0 }) else { throw StoreError(.unavailable, "redis is not connected") }
        return try await Self.send(commands, on: channel)
    }

    /// Runs `script`, by its SHA when Redis has it.
    public func run(_ script: RedisScript, keys: [String], arguments: [RedisArgument]) async throws(StoreError) -> RESPValue {
        try await run(script, keys: keys, arguments: arguments, then: [])[0]
    }

    /// Runs `script`, by its SHA when Redis has it, after `leaders` and before `followers`, all
    /// on the same connection in the same write (e.g. `WAIT` after, which then covers the
    /// script's writes). Returns the script's reply followed by the followers' replies (the
    /// leaders' are dropped: what they write must not decide the script's outcome). Leaders must
    /// bear being run twice (they are sent again with the script when Redis did not know it).
    public func run(
        _ script: RedisScript, keys: [String], arguments: [RedisArgument], before leaders: [[RedisArgument]] = [],
        then followers: [[RedisArgument]]
    ) async throws(StoreError) -> [RESPValue] {
        let tail = [RedisArgument.integer(Int64(keys.count))] + keys.map { .string($0) } + arguments
        // By its SHA once Redis has run it; the first time by its source, so that a follower
        // (a `WAIT` that may block) never runs behind a script that did not run.
        if loadedScripts.withLock({ $0.contains(script.sha) }) {
            let replies = try await sendAll(leaders + [[.string("EVALSHA"), .string(script.sha)] + tail] + followers).dropFirst(leaders.count)
            guard case .error(let message) = replies.first, message.hasPrefix("NOSCRIPT") else { return Array(replies) }
            // Forgotten (a restarted Redis, a failover, SCRIPT FLUSH): by its source again.
        }
        let replies = Array(try await sendAll(leaders + [[.string("EVAL"), .string(script.source)] + tail] + followers).dropFirst(leaders.count))
        // EVAL cached it under its SHA, unless it did not compile.
        if case .error(let message) = replies[0], message.contains("compiling") { return replies }
        _ = loadedScripts.withLock { $0.insert(script.sha) }
        return replies
    }

    /// In cluster mode: the commands grouped by slot (a command without a key, such as a
    /// script's `WAIT`, goes with the one before it), each group to its master in one write,
    /// the groups at the same time; the replies in the order of `commands`.
    private func clusterSendAll(_ commands: [[RedisArgument]], state: RedisClusterState) async throws(StoreError) -> [RESPValue] {
        var groups: [(slot: Int?, indices: [Int])] = []
        var groupOfSlot: [Int: Int] = [:]
        for (index, command) in commands.enumerated() {
            if let slot = RedisCluster.slot(of: command) {
                if let group = groupOfSlot[slot] {
                    groups[group].indices.append(index)
                } else {
                    groupOfSlot[slot] = groups.count
                    groups.append((slot, [index]))
                }
            } else if index > 0, let previous = RedisCluster.slot(of: commands[index - 1]), let group = groupOfSlot[previous] {
                groups[group].indices.append(index)
            } else {
                groups.append((nil, [index]))
            }
        }
        let results = await concurrently(groups) { group async throws(StoreError) in
            try await self.clusterExecute(group.indices.map { commands[$0] }, slot: group.slot, state: state)
        }
        var replies = [RESPValue](repeating: .null, count: commands.count)
        for (group, result) in zip(groups, results) {
            for (index, reply) in zip(group.indices, try result.get()) { replies[index] = reply }
        }
        return replies
    }

    /// The index of the caller's event loop, or the next in turn for a caller off the loops.
    func callerLoopIndex() -> Int {
        if let current = MultiThreadedEventLoopGroup.currentEventLoop, let index = loops.firstIndex(where: { $0 === current }) {
            return index
        }
        return next.add(1, ordering: .relaxed).newValue % loops.count
    }

    /// The caller's own loop's connection when it is up; otherwise (the caller is not on a
    /// loop, or its loop's connection is still opening or reconnecting) the next one that is.
    /// Every caller awaits its reply before its next command, so moving to another connection
    /// never reorders one caller's commands. With none up, the caller's own, which fails.
    private func slotForCaller() -> Slot {
        let start = callerLoopIndex()
        for offset in slots.indices {
            let slot = slots[(start + offset) % slots.count]
            if slot.channel.withLock({ $0 != nil }) { return slot }
        }
        return slots[start]
    }

    /// Sends `commands` (adjacent, in one write) without a task waiting for them: `replied`
    /// gets their replies, or nil when they could not be sent or answered; without `replied`
    /// they are read and dropped (for writes whose loss leaves nothing wrong for long, such as
    /// a status's send time). No task on a single Redis (the caller's loop's connection, as
    /// `send`); on a cluster, a task.
    public func sendDetached(_ commands: [[RedisArgument]], replied: (@Sendable ([RESPValue]?) -> Void)? = nil) {
        guard cluster == nil else {
            Task {
                // Not `replied?(try? await ...)`: optional chaining would skip the send itself.
                let replies = try? await sendAll(commands)
                replied?(replies)
            }
            return
        }
        let slot = slotForCaller()
        Self.onLoop(of: slot) {
            guard let handler = Self.handler(of: slot) else {
                replied?(nil)
                return
            }
            guard let replied else {
                for command in commands { handler.send(command, promise: nil) }
                return
            }
            let promise = slot.loop.makePromise(of: [RESPValue].self)
            promise.futureResult.whenComplete { replied(try? $0.get()) }
            handler.send(commands, promise: promise)
        }
    }

    private static func send(_ arguments: [RedisArgument], on slot: Slot, promise: EventLoopPromise<RESPValue>) {
        guard let handler = handler(of: slot) else { return promise.fail(StoreError(.unavailable, "redis is not connected")) }
        handler.send(arguments, promise: promise)
    }

    /// The handler of `slot`'s connection, nil while it is down; on its loop only.
    private static func handler(of slot: Slot) -> RedisChannelHandler? {
        guard let channel = slot.channel.withLock({ $0 }) else { return nil }
        return try? channel.pipeline.syncOperations.handler(type: RedisChannelHandler.self)
    }

    /// Runs `body` on `slot`'s loop: at once when the caller is there (no hop), else as a job
    /// of that loop.
    private static func onLoop(of slot: Slot, _ body: @escaping @Sendable () -> Void) {
        if slot.loop.inEventLoop { body() } else { slot.loop.execute(body) }
    }

    // MARK: Service

    /// Keeps one connection per event loop open until graceful shutdown or cancellation.
    public func run() async throws {
        if let cluster {
            await cancelWhenGracefulShutdown { await self.maintainCluster(state: cluster) }
            return
        }
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                for slot in self.slots {
                    group.addTask { await self.maintain(slot) }
                }
            }
        }
        for slot in slots { try? await slot.channel.withLock({ $0 })?.close() }
    }

    public func healthReport() async -> HealthReport {
        // A Redis outage is a declared degraded state, not a failure of the tree (Docs/store.md).
        HealthReport(
            name: "redis", healthy: true,
            state: isConnected ? (cluster == nil ? "connected" : "connected (cluster)") : "reconnecting (degraded)"
        )
    }

    private func maintain(_ slot: Slot) async {
        var attempt = 0
        while !Task.isCancelled {
            do {
                let channel = try await connect(on: slot.loop)
                let identity = await serverIdentity(channel)
                connectionOpened(reaching: identity, where: slot.identity.withLock { last in defer { last = identity }; return last })
                slot.channel.withLock { $0 = channel }
                if attempt > 0 {
                    let endpoint = currentMaster.withLock { $0 }.map { "\($0)" }
                        ?? configuration.socketPath ?? "\(RedisConfiguration.Endpoint(host: configuration.host, port: configuration.port))"
                    logger.notice("redis connection restored", metadata: ["redis": "\(endpoint)"])
                }
                attempt = 0
                try? await withTaskCancellationHandler {
                    try await channel.closeFuture.get()
                } onCancel: {
                    channel.close(promise: nil)
                }
                slot.channel.withLock { $0 = nil }
                if !Task.isCancelled { logger.warning("redis connection lost, reconnecting") }
            } catch {
                if attempt == 0 || attempt % 20 == 0 {
                    logger.warning("cannot connect to redis", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
                }
            }
            attempt += 1
            // Up to 50 ms * 2^attempt, at most 2 s: quick after a blip, gentle in an outage.
            try? await Task.sleep(for: Backoff.fullJitter(attempt: attempt, initial: .milliseconds(50), max: .seconds(2)))
        }
    }

    private func connect(on loop: any EventLoop) async throws -> any Channel {
        if let path = configuration.socketPath { return try await open(socket: path, on: loop) }
        guard let masterName = configuration.masterName else {
            return try await open(configuration.host, configuration.port, on: loop, authenticate: true)
        }
        let master = try await resolveMaster(named: masterName, on: loop)
        let channel = try await open(master.host, master.port, on: loop, authenticate: true)
        // A sentinel may still name a master that has just been demoted: ask the server itself.
        let role = try? await command(channel, [.string("ROLE")])
        guard case .array(let fields)? = role, fields.first?.string == "master" else {
            try? await channel.close()
            throw StoreError(.unavailable, "\(master) is not a master (ROLE \(role.map { "\($0)" } ?? "no answer"))")
        }
        let previous = currentMaster.withLock { current in
            defer { current = master }
            return current
        }
        if previous != master {
            logger.notice("redis master found through sentinel", metadata: ["master": "\(master)", "name": "\(masterName)"])
        }
        return channel
    }

    /// Asks the sentinels, in turn (the last one that answered first), where the master is.
    private func resolveMaster(named name: String, on loop: any EventLoop) async throws -> RedisConfiguration.Endpoint {
        let sentinels = configuration.sentinels
        let first = preferredSentinel.withLock { $0 }
        var lastError: any Error = StoreError(.unavailable, "no sentinel configured")
        for offset in sentinels.indices {
            let index = (first + offset) % sentinels.count
            let sentinel = sentinels[index]
            do {
                let channel = try await open(sentinel.host, sentinel.port, on: loop, authenticate: false)
                defer { channel.close(promise: nil) }
                let reply = try await command(channel, [.string("SENTINEL"), .string("get-master-addr-by-name"), .string(name)])
                guard case .array(let fields) = reply, fields.count == 2, let host = fields[0].string,
                    let port = fields[1].string.flatMap({ Int($0) })
                else { throw StoreError(.unavailable, "sentinel \(sentinel) does not know master \(name): \(reply)") }
                preferredSentinel.withLock { $0 = index }
                return RedisConfiguration.Endpoint(host: host, port: port)
            } catch {
                lastError = error
            }
        }
        throw lastError
    }

    /// Opens a connection to `host`:`port` (with `authenticate`, then `AUTH` and `SELECT` as
    /// configured).
    func open(_ host: String, _ port: Int, on loop: any EventLoop, authenticate: Bool) async throws -> any Channel {
        let channel = try await bootstrap(on: loop)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .connect(host: host, port: port)
            .get()
        return authenticate ? try await authenticated(channel) : channel
    }

    /// Opens a connection to the Redis on this host at the socket `path` (`unix://`), then
    /// `AUTH` and `SELECT` as configured.
    private func open(socket path: String, on loop: any EventLoop) async throws -> any Channel {
        try await authenticated(try await bootstrap(on: loop).connect(unixDomainSocketPath: path).get())
    }

    private func bootstrap(on loop: any EventLoop) -> ClientBootstrap {
        let commandTimeout = configuration.commandTimeout
        return ClientBootstrap(group: loop)
            .connectTimeout(configuration.connectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(RedisChannelHandler(commandTimeout: commandTimeout))
                }
            }
    }

    private func authenticated(_ channel: any Channel) async throws -> any Channel {
        do {
            if let password = configuration.password {
                try await expectOK(channel, [.string("AUTH"), .string(password)], "AUTH")
            }
            if configuration.database != 0, !configuration.isCluster {
                try await expectOK(channel, [.string("SELECT"), .integer(Int64(configuration.database))], "SELECT")
            }
            return channel
        } catch {
            try? await channel.close()
            throw error
        }
    }

    private func expectOK(_ channel: any Channel, _ arguments: [RedisArgument], _ what: String) async throws {
        let reply = try await command(channel, arguments)
        guard case .simpleString("OK") = reply else { throw StoreError(.unavailable, "\(what) failed: \(reply)") }
    }

    /// One command on a connection that is not (yet) in a slot.
    func command(_ channel: any Channel, _ arguments: [RedisArgument]) async throws -> RESPValue {
        let promise = channel.eventLoop.makePromise(of: RESPValue.self)
        channel.eventLoop.execute {
            guard let handler = try? channel.pipeline.syncOperations.handler(type: RedisChannelHandler.self) else {
                return promise.fail(StoreError(.unavailable, "redis is not connected"))
            }
            handler.send(arguments, promise: promise)
        }
        return try await promise.futureResult.get()
    }
}
