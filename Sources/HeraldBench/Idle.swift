import ArgumentParser
import Foundation

/// Idle devices: the server's memory per connection and its CPU while they only heartbeat.
struct Idle: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Connect idle devices in steps; server RSS per connection, and CPU with heartbeats running.",
        discussion: """
            Connects --devices devices in --steps steps from worker processes (at most
            --per-process devices each, since one process holds at most ~19,900 sockets here),
            each on its own local address of --local-hosts. After each step the server's VmRSS
            is read; the slope is a least-squares fit over the steps. Then for --idle-seconds
            the devices PING every --heartbeat seconds (spread over the interval) and the
            server's CPU is measured.
            """
    )

    @Option(help: "Devices in all.") var devices = 10_000
    @Option(help: "Steps to connect them in (RSS is read after each).") var steps = 4
    @Option(help: "Devices per worker process (at most ~19,000).") var perProcess = 5_000
    @Option(help: "Heartbeat the devices ask for and PING at, in seconds.") var heartbeat: UInt16 = 30
    @Option(help: "Seconds of idle CPU measurement after the last step (0: skip).") var idleSeconds = 60
    @Option(help: "Seconds to let the server settle before each RSS reading.") var settleSeconds = 2.0
    @Option(help: "Seconds of CPU measurement with no device connected, the baseline a PING's cost is counted above (0: skip).")
    var baselineSeconds = 10.0
    @Option(help: "Local addresses for the workers, comma-separated (worker k uses the k-th, round robin).")
    var localHosts = "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8,127.0.0.9"
    @OptionGroup var servers: ServerOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        guard steps > 0, devices >= steps, perProcess > 0 else { throw ValidationError("need devices >= steps > 0") }
        var report = Report(scenario: "idle", parameters: [
            "devices": "\(devices)", "steps": "\(steps)", "per_process": "\(perProcess)", "heartbeat_s": "\(heartbeat)",
            "idle_s": "\(idleSeconds)", "store": servers.storeLabel, "transport": servers.transport.rawValue,
        ])
        try await Deployment.run(servers, nodes: 1) { deployment in
            var workers: [ChildProcess] = []
            do {
                let node = deployment.nodes[0]
                guard let pid = node.pid else { throw ValidationError("the idle scenario reads the server's memory: give --target host:device:http:pid") }
                let locals = splitList(localHosts)
                try await Task.sleep(for: .seconds(settleSeconds))
                var points: [(x: Double, y: Double)] = [(0, Double(ProcFS.residentKiB(pid) ?? 0))]
                var baseline = 0.0
                if baselineSeconds > 0 {
                    let before = ProcFS.cpuSeconds(pid) ?? 0
                    let start = ContinuousClock.now
                    try await Task.sleep(for: .seconds(baselineSeconds))
                    baseline = ((ProcFS.cpuSeconds(pid) ?? 0) - before) / seconds(since: start)
                    report.add("server CPU with no device connected", baseline * 100, "% of one core")
                }
                var opened = 0
                for step in 0..<steps {
                    var left = (step == steps - 1) ? devices - opened : devices / steps
                    while left > 0 {
                        let count = min(left, perProcess)
                        let worker = try ChildProcess(
                            name: "worker \(workers.count)", executable: CommandLine.arguments[0],
                            arguments: [
                                "idle-worker", "--host", node.host, "--port", "\(node.devicePort)", "--first", "\(opened)", "--count", "\(count)",
                                "--local-host", locals.isEmpty ? "" : locals[workers.count % locals.count], "--heartbeat", "\(heartbeat)",
                                "--transport", deployment.transport.rawValue,
                            ] + (deployment.caFile.map { ["--ca-file", $0] } ?? []),
                            capturesOutput: true
                        )
                        workers.append(worker)
                        guard let line = await worker.readLine(), line.contains("welcomed") else { throw BenchError("\(worker.name) failed to connect its devices") }
                        left -= count
                        opened += count
                    }
                    try await Task.sleep(for: .seconds(settleSeconds))
                    points.append((Double(opened), Double(ProcFS.residentKiB(pid) ?? 0)))
                }
                for (connections, kib) in points {
                    report.add("RSS at \(Int(connections)) devices", (kib / 1024 * 10).rounded() / 10, "MiB")
                }
                report.add("RSS per idle connection (slope)", (slope(points) * 1000).rounded() / 1000, "KiB")
                if idleSeconds > 0 {
                    let before = ProcFS.cpuSeconds(pid) ?? 0
                    let start = ContinuousClock.now
                    try await Task.sleep(for: .seconds(idleSeconds))
                    let cpu = (ProcFS.cpuSeconds(pid) ?? 0) - before
                    let wall = seconds(since: start)
                    report.add("server CPU while idle, \(devices) devices heartbeating every \(heartbeat) s", cpu / wall * 100, "% of one core")
                    report.add(
                        "server CPU per PING answered, above the baseline", (cpu - baseline * wall) / (Double(devices) * wall / Double(heartbeat)) * 1e6, "µs"
                    )
                    report.add("RSS after the idle period", Double(ProcFS.residentKiB(pid) ?? 0) / 1024, "MiB")
                }
                var closed = 0, pongs = 0
                for worker in workers {
                    worker.closeInput()
                    let line = await worker.readLine() ?? ""
                    closed += Int(field("closed", of: line) ?? 0)
                    pongs += Int(field("pongs", of: line) ?? 0)
                }
                report.add("PONGs the devices received", Double(pongs))
                report.add("devices closed by the server", Double(closed))
                if closed > 0 { report.problems.append("\(closed) idle devices were disconnected") }
                if idleSeconds >= Int(heartbeat) * 2, pongs < devices { report.problems.append("only \(pongs) PONGs for \(devices) devices heartbeating over \(idleSeconds) s") }
            } catch {
                for worker in workers { await worker.stop(signal: SIGKILL) }
                throw error
            }
            for worker in workers { await worker.stop() }
        }
        try report.emit(output)
    }

    private func field(_ name: String, of line: String) -> Double? {
        guard let range = line.range(of: "\"\(name)\":") else { return nil }
        return Double(line[range.upperBound...].drop { $0 == " " }.prefix { $0.isNumber || $0 == "." })
    }
}

/// A worker process of `idle`: holds `count` devices and says when all are welcomed; ends
/// when its standard input closes, printing how many were closed meanwhile.
struct IdleWorker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "idle-worker", abstract: "(Used by idle.) Hold idle devices.", shouldDisplay: false)

    @Option var host: String
    @Option var port: Int
    @Option var first: Int
    @Option var count: Int
    @Option var localHost = ""
    @Option var heartbeat: UInt16 = 30
    @Option var transport: BenchTransport = .tcp
    @Option var caFile: String?

    func run() async throws {
        raiseOpenFileLimit()
        let fleet = DeviceFleet(
            settings: .init(
                host: host, port: port, prefix: "idle-", localHosts: localHost.isEmpty ? [] : [localHost], heartbeatSeconds: heartbeat, pings: true,
                transport: try transport.client(caFile: caFile)
            ),
            log: nil
        )
        try await fleet.connect(first..<(first + count))
        print(#"{"welcomed": \#(count)}"#)
        fflush(nil)
        // Blocks a Dispatch thread (not an event loop, not the concurrency pool) until stdin closes.
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async {
                var byte: UInt8 = 0
                while read(0, &byte, 1) == 1 {}
                continuation.resume()
            }
        }
        print(#"{"closed": \#(fleet.closed.load(ordering: .relaxed)), "pongs": \#(fleet.pongs.load(ordering: .relaxed))}"#)
        fflush(nil)
    }
}
