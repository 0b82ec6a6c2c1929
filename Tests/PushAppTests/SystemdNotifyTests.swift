import Foundation
import HeraldClient
import HeraldTestSupport
import Testing

/// `herald serve` against a fake notification socket: what systemd would see, without systemd
/// (the real one is scripts/systemd-test).
@Suite("systemd notifications and the watchdog (fake NOTIFY_SOCKET)", .serialized, .timeLimit(.minutes(1)))
struct SystemdNotifyTests {
    static func environment(_ socket: FakeNotifySocket) -> [String: String] {
        [
            "HERALD_TCP_ADDR": "127.0.0.1:0", "HERALD_HTTP_ADDR": "127.0.0.1:0", "HERALD_DRAIN_TIMEOUT_S": "3",
            "HERALD_FAULT_HOOKS": "1", "NOTIFY_SOCKET": socket.path,
            // 6 s: a ping every 3 s, each health check allowed 1.5 s. With 2 s (a check allowed
            // 0.5 s) a machine loaded by the rest of the suite could miss a ping for nothing.
            "WATCHDOG_USEC": "6000000",
        ]
    }

    @Test("READY=1 only once both listeners are bound; STATUS= says how it is; WATCHDOG=1 within every interval; STOPPING=1 with a longer stop timeout on SIGTERM")
    func lifecycle() async throws {
        let socket = try FakeNotifySocket.start()
        defer { socket.close() }
        let herald = try HeraldTestProcess(environment: Self.environment(socket))
        defer { if herald.process.isRunning { kill(herald.process.processIdentifier, SIGKILL) } }
        try await socket.log.wait(until: "READY=1")
        // Both listeners were bound (and logged so) before READY=1 was sent.
        #expect(herald.stderr.contains("device listener bound") && herald.stderr.contains("HTTP API bound"))
        let devicePort = try await herald.boundPort("device listener bound")
        let device = try await DeviceClient.connect(DeviceClientConfiguration(port: devicePort, clientID: "watched", sendsPings: false))
        try await socket.log.wait(for: "STATUS= counting the device") { $0.contains { $0.hasPrefix("STATUS=1 devices, store ok") } }
        try await socket.log.wait(until: "WATCHDOG=1", times: 4)
        let pings = socket.arrivals.filter { $0.entry == "WATCHDOG=1" }.map(\.at)
        let gaps = zip(pings.dropFirst(), pings).map { $0 - $1 }
        #expect(gaps.allSatisfy { $0 < .seconds(6) }, "a ping within every 6 s watchdog interval: \(gaps)")
        kill(herald.process.processIdentifier, SIGTERM)
        try await socket.log.wait(until: "STOPPING=1")
        try await socket.log.wait(for: "the stop timeout extended for the drain") { $0.contains { $0.hasPrefix("EXTEND_TIMEOUT_USEC=") } }
        #expect(try await device.next() == .goaway(reconnectAfterMilliseconds: 1000, reason: "server draining"))
        await device.close()
        #expect(try await herald.waitForExit() == 0)
    }

    @Test("a wedged event loop stops the pings and asks for a restart (WATCHDOG=trigger)")
    func wedgedEventLoop() async throws {
        let socket = try FakeNotifySocket.start()
        defer { socket.close() }
        let herald = try HeraldTestProcess(environment: Self.environment(socket))
        defer { if herald.process.isRunning { kill(herald.process.processIdentifier, SIGKILL) } }
        try await socket.log.wait(until: "WATCHDOG=1")
        let httpPort = try await herald.boundPort("HTTP API bound")
        let response = try await HTTPTestClient.post("/debug/wedge-event-loop", port: httpPort, json: "{}")
        #expect(response.status == 202)
        try await socket.log.wait(until: "WATCHDOG=trigger")
        let entries = socket.log.entries
        let trigger = try #require(entries.firstIndex(of: "WATCHDOG=trigger"))
        #expect(entries[..<trigger].last { $0.hasPrefix("STATUS=") }?.contains("blocked") == true, "\(entries)")
        kill(herald.process.processIdentifier, SIGKILL)
        _ = try await herald.waitForExit()
    }
}
