import Actors
import Cluster
import Crypto
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import Hummingbird
import HummingbirdCore
import Prometheus
import PushProtocol
import RedisStore
import ServiceLifecycle
import Supervision
import Synchronization
import SystemdNotify
import Transport
import UnixSignals

/// One Herald node: the composition root. It builds the shared state (store, registry,
/// metrics) once, and the supervision tree whose children use it:
///
/// ```
/// herald (one-for-one)
/// ├── redis     RedisClient    permanent (only with HERALD_REDIS_URL)
/// ├── store     StoreMonitor   permanent
/// ├── sweeper   ExpirySweeper  permanent
/// ├── tls       CertificateReloader permanent (only with HERALD_TLS_CERT: SIGHUP reloads)
/// ├── api       HTTP API       permanent (unless HERALD_HTTP_ADDR is empty)
/// ├── api-tls   HTTPS API      permanent (only with HERALD_TLS_CERT and HERALD_HTTPS_ADDR)
/// └── devices   DeviceListener permanent (tcp, tls, ws, wss; stopped first: drains devices
///               while the API still accepts)
/// ```
/// Shared state lives here, not in the children, so that a restarted child finds every
/// message and connection its predecessor had (Docs/architecture.md explains the choices).
final class HeraldNode: Sendable {
    let configuration: NodeConfiguration
    let logger: Logger
    let group: any EventLoopGroup
    let prometheus = PrometheusCollectorRegistry()
    let metrics: NodeMetrics
    let store: any PushStore
    let storeKind: String
    let redis: RedisClient?
    /// The cluster part (with Redis); nil on a lone node.
    let cluster: ClusterRouter?
    let registry = ConnectionRegistry()
    let tracker = ConnectionTracker()
    let router: MessageRouter
    /// The webhook's queue, state and metrics; nil without `HERALD_WEBHOOK_URL`.
    let webhookQueue: (any WebhookQueue)?
    let webhookState = WebhookState()
    let webhookMetrics: WebhookMetrics
    let services: DeviceServices
    /// The TLS credentials every TLS listener's new handshakes use; nil without a certificate.
    let tls: TLSCredentials?
    let transportMetrics: TransportMetrics
    private let startedAt = ContinuousClock.now
    private let draining = Atomic<Bool>(false)
    private struct State {
        var root: Supervisor<ContinuousClock>?
        var watchdog: WatchdogService?
        /// Bound addresses by listener name (tcp, tls, ws, wss, http, https).
        var bound: [String: SocketAddress] = [:]
        var storeMonitor: StoreMonitor?
    }
    private let state = Mutex(State())

    /// Builds a node; `run()` starts it. Throws `TLSFileError` when a configured certificate,
    /// key or CA file cannot be used.
    static func make(
        configuration: NodeConfiguration, logger: Logger, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> HeraldNode {
        let authenticator: any DeviceAuthenticator
        if let secret = configuration.deviceJWTSecret {
            authenticator = JWTDeviceAuthenticator(secret: secret)
        } else {
            logger.warning("HERALD_DEVICE_JWT_SECRET is not set: device authentication is off, any token is accepted")
            authenticator = OpenDeviceAuthenticator()
        }
        if configuration.apiKeys.isEmpty {
            logger.warning("HERALD_API_KEYS is not set: the HTTP API accepts requests without an API key")
        }
        var tls: TLSCredentials?
        if let files = configuration.tls {
            let credentials = try TLSCredentials(files: files)
            let loaded = credentials.loaded
            logger.info("TLS certificate loaded", metadata: [
                "subject": "\(loaded.subject)", "chain": "\(loaded.chainLength)", "not_valid_after": "\(loaded.notValidAfter)",
                "mutual_tls": "\(credentials.isMutual)",
            ])
            tls = credentials
        }
        return HeraldNode(configuration: configuration, logger: logger, group: group, authenticator: authenticator, tls: tls)
    }

    private init(
        configuration: NodeConfiguration, logger: Logger, group: any EventLoopGroup, authenticator: any DeviceAuthenticator,
        tls: TLSCredentials?
    ) {
        var logger = logger
        logger[metadataKey: "herald.node"] = .string(configuration.nodeID)
        self.configuration = configuration
        self.logger = logger
        self.group = group
        let metrics = NodeMetrics(factory: PrometheusMetricsFactory(registry: prometheus))
        self.metrics = metrics
        self.tls = tls
        transportMetrics = TransportMetrics(factory: PrometheusMetricsFactory(registry: prometheus), logger: logger)
        let broadcasts: (any BroadcastReceiptStore)?
        let webhookQueue: (any WebhookQueue)?
        webhookMetrics = WebhookMetrics(factory: PrometheusMetricsFactory(registry: prometheus))
        if let redisConfiguration = configuration.redis {
            let client = RedisClient(configuration: redisConfiguration, group: group, logger: logger)
            redis = client
            let redisEvents = configuration.webhook.map { settings in
                RedisWebhookQueue(
                    client: client, node: configuration.nodeID, lanes: settings.concurrency, types: settings.events, lease: settings.lease,
                    logger: logger
                )
            }
            webhookQueue = redisEvents
            let redisStore = RedisPushStore(
                client: client, maxPending: configuration.maxPending, replicas: configuration.redisWaitReplicas,
                waitTimeoutMillis: Int64(configuration.redisWaitTimeoutMillis), receiptRetentionMillis: configuration.receiptRetentionMillis,
                events: redisEvents
            )
            store = redisStore
            broadcasts = configuration.receiptRetentionMillis == nil ? nil : redisStore
            storeKind = "redis"
            let secret = configuration.clusterSecret ?? configuration.deviceJWTSecret
            if secret == nil {
                logger.warning("neither HERALD_CLUSTER_SECRET nor HERALD_DEVICE_JWT_SECRET is set: relay links are not authenticated")
            }
            var clusterConfiguration = ClusterConfiguration(
                nodeID: configuration.nodeID, incarnation: UInt64.random(in: 1...UInt64.max),
                token: secret.map(Self.relayToken) ?? "", relayMaxFrame: configuration.maxFrame + 512
            )
            clusterConfiguration.relayPingInterval = .seconds(configuration.relayPingSeconds)
            cluster = ClusterRouter(
                configuration: clusterConfiguration,
                routes: RedisRouteTable(client: client, prefix: clusterConfiguration.prefix, ttl: clusterConfiguration.routeTTL),
                membership: RedisMembershipStore(client: client, prefix: clusterConfiguration.prefix),
                registry: registry, metrics: RelayMetrics(factory: PrometheusMetricsFactory(registry: prometheus)), group: group, logger: logger,
                broadcasts: broadcasts
            )
        } else {
            redis = nil
            cluster = nil
            let memoryEvents = configuration.webhook.map { settings in
                MemoryWebhookQueue(lanes: settings.concurrency, capacity: settings.queueCapacity, types: settings.events, logger: logger)
            }
            webhookQueue = memoryEvents
            broadcasts = configuration.receiptRetentionMillis.map { BroadcastReceipts(retentionMillis: $0) }
            store = InMemoryPushStore(
                maxPending: configuration.maxPending,
                receiptRetentionMillis: configuration.receiptRetentionMillis, maxReceipts: configuration.maxReceipts, events: memoryEvents
            )
            storeKind = "memory"
        }
        self.webhookQueue = webhookQueue
        let link: any ClusterLink = cluster ?? LoneNode()
        router = MessageRouter(
            nodeID: configuration.nodeID, store: store, registry: registry, metrics: metrics, cluster: link,
            broadcasts: broadcasts, events: webhookQueue
        )
        services = DeviceServices(
            configuration: configuration.session, store: store, registry: registry,
            authenticator: authenticator, metrics: metrics, logger: logger, cluster: link,
            authFailures: AuthFailureLimiter(burst: configuration.maxAuthFailures),
            heartbeats: HeartbeatSweeps(loops: Array(group.makeIterator())), events: webhookQueue
        )
        let root = Supervisor(
            name: "herald", strategy: .oneForOne, intensity: RestartIntensity(maxRestarts: 5, period: .seconds(30)),
            children: childSpecs(), logger: logger,
            onEvent: { event in
                if case .started(_, let child, true) = event { metrics.restart(child: child) }
            }
        )
        let watchdog = WatchdogService(
            notifier: SystemdNotifier(), logger: logger,
            ready: { [unowned self] in await readiness().0 },
            check: { [unowned self] budget in await verdict(probeTimeout: budget) }
        )
        state.withLock {
            $0.root = root
            $0.watchdog = watchdog
        }
    }

    /// READY / STATUS / WATCHDOG / STOPPING for systemd; runs beside the tree (a no-op
    /// without NOTIFY_SOCKET).
    var watchdog: WatchdogService { state.withLock { $0.watchdog! } }

    /// The relay links' token: an HMAC of the secret, so the secret itself never crosses the wire.
    static func relayToken(secret: String) -> String {
        let code = HMAC<SHA256>.authenticationCode(for: Array("herald relay v1".utf8), using: SymmetricKey(data: Array(secret.utf8)))
        return code.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }

    /// The root of the supervision tree.
    var root: Supervisor<ContinuousClock> { state.withLock { $0.root! } }

    /// The plain TCP device port actually bound (the configured one, or the one port 0 gave).
    var devicePort: Int? { port(of: "tcp") }
    /// The HTTP port actually bound.
    var httpPort: Int? { port(of: "http") }
    /// The port a listener (tcp, tls, ws, wss, http, https) has bound; nil: not (yet) bound.
    func port(of listener: String) -> Int? { state.withLock { $0.bound[listener]?.port } }
    /// Every bound listener's address, by name: what `/v1/stats` reports.
    var boundAddresses: [String: String] {
        state.withLock { state in
            state.bound.mapValues { address in
                let host = address.ipAddress ?? "?"
                return host.contains(":") ? "[\(host)]:\(address.port ?? 0)" : "\(host):\(address.port ?? 0)"
            }
        }
    }

    /// The listeners the configuration turns on, by name.
    private var configuredListeners: [(String, SocketAddressSpec)] {
        [
            ("tcp", configuration.tcpAddress), ("tls", configuration.tlsAddress), ("ws", configuration.wsAddress),
            ("wss", configuration.wssAddress), ("http", configuration.httpAddress), ("https", configuration.httpsAddress),
        ].compactMap { name, address in address.map { (name, $0) } }
    }

    /// Reads the TLS files again (SIGHUP): new handshakes use them, open connections keep
    /// theirs; a file that cannot be used is refused with one log line and the old stay.
    @discardableResult
    func reloadCertificates() -> Bool {
        guard let tls else { return false }
        do {
            let loaded = try tls.reload()
            logger.notice("TLS certificate reloaded: new handshakes use it", metadata: [
                "subject": "\(loaded.subject)", "chain": "\(loaded.chainLength)", "not_valid_after": "\(loaded.notValidAfter)",
            ])
            return true
        } catch {
            logger.error("TLS certificate reload refused, the previous certificate stays in use: \(error)")
            return false
        }
    }
    /// Whether the node is draining (GOAWAY sent, no new sessions).
    var isDraining: Bool { draining.load(ordering: .relaxed) }
    /// Time since the node was built.
    var uptime: Duration { ContinuousClock.now - startedAt }

    /// Runs the tree until graceful shutdown (returns) or until the root gives up (throws).
    func run() async throws {
        try await root.run()
    }

    /// The node's health: what `/healthz` answers and what the watchdog pings on
    /// (Docs/supervision.md, "What healthy means"). The tree's own report (every permanent
    /// child running and healthy, recursively; Redis reconnecting is a declared degraded
    /// state, not a failure) plus two probes the tree cannot see: every event loop runs a
    /// task, and the registry's locks can be taken, within `probeTimeout`. All probes run at
    /// once, so the answer comes within `probeTimeout` whatever is stuck.
    func health(probeTimeout: Duration = .milliseconds(500)) async -> HealthReport {
        let loops = Array(group.makeIterator())
        async let tree = withDeadline(probeTimeout) { [root] in await root.healthReport() }
        async let registryAnswers = withDeadline(probeTimeout) { [registry] in registry.connection(for: "-") == nil } != nil
        let answered = await withTaskGroup(of: (Int, Bool).self) { group in
            for (index, loop) in loops.enumerated() {
                group.addTask { (index, await Self.answers(loop, within: probeTimeout)) }
            }
            var answered = [Bool](repeating: false, count: loops.count)
            for await (index, ok) in group { answered[index] = ok }
            return answered
        }
        var report = await tree ?? HealthReport(name: "herald", healthy: false, state: "not answering")
        let loopReports = answered.enumerated().map { index, ok in
            HealthReport(name: "loop-\(index)", healthy: ok, state: ok ? "answering" : "blocked")
        }
        let registryOK = await registryAnswers
        report.children += [
            HealthReport(name: "event-loops", healthy: answered.allSatisfy { $0 }, state: "probed", children: loopReports),
            HealthReport(name: "registry", healthy: registryOK, state: registryOK ? "answering" : "blocked"),
        ]
        report.healthy = report.healthy && report.children.allSatisfy(\.healthy)
        return report
    }

    /// Whether `loop` runs a task within `timeout` (a wedged loop never does).
    private static func answers(_ loop: any EventLoop, within timeout: Duration) async -> Bool {
        await withDeadline(timeout) {
            await withCheckedContinuation { continuation in loop.execute { continuation.resume() } }
            return true
        } ?? false
    }

    /// What the watchdog judges by: healthy as `health()` says; a blocked event loop cannot
    /// recover (NIO cannot replace its thread), so it asks systemd for a restart at once.
    func verdict(probeTimeout: Duration) async -> HealthVerdict {
        let report = await health(probeTimeout: probeTimeout)
        let loopsBlocked = report.children.first { $0.name == "event-loops" }?.healthy == false
        let store = state.withLock { $0.storeMonitor }.map { $0.isReachable ? "store ok" : "store unreachable (degraded)" } ?? "store starting"
        var status = "\(registry.count) devices, \(store)"
        if let cluster { status += ", cluster of \(cluster.view.members.count)" }
        if let problem = report.firstProblem { status = "\(problem); " + status }
        return HealthVerdict(healthy: report.healthy, status: status, unrecoverable: loopsBlocked)
    }

    /// Whether the node accepts devices and can store: what `/readyz` answers.
    func readiness() async -> (Bool, String) {
        if isDraining { return (false, "draining") }
        let bound = state.withLock { $0.bound }
        guard configuredListeners.allSatisfy({ bound[$0.0] != nil }) else { return (false, "starting") }
        // Until the member list has been read, no relay runs: pushes for devices on other
        // nodes would wait for their next read (Docs/cluster.md).
        if let cluster, !cluster.view.isKnown { return (false, "joining the cluster") }
        do {
            try await store.ping()
        } catch {
            return (false, "store unreachable")
        }
        return (true, "ok")
    }

    private func childSpecs() -> [ChildSpec] {
        let drainTimeout = Duration.seconds(configuration.drainTimeoutSeconds)
        // The Redis client object outlives restarts of its child: a restart only re-runs its
        // connection loops, and every store user keeps the same reference.
        let redisChild: [ChildSpec] = redis.map { client in
            [ChildSpec.service(id: "redis", shutdownTimeout: .seconds(5)) { client }]
        } ?? []
        let clusterChildren = cluster?.children(
            bindHost: configuration.relayAddress.host, bindPort: configuration.relayAddress.port,
            advertise: { [configuration] port in configuration.advertisedRelayAddress(boundPort: port) },
            connections: { [registry] in registry.count }
        ) ?? []
        return redisChild + [
            ChildSpec(id: "store", shutdownTimeout: .seconds(5)) { [unowned self] in
                let monitor = StoreMonitor(store: store, interval: .seconds(5), logger: logger, footprint: redisFootprint())
                state.withLock { $0.storeMonitor = monitor }
                return monitor
            },
            ChildSpec(id: "sweeper", shutdownTimeout: .seconds(5)) { [unowned self] in
                ExpirySweeper(store: store, metrics: metrics, interval: .seconds(10), clock: ContinuousClock(), logger: logger)
            },
        ] + webhookChildren() + clusterChildren + listenerChildren(drainTimeout: drainTimeout)
    }

    /// Reads Redis's size into the metrics (a single Redis or Sentinel's master); nil otherwise.
    private func redisFootprint() -> (@Sendable () async -> Void)? {
        guard let redisStore = store as? RedisPushStore else { return nil }
        let metrics = metrics
        return {
            guard let size = try? await redisStore.footprint() else { return }
            metrics.redisKeys.record(size.keys)
            metrics.redisUsedMemory.record(size.usedMemoryBytes)
        }
    }

    /// The webhook sender, when a webhook is configured: its own child, so that a receiver's
    /// trouble never reaches the push path (which only queues events).
    private func webhookChildren() -> [ChildSpec] {
        guard let settings = configuration.webhook, let queue = webhookQueue else { return [] }
        return [
            ChildSpec(id: "webhooks", shutdownTimeout: .seconds(2)) { [unowned self] in
                let tls = settings.target.https ? try NIOSSLContext(configuration: .makeClientConfiguration()) : nil
                return WebhookSender(
                    queue: queue, settings: settings, state: webhookState, metrics: webhookMetrics, group: group, tls: tls, logger: logger
                )
            }
        ]
    }

    /// The certificate reloader, the HTTP and HTTPS APIs and the device listeners.
    private func listenerChildren(drainTimeout: Duration) -> [ChildSpec] {
        var children: [ChildSpec] = []
        if let tls {
            children.append(ChildSpec(id: "tls", shutdownTimeout: .seconds(2)) { [unowned self] in
                CertificateReloader(reload: { [unowned self] in reloadCertificates() }, credentials: tls)
            })
        }
        if let address = configuration.httpAddress {
            children.append(ChildSpec(id: "api", shutdownTimeout: .seconds(10)) { [unowned self] in
                ShutdownOnCancel(inner: makeHTTPServer(name: "http", address: address, tls: nil), logger: logger)
            })
        }
        if let address = configuration.httpsAddress, let tls {
            children.append(ChildSpec(id: "api-tls", shutdownTimeout: .seconds(10)) { [unowned self] in
                ShutdownOnCancel(inner: makeHTTPServer(name: "https", address: address, tls: tls), logger: logger)
            })
        }
        // A drain may take the whole drain timeout; the supervisor waits that long and more.
        children.append(ChildSpec(id: "devices", shutdownTimeout: drainTimeout + .seconds(5)) { [unowned self] in
            let listener = try await DeviceListener.bind(
                deviceTransports(), group: group, tracker: tracker,
                drainTimeout: drainTimeout, logger: logger, onDrain: { [unowned self] in
                    draining.store(true, ordering: .relaxed)
                    watchdog.stopping(drainDeadline: .now + drainTimeout)
                }
            )
            state.withLock { state in
                for (kind, channel) in listener.serverChannels {
                    if let address = channel.localAddress { state.bound[kind.rawValue] = address }
                }
            }
            return listener
        })
        return children
    }

    /// Each configured device listener's transport and address; a restarted listener binds
    /// the ports its predecessor had (port 0 resolves once).
    private func deviceTransports() -> [(DeviceTransport, SocketAddressSpec)] {
        let start = DeviceListener.sessionStarter(services: services, tracker: tracker)
        let webSocket = WebSocketOptions(allowedOrigins: configuration.wsAllowedOrigins, maxFrame: configuration.maxFrame)
        let addresses: [(DeviceTransportKind, SocketAddressSpec?)] = [
            (.tcp, configuration.tcpAddress), (.tls, configuration.tlsAddress),
            (.ws, configuration.wsAddress), (.wss, configuration.wssAddress),
        ]
        return addresses.compactMap { kind, address in
            guard let address else { return nil }
            let transport = DeviceTransport(
                kind: kind, tls: tls, webSocket: webSocket,
                proxyProtocol: configuration.proxyProtocol.contains(kind), trustedProxies: configuration.trustedProxies,
                helloTimeout: configuration.session.helloTimeout,
                metrics: transportMetrics, handshakeGate: handshakeGate(for: kind), startSession: start
            )
            return (transport, SocketAddressSpec(host: address.host, port: port(of: kind.rawValue) ?? address.port))
        }
    }

    /// A new gate for a TLS listener's handshakes, unless HERALD_TLS_MAX_HANDSHAKES is 0.
    private func handshakeGate(for kind: DeviceTransportKind) -> HandshakeGate? {
        guard kind.usesTLS, configuration.tlsMaxHandshakes > 0 else { return nil }
        return HandshakeGate(limit: configuration.tlsMaxHandshakes) { [transportMetrics] in transportMetrics.acceptPaused() }
    }

    private func makeHTTPServer(name: String, address: SocketAddressSpec, tls: TLSCredentials?) -> some Service {
        // A restarted server binds the port its predecessor had (port 0 resolves once).
        let port = port(of: name) ?? address.port
        let idleTimeout = TimeAmount.seconds(Int64(configuration.httpIdleTimeoutSeconds))
        let api = HTTPAPI(node: self)
        let keys = SecretSet(configuration.apiKeys)
        let fastPath = configuration.httpFastPath
        let serverName = "herald"
        return Application(
            router: api.router(),
            // A connection with no request for HERALD_HTTP_IDLE_TIMEOUT_S is closed: idle sockets do not pile up.
            // The same bound for a request's whole, once its head is in (HTTPTimeoutHandler).
            server: HTTPServerBuilder { responder in
                HeraldHTTP1Channel(
                    inner: HTTP1Channel(responder: responder, configuration: .init(idleTimeout: nil)),
                    timeout: idleTimeout,
                    makeFastPath: { fastPath ? PushFastPath(api: api, keys: keys, serverName: serverName) : nil },
                    tls: tls
                )
            },
            configuration: ApplicationConfiguration(
                address: .hostname(address.host, port: port), serverName: serverName
            ),
            onServerRunning: { [unowned self] channel in
                state.withLock { $0.bound[name] = channel.localAddress }
                logger.info(name == "https" ? "HTTPS API bound" : "HTTP API bound", metadata: ["address": "\(channel.localAddress.map { "\($0)" } ?? "?")"])
            },
            eventLoopGroupProvider: .shared(group),
            logger: logger
        )
    }
}
