import Foundation
import NIOCore
import NIOPosix

/// A real `redis-server` for one test: its own port and temporary directory, no persistence,
/// started by `start()`, killed by `stop()` (or `kill(signal:)` for fault injection).
public final class RedisServer: @unchecked Sendable {
    public let port: Int
    public let directory: URL
    private let lock = NSLock()
    private var process: Process?
    private let extraArguments: [String]
    private let configurationFile: String?

    /// Picks a free port and a fresh directory; nothing runs until `start()`. `configuration`,
    /// if given, is written to a file passed first (Sentinel needs a config file it can rewrite).
    public init(arguments: [String] = [], configuration: String? = nil) throws {
        port = try LoopbackPort.free()
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("herald-redis-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        extraArguments = arguments
        if let configuration {
            let file = directory.appendingPathComponent("redis.conf").path
            try configuration.write(toFile: file, atomically: true, encoding: .utf8)
            configurationFile = file
        } else {
            configurationFile = nil
        }
    }

    /// `redis://127.0.0.1:<port>`
    public var url: String { "redis://127.0.0.1:\(port)" }

    public var pid: Int32? { lock.withLock { process?.processIdentifier } }

    /// Starts redis-server (again, after a stop or kill, on the same port) and waits until it answers PING.
    public func start() async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = (configurationFile.map { [$0] } ?? []) + [
            "--port", "\(port)", "--bind", "127.0.0.1", "--dir", directory.path, "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--logfile", directory.appendingPathComponent("redis.log").path,
        ] + extraArguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        lock.withLock { self.process = process }
        try await eventually("redis-server on port \(port) answers", timeout: .seconds(10)) { await self.answersPing() }
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

    /// Runs `body` with a started server, and always stops it.
    public static func with<T: Sendable>(arguments: [String] = [], _ body: (RedisServer) async throws -> T) async throws -> T {
        let server = try RedisServer(arguments: arguments)
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
        guard let channel = try? await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: port).get()
        else { return false }
        channel.close(promise: nil)
        return true
    }

    private static var binary: String {
        for candidate in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] where FileManager.default.isExecutableFile(atPath: candidate) {
            return candidate
        }
        return "/usr/bin/redis-server"
    }

    /// Runs `redis-cli -p <port> <arguments>` and returns its output.
    public func cli(_ arguments: [String]) async throws -> String {
        try await Self.cli(port: port, arguments)
    }

    /// Runs `redis-cli -p <port> <arguments>` and returns its output (polling the process:
    /// `waitUntilExit` can block the concurrency pool).
    public static func cli(port: Int, _ arguments: [String]) async throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary.replacingOccurrences(of: "redis-server", with: "redis-cli"))
        process.arguments = ["-p", "\(port)"] + arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        try await eventually("redis-cli \(arguments.joined(separator: " "))", timeout: .seconds(10)) { !process.isRunning }
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
