import HeraldTestSupport
import Logging
import NIOCore
import NIOPosix
import RedisStore
import Testing

/// Runs its methods on one event loop, as a device `Connection` does.
private actor OnLoop {
    let loop: any EventLoop
    nonisolated var unownedExecutor: UnownedSerialExecutor { loop.executor.asUnownedSerialExecutor() }
    init(_ loop: any EventLoop) { self.loop = loop }

    func ping(_ client: RedisClient) async throws -> RESPValue {
        #expect(loop.inEventLoop)
        return try await client.send([.string("PING")])
    }
}

@Suite("RedisClient: one connection per event loop", .timeLimit(.minutes(1)))
struct RedisClientTests {
    @Test("a loop whose own connection is down (opening, reconnecting) uses another loop's instead of answering 503")
    func fallsBackToAConnectedLoop() async throws {
        // maxclients 1: of the two loops' connections exactly one gets in; the other is refused
        // (its AUTH fails) and keeps retrying for as long as the test runs.
        try await RedisServer.with(arguments: ["--maxclients", "1", "--requirepass", "pw"]) { server in
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
            var logger = Logger(label: "redis-client-test")
            logger.logLevel = .critical
            var configuration = RedisConfiguration(url: server.url)!
            configuration.password = "pw"
            let client = RedisClient(configuration: configuration, group: group, logger: logger)
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await client.run() }
                try await eventually("one loop connected") {
                    (try? await client.send([.string("PING")])) == .simpleString("PONG")
                }
                #expect(!client.isConnected, "only one of the two loops got a connection")
                for loop in group.makeIterator() {
                    let reply = try await OnLoop(loop).ping(client)
                    #expect(reply == .simpleString("PONG"), "on \(loop)")
                }
                tasks.cancelAll()
            }
            try await group.shutdownGracefully()
        }
    }

    @Test("a script runs by source the first time, then by the SHA-1 Redis gives it, and by source again once Redis forgot it")
    func scriptsBySHA() async throws {
        try await withRedisClient { client in
            let script = RedisScript("return ARGV[1] .. KEYS[1]")
            let loaded = try await client.send([.string("SCRIPT"), .string("LOAD"), .string(script.source)])
            #expect(loaded.string == script.sha)
            func calls() async throws -> (eval: Int, evalsha: Int) {
                let calls = try await commandCalls(client)
                return (calls["eval"] ?? 0, calls["evalsha"] ?? 0)
            }
            _ = try await client.send([.string("SCRIPT"), .string("FLUSH")])
            for _ in 0..<2 { #expect(try await client.run(script, keys: ["k"], arguments: [.string("a")]).string == "ak") }
            #expect(try await calls() == (1, 1), "by source, then by SHA")
            _ = try await client.send([.string("SCRIPT"), .string("FLUSH")])
            for _ in 0..<2 { #expect(try await client.run(script, keys: ["k"], arguments: [.string("b")]).string == "bk") }
            #expect(try await calls() == (2, 3), "by SHA (NOSCRIPT), by source, by SHA")
        }
    }

    @Test("integers and lengths reach Redis exactly, and a pipeline's replies come back whole and in order, among single commands")
    func encodingAndPipelines() async throws {
        try await RedisServer.with { server in
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            var logger = Logger(label: "redis-client-test")
            logger.logLevel = .critical
            let client = RedisClient(configuration: RedisConfiguration(url: server.url)!, group: group, logger: logger)
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await client.run() }
                try await eventually("connected") { (try? await client.send([.string("PING")])) == .simpleString("PONG") }
                let values: [Int64] = [0, 9, 10, -1, -10, 99, 100, 1_000_000_007, .max, .min]
                for value in values {
                    _ = try await client.send([.string("SET"), .string("n"), .integer(value)])
                    #expect(try await client.send([.string("GET"), .string("n")]).string == String(value))
                }
                let long = String(repeating: "é", count: 600)  // 1,200 bytes: a four-digit length
                _ = try await client.send([.string("SET"), .string("s"), .string(long)])
                #expect(try await client.send([.string("STRLEN"), .string("s")]) == .integer(1200))

                // Pipelines of 40 INCRs with a failing command in the middle, and single
                // commands, all at once: each caller gets exactly its own replies, in order.
                try await withThrowingTaskGroup(of: Void.self) { callers in
                    for caller in 0..<8 {
                        callers.addTask {
                            let key = RedisArgument.string("c\(caller)")
                            var commands = Array(repeating: [RedisArgument.string("INCR"), key], count: 40)
                            commands.insert([.string("HGET"), key, .string("f")], at: 20)  // WRONGTYPE
                            let replies = try await client.sendAll(commands)
                            #expect(replies.count == 41)
                            #expect(replies[..<20].map(\.int64) == (1...20).map { Int64($0) })
                            if case .error(let text) = replies[20] {
                                #expect(text.hasPrefix("WRONGTYPE"))
                            } else {
                                Issue.record("no error in the middle: \(replies[20])")
                            }
                            #expect(replies[21...].map(\.int64) == (21...40).map { Int64($0) })
                        }
                        callers.addTask {
                            let echo = try await client.send([.string("ECHO"), .string("single \(caller)")])
                            #expect(echo.string == "single \(caller)")
                        }
                    }
                    try await callers.waitForAll()
                }
                tasks.cancelAll()
            }
            try await group.shutdownGracefully()
        }
    }
}
