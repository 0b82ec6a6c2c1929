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
}
