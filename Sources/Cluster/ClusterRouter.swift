import Actors
import Logging
import NIOCore
import PushProtocol
import ServiceLifecycle
import Supervision
import Synchronization

/// A node's part in the cluster (Docs/cluster.md): the route table, the member view, the
/// relay links to every peer and what arrives on theirs. The `ClusterLink` the node's
/// connections and router use.
///
/// Its supervised parts come from `children(...)`:
/// ```
/// relay-listener  RelayListener  inbound links from peers
/// relays          Supervisor     one-for-one, a Relay per live peer (started and stopped by membership)
/// membership      Membership     the lease, the member list, route upkeep
/// ```
public final class ClusterRouter: ClusterLink {
    /// The cluster settings.
    public let configuration: ClusterConfiguration
    /// The live members, as of the last lease renewal.
    public let view = ClusterView()
    let metrics: RelayMetrics
    /// Where each broadcast this node relays to its devices is counted (message status); nil: not kept.
    private let broadcasts: (any BroadcastReceiptStore)?
    private let routes: any RouteTable
    private let membership: any MembershipStore
    private let registry: ConnectionRegistry
    private let group: any EventLoopGroup
    private let logger: Logger
    private let directory: RelayDirectory
    private let token: SecretSet
    private struct State {
        var relays: Supervisor<ContinuousClock>?
        var relayPort: Int?
        var startedPeers: [String: Member] = [:]
        /// Route writes that failed (Redis down): client id -> session, retried each tick.
        var unclaimed: [String: UInt64] = [:]
        /// Connections whose route a refresh found held by another one (closed on the second).
        var contests = RouteContests()
        /// Devices with messages stored but not routed (the route lookup failed), retried each
        /// tick; past `maxMissed`, every live node's devices re-read their queues instead.
        var unrouted: Set<String> = []
        var resyncEveryone = false
        var warnedDuplicateID = false
    }
    private let state = Mutex(State())

    /// Creates the cluster part of a node on its route table and membership store (Redis in
    /// production: `RedisRouteTable`, `RedisMembershipStore`); `children` gives its services.
    public init(
        configuration: ClusterConfiguration, routes: any RouteTable, membership: any MembershipStore, registry: ConnectionRegistry,
        metrics: RelayMetrics, group: any EventLoopGroup, logger: Logger, broadcasts: (any BroadcastReceiptStore)? = nil
    ) {
        self.broadcasts = broadcasts
        self.configuration = configuration
        self.routes = routes
        self.membership = membership
        self.registry = registry
        self.metrics = metrics
        self.group = group
        self.logger = logger
        self.token = SecretSet(configuration.token.isEmpty ? [] : [configuration.token])
        self.directory = RelayDirectory(maxWaiting: configuration.maxMissed)
    }

    private var myRoute: (UInt64) -> Route {
        { [configuration] session in Route(nodeID: configuration.nodeID, incarnation: configuration.incarnation, session: session) }
    }

    // MARK: Supervised parts

    /// The relay port actually bound.
    public var relayPort: Int? { state.withLock { $0.relayPort } }

    /// The services of the cluster part, in start order. `advertise` turns the bound relay
    /// port into the address peers dial; `connections` is this node's device count.
    public func children(
        bindHost: String, bindPort: Int, advertise: @escaping @Sendable (Int) -> String, connections: @escaping @Sendable () -> Int
    ) -> [ChildSpec] {
        [
            ChildSpec(id: "relay-listener", shutdownTimeout: .seconds(5)) { [self] in
                // A restarted listener binds the port its predecessor had (port 0 resolves once).
                let listener = try await RelayListener.bind(
                    host: bindHost, port: relayPort ?? bindPort, group: group, router: self, logger: logger
                )
                state.withLock { $0.relayPort = listener.port }
                return listener
            },
            ChildSpec(id: "relays", shutdownTimeout: .seconds(10)) { [self] in
                let supervisor = Supervisor(
                    name: "relays", strategy: .oneForOne, intensity: RestartIntensity(maxRestarts: 10, period: .seconds(30)),
                    children: [], clock: ContinuousClock(), logger: logger
                )
                state.withLock {
                    $0.relays = supervisor
                    $0.startedPeers = [:]
                }
                return supervisor
            },
            ChildSpec(id: "membership", shutdownTimeout: .seconds(5)) { [self] in
                Membership(
                    configuration: configuration, store: membership, clock: ContinuousClock(),
                    relayAddress: { [self] in relayPort.map(advertise) },
                    connections: connections, logger: logger,
                    onRefresh: { [self] members, tick in await refreshed(members, tick: tick) }
                )
            },
        ]
    }

    private func refreshed(_ members: [Member]?, tick: UInt64) async {
        if let members {
            view.update(members)
            if let twin = members.first(where: { $0.nodeID == configuration.nodeID && $0.incarnation != configuration.incarnation }),
                !state.withLock({ $0.warnedDuplicateID })
            {
                state.withLock { $0.warnedDuplicateID = true }
                logger.error("another live process uses this node id; give every node its own HERALD_NODE_ID", metadata: ["other": "\(twin.relayAddress)"])
            }
            await reconcileRelays(members)
            directory.memberListRead(live: Set(members.map { RelayDirectory.Peer(nodeID: $0.nodeID, incarnation: $0.incarnation) }))
        }
        await upkeepRoutes(tick: tick)
        await retryUnrouted()
    }

    /// Starts a relay for each live peer and stops those of peers that left or restarted.
    private func reconcileRelays(_ members: [Member]) async {
        guard let supervisor = state.withLock({ $0.relays }) else { return }
        let peers = members.filter { $0.nodeID != configuration.nodeID }
        let running = Set(await supervisor.runningChildren())
        let started = state.withLock { $0.startedPeers }
        for peer in peers {
            let id = "relay:\(peer.nodeID)"
            if let known = started[peer.nodeID], known.incarnation == peer.incarnation, known.relayAddress == peer.relayAddress,
                running.contains(id)
            {
                continue
            }
            if running.contains(id) { try? await supervisor.terminateChild(id: id) }
            let spec = ChildSpec(id: id, shutdownTimeout: .seconds(2)) { [self] in
                Relay(peer: peer, configuration: configuration, group: group, directory: directory, metrics: metrics, logger: logger)
            }
            do {
                try await supervisor.startChild(spec)
                state.withLock { $0.startedPeers[peer.nodeID] = peer }
            } catch {
                logger.warning("could not start a relay", metadata: ["herald.peer": "\(peer.nodeID)", "error": "\(error)"])
            }
        }
        let live = Set(peers.map(\.nodeID))
        for nodeID in started.keys where !live.contains(nodeID) {
            logger.info("peer left the cluster; stopping its relay", metadata: ["herald.peer": "\(nodeID)"])
            try? await supervisor.terminateChild(id: "relay:\(nodeID)")
            _ = state.withLock { $0.startedPeers.removeValue(forKey: nodeID) }
        }
        // A peer process that is gone (left, died, or restarted as a new incarnation) may have
        // stored messages for devices here and died before relaying them: every device here
        // re-reads its queue once (one store read each; rare, and it closes that window).
        let incarnations = Dictionary(peers.map { ($0.nodeID, $0.incarnation) }, uniquingKeysWith: { first, _ in first })
        if started.values.contains(where: { incarnations[$0.nodeID] != $0.incarnation }) {
            nudgeEveryDevice()
        }
    }

    /// Has every device here re-read its queue: one task per event loop, not one per connection.
    private func nudgeEveryDevice() {
        for (loop, connections) in registry.connectionsByEventLoop() {
            loop.execute {
                for connection in connections { connection.nudge() }
            }
        }
    }

    /// Routes again the devices whose route lookup failed: a NUDGE to where they are.
    private func retryUnrouted() async {
        let (clientIDs, resync) = state.withLock { state in
            defer {
                state.unrouted = []
                state.resyncEveryone = false
            }
            return (Array(state.unrouted), state.resyncEveryone)
        }
        if resync {
            nudgeEveryDevice()
            for relay in directory.all { relay.resync() }
            return
        }
        guard !clientIDs.isEmpty else { return }
        guard let found = try? await routes.lookup(clientIDs) else {
            keepUnrouted(clientIDs)
            return
        }
        var byPeer: [RelayDirectory.Peer: [String]] = [:]
        for (clientID, route) in zip(clientIDs, found) {
            guard let route else { continue }  // not connected: its next connection reads
            if route.nodeID == configuration.nodeID {
                registry.connection(for: clientID)?.nudge()
            } else {
                byPeer[RelayDirectory.Peer(nodeID: route.nodeID, incarnation: route.incarnation), default: []].append(clientID)
            }
        }
        for (peer, clientIDs) in byPeer {
            directory.relay(to: peer.nodeID, incarnation: peer.incarnation, orKeep: clientIDs)?.nudge(clientIDs)
        }
    }

    private func keepUnrouted(_ clientIDs: some Sequence<String>) {
        state.withLock { state in
            guard !state.resyncEveryone else { return }
            state.unrouted.formUnion(clientIDs)
            if state.unrouted.count > configuration.maxMissed {
                state.unrouted = []
                state.resyncEveryone = true
            }
        }
    }

    /// Retries the route writes that failed, and rewrites one slice of this node's routes,
    /// so that each is rewritten once per `routeRefreshPeriod` and the writes stay flat.
    private func upkeepRoutes(tick: UInt64) async {
        let unclaimed = state.withLock { state in
            defer { state.unclaimed = [:] }
            return state.unclaimed
        }
        for (clientID, session) in unclaimed {
            guard let connection = registry.connection(for: clientID), connection.session == session else { continue }
            if await claim(clientID, session: session) {
                // Messages stored while the route was missing were routed nowhere: read them.
                connection.nudge()
            }
        }
        let slots = UInt64(max(1, configuration.routeRefreshPeriod / configuration.refreshInterval))
        let slot = tick % slots
        let entries = registry.entries { $0.session % slots == slot }
        guard !entries.isEmpty else { return }
        do {
            let outcomes = try await routes.refresh(entries.map { ($0.clientID, myRoute($0.connection.session)) })
            let refreshed = zip(entries, outcomes).map { (clientID: $0.clientID, session: $0.connection.session, outcome: $1) }
            let replaced = state.withLock { state in state.contests.replaced(refreshed, unclaimed: state.unclaimed) }
            for (clientID, session) in replaced {
                // A newer connection elsewhere holds the route and its KICK never arrived.
                guard let connection = registry.connection(for: clientID), connection.session == session else { continue }
                logger.info("route taken over elsewhere; closing the older connection", metadata: ["herald.client": "\(clientID)"])
                connection.replace()
            }
        } catch {
            logger.warning("route refresh failed; next period", metadata: ["error": "\(error)"])
        }
    }

    // MARK: ClusterLink

    public func connected(clientID: String, session: UInt64) async {
        _ = await claim(clientID, session: session)
    }

    private func claim(_ clientID: String, session: UInt64) async -> Bool {
        let route = myRoute(session)
        do {
            let previous = try await routes.claim(clientID, route)
            if let previous, previous.nodeID != configuration.nodeID,
                let relay = directory.relay(to: previous.nodeID, incarnation: previous.incarnation)
            {
                relay.kick(clientID: clientID, route: previous.description, replaced: true)
            }
            return true
        } catch {
            logger.warning("route write failed; retrying", metadata: ["herald.client": "\(clientID)", "error": "\(error)"])
            state.withLock { $0.unclaimed[clientID] = session }
            return false
        }
    }

    public func disconnected(clientID: String, session: UInt64) {
        state.withLock { state in
            if state.unclaimed[clientID] == session { state.unclaimed[clientID] = nil }
            state.contests.ended(clientID, session: session)
        }
        let route = myRoute(session)
        let routes = routes
        Task { try? await routes.release(clientID, route) }
    }

    public func forward(_ messages: [StoredMessage]) {
        guard relaying.load(ordering: .relaxed) else { return }
        Task { await self.route(messages) }
    }

    /// Fault hook (`HERALD_FAULT_HOOKS`): false makes this node store messages and relay none of
    /// them, as a process would that died right after each append.
    public let relaying = Atomic<Bool>(true)

    private func route(_ messages: [StoredMessage]) async {
        var clientIDs: [String] = []
        var seen: Set<String> = []
        for message in messages where seen.insert(message.clientID).inserted { clientIDs.append(message.clientID) }
        guard let found = try? await routes.lookup(clientIDs) else {
            // Stored but routed nowhere: retried on the next tick, so that a device connected
            // elsewhere does not wait for its next connection.
            keepUnrouted(clientIDs)
            return
        }
        var byClient: [String: Route] = [:]
        for (clientID, route) in zip(clientIDs, found) { byClient[clientID] = route }
        var byRelay: [ObjectIdentifier: (Relay, [StoredMessage])] = [:]
        for message in messages {
            guard let route = byClient[message.clientID] else { continue }
            if route.nodeID == configuration.nodeID {
                // Connected here since the push looked: deliver directly.
                registry.connection(for: message.clientID)?.deliver(message)
            } else if let relay = directory.relay(to: route.nodeID, incarnation: route.incarnation, orKeep: CollectionOfOne(message.clientID)) {
                // (Without a relay to that process yet, the client id waits for it: NUDGEd on its first link.)
                byRelay[ObjectIdentifier(relay), default: (relay, [])].1.append(message)
            }
        }
        for (relay, batch) in byRelay.values { relay.deliver(batch) }
    }

    public func broadcast(messageID: String, payload: ByteBuffer) {
        for relay in directory.all { relay.broadcast(messageID: messageID, payload: payload) }
    }

    public func locate(_ clientID: String) async throws(StoreError) -> DeviceLocation? {
        guard let route = try await routes.lookup([clientID]).first ?? nil else { return nil }
        if route.nodeID == configuration.nodeID {
            let here = route.incarnation == configuration.incarnation && registry.connection(for: clientID)?.session == route.session
            return here ? DeviceLocation(nodeID: route.nodeID, isLocal: true) : nil
        }
        guard view.member(route.nodeID, incarnation: route.incarnation) != nil else { return nil }
        return DeviceLocation(nodeID: route.nodeID, isLocal: false)
    }

    public func disconnect(_ clientID: String) async throws(StoreError) -> Bool {
        guard let route = try await routes.lookup([clientID]).first ?? nil, route.nodeID != configuration.nodeID,
            view.member(route.nodeID, incarnation: route.incarnation) != nil,
            let relay = directory.relay(to: route.nodeID, incarnation: route.incarnation)
        else { return false }
        relay.kick(clientID: clientID, route: "", replaced: false)
        return true
    }

    // MARK: Inbound relay frames

    func acceptsToken(_ candidate: String) -> Bool {
        !token.isEnabled || token.accepts(Substring(candidate))
    }

    /// A frame from an authenticated peer.
    func received(_ frame: RelayFrame) {
        switch frame {
        case .deliver(let message):
            metrics.received.increment()
            registry.connection(for: message.clientID)?.deliver(
                StoredMessage(
                    clientID: message.clientID, id: message.messageID, sequence: message.sequence, payload: message.payload,
                    expiresAtMillis: message.expiresAtMillis
                )
            )
        case .nudge(let clientID):
            registry.connection(for: clientID)?.nudge()
        case .resync:
            nudgeEveryDevice()
        case .broadcast(let messageID, let payload):
            let sent = registry.broadcast(messageID: messageID, payload: payload)
            if let broadcasts {
                let nodeID = configuration.nodeID
                Task { try? await broadcasts.recordBroadcast(id: messageID, node: nodeID, sent: sent, acceptedAtMillis: nil) }
            }
        case .kick(let clientID, let routeText, let replaced):
            guard let connection = registry.connection(for: clientID) else { return }
            if !routeText.isEmpty {
                guard let route = Route(routeText), route.nodeID == configuration.nodeID,
                    route.incarnation == configuration.incarnation, route.session == connection.session
                else { return }
            }
            if replaced { connection.replace() } else { connection.close() }
        case .hello, .ping, .pong:
            break
        }
    }
}
