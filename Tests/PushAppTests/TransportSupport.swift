import Foundation
import HeraldClient
import HeraldTestSupport
import NIOSSL
import Testing

@testable import PushApp

/// The repository's root (scripts/, Tests/Interop/).
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// A private PKI made by `scripts/make-cert` in a directory of its own: a root CA, an
/// intermediate, a server certificate (localhost, 127.0.0.1) served with its chain, and
/// device certificates for mutual TLS.
struct TestPKI: Sendable {
    let directory: String

    /// Makes the PKI; `rsa` for RSA 2048 keys instead of ECDSA P-256.
    static func make(rsa: Bool = false, commonName: String = "localhost", devices: [String] = []) async throws -> TestPKI {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("herald-pki-\(UUID().uuidString)").path
        let pki = TestPKI(directory: directory)
        try await pki.issue(rsa: rsa, commonName: commonName, devices: devices)
        return pki
    }

    /// Issues a new server certificate (and device certificates) from the same CAs: a renewal.
    func issue(rsa: Bool = false, commonName: String, devices: [String] = []) async throws {
        var arguments = [directory, "--cn", commonName]
        if rsa { arguments.append("--rsa") }
        for device in devices { arguments += ["--device", device] }
        let result = try await runTool(repositoryRoot.appendingPathComponent("scripts/make-cert").path, arguments)
        try #require(result.status == 0, "make-cert failed: \(result.standardError)")
    }

    var certificate: String { directory + "/server.pem" }
    var key: String { directory + "/server.key" }
    var ca: String { directory + "/ca.pem" }
    func deviceCertificate(_ id: String) -> String { directory + "/device-\(id).pem" }
    func deviceKey(_ id: String) -> String { directory + "/device-\(id).key" }

    /// The node's variables for TLS listeners on kernel-chosen loopback ports.
    var environment: [String: String] {
        [
            "HERALD_TLS_CERT": certificate, "HERALD_TLS_KEY": key, "HERALD_TLS_ADDR": "127.0.0.1:0",
            "HERALD_WSS_ADDR": "127.0.0.1:0", "HERALD_HTTPS_ADDR": "127.0.0.1:0", "HERALD_WS_ADDR": "127.0.0.1:0",
        ]
    }

    /// A client TLS context trusting this PKI's root (and presenting `device`'s certificate).
    func clientContext(device: String? = nil) throws -> NIOSSLContext {
        try DeviceClientTransport.TLS.context(
            caFile: ca, certificateFile: device.map(deviceCertificate), keyFile: device.map(deviceKey)
        )
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// What a finished tool printed.
struct ToolResult: Sendable {
    let status: Int32
    let standardOutput: String
    let standardError: String
}

/// Runs `executable` (a path, or a name looked up on PATH) to completion, within `timeout`;
/// `input` is written to its standard input, which is then closed.
func runTool(
    _ executable: String, _ arguments: [String], input: String = "", environment extra: [String: String] = [:], timeout: Duration = .seconds(30)
) async throws -> ToolResult {
    let process = Process()
    if executable.contains("/") {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
    } else {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [executable] + arguments
    }
    var environment = ProcessInfo.processInfo.environment
    environment["PATH"] = (environment["PATH"] ?? "") + ":/usr/bin:/bin:/usr/sbin:/sbin"
    environment.merge(extra) { $1 }
    process.environment = environment
    let output = ChildProcesses.pipe()
    let errors = ChildProcesses.pipe()
    let stdin = ChildProcesses.pipe()
    process.standardOutput = output
    process.standardError = errors
    process.standardInput = stdin
    let outputReader = PipeReader(output)
    let errorReader = PipeReader(errors)
    try ChildProcesses.run(process)
    stdin.fileHandleForWriting.write(Data(input.utf8))
    try? stdin.fileHandleForWriting.close()
    do {
        // Both pipes read to their end, not only the exit seen: the last chunk may still be on its way.
        try await eventually("\(executable) \(arguments.joined(separator: " ")) exits", timeout: timeout) {
            !process.isRunning && outputReader.isEnded && errorReader.isEnded
        }
    } catch {
        process.terminate()
        throw error
    }
    let (out, err) = (outputReader.text, errorReader.text)
    return ToolResult(status: process.terminationStatus, standardOutput: out, standardError: err)
}

/// The Python device of Tests/Interop (websockets from PyPI, in the venv scripts/install-deps makes).
func pythonDevice(_ arguments: [String], environment: [String: String] = [:]) async throws -> JSONFields {
    let cache = ProcessInfo.processInfo.environment["HERALD_CI_CACHE"] ?? "/var/tmp/herald-ci"
    let python = cache + "/venv/bin/python3"
    try #require(FileManager.default.isExecutableFile(atPath: python), "\(python) is missing: run scripts/install-deps")
    let script = repositoryRoot.appendingPathComponent("Tests/Interop/ws_device.py").path
    let result = try await runTool(python, [script] + arguments, environment: environment)
    try #require(result.status == 0, "ws_device.py \(arguments.joined(separator: " ")) failed: \(result.standardError)")
    return try JSONFields(result.standardOutput)
}

/// `openssl s_client` against a loopback port, with `arguments` added; its standard input is
/// empty, so it ends once the handshake is done (or failed).
func opensslClient(port: Int, _ arguments: [String]) async throws -> ToolResult {
    try await runTool("openssl", ["s_client", "-connect", "127.0.0.1:\(port)", "-servername", "localhost"] + arguments)
}

extension TestNode {
    /// The bound port of a listener (tcp, tls, ws, wss, http, https).
    func port(_ listener: String) throws -> Int {
        try #require(node.port(of: listener), "\(listener) listener not bound")
    }

    /// A device over `transport` (tls, ws or wss) trusting `pki`.
    func device(_ clientID: String, over transport: String, pki: TestPKI, certificateOf device: String? = nil) async throws -> DeviceClient {
        var configuration = DeviceClientConfiguration(port: try port(transport), clientID: clientID, sendsPings: false)
        let tls = transport == "ws" ? nil : DeviceClientTransport.TLS(context: try pki.clientContext(device: device), serverName: "localhost")
        configuration.transport = DeviceClientTransport(tls: tls, webSocketPath: transport.hasPrefix("ws") ? "/ws" : nil)
        return try await DeviceClient.connect(configuration)
    }

    /// A metric's value as /metrics shows it (0 when absent).
    func metric(_ line: String) async throws -> Double {
        let text = try await HTTPTestClient.get("/metrics", port: httpPort).body
        for row in text.split(separator: "\n") where row.hasPrefix(line + " ") {
            return Double(row.dropFirst(line.count + 1)) ?? 0
        }
        return 0
    }
}

/// A real proxy (HAProxy, nginx) run as a child process for one test, ended by its PID when
/// the test is done.
final class ProxyProcess: @unchecked Sendable {
    let process = Process()
    private let log = ChildProcesses.pipe()
    private let logReader: PipeReader

    /// Starts `executable` with `arguments`, and waits until it accepts connections on `port`.
    init(_ executable: String, _ arguments: [String], port: Int) async throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var environment = ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"]
        if let run = ProcessInfo.processInfo.environment["HERALD_TEST_RUN"] { environment["HERALD_TEST_RUN"] = run }
        process.environment = environment
        process.standardOutput = log
        process.standardError = log
        logReader = PipeReader(log)
        try ChildProcesses.run(process)
        try await eventually("\(executable) listens on \(port)") {
            guard self.process.isRunning else { throw ProxyExited(output: self.output) }
            return LoopbackPort.acceptsConnections(port)
        }
    }

    var output: String { logReader.text }

    /// SIGKILL (the test runner's children inherit its ignoring of SIGTERM), to the process and
    /// to its children: nginx's workers outlive a killed master otherwise.
    func stop() {
        guard process.isRunning else { return }
        let pid = process.processIdentifier
        // The children as they are now, then the parent (so that it cannot start new ones), then them.
        let children = childProcesses(of: pid)
        kill(pid, SIGKILL)
        for child in children { kill(child, SIGKILL) }
    }

    deinit { stop() }
}

/// The processes whose parent is `pid` (from /proc).
func childProcesses(of pid: Int32) -> [Int32] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { entry -> Int32? in
        guard let candidate = Int32(entry), let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
            let close = stat.range(of: ")", options: .backwards)
        else { return nil }
        // After "pid (comm)": state, then the parent's pid.
        let fields = stat[close.upperBound...].split(separator: " ")
        return fields.count > 1 && Int32(fields[1]) == pid ? candidate : nil
    }
}

struct ProxyExited: Error, CustomStringConvertible {
    let output: String
    var description: String { "the proxy exited: \(output)" }
}

/// A sample configuration from deploy/, with its example addresses replaced for a test.
func deployConfiguration(_ path: String, replacing replacements: [(String, String)], droppingLinesWith dropped: [String] = []) throws -> String {
    var text = try String(contentsOf: repositoryRoot.appendingPathComponent(path), encoding: .utf8)
    text = text.split(separator: "\n", omittingEmptySubsequences: false)
        .filter { line in !dropped.contains { line.contains($0) } }
        .joined(separator: "\n")
    for (old, new) in replacements {
        try #require(text.contains(old), "\(path) no longer contains \(old)")
        text = text.replacingOccurrences(of: old, with: new)
    }
    return text
}
