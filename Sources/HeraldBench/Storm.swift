import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import Crypto
import FoundationEssentials
import HeraldClient
import Synchronization

/// Many devices that stay connected and reconnect the way the client library does; for
/// connection storms (scripts/fault-suite `connection-storm`).
struct Storm: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Connect many reconnecting devices and report, as JSON lines, how many are connected.",
        discussion: """
            Every device starts on the server at --first and, when its connection fails or ends,
            moves to another of --servers at random after the library's jittered backoff. One
            JSON object per --report-ms on standard output: seconds since start, devices
            connected now (and by node id, from WELCOME), successful connects so far, PUSH frames
            received, connects that failed, the ERROR codes servers sent (by code), and the devices
            that stopped for good (replaced: ERROR 409). Runs until killed.
            """
    )

    @Option(help: "Device listeners, comma-separated: host:port (TCP) or tcp://, tls://, ws://, wss:// URLs, all of one scheme.") var servers: String
    @Option(help: "The CA file (PEM) the devices trust over tls:// and wss://.") var caFile: String?
    @Option(help: "Index in --servers of the server every device connects to first.") var first = 0
    @Option(help: "How many devices.") var devices = 15_000
    @Option(help: "Client ids are <prefix><n>.") var prefix = "storm-"
    @Option(help: "Local addresses to connect from, comma-separated (each holds ~28,000 ports).") var localHosts = ""
    @Option(help: "Heartbeat to ask for, in seconds.") var heartbeat: UInt16 = 600
    @Option(help: "First connects per second (the ramp up, not the storm).") var rampPerSecond = 5_000
    @Option(help: "Report interval in milliseconds.") var reportMs = 200
    @Option(help: "Sign each device an HS256 token (sub: its client id) under this secret (the nodes' HERALD_DEVICE_JWT_SECRET).")
    var jwtSecret: String?

    func run() async throws {
        raiseOpenFileLimit()
        let urls = try servers.split(separator: ",").map { entry in
            guard let url = DeviceServerURL(String(entry)) else { throw ValidationError("bad server address \(entry)") }
            return url
        }
        guard urls.indices.contains(first) else { throw ValidationError("--first out of range") }
        guard Set(urls.map(\.scheme)).count == 1 else { throw ValidationError("--servers must all use one scheme") }
        let addresses = urls.map { (host: $0.host, port: $0.port) }
        // One TLS context for every device: it is what the library gives a process.
        let transport = urls[first].transport(
            tls: urls[first].usesTLS ? .init(context: try DeviceClientTransport.TLS.context(caFile: caFile), serverName: nil) : nil
        )
        let locals = localHosts.split(separator: ",").map(String.init)
        let counters = StormCounters()
        let start = ContinuousClock.now
        let interval = Duration.milliseconds(reportMs)
        await withDiscardingTaskGroup { group in
            group.addTask {
                while !Task.isCancelled {
                    let elapsed = ContinuousClock.now - start
                    let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
                    print(
                        #"{"t": \#((seconds * 1000).rounded() / 1000), "connected": \#(counters.connected.load(ordering: .relaxed)), "#
                            + #""connects": \#(counters.connects.load(ordering: .relaxed)), "pushes": \#(counters.pushes.load(ordering: .relaxed)), "#
                            + #""failed_connects": \#(counters.failedConnects.load(ordering: .relaxed)), "#
                            + #""stopped": \#(counters.stopped.load(ordering: .relaxed)), "errors": {\#(counters.errorsJSON())}, "#
                            + #""by_node": {\#(counters.byNodeJSON())}}"#
                    )
                    fflush(nil)
                    try? await Task.sleep(for: interval)
                }
            }
            let batch = max(1, rampPerSecond / 20)
            for index in 0..<devices {
                if index > 0, index % batch == 0 { try? await Task.sleep(for: .milliseconds(50)) }
                var configuration = DeviceClientConfiguration(
                    host: addresses[first].host, port: addresses[first].port, clientID: "\(prefix)\(index)",
                    token: jwtSecret.map { DeviceToken.hs256(sub: "\(prefix)\(index)", secret: $0) } ?? "",
                    heartbeatSeconds: heartbeat, localHost: locals.isEmpty ? nil : locals[index % locals.count]
                )
                configuration.sendsPings = true
                configuration.transport = transport
                let alternates = addresses.enumerated().filter { $0.offset != first }.map(\.element)
                let device = ReconnectingDevice(configuration: configuration, alternates: alternates)
                let node = Mutex<String?>(nil)
                group.addTask {
                    await device.run(
                        onPush: { _, _ in counters.pushes.add(1, ordering: .relaxed) },
                        onEvent: { counters.event($0) },
                        onState: { state in
                            switch state {
                            case .connected(let nodeID):
                                node.withLock { $0 = nodeID }
                                counters.connected(to: nodeID)
                            case .disconnected:
                                counters.disconnected(from: node.withLock { $0 })
                            }
                        }
                    )
                }
            }
        }
    }
}

final class StormCounters: Sendable {
    let connected = Atomic<Int>(0)
    let connects = Atomic<Int>(0)
    let pushes = Atomic<Int>(0)
    let failedConnects = Atomic<Int>(0)
    let stopped = Atomic<Int>(0)
    private let byNode = Mutex<[String: Int]>([:])
    private let errors = Mutex<[String: Int]>([:])

    /// Counts what `ReconnectingDevice` reports: a failed connect, a server's ERROR (by its
    /// code), a device that stops for good.
    func event(_ event: ReconnectingDevice.Event) {
        switch event {
        case .connectFailed: failedConnects.add(1, ordering: .relaxed)
        case .serverError(let code, _): errors.withLock { $0[String(code), default: 0] += 1 }
        case .replaced: stopped.add(1, ordering: .relaxed)
        case .connected, .draining, .closed: break
        }
    }

    /// The ERROR frames received, by code, as the members of a JSON object.
    func errorsJSON() -> String { errors.withLock { Self.members($0) } }

    func connected(to nodeID: String) {
        connected.add(1, ordering: .relaxed)
        connects.add(1, ordering: .relaxed)
        byNode.withLock { $0[nodeID, default: 0] += 1 }
    }

    func disconnected(from nodeID: String?) {
        connected.subtract(1, ordering: .relaxed)
        if let nodeID { byNode.withLock { $0[nodeID, default: 0] -= 1 } }
    }

    /// The devices connected to each node, as the members of a JSON object.
    func byNodeJSON() -> String { byNode.withLock { Self.members($0) } }

    /// Counts by name as the members of a JSON object, in the order of their names.
    private static func members(_ counts: [String: Int]) -> String {
        counts.sorted { $0.key < $1.key }.map { #""\#($0.key)": \#($0.value)"# }.joined(separator: ", ")
    }
}

/// Device tokens as a backend would mint them (protocol.md §1, rule 2).
enum DeviceToken {
    /// A compact JWS: header `{"alg":"HS256","typ":"JWT"}`, claims `{"sub": sub}`, no expiry.
    static func hs256(sub: String, secret: String) -> String {
        let header = base64URL(Data(#"{"alg":"HS256","typ":"JWT"}"#.utf8))
        let claims = base64URL(try! JSONEncoder().encode(["sub": sub]))
        let input = header + "." + claims
        let mac = HMAC<SHA256>.authenticationCode(for: Data(input.utf8), using: SymmetricKey(data: Data(secret.utf8)))
        return input + "." + base64URL(Data(mac))
    }

    private static func base64URL(_ data: Data) -> String {
        String(data.base64EncodedString().compactMap { $0 == "+" ? "-" : $0 == "/" ? "_" : $0 == "=" ? nil : $0 })
    }
}
