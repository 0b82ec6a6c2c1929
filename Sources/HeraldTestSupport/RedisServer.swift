import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// A real `redis-server` for one test: its own port and temporary directory, no persistence,
/// started by `start()`, killed by `stop()` (or `kill(signal:)` for fault injection).
public final class RedisServer: @unchecked Sendable {
    public let port: Int
    public let directory: URL
    private let lock = NSLock()
    private var process: Process?
    private let extraArguments: [String]
    private let configurationFile: String?
    /// The password `cli` authenticates with (the server's `--requirepass`), if any.
    public let password: String?
    /// With `unixSocketOnly`: the Unix socket the server listens on (it then has no TCP port).
    public let socketPath: String?

    /// Picks a free port and a fresh directory; nothing runs until `start()`. `configuration`,
    /// if given, is written to a file passed first (Sentinel needs a config file it can rewrite).
    /// With `password`, the server requires it (`--requirepass`, and `--masterauth` for its
    /// replication) and `cli` sends it. With `unixSocketOnly`, it listens on a Unix socket in its
    /// directory and on no TCP port (`--port 0`), so a client can reach it no other way.
    public init(arguments: [String] = [], configuration: String? = nil, password: String? = nil, unixSocketOnly: Bool = false) throws {
        port = try LoopbackPort.free()
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("herald-redis-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        socketPath = unixSocketOnly ? directory.appendingPathComponent("redis.sock").path : nil
        extraArguments = arguments + (password.map { ["--requirepass", $0, "--masterauth", $0] } ?? [])
        self.password = password
        if let configuration {
            let file = directory.appendingPathComponent("redis.conf").path
            try configuration.write(toFile: file, atomically: true, encoding: .utf8)
            configurationFile = file
        } else {
            configurationFile = nil
        }
    }

    /// `redis://127.0.0.1:<port>`, or `unix://<socket>` for a server on a Unix socket only.
    public var url: String { socketPath.map { "unix://\($0)" } ?? "redis://127.0.0.1:\(port)" }

    public var pid: Int32? { lock.withLock { process?.processIdentifier } }

    /// Starts redis-server (again, after a stop or kill, on the same port) and waits until it answers PING.
    public func start() async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        let listener = socketPath.map { ["--port", "0", "--unixsocket", $0, "--unixsocketperm", "700"] } ?? ["--port", "\(port)", "--bind", "127.0.0.1"]
        process.arguments = (configurationFile.map { [$0] } ?? []) + listener + [
            "--dir", directory.path, "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--logfile", directory.appendingPathComponent("redis.log").path,
        ] + extraArguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try ChildProcesses.run(process)
        lock.withLock { self.process = process }
        try await eventually("redis-server on \(socketPath ?? "port \(port)") answers", timeout: .seconds(10)) { await self.answersPing() }
    }

    /// Sends `signal` to the server (SIGKILL, SIGSTOP, SIGCONT).
    public func kill(signal: Int32) {
        guard let pid else { return }
        Foundation.kill(pid, signal)
    }

    /// Kills the server (SIGKILL: nothing is persisted anyway) and waits for it to be gone.
    /// (Foundation's `waitUntilExit` can block the concurrency pool here, so this polls, bounded.)
    public func stop() async throws {
        let process = lock.withLock { () -> Process? in
            defer { self.process = nil }
            return self.process
        }
        guard let process, process.isRunning else { return }
        Foundation.kill(process.processIdentifier, SIGKILL)
        try await eventually("redis-server exits", timeout: .seconds(10)) { !process.isRunning }
    }

    deinit {
        if let process, process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(at: directory)
    }

    /// Runs `body` with a started server (as `init` makes it), and always stops it.
    public static func with<T: Sendable>(
        arguments: [String] = [], password: String? = nil, unixSocketOnly: Bool = false, _ body: (RedisServer) async throws -> T
    ) async throws -> T {
        let server = try RedisServer(arguments: arguments, password: password, unixSocketOnly: unixSocketOnly)
        try await server.start()
        do {
            let result = try await body(server)
            try await server.stop()
            return result
        } catch {
            try? await server.stop()
            throw error
        }
    }

    private func answersPing() async -> Bool {
        let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        let connecting = socketPath.map { bootstrap.connect(unixDomainSocketPath: $0) } ?? bootstrap.connect(host: "127.0.0.1", port: port)
        guard let channel = try? await connecting.get() else { return false }
        channel.close(promise: nil)
        return true
    }

    private static var binary: String {
        for candidate in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] where FileManager.default.isExecutableFile(atPath: candidate) {
            return candidate
        }
        return "/usr/bin/redis-server"
    }

    /// Runs `redis-cli -p <port> <arguments>` (`-s <socket>` for a server on a Unix socket; with
    /// the server's password) and returns its output.
    public func cli(_ arguments: [String]) async throws -> String {
        if let socketPath { return try await Self.cli(target: ["-s", socketPath], arguments, password: password) }
        return try await Self.cli(port: port, arguments, password: password)
    }

    /// Runs `redis-cli -p <port> <arguments>` and returns its output (polling the process:
    /// `waitUntilExit` can block the concurrency pool).
    public static func cli(port: Int, _ arguments: [String], password: String? = nil, timeout: Duration = .seconds(10)) async throws -> String {
        try await cli(target: ["-p", "\(port)"], arguments, password: password, timeout: timeout)
    }

    private static func cli(target: [String], _ arguments: [String], password: String?, timeout: Duration = .seconds(10)) async throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary.replacingOccurrences(of: "redis-server", with: "redis-cli"))
        process.arguments = target + (password.map { ["-a", $0, "--no-auth-warning"] } ?? []) + arguments
        let output = ChildProcesses.pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try ChildProcesses.run(process)
        try await eventually("redis-cli \(arguments.joined(separator: " "))", timeout: timeout) { !process.isRunning }
        return String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    }
}

/// A master, a replica and three sentinels (quorum 2, down-after 1 s): for failover tests.
public final class RedisSentinelSet: Sendable {
    public let master: RedisServer
    public let replica: RedisServer
    public let sentinels: [RedisServer]
    public static let masterName = "herald-master"

    private init(master: RedisServer, replica: RedisServer, sentinels: [RedisServer]) {
        self.master = master
        self.replica = replica
        self.sentinels = sentinels
    }

    /// `redis+sentinel://127.0.0.1:<s1>,.../herald-master`
    public var url: String {
        "redis+sentinel://" + sentinels.map { "127.0.0.1:\($0.port)" }.joined(separator: ",") + "/\(Self.masterName)"
    }

    /// Starts the five servers and waits until the replica is in sync and every sentinel sees
    /// the master, the replica and the two other sentinels.
    public static func start() async throws -> RedisSentinelSet {
        let master = try RedisServer()
        try await master.start()
        let replica = try RedisServer(arguments: ["--replicaof", "127.0.0.1", "\(master.port)"])
        try await replica.start()
        var sentinels: [RedisServer] = []
        for _ in 0..<3 {
            let sentinel = try RedisServer(
                arguments: ["--sentinel"],
                configuration: """
                    sentinel monitor \(masterName) 127.0.0.1 \(master.port) 2
                    sentinel down-after-milliseconds \(masterName) 1000
                    sentinel failover-timeout \(masterName) 10000
                    sentinel parallel-syncs \(masterName) 1

                    """
            )
            try await sentinel.start()
            sentinels.append(sentinel)
        }
        let set = RedisSentinelSet(master: master, replica: replica, sentinels: sentinels)
        try await eventually("replica in sync, sentinels agreed", timeout: .seconds(30), poll: .milliseconds(200)) {
            guard try await replica.cli(["INFO", "replication"]).contains("master_link_status:up") else { return false }
            for sentinel in sentinels {
                let lines = try await sentinel.cli(["SENTINEL", "MASTER", masterName]).split(separator: "\n").map(String.init)
                func value(_ key: String) -> String? { lines.firstIndex(of: key).flatMap { $0 + 1 < lines.count ? lines[$0 + 1] : nil } }
                guard value("num-other-sentinels") == "2", value("num-slaves") == "1" else { return false }
            }
            return true
        }
        return set
    }

    /// The port of the server the sentinels now name as master.
    public func currentMasterPort() async throws -> Int? {
        let lines = try await sentinels[0].cli(["SENTINEL", "get-master-addr-by-name", Self.masterName]).split(separator: "\n")
        return lines.count == 2 ? Int(lines[1]) : nil
    }

    /// Kills all five.
    public func stop() async {
        for server in [master, replica] + sentinels { try? await server.stop() }
    }
}

/// A real Redis Cluster: three masters with one replica each, every node on loopback with its
/// client port and its cluster-bus port chosen below the ephemeral range (`--cluster-port`),
/// created with `redis-cli --cluster create`; node timeout 1 s, so a killed master's replica
/// takes over in about two seconds.
public final class RedisClusterSet: Sendable {
    /// The six nodes, in the order `redis-cli --cluster create` was given them (it makes the
    /// first three masters).
    public let nodes: [RedisServer]

    private init(nodes: [RedisServer]) { self.nodes = nodes }

    /// Every test cluster requires this password (`AUTH`), so every test on a cluster also
    /// checks that the client authenticates each connection it opens, the short-lived ones for
    /// `CLUSTER SLOTS` included.
    public static let password = "herald-test-cluster"

    /// `redis+cluster://:<password>@127.0.0.1:<first>,127.0.0.1:<second>` (two seeds of the six).
    public var url: String {
        "redis+cluster://:\(Self.password)@" + nodes.prefix(2).map { "127.0.0.1:\($0.port)" }.joined(separator: ",")
    }

    /// Starts six nodes, joins them into a cluster and waits until every node says
    /// `cluster_state:ok`. A master silent for `nodeTimeout` is failed over to its replica.
    /// `arguments` go to every node (Herald's module, say).
    public static func start(nodeTimeout: Duration = .seconds(1), arguments: [String] = []) async throws -> RedisClusterSet {
        var nodes: [RedisServer] = []
        for _ in 0..<6 {
            let node = try RedisServer(
                arguments: [
                    "--cluster-enabled", "yes", "--cluster-port", "\(try LoopbackPort.free())", "--cluster-node-timeout",
                    "\(nodeTimeout.components.seconds * 1000 + nodeTimeout.components.attoseconds / 1_000_000_000_000_000)",
                    "--cluster-require-full-coverage", "yes",
                ] + arguments,
                password: password
            )
            try await node.start()
            nodes.append(node)
        }
        let set = RedisClusterSet(nodes: nodes)
        do {
            _ = try await RedisServer.cli(
                port: nodes[0].port,
                ["--cluster", "create"] + nodes.map { "127.0.0.1:\($0.port)" } + ["--cluster-replicas", "1", "--cluster-yes"],
                password: password, timeout: .seconds(60)
            )
            try await set.waitUntilHealthy()
            try await eventually("every replica in sync with its master", timeout: .seconds(30), poll: .milliseconds(100)) {
                var synced = 0
                for node in nodes where try await node.cli(["INFO", "replication"]).contains("master_link_status:up") { synced += 1 }
                return synced == 3
            }
        } catch {
            await set.stop()
            throw error
        }
        return set
    }

    /// Waits until every running node reports `cluster_state:ok` and agrees on the masters.
    public func waitUntilHealthy(timeout: Duration = .seconds(30)) async throws {
        try await eventually("redis cluster state ok on every node", timeout: timeout, poll: .milliseconds(100)) {
            for node in self.nodes where node.pid != nil {
                guard try await node.cli(["CLUSTER", "INFO"]).contains("cluster_state:ok") else { return false }
            }
            return true
        }
    }

    /// The node that now serves `slot` as master, as the first running node sees it.
    public func master(ofSlot slot: Int) async throws -> RedisServer {
        guard let asked = nodes.first(where: { $0.pid != nil }) else { throw RedisClusterError(description: "no node runs") }
        // CLUSTER NODES: <id> <host:port@bus> <flags> <master id> <ping> <pong> <epoch> <link> <slot ranges...>
        for line in try await asked.cli(["CLUSTER", "NODES"]).split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 8, fields[2].split(separator: ",").contains("master"), !fields[2].contains("fail"),
                let port = fields[1].split(separator: "@").first?.split(separator: ":").last.flatMap({ Int($0) })
            else { continue }
            for range in fields[8...] where !range.hasPrefix("[") {
                let bounds = range.split(separator: "-").compactMap { Int($0) }
                guard let low = bounds.first, let high = bounds.last, (low...high).contains(slot) else { continue }
                if let master = nodes.first(where: { $0.port == port }) { return master }
            }
        }
        throw RedisClusterError(description: "no master found for slot \(slot)")
    }

    /// The slot of `key`, as the cluster computes it.
    public func slot(of key: String) async throws -> Int {
        guard let slot = Int(try await nodes[0].cli(["CLUSTER", "KEYSLOT", key]).trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw RedisClusterError(description: "CLUSTER KEYSLOT \(key) gave no number")
        }
        return slot
    }

    /// The node id of `node` (`CLUSTER MYID`).
    public func id(of node: RedisServer) async throws -> String {
        try await node.cli(["CLUSTER", "MYID"]).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Kills all six.
    public func stop() async {
        for node in nodes { try? await node.stop() }
    }

    /// Runs `body` with a cluster of its own (for a test that changes the topology), and always stops it.
    public static func with<T: Sendable>(
        nodeTimeout: Duration = .seconds(1), arguments: [String] = [], _ body: (RedisClusterSet) async throws -> T
    ) async throws -> T {
        let set = try await start(nodeTimeout: nodeTimeout, arguments: arguments)
        do {
            let result = try await body(set)
            await set.stop()
            return result
        } catch {
            await set.stop()
            throw error
        }
    }
}

public struct RedisClusterError: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}

extension RedisClusterSet {
    private actor Shared {
        var cluster: Task<RedisClusterSet, any Error>?
        var users = 0

        func acquire() async throws -> RedisClusterSet {
            users += 1
            if cluster == nil { cluster = Task { try await RedisClusterSet.start(nodeTimeout: .seconds(5)) } }
            do {
                return try await cluster!.value
            } catch {
                await release()
                throw error
            }
        }

        func release() async {
            users -= 1
            guard users == 0, let running = cluster else { return }
            cluster = nil
            if let set = try? await running.value { await set.stop() }
        }
    }

    private static let shared = Shared()

    /// Runs `body` with a cluster shared by the tests that run at the same time (six processes
    /// and two seconds to form it, so one serves many tests; each test keeps to its own keys,
    /// and must not change the cluster's topology). Stopped when its last user is done.
    public static func withShared<T: Sendable>(_ body: (RedisClusterSet) async throws -> T) async throws -> T {
        let set = try await shared.acquire()
        do {
            let result = try await body(set)
            await shared.release()
            return result
        } catch {
            await shared.release()
            throw error
        }
    }
}

/// Herald's Redis module (`RedisModule/herald.c`), built once per test process with the
/// machine's C compiler into the package's `.build`, for redis-server's `--loadmodule`.
public enum HeraldRedisModule {
    /// The one build of this process, which every caller awaits.
    private static let building = Mutex<Task<String, any Error>?>(nil)

    public struct ModuleBuildError: Error, CustomStringConvertible {
        public let description: String
    }

    /// The module's shared object (built on first use). The compiler is started as every
    /// child of the tests is (`ChildProcesses`) and awaited by polling, never by a blocking
    /// wait: a compiler started beside another child could otherwise hand it its pipe, and a
    /// blocked wait here held a thread of the concurrency pool until that other child ended.
    public static func path() async throws -> String {
        let task = building.withLock { current in
            if let current { return current }
            let task = Task { try await build() }
            current = task
            return task
        }
        return try await task.value
    }

    /// redis-server arguments that load the module.
    public static func arguments() async throws -> [String] { ["--loadmodule", try await path()] }

    private static func build() async throws -> String {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let source = root.appendingPathComponent("RedisModule/herald.c").path
        // Into the package's .build (ignored by git), under one name: built under a name of its
        // own, then renamed over it, so a test process running at the same time keeps the file
        // it loaded, and nothing is left behind in /tmp.
        let directory = root.appendingPathComponent(".build")
        try? FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let final = directory.appendingPathComponent("herald-module-test.so").path
        let output = directory.appendingPathComponent("herald-module-\(UUID().uuidString).so").path
        let compiler = Process()
        compiler.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        compiler.arguments = ["cc", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", output, source]
        let errors = ChildProcesses.pipe()
        compiler.standardError = errors
        compiler.standardOutput = FileHandle.nullDevice
        do { try ChildProcesses.run(compiler) } catch { throw ModuleBuildError(description: "cannot run cc to build \(source): \(error)") }
        try await eventually("cc builds \(source)", timeout: .seconds(60)) { !compiler.isRunning }
        let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        guard compiler.terminationStatus == 0 else { throw ModuleBuildError(description: "cc failed on \(source): \(message)") }
        guard rename(output, final) == 0 else { throw ModuleBuildError(description: "cannot move \(output) to \(final): errno \(errno)") }
        return final
    }
}
