import Actors
import Logging
import PushProtocol
import RedisStore
import Transport

/// A configuration value that is wrong; start-up stops with `message` (one line, naming the variable).
struct ConfigurationError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

/// A host and port as written in `HERALD_*_ADDR` (`host:port`, `[v6]:port`).
struct SocketAddressSpec: Sendable, Hashable, CustomStringConvertible {
    var host: String
    var port: Int

    var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    static func parse(_ text: String) -> SocketAddressSpec? {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty, let port = Int(portText), (0...65535).contains(port) else { return nil }
        return SocketAddressSpec(host: String(host), port: port)
    }
}

/// Everything `herald serve` is configured with. Each field comes from its command-line flag,
/// else its `HERALD_*` environment variable, else the default (Docs/operations.md lists them).
struct NodeConfiguration: Sendable {
    var nodeID: String
    /// Each listener's address; nil: that listener is off (its variable set to an empty value,
    /// or, for TLS ones, no certificate configured).
    var tcpAddress: SocketAddressSpec?
    var httpAddress: SocketAddressSpec?
    var tlsAddress: SocketAddressSpec?
    var wsAddress: SocketAddressSpec?
    var wssAddress: SocketAddressSpec?
    var httpsAddress: SocketAddressSpec?
    /// The certificate, key and (mutual TLS) client CA files; nil: no TLS listener.
    var tls: TLSFiles?
    /// Browser origins allowed on the WebSocket listeners (empty: any).
    var wsAllowedOrigins: Set<String>
    /// The device listeners whose connections begin with a PROXY protocol header.
    var proxyProtocol: Set<DeviceTransportKind>
    /// Proxies whose PROXY headers and X-Forwarded-For are believed.
    var trustedProxies: TrustedProxies
    var apiKeys: [String]
    var deviceJWTSecret: String?
    var maxFrame: Int
    var maxPayload: Int
    var window: Int
    var helloTimeoutSeconds: Int
    /// TLS handshakes a listener has in progress before it stops accepting (0: no bound).
    var tlsMaxHandshakes: Int
    var heartbeatSeconds: Int
    var heartbeatMinSeconds: Int
    var heartbeatMaxSeconds: Int
    var defaultTTLSeconds: Int64
    var maxTTLSeconds: Int64
    var maxPending: Int
    /// How long a message's status is kept after its final state (acked, expired); 0: no status.
    var receiptRetentionSeconds: Int
    /// The retention in milliseconds; nil: no status.
    var receiptRetentionMillis: Int64? { receiptRetentionSeconds > 0 ? Int64(receiptRetentionSeconds) * 1000 : nil }
    /// The most final statuses the memory store keeps (the oldest are forgotten first).
    var maxReceipts: Int
    var drainTimeoutSeconds: Int
    var writeStallTimeoutSeconds: Int
    var maxConnections: Int
    var redis: RedisConfiguration?
    /// Where the relay listener binds (cluster only).
    var relayAddress: SocketAddressSpec
    /// The relay address peers dial; nil: the bound one, with an unspecified host replaced
    /// by this machine's host name.
    var relayAdvertiseAddress: SocketAddressSpec?
    /// Authenticates relay links; falls back to the device JWT secret.
    var clusterSecret: String?
    /// Relay links PING this often; a link silent for three intervals is closed.
    var relayPingSeconds: Int
    /// An HTTP connection with no request for this long is closed.
    var httpIdleTimeoutSeconds: Int
    /// Pushes and broadcasts answered on the event loop, in front of the router (`PushFastPath`).
    var httpFastPath: Bool
    /// With Redis: a push is answered 202 only once this many replicas have it (0: no wait).
    var redisWaitReplicas: Int
    /// How long to wait for them; past it the push is taken back and answered 503.
    var redisWaitTimeoutMillis: Int
    var hostName: String
    var maxFramesPerSecond: Int
    /// Failed device authentications one address may have at once and per minute (0: no limit).
    var maxAuthFailures: Int
    var logLevel: Logger.Level
    /// Event-loop threads (0: one per core).
    var eventLoops: Int
    /// Test-only fault hooks (`HERALD_FAULT_HOOKS=1`): lets a test kill a supervised child.
    var faultHooks: Bool
    /// The webhook (Docs/webhooks.md); nil without `HERALD_WEBHOOK_URL`.
    var webhook: WebhookSettings? = nil

    /// The variables, in the order Docs/operations.md lists them.
    static let variables = [
        "HERALD_NODE_ID", "HERALD_REDIS_URL", "HERALD_RELAY_ADDR", "HERALD_RELAY_ADVERTISE_ADDR", "HERALD_CLUSTER_SECRET", "HERALD_RELAY_PING_S", "HERALD_HTTP_IDLE_TIMEOUT_S", "HERALD_HTTP_FAST_PATH", "HERALD_REDIS_WAIT_REPLICAS", "HERALD_REDIS_WAIT_TIMEOUT_MS", "HERALD_TCP_ADDR", "HERALD_HTTP_ADDR", "HERALD_TLS_CERT", "HERALD_TLS_KEY", "HERALD_TLS_CLIENT_CA", "HERALD_TLS_MAX_HANDSHAKES", "HERALD_TLS_ADDR", "HERALD_WS_ADDR", "HERALD_WSS_ADDR", "HERALD_HTTPS_ADDR", "HERALD_WS_ALLOWED_ORIGINS", "HERALD_PROXY_PROTOCOL", "HERALD_TRUSTED_PROXIES", "HERALD_API_KEYS", "HERALD_DEVICE_JWT_SECRET",
        "HERALD_MAX_FRAME", "HERALD_MAX_PAYLOAD", "HERALD_WINDOW", "HERALD_HELLO_TIMEOUT_S", "HERALD_HEARTBEAT_S",
        "HERALD_HEARTBEAT_MIN_S", "HERALD_HEARTBEAT_MAX_S", "HERALD_DEFAULT_TTL_S", "HERALD_MAX_TTL_S",
        "HERALD_MAX_PENDING", "HERALD_WEBHOOK_URL", "HERALD_WEBHOOK_SECRET", "HERALD_WEBHOOK_EVENTS", "HERALD_WEBHOOK_RETRY_S",
        "HERALD_WEBHOOK_TIMEOUT_S", "HERALD_WEBHOOK_CONCURRENCY", "HERALD_WEBHOOK_BATCH", "HERALD_WEBHOOK_QUEUE_MAX", "HERALD_WEBHOOK_LEASE_S", "HERALD_RECEIPT_RETENTION_S", "HERALD_RECEIPT_MAX", "HERALD_DRAIN_TIMEOUT_S", "HERALD_WRITE_STALL_TIMEOUT_S", "HERALD_MAX_CONNECTIONS", "HERALD_MAX_FRAME_RATE", "HERALD_MAX_AUTH_FAILURES", "HERALD_EVENT_LOOPS", "HERALD_LOG_LEVEL", "HERALD_FAULT_HOOKS",
    ]

    /// Reads the configuration from `values` (variable name -> text; flags already merged over
    /// the environment). Throws a `ConfigurationError` naming the first bad variable.
    static func load(_ values: [String: String], hostName: String = "herald") throws -> NodeConfiguration {
        let reader = Reader(values: values)
        let defaultNodeID = String(hostName.unicodeScalars.map { Identifiers.isClientIDByte(UInt8(truncatingIfNeeded: $0.value)) && $0.isASCII ? Character($0) : "-" }.prefix(64))
        let nodeID = try reader.string("HERALD_NODE_ID", default: defaultNodeID.isEmpty ? "herald" : defaultNodeID)
        guard Identifiers.isValidClientID(nodeID), nodeID.utf8.count <= 64 else {
            throw ConfigurationError(message: "HERALD_NODE_ID must be 1 to 64 characters of [A-Za-z0-9._:@-], got \"\(nodeID)\"")
        }
        let heartbeatMin = try reader.int("HERALD_HEARTBEAT_MIN_S", default: 5, range: 1...65535)
        let heartbeatMax = try reader.int("HERALD_HEARTBEAT_MAX_S", default: 600, range: 1...65535)
        guard heartbeatMin <= heartbeatMax else {
            throw ConfigurationError(message: "HERALD_HEARTBEAT_MIN_S (\(heartbeatMin)) must not exceed HERALD_HEARTBEAT_MAX_S (\(heartbeatMax))")
        }
        let heartbeat = try reader.int("HERALD_HEARTBEAT_S", default: min(max(30, heartbeatMin), heartbeatMax), range: heartbeatMin...heartbeatMax)
        let maxFrame = try reader.int("HERALD_MAX_FRAME", default: 65536, range: 64...(16 << 20))
        let maxPayload = try reader.int("HERALD_MAX_PAYLOAD", default: 4096, range: 1...(16 << 20))
        guard maxPayload + 1 + 2 + Identifiers.maxMessageIDLength <= maxFrame else {
            throw ConfigurationError(message: "HERALD_MAX_PAYLOAD (\(maxPayload)) must leave room for a PUSH frame within HERALD_MAX_FRAME (\(maxFrame))")
        }
        let maxTTL = try reader.int("HERALD_MAX_TTL_S", default: 2_592_000, range: 1...315_360_000)
        let jwtSecret = try reader.optional("HERALD_DEVICE_JWT_SECRET")
        if let jwtSecret, jwtSecret.utf8.count < 32 {
            // HS256 keys shorter than the hash output are weak (RFC 7518 §3.2); jwt-kit refuses them.
            throw ConfigurationError(message: "HERALD_DEVICE_JWT_SECRET must be at least 32 bytes, got \(jwtSecret.utf8.count)")
        }
        var redis: RedisConfiguration?
        if let url = try reader.optional("HERALD_REDIS_URL") {
            guard let parsed = RedisConfiguration(url: url) else {
                throw ConfigurationError(
                    message: "HERALD_REDIS_URL must be redis://[:password@]host:port[/db], unix://[:password@]/path/to/redis.sock[?db=N], redis+sentinel://[:password@]host:port[,host:port...]/master[/db] or redis+cluster://[:password@]host:port[,host:port...], got \"\(url)\""
                )
            }
            if parsed.isCluster, parsed.database != 0 {
                throw ConfigurationError(
                    message: "HERALD_REDIS_URL names database \(parsed.database) of a Redis Cluster, which has only database 0 (no SELECT): drop the /\(parsed.database)"
                )
            }
            redis = parsed
        }
        let clusterSecret = try reader.optional("HERALD_CLUSTER_SECRET")
        if let clusterSecret, clusterSecret.utf8.count < 32 {
            throw ConfigurationError(message: "HERALD_CLUSTER_SECRET must be at least 32 bytes, got \(clusterSecret.utf8.count)")
        }
        var advertise: SocketAddressSpec?
        if try reader.optional("HERALD_RELAY_ADVERTISE_ADDR") != nil {
            advertise = try reader.address("HERALD_RELAY_ADVERTISE_ADDR", default: "")
            if advertise?.port == 0 || ["0.0.0.0", "::"].contains(advertise?.host ?? "") {
                throw ConfigurationError(message: "HERALD_RELAY_ADVERTISE_ADDR must be an address peers can dial, got \"\(advertise!)\"")
            }
        }
        let logLevelText = try reader.string("HERALD_LOG_LEVEL", default: "info")
        guard let logLevel = Logger.Level(rawValue: logLevelText.lowercased()) else {
            throw ConfigurationError(message: "HERALD_LOG_LEVEL must be one of trace, debug, info, notice, warning, error, critical, got \"\(logLevelText)\"")
        }
        let certificate = try reader.optional("HERALD_TLS_CERT")
        let key = try reader.optional("HERALD_TLS_KEY")
        let clientCA = try reader.optional("HERALD_TLS_CLIENT_CA")
        var tls: TLSFiles?
        switch (certificate, key) {
        case (let certificate?, let key?): tls = TLSFiles(certificate: certificate, key: key, clientCA: clientCA)
        case (nil, nil):
            if clientCA != nil {
                throw ConfigurationError(message: "HERALD_TLS_CLIENT_CA needs HERALD_TLS_CERT and HERALD_TLS_KEY (the server's own certificate)")
            }
        case (nil, _): throw ConfigurationError(message: "HERALD_TLS_KEY is set but HERALD_TLS_CERT is not: both or neither")
        case (_, nil): throw ConfigurationError(message: "HERALD_TLS_CERT is set but HERALD_TLS_KEY is not: both or neither")
        }
        // The TLS listeners are on by default with a certificate; naming one without it is an error.
        func tlsListener(_ name: String, _ fallback: String) throws -> SocketAddressSpec? {
            let address = try reader.listener(name, default: tls == nil ? nil : fallback)
            if address != nil, tls == nil {
                throw ConfigurationError(message: "\(name) needs a certificate: set HERALD_TLS_CERT and HERALD_TLS_KEY")
            }
            return address
        }
        let tcpAddress = try reader.listener("HERALD_TCP_ADDR", default: "0.0.0.0:9988")
        let tlsAddress = try tlsListener("HERALD_TLS_ADDR", "0.0.0.0:9443")
        let wsAddress = try reader.listener("HERALD_WS_ADDR", default: nil)
        let wssAddress = try tlsListener("HERALD_WSS_ADDR", "0.0.0.0:9444")
        guard tcpAddress != nil || tlsAddress != nil || wsAddress != nil || wssAddress != nil else {
            throw ConfigurationError(message: "every device listener is off (HERALD_TCP_ADDR, HERALD_TLS_ADDR, HERALD_WS_ADDR, HERALD_WSS_ADDR): devices could not connect")
        }
        let origins = try reader.list("HERALD_WS_ALLOWED_ORIGINS")
        if let bad = origins.first(where: { !($0.hasPrefix("http://") || $0.hasPrefix("https://")) || $0.hasSuffix("/") }) {
            throw ConfigurationError(message: "HERALD_WS_ALLOWED_ORIGINS must list origins like https://app.example.com (scheme, host, optional port, no path), got \"\(bad)\"")
        }
        let proxyText = try reader.string("HERALD_PROXY_PROTOCOL", default: "off").lowercased()
        var proxyProtocol: Set<DeviceTransportKind> = []
        switch proxyText {
        case "0", "false", "no", "off": break
        case "1", "true", "yes", "on", "all": proxyProtocol = Set(DeviceTransportKind.allCases)
        default:
            for name in proxyText.split(separator: ",") {
                guard let kind = DeviceTransportKind(rawValue: name.trimmingCharacters()) else {
                    throw ConfigurationError(message: "HERALD_PROXY_PROTOCOL must be on, off, or a list of device listeners (tcp, tls, ws, wss), got \"\(proxyText)\"")
                }
                proxyProtocol.insert(kind)
            }
        }
        let trustedProxies: TrustedProxies
        switch TrustedProxies.parse(try reader.list("HERALD_TRUSTED_PROXIES")) {
        case .success(let proxies): trustedProxies = proxies
        case .failure(let error):
            throw ConfigurationError(message: "HERALD_TRUSTED_PROXIES must list addresses or CIDR blocks (10.0.0.0/8, 2001:db8::/32), got \"\(error.entry)\"")
        }
        if !proxyProtocol.isEmpty, trustedProxies.isEmpty {
            throw ConfigurationError(message: "HERALD_PROXY_PROTOCOL needs HERALD_TRUSTED_PROXIES: the addresses of the proxies allowed to send PROXY headers")
        }
        let configuration = NodeConfiguration(
            nodeID: nodeID,
            tcpAddress: tcpAddress,
            httpAddress: try reader.listener("HERALD_HTTP_ADDR", default: "0.0.0.0:8080"),
            tlsAddress: tlsAddress,
            wsAddress: wsAddress,
            wssAddress: wssAddress,
            httpsAddress: try tlsListener("HERALD_HTTPS_ADDR", "0.0.0.0:8443"),
            tls: tls,
            wsAllowedOrigins: Set(origins),
            proxyProtocol: proxyProtocol,
            trustedProxies: trustedProxies,
            apiKeys: try reader.list("HERALD_API_KEYS"),
            deviceJWTSecret: jwtSecret,
            maxFrame: maxFrame,
            maxPayload: maxPayload,
            window: try reader.int("HERALD_WINDOW", default: 64, range: 1...65535),
            helloTimeoutSeconds: try reader.int("HERALD_HELLO_TIMEOUT_S", default: 10, range: 1...3600),
            tlsMaxHandshakes: try reader.int("HERALD_TLS_MAX_HANDSHAKES", default: 1024, range: 0...1_000_000),
            heartbeatSeconds: heartbeat,
            heartbeatMinSeconds: heartbeatMin,
            heartbeatMaxSeconds: heartbeatMax,
            defaultTTLSeconds: Int64(try reader.int("HERALD_DEFAULT_TTL_S", default: min(86_400, maxTTL), range: 1...maxTTL)),
            maxTTLSeconds: Int64(maxTTL),
            maxPending: try reader.int("HERALD_MAX_PENDING", default: 1000, range: 1...10_000_000),
            receiptRetentionSeconds: try reader.int("HERALD_RECEIPT_RETENTION_S", default: 86_400, range: 0...2_592_000),
            maxReceipts: try reader.int("HERALD_RECEIPT_MAX", default: 200_000, range: 1...100_000_000),
            drainTimeoutSeconds: try reader.int("HERALD_DRAIN_TIMEOUT_S", default: 30, range: 0...86_400),
            writeStallTimeoutSeconds: try reader.int("HERALD_WRITE_STALL_TIMEOUT_S", default: 30, range: 1...3600),
            maxConnections: try reader.int("HERALD_MAX_CONNECTIONS", default: 0, range: 0...100_000_000),
            redis: redis,
            relayAddress: try reader.address("HERALD_RELAY_ADDR", default: "0.0.0.0:9990"),
            relayAdvertiseAddress: advertise,
            clusterSecret: clusterSecret,
            relayPingSeconds: try reader.int("HERALD_RELAY_PING_S", default: 5, range: 1...60),
            httpIdleTimeoutSeconds: try reader.int("HERALD_HTTP_IDLE_TIMEOUT_S", default: 30, range: 1...3600),
            httpFastPath: try reader.bool("HERALD_HTTP_FAST_PATH", default: true),
            redisWaitReplicas: try reader.int("HERALD_REDIS_WAIT_REPLICAS", default: 0, range: 0...16),
            // Below half the command timeout (2 s): the append's own deadline (Docs/store.md).
            redisWaitTimeoutMillis: try reader.int("HERALD_REDIS_WAIT_TIMEOUT_MS", default: 500, range: 1...900),
            hostName: hostName,
            maxFramesPerSecond: try reader.int("HERALD_MAX_FRAME_RATE", default: 20, range: 1...1_000_000),
            maxAuthFailures: try reader.int("HERALD_MAX_AUTH_FAILURES", default: 60, range: 0...1_000_000),
            logLevel: logLevel,
            eventLoops: try reader.int("HERALD_EVENT_LOOPS", default: 0, range: 0...1024),
            faultHooks: try reader.bool("HERALD_FAULT_HOOKS", default: false)
        )
        var loaded = configuration
        loaded.webhook = try webhookSettings(reader)
        return loaded
    }

    private static func webhookSettings(_ reader: Reader) throws -> WebhookSettings? {
        guard let url = try reader.optional("HERALD_WEBHOOK_URL") else { return nil }
        guard let target = WebhookTarget(url) else {
            throw ConfigurationError(message: "HERALD_WEBHOOK_URL must be an http:// or https:// URL without user info, got \(url)")
        }
        guard let secret = try reader.optional("HERALD_WEBHOOK_SECRET"), secret.utf8.count >= 16 else {
            throw ConfigurationError(message: "HERALD_WEBHOOK_URL needs HERALD_WEBHOOK_SECRET, at least 16 bytes: receivers check every request's signature")
        }
        var events = Set(WebhookEventType.allCases)
        let named = try reader.list("HERALD_WEBHOOK_EVENTS")
        if !named.isEmpty {
            events = []
            for name in named {
                guard let type = WebhookEventType(rawValue: name) else {
                    throw ConfigurationError(
                        message: "HERALD_WEBHOOK_EVENTS: unknown event \(name); known: \(WebhookEventType.allCases.map(\.rawValue).joined(separator: ", "))"
                    )
                }
                events.insert(type)
            }
        }
        return WebhookSettings(
            target: target, secret: secret, events: events,
            retryFor: .seconds(try reader.int("HERALD_WEBHOOK_RETRY_S", default: 86_400, range: 0...2_592_000)),
            timeout: .seconds(try reader.int("HERALD_WEBHOOK_TIMEOUT_S", default: 10, range: 1...300)),
            concurrency: try reader.int("HERALD_WEBHOOK_CONCURRENCY", default: 4, range: 1...64),
            batch: try reader.int("HERALD_WEBHOOK_BATCH", default: 100, range: 1...10_000),
            queueCapacity: try reader.int("HERALD_WEBHOOK_QUEUE_MAX", default: 100_000, range: 1...100_000_000),
            lease: .seconds(try reader.int("HERALD_WEBHOOK_LEASE_S", default: 10, range: 2...300))
        )
    }

    /// The address peers dial for this node's relay listener bound on `port`.
    func advertisedRelayAddress(boundPort port: Int) -> String {
        if let relayAdvertiseAddress { return relayAdvertiseAddress.description }
        let host = ["0.0.0.0", "::", ""].contains(relayAddress.host) ? hostName : relayAddress.host
        return SocketAddressSpec(host: host, port: port).description
    }

    /// The device-session settings this configuration implies.
    var session: SessionConfiguration {
        SessionConfiguration(
            nodeID: nodeID,
            maxFrame: maxFrame,
            window: window,
            helloTimeout: .seconds(Int64(helloTimeoutSeconds)),
            defaultHeartbeatSeconds: UInt16(heartbeatSeconds),
            heartbeatRange: UInt16(heartbeatMinSeconds)...UInt16(heartbeatMaxSeconds),
            stallTimeout: .seconds(Int64(writeStallTimeoutSeconds)),
            maxConnections: maxConnections,
            maxFramesPerSecond: maxFramesPerSecond
        )
    }

    private struct Reader {
        let values: [String: String]

        func optional(_ name: String) throws -> String? {
            guard let value = values[name] else { return nil }
            let trimmed = value.trimmingWhitespace()
            return trimmed.isEmpty ? nil : trimmed
        }

        func string(_ name: String, default fallback: String) throws -> String {
            try optional(name) ?? fallback
        }

        func int(_ name: String, default fallback: Int, range: ClosedRange<Int>) throws -> Int {
            guard let text = try optional(name) else { return fallback }
            guard let value = Int(text), range.contains(value) else {
                throw ConfigurationError(message: "\(name) must be an integer from \(range.lowerBound) to \(range.upperBound), got \"\(text)\"")
            }
            return value
        }

        func bool(_ name: String, default fallback: Bool) throws -> Bool {
            guard let text = try optional(name) else { return fallback }
            switch text.lowercased() {
            case "1", "true", "yes", "on": return true
            case "0", "false", "no", "off": return false
            default: throw ConfigurationError(message: "\(name) must be true or false, got \"\(text)\"")
            }
        }

        func address(_ name: String, default fallback: String) throws -> SocketAddressSpec {
            let text = try string(name, default: fallback)
            guard let address = SocketAddressSpec.parse(text) else {
                throw ConfigurationError(message: "\(name) must be host:port (port 0 to 65535), got \"\(text)\"")
            }
            return address
        }

        /// A listener's address: unset gives `fallback` (nil: off), an empty value turns it off.
        func listener(_ name: String, default fallback: String?) throws -> SocketAddressSpec? {
            if let value = values[name], value.trimmingWhitespace().isEmpty { return nil }
            guard let text = try optional(name) ?? fallback else { return nil }
            guard let address = SocketAddressSpec.parse(text) else {
                throw ConfigurationError(message: "\(name) must be host:port (port 0 to 65535), or empty to turn it off, got \"\(text)\"")
            }
            return address
        }

        func list(_ name: String) throws -> [String] {
            guard let text = try optional(name) else { return [] }
            let items = text.split(separator: ",").map { String($0).trimmingWhitespace() }.filter { !$0.isEmpty }
            return items
        }
    }
}

extension Substring {
    func trimmingCharacters() -> String { String(self).trimmingWhitespace() }
}

extension String {
    func trimmingWhitespace() -> String {
        var scalars = Substring(self)
        while let first = scalars.first, first.isWhitespace { scalars.removeFirst() }
        while let last = scalars.last, last.isWhitespace { scalars.removeLast() }
        return String(scalars)
    }
}
