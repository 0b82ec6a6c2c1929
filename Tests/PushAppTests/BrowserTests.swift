import Foundation
import HeraldTestSupport
import Testing

@testable import PushApp

/// The browser client (Clients/js/herald.js) in Debian's Chromium, driven by selenium: the
/// scenario is Tests/Browser/browser_test.py's (it starts and ends its own redis-server, two
/// Herald nodes and the browser); this test asserts on what the page reported.
@Suite("Browser client in Chromium (issue: transports)", .timeLimit(.minutes(2)))
struct BrowserTests {
    @Test("the page receives pushes, survives a kill -9 of its node, gets what was pushed meanwhile in order, and shows ERROR 401 for a bad token")
    func browserClient() async throws {
        let cache = ProcessInfo.processInfo.environment["HERALD_CI_CACHE"] ?? "/var/tmp/herald-ci"
        let python = cache + "/venv/bin/python3"
        try #require(FileManager.default.isExecutableFile(atPath: python), "\(python) is missing: run scripts/install-deps")
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/bin/chromium"), "chromium is missing: run scripts/install-deps")
        let ports = try (0..<5).map { _ in try LoopbackPort.free() }
        let result = try await runTool(
            python,
            [repositoryRoot.appendingPathComponent("Tests/Browser/browser_test.py").path, heraldBinary.path] + ports.map(String.init),
            timeout: .seconds(90)
        )
        try #require(result.status == 0, "browser_test.py failed: \(result.standardError)")
        let report = try JSONFields(result.standardOutput)
        #expect(try report.strings("messages") == ["one", "two", "three", "four", "five"], "every message, once, in order")
        #expect(try report.strings("shown") == ["one", "two", "three", "four", "five"], "what the page shows")
        let states = try report.strings("states")
        #expect(states.first == "connecting" && states.last == "connected")
        #expect(states.filter { $0 == "connected" }.count == 2, "connected, lost the node, connected again")
        #expect(try report.int("error_code") == 401)
        #expect(try report.string("error_state") == "closed 401 authentication failed")
        #expect(try report.int("connects_after_401") == 1, "a refused token is not retried")
    }
}
