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

    /// Picks a free port and a fresh directory; nothing runs until `start()`.
    public init(arguments: [String] = []) throws {
        port = try Self.freePort()
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("herald-redis-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        extraArguments = arguments
    }

    /// `redis://127.0.0.1:<port>`
    public var url: String { "redis://127.0.0.1:\(port)" }

    public var pid: Int32? { lock.withLock { process?.processIdentifier } }

    /// Starts redis-server (again, after a stop or kill, on the same port) and waits until it answers PING.
    public func start() async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = [
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

    private static func freePort() throws -> Int {
        let channel = try ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).wait()
        defer { try? channel.close().wait() }
        return channel.localAddress!.port!
    }
}
