import ArgumentParser

/// One message to every device: N connected devices, one `/v1/broadcast` per round.
struct Broadcast: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Broadcast to every connected device; time to the last receipt, server CPU per delivery.",
        discussion: """
            Connects --devices devices to one node, then --rounds times: POST /v1/broadcast, wait
            until every device received it (each exactly once), next round. Server CPU is counted
            over all rounds and divided by the deliveries (rounds x devices).
            """
    )

    @Option(help: "Connected devices.") var devices = 10_000
    @Option(help: "Broadcasts, one after another.") var rounds = 20
    @OptionGroup var load: DeviceLoadOptions
    @OptionGroup var servers: ServerOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        raiseOpenFileLimit()
        var report = Report(scenario: "broadcast", parameters: [
            "devices": "\(devices)", "rounds": "\(rounds)", "payload_bytes": "\(load.payloadBytes)", "store": servers.storeLabel,
        ])
        try await Deployment.run(servers, nodes: 1) { deployment in
            let node = deployment.nodes[0]
            let log = DeliveryLog(sequences: rounds)
            let fleet = DeviceFleet(
                settings: .init(host: node.host, port: node.devicePort, localHosts: splitList(load.localHosts), acknowledges: false, transport: try deployment.clientTransport()), log: log
            )
            try await fleet.connect(0..<devices)
            let api = try await HTTPConnection.connect(host: node.host, port: node.httpPort, apiKey: deployment.apiKey)
            let before = deployment.serverCPU()
            let benchBefore = ownCPUSeconds()
            var lastReceipt: [Double] = []
            var requestSeconds: [Double] = []
            for round in 0..<rounds {
                let sent = monotonicNanoseconds()
                let data = Payload.string(sequence: UInt64(round), sentAt: sent, bytes: load.payloadBytes)
                let (status, body) = try await api.request(.POST, "/v1/broadcast", json: #"{"data":"\#(data)"}"#)
                requestSeconds.append(Double(monotonicNanoseconds() - sent) / 1e9)
                guard status == 202 else { throw BenchError("broadcast answered \(status): \(body)") }
                try await waitUntil("round \(round) at every device", stall: .seconds(10), progress: { log.deliveries }) {
                    log.summary(round..<(round + 1)).lastReceipt > 0 && log.read { $0.count[round] } >= UInt32(devices) - UInt32(fleet.closed.load(ordering: .relaxed))
                }
                lastReceipt.append(Double(log.summary(round..<(round + 1)).lastReceipt - sent) / 1e9)
            }
            try await Task.sleep(for: .milliseconds(100))
            let after = deployment.serverCPU()
            let benchCPU = ownCPUSeconds() - benchBefore
            await api.close()

            let deliveries = log.deliveries
            let latency = log.takeLatency()
            let heraldTime = zip(after.nodes, before.nodes).map { $0 - $1 }.reduce(.zero, +)
            let heraldCPU = heraldTime.total
            let sorted = lastReceipt.sorted()
            report.add("time to the last receipt, median of rounds", sorted[sorted.count / 2] * 1000, "ms")
            report.add("time to the last receipt, slowest round", sorted.last! * 1000, "ms")
            report.add("broadcast request answered (202), median", requestSeconds.sorted()[rounds / 2] * 1000, "ms")
            report.add("deliveries per second within a round", Double(devices) / sorted[sorted.count / 2], "/s")
            if !after.nodes.isEmpty {
                report.add("herald CPU per 10,000 deliveries", heraldCPU * 10_000 / Double(max(deliveries, 1)), "s")
                report.add("server CPU per delivery", heraldCPU / Double(max(deliveries, 1)) * 1e6, "µs")
                report.add("server CPU per delivery in the kernel (system time)", heraldTime.system / Double(max(deliveries, 1)) * 1e6, "µs")
            }
            report.add("herald-bench CPU per 10,000 deliveries (the load, for scale)", benchCPU * 10_000 / Double(max(deliveries, 1)), "s")
            report.add("delivery latency p50", Double(latency.valueAtPercentile(50)) / 1000, "ms")
            report.add("delivery latency p99", Double(latency.valueAtPercentile(99)) / 1000, "ms")
            report.add("deliveries", Double(deliveries))
            let closed = fleet.closed.load(ordering: .relaxed)
            if closed > 0 { report.problems.append("\(closed) devices were disconnected") }
            if closed == 0, deliveries != rounds * devices { report.problems.append("\(deliveries) deliveries, not \(rounds * devices)") }
            if log.read(\.outOfOrder) > 0 { report.problems.append("\(log.read(\.outOfOrder)) broadcasts arrived twice or out of order on a device") }
            await fleet.close()
        }
        try report.emit(output)
    }
}
