import HeraldClient
import HeraldTestSupport
import NIOCore
import Synchronization
import Testing

@testable import PushApp

@Suite("The reconnecting device (herald device)", .timeLimit(.minutes(1)))
struct ReconnectingDeviceTests {
    @Test("backoff grows exponentially to its ceiling, with jitter below it")
    func backoff() {
        let initial = Duration.milliseconds(500)
        let max = Duration.seconds(30)
        #expect(ReconnectingDevice.backoff(attempt: 0, initial: initial, max: max, random: 1) == .milliseconds(500))
        #expect(ReconnectingDevice.backoff(attempt: 3, initial: initial, max: max, random: 1) == .seconds(4))
        #expect(ReconnectingDevice.backoff(attempt: 40, initial: initial, max: max, random: 1) == .seconds(30))
        #expect(ReconnectingDevice.backoff(attempt: 3, initial: initial, max: max, random: 0.5) == .seconds(2))
    }

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
}
