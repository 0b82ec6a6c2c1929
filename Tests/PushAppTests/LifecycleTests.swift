import Foundation
import HeraldClient
import HeraldTestSupport
import PushProtocol
import Testing

@testable import PushApp

/// The `herald` executable built next to this test bundle.
var heraldBinary: URL {
    URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("herald")
}

/// A `herald` child process whose standard error is collected.
final class HeraldTestProcess: @unchecked Sendable {
    let process = Process()
    private let errorPipe = ChildProcesses.pipe()
    private let errorReader: PipeReader

    init(arguments: [String] = ["serve"], environment: [String: String]) throws {
        process.executableURL = heraldBinary
        process.arguments = arguments
        var inherited = ["PATH": "/usr/bin:/bin"]
        // scripts/test ends whatever carries its mark if the test runner dies half-way.
        if let run = ProcessInfo.processInfo.environment["HERALD_TEST_RUN"] { inherited["HERALD_TEST_RUN"] = run }
        process.environment = environment.merging(inherited) { $1 }
        process.standardError = errorPipe
        process.standardOutput = FileHandle.nullDevice
        errorReader = PipeReader(errorPipe)
        try ChildProcesses.run(process)
    }

    var stderr: String { errorReader.text }

    /// The port a listener logged it bound, e.g. "device listener bound".
    func boundPort(_ what: String) async throws -> Int {
        var port: Int?
        try await eventually("\(what) in the log") {
            for line in self.stderr.split(separator: "\n") where line.contains(what) {
                if let range = line.range(of: #"127\.0\.0\.1:(\d+)"#, options: .regularExpression) {
                    port = Int(line[range].split(separator: ":").last!)
                }
            }
            return port != nil
        }
        return port!
    }

    /// Waits for the exit and for the end of standard error, so that `stderr` then holds all of it.
    func waitForExit(timeout: Duration = .seconds(20)) async throws -> Int32 {
        try await eventually("herald exits and its stderr ends", timeout: timeout) {
            !self.process.isRunning && self.errorReader.isEnded
        }
        return process.terminationStatus
    }

    /// A test that fails half-way must not leave its process behind (a wedged one ignores SIGTERM).
    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}

@Suite("Lifecycle: supervision, drain, signals, configuration", .timeLimit(.minutes(2)))
struct LifecycleTests {
    @Test("killing the device listener restarts it on the same port, and connected devices keep their messages flowing")
    func killDeviceListener() async throws {
        try await TestNode.with { node in
            let before = try await node.device("steady")
            try await node.node.root.kill(childID: "devices")
            try await eventually("the listener is back") {
                let report = await node.node.health()
                return report.healthy && report.children.first { $0.name == "devices" }?.restarts == 1
            }
            #expect(node.node.devicePort == node.devicePort)
            let id = try await node.push("steady", "after the restart")
            #expect(try await before.pushes(1).map(\.id) == [id])
            let after = try await node.device("newcomer")
            await after.close()
            await before.close()
            let metrics = try await HTTPTestClient.get("/metrics", port: node.httpPort)
            #expect(metrics.body.contains(#"herald_restarts_total{child="devices"} 1"#))
        }
    }

    @Test("killing the HTTP API restarts it on the same port")
    func killAPI() async throws {
        try await TestNode.with { node in
            try await node.node.root.kill(childID: "api")
            // The old server may still answer while it shuts down: only once the supervisor has
            // started its successor does an answer come from the restarted API.
            try await eventually("the API is restarted") {
                await node.node.health().children.first { $0.name == "api" }?.restarts == 1
            }
            try await eventually("the API answers again") {
                (try? await HTTPTestClient.get("/healthz", port: node.httpPort, timeout: .seconds(1)).status) == 200
            }
            try await node.push("someone", "stored after the restart")
            #expect(try await node.pending("someone") == 1)
        }
    }

    @Test("graceful shutdown sends GOAWAY, stops accepting, and readiness turns 503 while draining")
    func drain() async throws {
        try await TestNode.with(["HERALD_DRAIN_TIMEOUT_S": "5"]) { node in
            let device = try await node.device("leaver")
            let undecided = try await node.raw()
            _ = try await eventually("both sockets open") { node.node.metrics.openConnectionCount == 2 }
            node.shutdown.triggerGracefulShutdown()
            guard case .goaway(let after, _) = try await device.next() else {
                Issue.record("expected GOAWAY")
                return
            }
            #expect(after > 0)
            let ready = try await HTTPTestClient.get("/readyz", port: node.httpPort)
            #expect(ready.status == 503)
            await #expect(throws: (any Error).self) {
                _ = try await DeviceClient.connect(DeviceClientConfiguration(port: node.devicePort, clientID: "late"))
            }
            // A socket that had not said HELLO yet gets GOAWAY too, and its HELLO is refused with 503.
            _ = try await undecided.waitForFrames(1)
            try await undecided.send(.hello(Hello(clientID: "too-late")))
            let frames = try await undecided.waitForClose()
            #expect(frames.last == .error(code: 503, reason: "server is draining"))
            await device.close()
        }
    }

    @Test("SIGTERM drains the devices and exits 0")
    func sigterm() async throws {
        let herald = try HeraldTestProcess(environment: [
            "HERALD_TCP_ADDR": "127.0.0.1:0", "HERALD_HTTP_ADDR": "127.0.0.1:0", "HERALD_DRAIN_TIMEOUT_S": "10",
        ])
        let devicePort = try await herald.boundPort("device listener bound")
        let httpPort = try await herald.boundPort("HTTP API bound")
        let device = try await DeviceClient.connect(DeviceClientConfiguration(port: devicePort, clientID: "d", sendsPings: false))
        let response = try await HTTPTestClient.post("/v1/push", port: httpPort, json: #"{"client_id": "d", "data": "x"}"#)
        #expect(response.status == 202)
        kill(herald.process.processIdentifier, SIGTERM)
        var sawGoAway = false
        while let event = try await withTimeout("events", .seconds(10), { await device.nextEvent() }) {
            if case .goaway = event {
                sawGoAway = true
                await device.close()
            }
        }
        #expect(sawGoAway)
        #expect(try await herald.waitForExit() == 0, "\(herald.stderr)")
    }

    @Test("a bad configuration value stops start-up with one line naming the variable")
    func badConfiguration() async throws {
        for (variable, value) in [("HERALD_WINDOW", "many"), ("HERALD_TCP_ADDR", "nowhere"), ("HERALD_DEVICE_JWT_SECRET", "short")] {
            let herald = try HeraldTestProcess(environment: [variable: value])
            #expect(try await herald.waitForExit() == 2)
            let lines = herald.stderr.split(separator: "\n")
            #expect(lines.count == 1, "\(herald.stderr)")
            #expect(herald.stderr.contains(variable))
        }
        let flag = try HeraldTestProcess(arguments: ["serve", "--max-pending", "0"], environment: [:])
        #expect(try await flag.waitForExit() == 2)
        #expect(flag.stderr.contains("HERALD_MAX_PENDING"))
    }
}
