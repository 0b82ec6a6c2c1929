import HeraldClient
import HeraldTestSupport
import NIOCore
import Synchronization
import Testing

@testable import PushApp

@Suite("The reconnecting device (herald device)", .timeLimit(.minutes(1)))
struct ReconnectingDeviceTests {
    @Test("it acknowledges what it receives, and comes back after its connection is closed")
    func reconnects() async throws {
        try await TestNode.with { node in
            let log = EventLog()
            var configured = ReconnectingDevice(configuration: DeviceClientConfiguration(port: node.devicePort, clientID: "cli"))
            configured.initialBackoff = .milliseconds(50)
            let device = configured
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    await device.run(onPush: { _, payload in log.append("push \(String(buffer: payload))") }, onEvent: { _ in })
                }
                try await eventually("connected") { node.node.registry.count == 1 }
                try await node.push("cli", "one")
                try await log.wait(until: "push one")
                _ = try await HTTPTestClient.request(.DELETE, "/v1/clients/cli/connection", port: node.httpPort)
                try await node.push("cli", "two")
                try await log.wait(until: "push two")
                try await eventually("both acknowledged") { try await node.pending("cli") == 0 }
                group.cancelAll()
            }
        }
    }

    @Test("with several servers, a device whose connection ends comes back on another one")
    func movesToAnotherServer() async throws {
        try await TestNode.with(["HERALD_NODE_ID": "first"]) { first in
            try await TestNode.with(["HERALD_NODE_ID": "second"]) { second in
                let states = EventLog()
                var configured = ReconnectingDevice(
                    configuration: DeviceClientConfiguration(port: first.devicePort, clientID: "roamer"),
                    alternates: [("127.0.0.1", second.devicePort)]
                )
                configured.initialBackoff = .milliseconds(50)
                let device = configured
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { await device.run(onPush: { _, _ in }, onState: { states.append("\($0)") }) }
                    try await states.wait(until: #"connected(nodeID: "first")"#)
                    _ = try await HTTPTestClient.request(.DELETE, "/v1/clients/roamer/connection", port: first.httpPort)
                    try await states.wait(until: "disconnected")
                    try await states.wait(until: #"connected(nodeID: "second")"#)
                    #expect(second.node.registry.count == 1)
                    group.cancelAll()
                }
            }
        }
    }

    @Test("replaced by another connection of its client id (ERROR 409), it stops instead of taking the id back")
    func stopsWhenReplaced() async throws {
        try await TestNode.with { node in
            let log = EventLog()
            var configured = ReconnectingDevice(configuration: DeviceClientConfiguration(port: node.devicePort, clientID: "twin"))
            configured.initialBackoff = .milliseconds(10)
            let device = configured
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await device.run(onPush: { _, _ in }, onEvent: { log.append($0.description) }) }
                try await log.wait(until: "connected to 127.0.0.1:\(node.devicePort) (node test-node, heartbeat 30 s)")
                let newer = try await node.device("twin")
                try await log.wait(until: "replaced by another connection of this client id; not reconnecting")
                try await group.next()  // run returned by itself (the suite's time limit bounds this)
                let id = try await node.push("twin", "for the newer one")
                #expect(try await newer.pushes(1).map(\.id) == [id])
                await newer.close()
            }
        }
    }
}
