import Actors
import NIOCore
import NIOPosix
import Synchronization

/// Redis Cluster mode of `RedisClient` (`redis+cluster://`, Docs/store.md "Redis Cluster").
///
/// The slot map comes from `CLUSTER SLOTS`, asked of a known master or a seed, at start, every
/// few seconds, and at once after a redirect or a connection failure (one refresh at a time).
/// Each master gets one connection per event loop, opened on first use (and for every master
/// after each refresh), so a caller on a loop reaches any master with no thread hop. A command
/// goes to the master of its key's slot; a group (a script and its `WAIT`) goes to one master
/// in one write. `MOVED` updates the map and resends; `ASK` resends once after `ASKING`;
/// `TRYAGAIN` and `CLUSTERDOWN` resend after a short pause; a master that cannot be reached
/// is looked up again. All of it within the command timeout, after which the caller gets
/// `.unavailable` (a 503). A command that was written and whose connection then failed is
/// never resent: it may have run, and the caller decides (as on a single Redis).
final class RedisClusterState: Sendable {
    enum Link: Sendable {
        case opening(EventLoopFuture<any Channel>)
        case open(any Channel)

        var future: EventLoopFuture<any Channel> {
            switch self {
            case .opening(let future): future
            case .open(let channel): channel.eventLoop.makeSucceededFuture(channel)
            }
        }
    }

    let map = Mutex(RedisCluster.SlotMap())
    /// Per master, per event loop (the index into the client's loops), its connection.
    let links = Mutex<[RedisConfiguration.Endpoint: [Int: Link]]>([:])
    /// Per master, per event loop, the identity of the server its last link reached
    /// (`RedisClient.dataGeneration`).
    let identities = Mutex<[RedisConfiguration.Endpoint: [Int: String]]>([:])
    /// The refresh under way, which later askers wait for instead of starting their own.
    let refreshing = Mutex<Task<Void, Never>?>(nil)
    /// When the last refresh ended (to space out the ones redirects ask for).
    let lastRefresh = Mutex<ContinuousClock.Instant?>(nil)
}

extension RedisClient {
    /// Sends `group` to the master of `slot` (any master when nil) in one write, following
    /// redirects; returns the replies of `group`.
    func clusterExecute(_ group: [[RedisArgument]], slot: Int?, state: RedisClusterState) async throws(StoreError) -> [RESPValue] {
        let deadline = ContinuousClock.now + .nanoseconds(configuration.commandTimeout.nanoseconds)
        let loop = callerLoopIndex()
        var asking: RedisConfiguration.Endpoint?
        var attempt = 0
        while true {
            attempt += 1
            var endpoint = asking ?? master(of: slot, state: state)
            if endpoint == nil {
                await refreshTopology(state: state)
                endpoint = master(of: slot, state: state)
            }
            guard let endpoint else {
                throw StoreError(.unavailable, "no redis cluster master serves slot \(slot.map(String.init) ?? "any")")
            }
            let channel: any Channel
            do {
                channel = try await link(to: endpoint, loop: loop, state: state).get()
            } catch {
                // Nothing was written: look the master up again and retry, within the deadline.
                try await pause(attempt: attempt, until: deadline, because: "cannot reach redis cluster master \(endpoint): \(error)")
                await refreshTopology(state: state)
                continue
            }
            let commands = asking == nil ? group : [[.string("ASKING")]] + group
            var replies: [RESPValue]
            do {
                replies = try await Self.send(commands, on: channel)
            } catch {
                Task { await self.refreshTopology(state: state, spaced: true) }
                throw error
            }
            if asking != nil { replies.removeFirst() }
            asking = nil
            guard case .error(let message) = replies[0], let redirect = RedisCluster.Redirect(error: message) else {
                return try await followLaterRedirects(group, replies, state: state)
            }
            guard attempt < 16 else { throw StoreError(.unavailable, "redis cluster redirected \(attempt) times: \(message)") }
            switch redirect {
            case .moved(let movedSlot, let to):
                state.map.withLock { $0.assign(movedSlot...movedSlot, to: to) }
                Task { await self.refreshTopology(state: state, spaced: true) }
            case .ask(_, let to):
                asking = to
            case .tryAgain, .clusterDown:
                try await pause(attempt: attempt, until: deadline, because: message)
                if case .clusterDown = redirect { await refreshTopology(state: state, spaced: true) }
            }
        }
    }

    /// A later command of a group whose first one ran may still be redirected (`ASK` for a
    /// key already migrated): it is resent on its own.
    private func followLaterRedirects(
        _ group: [[RedisArgument]], _ replies: [RESPValue], state: RedisClusterState
    ) async throws(StoreError) -> [RESPValue] {
        var replies = replies
        for index in replies.indices.dropFirst() {
            guard case .error(let message) = replies[index], RedisCluster.Redirect(error: message) != nil,
                let slot = RedisCluster.slot(of: group[index])
            else { continue }
            replies[index] = try await clusterExecute([group[index]], slot: slot, state: state)[0]
        }
        return replies
    }

    /// Sleeps 2, 4, 8 ... ms (at most 100) before a retry, or throws when that would pass `deadline`.
    private func pause(attempt: Int, until deadline: ContinuousClock.Instant, because reason: String) async throws(StoreError) {
        let wait = Duration.milliseconds(min(2 << min(attempt, 6), 100))
        guard ContinuousClock.now + wait < deadline else {
            throw StoreError(.unavailable, "redis cluster: \(reason)")
        }
        try? await Task.sleep(for: wait)
    }

    private func master(of slot: Int?, state: RedisClusterState) -> RedisConfiguration.Endpoint? {
        state.map.withLock { map in
            if let slot { return map.master(of: slot) }
            return map.master(of: Int.random(in: 0..<RedisCluster.slotCount))
        }
    }

    /// The connection to `endpoint` on loop `loop`, opened (and authenticated) if needed.
    func link(to endpoint: RedisConfiguration.Endpoint, loop: Int, state: RedisClusterState) -> EventLoopFuture<any Channel> {
        let eventLoop = loops[loop]
        let (future, isNew) = state.links.withLock { links -> (EventLoopFuture<any Channel>, Bool) in
            if let link = links[endpoint]?[loop] { return (link.future, false) }
            let future = eventLoop.makeFutureWithTask {
                let channel = try await self.open(endpoint.host, endpoint.port, on: eventLoop, authenticate: true)
                let identity = await self.serverIdentity(channel)
                let previous = state.identities.withLock { identities in
                    defer { identities[endpoint, default: [:]][loop] = identity }
                    return identities[endpoint]?[loop]
                }
                self.connectionOpened(reaching: identity, where: previous)
                return channel
            }
            links[endpoint, default: [:]][loop] = .opening(future)
            return (future, true)
        }
        guard isNew else { return future }
        future.whenComplete { result in
            state.links.withLock { links in
                guard case .opening(let current)? = links[endpoint]?[loop], current === future else { return }
                switch result {
                case .success(let channel): links[endpoint]?[loop] = .open(channel)
                case .failure: links[endpoint]?[loop] = nil
                }
            }
            guard case .success(let channel) = result else { return }
            channel.closeFuture.whenComplete { _ in
                state.links.withLock { links in
                    if case .open(let current)? = links[endpoint]?[loop], current === channel { links[endpoint]?[loop] = nil }
                }
            }
        }
        return future
    }

    /// Reads the slot map again (one refresh at a time: a caller that finds one under way
    /// waits for it). With `spaced`, skipped when the last one ended less than 100 ms ago.
    func refreshTopology(state: RedisClusterState, spaced: Bool = false) async {
        if spaced, let last = state.lastRefresh.withLock({ $0 }), ContinuousClock.now - last < .milliseconds(100) { return }
        let task = state.refreshing.withLock { refreshing -> Task<Void, Never> in
            if let running = refreshing { return running }
            let task = Task {
                await self.readSlotMap(state: state)
                state.lastRefresh.withLock { $0 = .now }
                state.refreshing.withLock { $0 = nil }
            }
            refreshing = task
            return task
        }
        await task.value
    }

    private func readSlotMap(state: RedisClusterState) async {
        let known = state.map.withLock { $0.masters }
        var candidates = known
        for seed in configuration.clusterSeeds where !candidates.contains(seed) { candidates.append(seed) }
        for endpoint in candidates {
            do {
                let channel = try await open(endpoint.host, endpoint.port, on: loops[0], authenticate: true)
                defer { channel.close(promise: nil) }
                let reply = try await command(channel, [.string("CLUSTER"), .string("SLOTS")])
                guard let map = RedisCluster.SlotMap(clusterSlots: reply, asked: endpoint) else {
                    logger.warning("redis cluster node gave no slot map", metadata: ["redis": "\(endpoint)", "reply": "\(reply)"])
                    continue
                }
                let previous = state.map.withLock { current in
                    defer { current = map }
                    return current.masters
                }
                if Set(previous) != Set(map.masters) {
                    logger.notice(
                        "redis cluster masters", metadata: ["masters": "\(map.masters.map(\.description).joined(separator: ","))"]
                    )
                }
                // Connections to nodes that are no longer masters go; every master gets one per loop.
                let stale = state.links.withLock { links in
                    let gone = links.filter { !map.masters.contains($0.key) }
                    for endpoint in gone.keys { links[endpoint] = nil }
                    return gone.values.flatMap(\.values)
                }
                for link in stale { link.future.whenSuccess { $0.close(promise: nil) } }
                for master in map.masters {
                    for loop in loops.indices { _ = link(to: master, loop: loop, state: state) }
                }
                return
            } catch {
                logger.debug("redis cluster node did not answer", metadata: ["redis": "\(endpoint)", "error": "\(error)"])
            }
        }
        logger.warning("no redis cluster node answered CLUSTER SLOTS", metadata: ["tried": "\(candidates.count)"])
    }

    /// Whether the map covers every slot and every master has its connection on every loop.
    func clusterIsConnected(state: RedisClusterState) -> Bool {
        let masters = state.map.withLock { $0.isComplete ? $0.masters : [] }
        guard !masters.isEmpty else { return false }
        return state.links.withLock { links in
            masters.allSatisfy { master in
                loops.indices.allSatisfy { loop in
                    if case .open? = links[master]?[loop] { true } else { false }
                }
            }
        }
    }

    /// Keeps the slot map fresh until cancelled: at once, then every 5 s (a failover that no
    /// command has run into yet is noticed there), and on demand in between.
    func maintainCluster(state: RedisClusterState) async {
        while !Task.isCancelled {
            await refreshTopology(state: state)
            let complete = state.map.withLock { $0.isComplete }
            try? await Task.sleep(for: complete ? .seconds(5) : .milliseconds(200))
        }
        let all = state.links.withLock { links in
            defer { links = [:] }
            return links.values.flatMap(\.values)
        }
        for link in all { link.future.whenSuccess { $0.close(promise: nil) } }
    }

    /// Writes `commands` on `channel` in one go and returns their replies (a single Redis's
    /// `sendAll` too).
    static func send(_ commands: [[RedisArgument]], on channel: any Channel) async throws(StoreError) -> [RESPValue] {
        let promise = channel.eventLoop.makePromise(of: [RESPValue].self)
        let write: @Sendable () -> Void = {
            guard let handler = try? channel.pipeline.syncOperations.handler(type: RedisChannelHandler.self) else {
                promise.fail(StoreError(.unavailable, "redis is not connected"))
                return
            }
            handler.send(commands, promise: promise)
        }
        if channel.eventLoop.inEventLoop { write() } else { channel.eventLoop.execute(write) }
        // One promise and one suspension for all the replies, not one each.
        do {
            let replies = try await promise.futureResult.get()
            guard replies.count == commands.count else {
                throw StoreError(.unavailable, "redis answered \(replies.count) replies to \(commands.count) commands", mayHaveTakenEffect: true)
            }
            return replies
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError(.unavailable, "\(error)")
        }
    }
}
