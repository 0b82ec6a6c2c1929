import ArgumentParser

/// Two nodes on one Redis: devices on node B, messages through B (same node) and through A
/// (stored by A, relayed to B: two hops).
struct Cluster: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Same-node against cross-node delivery in a two-node cluster: latency, relay throughput, CPU.",
        discussion: """
            Starts a redis-server and two nodes (or takes two --target nodes), connects --devices
            devices to the second, then: --messages at --rate through the second node (same
            node), the same through the first (cross-node), and --messages at full speed through
            the first. CPU counts both nodes and Redis.
            """
    )

    @Option(help: "Connected devices (all on the second node).") var devices = 1_000
    @Option(help: "Messages per phase.") var messages = 20_000
    @Option(help: "Messages per second of the two latency phases.") var rate = 2_000.0
    @Option(help: "Messages per request in the throughput phase: 1 uses /v1/push, more /v1/push/batch.") var batch = 1
    @Option(help: "Concurrent HTTP connections of the publisher.") var connections = 16
    @OptionGroup var load: DeviceLoadOptions
    @OptionGroup var servers: ServerOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        raiseOpenFileLimit()
        var report = Report(scenario: "cluster", parameters: [
            "devices": "\(devices)", "messages": "\(messages)", "rate": "\(Int(rate))", "batch": "\(batch)", "connections": "\(PushLoad.connections(connections, devices: devices))",
            "payload_bytes": "\(load.payloadBytes)",
        ])
        try await Deployment.run(servers, nodes: 2) { deployment in
            let (a, b) = (deployment.nodes[0], deployment.nodes[1])
            let log = DeliveryLog(sequences: messages * 3)
            let fleet = DeviceFleet(settings: .init(host: b.host, port: b.devicePort, localHosts: splitList(load.localHosts), transport: try deployment.clientTransport()), log: log)
            try await fleet.connect(0..<devices)
            let phases: [(String, Node, Double?, Int)] = [
                ("same node, \(Int(rate))/s", b, rate, 1), ("cross-node, \(Int(rate))/s", a, rate, 1), ("cross-node, full speed", a, nil, batch),
            ]
            for (index, (label, node, rate, batch)) in phases.enumerated() {
                let phase = UnicastPhase(
                    label: label, messages: messages, offset: index * messages, devices: devices, batch: batch, connections: connections,
                    payloadBytes: load.payloadBytes, rate: rate
                )
                try await phase.run(publishingTo: node, deployment: deployment, log: log, report: &report)
            }
            if fleet.closed.load(ordering: .relaxed) > 0 { report.problems.append("\(fleet.closed.load(ordering: .relaxed)) devices were disconnected") }
            await fleet.close()
        }
        try report.emit(output)
    }
}
