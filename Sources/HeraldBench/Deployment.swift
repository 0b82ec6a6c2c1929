import ArgumentParser
import Foundation
import HeraldClient
import HeraldTestSupport

/// Where the servers under test come from: started by the bench (a release `herald`, and a
/// `redis-server` when asked), or already running (`--target`).
struct ServerOptions: ParsableArguments {
    @Option(help: "The herald binary to start (default: the one next to herald-bench).")
    var herald: String?

    @Flag(help: "Start a redis-server (no persistence) and run the nodes on the Redis store.")
    var redis = false

    @Option(help: "The redis-server binary.")
    var redisServer = "redis-server"

    @Option(help: "Herald's Redis module (a herald.so built from RedisModule/herald.c) for every redis-server the bench starts to load (with --redis-masters, each cluster node).")
    var redisModule: String?

    @Flag(help: "The nodes reach the redis-server the bench starts through its Unix socket (HERALD_REDIS_URL=unix://...) instead of TCP; one Redis only.")
    var redisUnixSocket = false

    @Option(help: "Start a Redis Cluster of this many masters (no replicas, no persistence) instead of one redis-server; more than 1 implies --redis.")
    var redisMasters = 1

    @Option(parsing: .singleValue, help: ArgumentHelp(
        "A running node instead of starting one: host:device-port:http-port[:pid] (the pid, to read its CPU and memory). Repeat for a cluster.",
        valueName: "node"))
    var target: [String] = []

    @Option(help: "A running Redis's pid, to count its CPU (with --target).")
    var targetRedisPid: Int32?

    @Option(help: "API key for a --target node's HTTP API.")
    var apiKey: String?

    @Option(parsing: .singleValue, help: ArgumentHelp("Extra environment for the nodes the bench starts (NAME=VALUE; repeatable).", valueName: "env"))
    var nodeEnv: [String] = []

    @Option(help: "How the devices reach the nodes: tcp, tls, ws or wss. For the nodes it starts, the bench makes a self-signed ECDSA certificate (openssl) and turns the listener on.")
    var transport: BenchTransport = .tcp

    @Option(help: "The CA file (PEM) the devices trust, for --transport tls or wss with --target nodes.")
    var caFile: String?

    func validate() throws {
        if redisUnixSocket, redisMasters > 1 { throw ValidationError("--redis-unix-socket is for one redis-server, not --redis-masters") }
    }

    /// The store the run's report names.
    var storeLabel: String {
        redisMasters > 1
            ? "redis-cluster-\(redisMasters)\(redisModule == nil ? "" : "+module")"
            : redis || redisUnixSocket ? "redis\(redisUnixSocket ? "+unix" : "")\(redisModule == nil ? "" : "+module")" : (target.isEmpty ? "memory" : "target")
    }
}

/// The devices' side of a load: what each message carries and where the devices connect from.
struct DeviceLoadOptions: ParsableArguments {
    @Option(help: "Payload bytes per message (at least 32).") var payloadBytes = 64
    @Option(help: "Local addresses the devices connect from, comma-separated.") var localHosts = "127.0.0.2,127.0.0.3"
}

/// The device transports herald-bench can drive (protocol.md §1).
enum BenchTransport: String, ExpressibleByArgument, CaseIterable, Sendable {
    case tcp, tls, ws, wss

    var usesTLS: Bool { self == .tls || self == .wss }
    var usesWebSocket: Bool { self == .ws || self == .wss }

    /// The node variable of this transport's listener.
    var listenerVariable: String {
        ["tcp": "HERALD_TCP_ADDR", "tls": "HERALD_TLS_ADDR", "ws": "HERALD_WS_ADDR", "wss": "HERALD_WSS_ADDR"][rawValue]!
    }

    /// The client side: a TLS context trusting `caFile` when the transport uses TLS, a
    /// WebSocket upgrade on /ws when it uses WebSocket. Every connection of a process
    /// shares the one context.
    func client(caFile: String?) throws -> DeviceClientTransport {
        guard usesTLS else { return DeviceClientTransport(tls: nil, webSocketPath: usesWebSocket ? "/ws" : nil) }
        guard let caFile else { throw ValidationError("--transport \(rawValue) needs --ca-file for --target nodes") }
        let context = try DeviceClientTransport.TLS.context(caFile: caFile)
        return DeviceClientTransport(tls: .init(context: context, serverName: nil), webSocketPath: usesWebSocket ? "/ws" : nil)
    }
}

/// One node under test.
struct Node: Sendable {
    var host: String
    var devicePort: Int
    var httpPort: Int
    var pid: Int32?
}

/// The servers of one run; `stop()` ends whatever the bench started, by PID.
final class Deployment: Sendable {
    let nodes: [Node]
    /// The Redis processes whose CPU counts (one, or each master of a cluster).
    let redisPIDs: [Int32]
    let apiKey: String?
    /// The devices' transport; `devicePort` of each node is its listener.
    let transport: BenchTransport
    /// The CA the devices trust (TLS transports).
    let caFile: String?
    private let children: [ChildProcess]
    private let directory: String?

    private init(nodes: [Node], redisPIDs: [Int32], apiKey: String?, transport: BenchTransport, caFile: String?, children: [ChildProcess], directory: String?) {
        self.nodes = nodes
        self.redisPIDs = redisPIDs
        self.apiKey = apiKey
        self.transport = transport
        self.caFile = caFile
        self.children = children
        self.directory = directory
    }

    /// The devices' side of the transport (one TLS context for this process).
    func clientTransport() throws -> DeviceClientTransport { try transport.client(caFile: caFile) }

    /// Starts the servers, runs `body` with them and stops them, whether `body` throws or not.
    static func run<Result>(_ options: ServerOptions, nodes count: Int, _ body: (Deployment) async throws -> Result) async throws -> Result {
        let deployment = try await start(options, nodes: count)
        do {
            let result = try await body(deployment)
            await deployment.stop()
            return result
        } catch {
            await deployment.stop()
            throw error
        }
    }

    /// Starts `count` nodes (on one Redis when `options.redis` or `count > 1`) or takes the targets.
    static func start(_ options: ServerOptions, nodes count: Int, extraEnvironment: [String: String] = [:]) async throws -> Deployment {
        if !options.target.isEmpty {
            let nodes = try options.target.map { entry -> Node in
                let parts = entry.split(separator: ":").map(String.init)
                guard parts.count >= 3, let device = Int(parts[1]), let http = Int(parts[2]) else {
                    throw ValidationError("--target is host:device-port:http-port[:pid], not \(entry)")
                }
                return Node(host: parts[0], devicePort: device, httpPort: http, pid: parts.count > 3 ? Int32(parts[3]) : nil)
            }
            guard nodes.count >= count else { throw ValidationError("this scenario needs \(count) --target nodes") }
            let deployment = Deployment(
                nodes: nodes, redisPIDs: options.targetRedisPid.map { [$0] } ?? [], apiKey: options.apiKey, transport: options.transport, caFile: options.caFile,
                children: [], directory: nil
            )
            try await deployment.waitReady()
            return deployment
        }
        let herald = options.herald ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("herald").path
        guard FileManager.default.isExecutableFile(atPath: herald) else {
            throw ValidationError("no herald binary at \(herald): build it (swift build -c release --product herald) or pass --herald")
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("herald-bench-\(getpid())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var children: [ChildProcess] = []
        do {
            var environment = extraEnvironment
            for entry in options.nodeEnv {
                guard let equals = entry.firstIndex(of: "=") else { throw ValidationError("--node-env is NAME=VALUE, not \(entry)") }
                environment[String(entry[..<equals])] = String(entry[entry.index(after: equals)...])
            }
            var caFile: String?
            if options.transport.usesTLS {
                caFile = try makeCertificate(in: directory)
                environment["HERALD_TLS_CERT"] = caFile
                environment["HERALD_TLS_KEY"] = "\(directory)/key.pem"
            }
            var redisPIDs: [Int32] = []
            if options.redisMasters > 1 {
                var ports: [Int] = []
                for index in 0..<options.redisMasters {
                    let port = try LoopbackPort.free()
                    let redis = try ChildProcess(name: "redis-server \(index)", executable: try which(options.redisServer), arguments: [
                        "--port", "\(port)", "--bind", "127.0.0.1", "--dir", directory, "--save", "", "--appendonly", "no",
                        "--logfile", "\(directory)/redis\(index).log", "--cluster-enabled", "yes", "--cluster-port", "\(try LoopbackPort.free())",
                        "--cluster-config-file", "\(directory)/nodes\(index).conf",
                    ] + (options.redisModule.map { ["--loadmodule", $0] } ?? []))
                    children.append(redis)
                    redisPIDs.append(redis.pid)
                    ports.append(port)
                    try await waitUntil("redis-server on port \(port)", stall: .seconds(10), progress: { 0 }) { LoopbackPort.acceptsConnections(port) }
                }
                try await createRedisCluster(ports: ports)
                environment["HERALD_REDIS_URL"] = "redis+cluster://" + ports.map { "127.0.0.1:\($0)" }.joined(separator: ",")
            } else if options.redis || options.redisUnixSocket || count > 1 {
                let port = try LoopbackPort.free()
                let socket = "\(directory)/redis.sock"
                let redis = try ChildProcess(name: "redis-server", executable: try which(options.redisServer), arguments: [
                    "--port", "\(port)", "--bind", "127.0.0.1", "--dir", directory, "--save", "", "--appendonly", "no",
                    "--logfile", "\(directory)/redis.log",
                ] + (options.redisUnixSocket ? ["--unixsocket", socket, "--unixsocketperm", "700"] : [])
                    + (options.redisModule.map { ["--loadmodule", $0] } ?? []))
                children.append(redis)
                redisPIDs = [redis.pid]
                environment["HERALD_REDIS_URL"] = options.redisUnixSocket ? "unix://\(socket)" : "redis://127.0.0.1:\(port)"
                try await waitUntil("redis-server on port \(port)", stall: .seconds(10), progress: { 0 }) { LoopbackPort.acceptsConnections(port) }
            }
            var nodes: [Node] = []
            for index in 0..<count {
                let (device, http, relay) = (try LoopbackPort.free(), try LoopbackPort.free(), try LoopbackPort.free())
                // Only the run's transport listens for devices: no listener on a conventional
                // port that two nodes (or another run) would share.
                var env = [
                    "HERALD_TCP_ADDR": "", "HERALD_TLS_ADDR": "", "HERALD_WS_ADDR": "", "HERALD_WSS_ADDR": "", "HERALD_HTTPS_ADDR": "",
                    "HERALD_NODE_ID": "bench-n\(index)", "HERALD_HTTP_ADDR": "127.0.0.1:\(http)",
                    "HERALD_RELAY_ADDR": "127.0.0.1:\(relay)", "HERALD_CLUSTER_SECRET": "herald-bench-cluster-secret-of-32-bytes-or-more",
                    "HERALD_LOG_LEVEL": "error", "HERALD_MAX_PENDING": "10000000", "HERALD_MAX_FRAME_RATE": "1000000",
                    "HERALD_HEARTBEAT_MIN_S": "1",
                ]
                env[options.transport.listenerVariable] = "127.0.0.1:\(device)"
                env.merge(environment) { $1 }
                let child = try ChildProcess(name: "herald n\(index)", executable: herald, arguments: ["serve"], environment: env)
                children.append(child)
                nodes.append(Node(host: "127.0.0.1", devicePort: device, httpPort: http, pid: child.pid))
            }
            let deployment = Deployment(
                nodes: nodes, redisPIDs: redisPIDs, apiKey: nil, transport: options.transport, caFile: caFile, children: children, directory: directory
            )
            try await deployment.waitReady()
            return deployment
        } catch {
            for child in children.reversed() { await child.stop(signal: SIGKILL) }
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
    }

    /// Waits until every node's `/readyz` answers 200 (and, in a cluster, sees every node).
    private func waitReady() async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        for node in nodes {
            func check() throws {
                if let child = children.first(where: { $0.pid == node.pid }), !child.isRunning { throw BenchError("\(child.name) exited") }
                guard ContinuousClock.now < deadline else { throw BenchError("node \(node.host):\(node.httpPort) not ready in 30 s") }
            }
            var connection: HTTPConnection?
            while connection == nil {
                try check()
                connection = try? await HTTPConnection.connect(host: node.host, port: node.httpPort, apiKey: apiKey)
                if connection == nil { try await Task.sleep(for: .milliseconds(20)) }
            }
            guard let connection else { continue }
            do {
                while try await connection.request(.GET, "/readyz").status != 200 {
                    try check()
                    try await Task.sleep(for: .milliseconds(20))
                }
                while nodes.count > 1, !(try await connection.request(.GET, "/v1/stats").body.contains("\"live_nodes\":\(nodes.count)")) {
                    try check()
                    try await Task.sleep(for: .milliseconds(20))
                }
            } catch {
                await connection.close()
                throw error
            }
            await connection.close()
        }
    }

    /// CPU seconds of every server process (nodes and Redis) whose pid is known: Redis as one
    /// sum, and each Redis process (a cluster's masters) on its own.
    func serverCPU() -> (nodes: [CPUTime], redis: CPUTime?, redisEach: [CPUTime]) {
        let each = redisPIDs.compactMap(ProcFS.cpuTime)
        return (nodes.compactMap { $0.pid.flatMap(ProcFS.cpuTime) }, each.isEmpty ? nil : each.reduce(.zero, +), each)
    }

    func stop() async {
        for child in children.reversed() { await child.stop() }
        if let directory { try? FileManager.default.removeItem(atPath: directory) }
    }
}

/// A self-signed ECDSA P-256 certificate for 127.0.0.1 and localhost in `directory`
/// (cert.pem, key.pem), made by openssl; returns the certificate's path, which the devices
/// also trust.
private func makeCertificate(in directory: String) throws -> String {
    let openssl = try which("openssl")
    let process = Process()
    process.executableURL = URL(fileURLWithPath: openssl)
    process.arguments = [
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "\(directory)/key.pem",
        "-out", "\(directory)/cert.pem", "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ]
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    try process.run()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else { throw BenchError("openssl could not make a certificate (status \(process.terminationStatus))") }
    return "\(directory)/cert.pem"
}

/// Joins the redis-servers on `ports` into a cluster of masters (`redis-cli --cluster create`,
/// the slots split evenly) and waits until each says `cluster_state:ok`.
private func createRedisCluster(ports: [Int]) async throws {
    func cli(_ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try which("redis-cli"))
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw BenchError("redis-cli \(arguments.joined(separator: " ")) failed (status \(process.terminationStatus))") }
        return String(decoding: data, as: UTF8.self)
    }
    _ = try cli(["--cluster", "create"] + ports.map { "127.0.0.1:\($0)" } + ["--cluster-replicas", "0", "--cluster-yes"])
    try await waitUntil("the Redis Cluster's state ok", stall: .seconds(30), progress: { 0 }) {
        try ports.allSatisfy { try cli(["-p", "\($0)", "CLUSTER", "INFO"]).contains("cluster_state:ok") }
    }
}

/// The path of `command` on PATH (or `command` itself if it holds a slash).
private func which(_ command: String) throws -> String {
    if command.contains("/") { return command }
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    for directory in path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin"] where access("\(directory)/\(command)", X_OK) == 0 {
        return "\(directory)/\(command)"
    }
    throw ValidationError("\(command) not found on PATH (apt-get install redis-server)")
}
