import ArgumentParser
import Dispatch
import HeraldClient
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

/// The process's entry. The command runs on Swift's global executor while the main thread
/// waits on a semaphore, rather than parking in `dispatch_main` as an `async` main does:
/// valgrind 3.19 (Debian 12's) crashes in libdispatch's `sigsuspend` there, and counting the
/// push path's instructions with callgrind (`scripts/count-instructions`) needs valgrind.
/// Nothing in Herald runs on the main actor or the main queue.
@main
enum HeraldEntry {
    static func main() {
        let done = DispatchSemaphore(value: 0)
        // What `AsyncParsableCommand.main()` does, off the main actor it is isolated to.
        Task.detached {
            do {
                var command = try Herald.parseAsRoot()
                if var asyncCommand = command as? any AsyncParsableCommand {
                    try await asyncCommand.run()
                } else {
                    try command.run()
                }
            } catch {
                Herald.exit(withError: error)
            }
            done.signal()
        }
        done.wait()
    }
}

/// The `herald` executable.
struct Herald: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "herald",
        abstract: "Herald, a self-hosted push server.",
        subcommands: [Serve.self, Device.self],
        defaultSubcommand: Serve.self
    )
}

/// `herald serve`: run a node. Every flag has an environment variable; the flag wins.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a Herald node (flags override HERALD_* variables).")

    @Option(help: "HERALD_NODE_ID: this node's id (default: the host name).") var nodeID: String?
    @Option(help: "HERALD_REDIS_URL: redis://[:password@]host:port[/db] (unset: messages in memory).") var redisURL: String?
    @Option(help: "HERALD_TCP_ADDR: device listener, host:port (default 0.0.0.0:9988).") var tcpAddr: String?
    @Option(help: "HERALD_HTTP_ADDR: HTTP API, host:port (default 0.0.0.0:8080; empty: off).") var httpAddr: String?
    @Option(help: "HERALD_TLS_CERT: PEM certificate, then its chain (turns on the TLS listeners).") var tlsCert: String?
    @Option(help: "HERALD_TLS_KEY: PEM private key of the certificate, ECDSA or RSA.") var tlsKey: String?
    @Option(help: "HERALD_TLS_CLIENT_CA: PEM CA that device certificates must chain to (mutual TLS).") var tlsClientCA: String?
    @Option(help: "HERALD_TLS_MAX_HANDSHAKES: TLS handshakes in progress per listener before it stops accepting (1024; 0: no bound).") var tlsMaxHandshakes: String?
    @Option(help: "HERALD_TLS_ADDR: devices over TLS, host:port (default 0.0.0.0:9443 with a certificate; empty: off).") var tlsAddr: String?
    @Option(help: "HERALD_WS_ADDR: devices over WebSocket, host:port (off unless set, or --ws).") var wsAddr: String?
    @Option(help: "HERALD_WSS_ADDR: devices over WebSocket in TLS (default 0.0.0.0:9444 with a certificate; empty: off).") var wssAddr: String?
    @Option(help: "HERALD_HTTPS_ADDR: HTTP API over TLS (default 0.0.0.0:8443 with a certificate; empty: off).") var httpsAddr: String?
    @Option(help: "HERALD_WS_ALLOWED_ORIGINS: comma-separated browser origins allowed on WebSocket (unset: any).") var wsAllowedOrigins: String?
    @Option(help: "HERALD_PROXY_PROTOCOL: on, off, or the device listeners (tcp,tls,ws,wss) that take PROXY headers (off).") var proxyProtocol: String?
    @Option(help: "HERALD_TRUSTED_PROXIES: comma-separated addresses or CIDR blocks of trusted proxies.") var trustedProxies: String?
    @Flag(help: "Turn the WebSocket listener on at 0.0.0.0:9989 (unless HERALD_WS_ADDR says where).") var ws = false
    @Option(help: "HERALD_API_KEYS: comma-separated API keys (unset: no API auth).") var apiKeys: String?
    @Option(help: "HERALD_DEVICE_JWT_SECRET: HS256 secret for device tokens (unset: no device auth).") var deviceJWTSecret: String?
    @Option(help: "HERALD_MAX_FRAME: largest device frame in bytes (65536).") var maxFrame: String?
    @Option(help: "HERALD_MAX_PAYLOAD: largest message payload in bytes (4096).") var maxPayload: String?
    @Option(help: "HERALD_WINDOW: unacknowledged PUSH frames per connection (64).") var window: String?
    @Option(help: "HERALD_HELLO_TIMEOUT_S: seconds to wait for HELLO (10).") var helloTimeoutS: String?
    @Option(help: "HERALD_HEARTBEAT_S: default heartbeat in seconds (30).") var heartbeatS: String?
    @Option(help: "HERALD_HEARTBEAT_MIN_S: smallest heartbeat a device may ask for (5).") var heartbeatMinS: String?
    @Option(help: "HERALD_HEARTBEAT_MAX_S: largest heartbeat a device may ask for (600).") var heartbeatMaxS: String?
    @Option(help: "HERALD_DEFAULT_TTL_S: message TTL when a push gives none (86400).") var defaultTTLS: String?
    @Option(help: "HERALD_MAX_TTL_S: largest ttl_s a push may ask for (2592000).") var maxTTLS: String?
    @Option(help: "HERALD_MAX_PENDING: stored messages per device before pushes get 429 (1000).") var maxPending: String?
    @Option(help: "HERALD_WEBHOOK_URL: http(s) URL the webhook events are POSTed to (unset: no webhook).") var webhookURL: String?
    @Option(help: "HERALD_WEBHOOK_SECRET: the webhook's HMAC-SHA256 signing secret, at least 16 bytes.") var webhookSecret: String?
    @Option(help: "HERALD_WEBHOOK_EVENTS: comma-separated event types to send (all).") var webhookEvents: String?
    @Option(help: "HERALD_WEBHOOK_RETRY_S: seconds a batch is retried before it is given up (86400).") var webhookRetryS: String?
    @Option(help: "HERALD_WEBHOOK_TIMEOUT_S: seconds one attempt may take (10).") var webhookTimeoutS: String?
    @Option(help: "HERALD_WEBHOOK_CONCURRENCY: batches in flight at once (4).") var webhookConcurrency: String?
    @Option(help: "HERALD_WEBHOOK_BATCH: events one POST carries at most (100).") var webhookBatch: String?
    @Option(help: "HERALD_WEBHOOK_QUEUE_MAX: events waiting at most before new ones are dropped (100000; memory store).") var webhookQueueMax: String?
    @Option(help: "HERALD_WEBHOOK_LEASE_S: seconds a node's hold on a webhook lane lasts unless renewed (10; Redis).") var webhookLeaseS: String?
    @Option(help: "HERALD_RECEIPT_RETENTION_S: seconds message status is kept after it is acked or expired (86400; 0: no status).") var receiptRetentionS: String?
    @Option(help: "HERALD_RECEIPT_MAX: final message statuses the memory store keeps at most (200000).") var receiptMax: String?
    @Option(help: "HERALD_DRAIN_TIMEOUT_S: seconds devices get to leave after GOAWAY (30).") var drainTimeoutS: String?
    @Option(help: "HERALD_WRITE_STALL_TIMEOUT_S: seconds a device that stopped reading is kept (30).") var writeStallTimeoutS: String?
    @Option(help: "HERALD_MAX_CONNECTIONS: open device sockets before new ones get 429 (0: no limit).") var maxConnections: String?
    @Option(help: "HERALD_MAX_FRAME_RATE: non-ACK frames per second per device before 429 (20).") var maxFrameRate: String?
    @Option(help: "HERALD_LOG_LEVEL: trace, debug, info, notice, warning, error or critical (info).") var logLevel: String?

    func run() async throws {
        var values = ProcessEnvironment.variables.filter { $0.key.hasPrefix("HERALD_") }
        let flags: [(String, String?)] = [
            ("HERALD_NODE_ID", nodeID), ("HERALD_REDIS_URL", redisURL), ("HERALD_TCP_ADDR", tcpAddr), ("HERALD_HTTP_ADDR", httpAddr),
            ("HERALD_TLS_CERT", tlsCert), ("HERALD_TLS_KEY", tlsKey), ("HERALD_TLS_CLIENT_CA", tlsClientCA), ("HERALD_TLS_MAX_HANDSHAKES", tlsMaxHandshakes),
            ("HERALD_TLS_ADDR", tlsAddr), ("HERALD_WS_ADDR", wsAddr), ("HERALD_WSS_ADDR", wssAddr), ("HERALD_HTTPS_ADDR", httpsAddr),
            ("HERALD_WS_ALLOWED_ORIGINS", wsAllowedOrigins), ("HERALD_PROXY_PROTOCOL", proxyProtocol),
            ("HERALD_TRUSTED_PROXIES", trustedProxies),
            ("HERALD_API_KEYS", apiKeys), ("HERALD_DEVICE_JWT_SECRET", deviceJWTSecret), ("HERALD_MAX_FRAME", maxFrame),
            ("HERALD_MAX_PAYLOAD", maxPayload), ("HERALD_WINDOW", window), ("HERALD_HELLO_TIMEOUT_S", helloTimeoutS),
            ("HERALD_HEARTBEAT_S", heartbeatS), ("HERALD_HEARTBEAT_MIN_S", heartbeatMinS),
            ("HERALD_HEARTBEAT_MAX_S", heartbeatMaxS), ("HERALD_DEFAULT_TTL_S", defaultTTLS), ("HERALD_MAX_TTL_S", maxTTLS),
            ("HERALD_MAX_PENDING", maxPending), ("HERALD_RECEIPT_RETENTION_S", receiptRetentionS),
            ("HERALD_WEBHOOK_URL", webhookURL), ("HERALD_WEBHOOK_SECRET", webhookSecret), ("HERALD_WEBHOOK_EVENTS", webhookEvents),
            ("HERALD_WEBHOOK_RETRY_S", webhookRetryS), ("HERALD_WEBHOOK_TIMEOUT_S", webhookTimeoutS),
            ("HERALD_WEBHOOK_CONCURRENCY", webhookConcurrency), ("HERALD_WEBHOOK_BATCH", webhookBatch), ("HERALD_WEBHOOK_QUEUE_MAX", webhookQueueMax),
            ("HERALD_WEBHOOK_LEASE_S", webhookLeaseS),
            ("HERALD_RECEIPT_MAX", receiptMax), ("HERALD_DRAIN_TIMEOUT_S", drainTimeoutS),
            ("HERALD_WRITE_STALL_TIMEOUT_S", writeStallTimeoutS), ("HERALD_MAX_CONNECTIONS", maxConnections),
            ("HERALD_MAX_FRAME_RATE", maxFrameRate), ("HERALD_LOG_LEVEL", logLevel),
        ]
        for (name, value) in flags { if let value { values[name] = value } }
        if ws, values["HERALD_WS_ADDR"] == nil { values["HERALD_WS_ADDR"] = "0.0.0.0:9989" }

        let configuration: NodeConfiguration
        do {
            configuration = try NodeConfiguration.load(values, hostName: ProcessEnvironment.hostName)
        } catch let error as ConfigurationError {
            FileDescriptorOutput.standardError("herald: \(error.message)\n")
            throw ExitCode(2)
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = configuration.logLevel
            return handler
        }
        let logger = Logger(label: "herald")
        let node: HeraldNode
        do {
            // HERALD_EVENT_LOOPS: that many threads for every socket; else NIO's shared group,
            // one thread per core.
            let group: any EventLoopGroup = configuration.eventLoops > 0
                ? MultiThreadedEventLoopGroup(numberOfThreads: configuration.eventLoops) : MultiThreadedEventLoopGroup.singleton
            node = try await HeraldNode.make(configuration: configuration, logger: logger, group: group)
        } catch {
            FileDescriptorOutput.standardError("herald: \(error)\n")
            throw ExitCode(2)
        }
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                // The watchdog runs beside the tree and stops after it (the group stops services in
                // reverse order), so it keeps judging the tree while the tree drains.
                services: [
                    .init(service: node.watchdog, successTerminationBehavior: .ignore),
                    .init(service: node.root, failureTerminationBehavior: .gracefullyShutdownGroup),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        do {
            try await group.run()
            logger.info("stopped")
        } catch {
            logger.critical("stopping after a failure of the supervision tree", metadata: ["error": "\(error)"])
            throw ExitCode(1)
        }
    }
}

/// `herald device`: a device in the terminal. Prints each PUSH, ACKs it, reconnects.
struct Device: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Connect as a device, print each message, acknowledge it.")

    @Option(help: "The device's client id.") var id: String
    @Option(help: "The device token (a JWT when the server checks tokens).") var token: String = ""
    @Option(help: "The server: host:port (TCP), or tcp://, tls://, ws:// or wss:// host[:port][/path].") var server: String = "127.0.0.1:9988"
    @Option(help: "Heartbeat to ask for, in seconds (0: the server's default).") var heartbeat: UInt16 = 0
    @Option(help: "PEM CA file to verify a tls:// or wss:// server with (default: the system's trust store).") var caFile: String?
    @Option(help: "Mutual TLS: the device's PEM certificate.") var certFile: String?
    @Option(help: "Mutual TLS: the device certificate's PEM key.") var keyFile: String?

    func run() async throws {
        guard let url = DeviceServerURL(server) else {
            throw ValidationError("--server must be host:port or tcp://, tls://, ws://, wss:// host[:port][/path], got \"\(server)\"")
        }
        var tls: DeviceClientTransport.TLS?
        if url.usesTLS {
            let context = try DeviceClientTransport.TLS.context(caFile: caFile, certificateFile: certFile, keyFile: keyFile)
            tls = DeviceClientTransport.TLS(context: context, serverName: url.host)
        }
        var configuration = DeviceClientConfiguration(
            host: url.host, port: url.port, clientID: id, token: token, heartbeatSeconds: heartbeat
        )
        configuration.transport = url.transport(tls: tls)
        let device = ReconnectingDevice(configuration: configuration)
        await device.run(
            onPush: { id, payload in
                let text = String(decoding: payload.readableBytesView, as: UTF8.self)
                FileDescriptorOutput.standardOutput("PUSH \(id) \(text)\n")
            },
            onEvent: { FileDescriptorOutput.standardError("herald device: \($0)\n") }
        )
    }
}

/// Unbuffered writes to the standard streams (a device prints as messages arrive).
enum FileDescriptorOutput {
    static func standardOutput(_ text: String) { write(1, text) }
    static func standardError(_ text: String) { write(2, text) }
    private static func write(_ descriptor: Int32, _ text: String) {
        var text = text
        text.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = Glibc.write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
                if written <= 0 { return }
                offset += written
            }
        }
    }
}

/// The process's environment and host name.
enum ProcessEnvironment {
    static var variables: [String: String] {
        var result: [String: String] = [:]
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                result[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            pointer += 1
        }
        return result
    }

    static var hostName: String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "herald" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
