import ArgumentParser
import Foundation
import Histogram
#if canImport(Glibc)
import Glibc
#endif

/// Messages to single devices: N connected devices that ACK at once, M messages through the
/// HTTP API, at full speed and at fixed rates.
struct Unicast: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Push messages to single devices through the HTTP API; throughput, server CPU per delivery, latency.",
        discussion: """
            Connects --devices devices to one node (they ACK every PUSH at once), then for each of
            --rates sends --messages messages, message i to device i % devices, through /v1/push
            (one request per message) or /v1/push/batch (--batch > 1), over --connections
            keep-alive connections. Rate 0 is full speed (each connection sends its next request
            when the last is answered); a rate R schedules message i at i/R s and measures its
            latency from then. Every message must arrive exactly once, in order per device.
            """
    )

    @Option(help: "Connected devices.") var devices = 10_000
    @Option(help: "Messages per phase.") var messages = 50_000
    @Option(help: "Phases: messages per second, comma-separated; 0 is full speed.") var rates = "0,5000"
    @Option(help: "Messages per request: 1 uses /v1/push, more uses /v1/push/batch.") var batch = 1
    @Option(help: "Concurrent HTTP connections of the publisher.") var connections = 16
    @OptionGroup var load: DeviceLoadOptions
    @OptionGroup var servers: ServerOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        raiseOpenFileLimit()
        let phases = try parseRates(rates)
        var report = Report(scenario: "unicast", parameters: [
            "devices": "\(devices)", "messages": "\(messages)", "rates": rates, "batch": "\(batch)", "connections": "\(PushLoad.connections(connections, devices: devices))",
            "payload_bytes": "\(load.payloadBytes)", "store": servers.storeLabel, "transport": servers.transport.rawValue,
        ])
        try await Deployment.run(servers, nodes: 1) { deployment in
            let node = deployment.nodes[0]
            let log = DeliveryLog(sequences: messages * phases.count)
            let fleet = DeviceFleet(settings: .init(host: node.host, port: node.devicePort, localHosts: splitList(load.localHosts), transport: try deployment.clientTransport()), log: log)
            try await fleet.connect(0..<devices)
            for (index, rate) in phases.enumerated() {
                let phase = UnicastPhase(
                    label: rate == nil ? "full speed" : "\(Int(rate!))/s", messages: messages, offset: index * messages, devices: devices,
                    batch: batch, connections: connections, payloadBytes: load.payloadBytes, rate: rate
                )
                try await phase.run(publishingTo: node, deployment: deployment, log: log, report: &report)
            }
            report.add("devices closed during the run", Double(fleet.closed.load(ordering: .relaxed)))
            if fleet.closed.load(ordering: .relaxed) > 0 { report.problems.append("\(fleet.closed.load(ordering: .relaxed)) devices were disconnected") }
            await fleet.close()
        }
        try report.emit(output)
    }
}

/// One phase of a unicast run: `messages` messages at `rate` (nil: full speed) through one
/// node, measured from the first request to the last delivery.
struct UnicastPhase {
    var label: String
    var messages: Int
    var offset: Int
    var devices: Int
    var batch: Int
    var connections: Int
    var payloadBytes: Int
    var rate: Double?
    var prefix = "bench-"

    func run(publishingTo node: Node, deployment: Deployment, log: DeliveryLog, report: inout Report) async throws {
        _ = log.takeLatency()
        let before = deployment.serverCPU()
        let benchBefore = ownCPUSeconds()
        let deliveriesBefore = log.deliveries
        let load = PushLoad(
            total: messages, offset: offset, devices: devices, batch: batch, payloadBytes: payloadBytes, rate: rate, prefix: prefix,
            apiKey: deployment.apiKey
        )
        let channels = try await load.start(host: node.host, port: node.httpPort, connections: connections)
        try await waitUntil("\(label): \(messages) messages delivered", stall: .seconds(30), progress: { log.deliveries + load.answered }) {
            load.answered == messages && log.deliveries - deliveriesBefore >= load.accepted.load(ordering: .relaxed)
        }
        // The devices' ACKs of the last messages are still on their way: let the server take them.
        try await Task.sleep(for: .milliseconds(300))
        let after = deployment.serverCPU()
        let benchCPU = ownCPUSeconds() - benchBefore
        for channel in channels { try? await channel.close() }

        let latency = log.takeLatency()
        let (received, repeats, lastReceipt) = log.summary(offset..<(offset + messages))
        let outOfOrder = log.read(\.outOfOrder)
        let seconds = Double(lastReceipt &- load.startedAt) / 1e9
        let heraldTime = zip(after.nodes, before.nodes).map { $0 - $1 }.reduce(.zero, +)
        let heraldCPU = heraldTime.total
        let redisTime = after.redis.flatMap { a in before.redis.map { a - $0 } }
        let redisCPU = redisTime?.total
        let serverCPU = heraldCPU + (redisCPU ?? 0)
        let per10k = 10_000 / Double(max(received, 1))

        report.add("\(label): pushes accepted per second", (Double(load.accepted.load(ordering: .relaxed)) / load.answerSeconds).rounded(), "/s")
        report.add("\(label): deliveries per second, end to end", (Double(received) / seconds).rounded(), "/s")
        if !after.nodes.isEmpty {
            report.add("\(label): herald CPU per 10,000 deliveries", heraldCPU * per10k, "s")
            if let redisCPU { report.add("\(label): redis-server CPU per 10,000 deliveries", redisCPU * per10k, "s") }
            if after.redisEach.count > 1 {
                // Each master's share: an even split is what a cluster's capacity rests on.
                for (index, (a, b)) in zip(after.redisEach, before.redisEach).enumerated() {
                    report.add("\(label): redis master \(index) CPU per 10,000 deliveries", (a - b).total * per10k, "s")
                }
            }
            report.add("\(label): server CPU per delivery\(redisCPU == nil ? "" : ", Redis counted")", serverCPU / Double(max(received, 1)) * 1e6, "µs")
            report.add("\(label): herald CPU per delivery in the kernel (system time)", heraldTime.system / Double(max(received, 1)) * 1e6, "µs")
            if let redisTime {
                report.add("\(label): redis-server CPU per delivery in the kernel (system time)", redisTime.system / Double(max(received, 1)) * 1e6, "µs")
            }
        }
        report.add("\(label): herald-bench CPU per 10,000 deliveries (the load, for scale)", benchCPU * per10k, "s")
        report.add("\(label): latency p50", Double(latency.valueAtPercentile(50)) / 1000, "ms")
        report.add("\(label): latency p99", Double(latency.valueAtPercentile(99)) / 1000, "ms")
        report.add("\(label): latency p99.9", Double(latency.valueAtPercentile(99.9)) / 1000, "ms")
        report.add("\(label): latency max", Double(latency.max) / 1000, "ms")
        report.add("\(label): messages delivered", Double(received))
        let refused = load.refused.load(ordering: .relaxed)
        if refused > 0 { report.problems.append("\(label): \(refused) pushes refused, first: \(load.refusal ?? "?")") }
        if received < messages - refused { report.problems.append("\(label): \(messages - refused - received) accepted messages never arrived") }
        if repeats > 0 { report.problems.append("\(label): \(repeats) messages arrived more than once") }
        if outOfOrder > 0 { report.problems.append("\(label): \(outOfOrder) messages arrived out of order on their device") }
    }
}

/// "0,5000" -> [nil, 5000.0]: nil is full speed.
func parseRates(_ text: String) throws -> [Double?] {
    try text.split(separator: ",").map { entry in
        guard let rate = Double(entry.trimmingCharacters(in: .whitespaces)), rate >= 0 else { throw ValidationError("bad rate \(entry)") }
        return rate == 0 ? nil : rate
    }
}

func splitList(_ text: String) -> [String] {
    text.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
}

/// This process's own CPU seconds (user + system), from getrusage.
func ownCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    func seconds(_ time: timeval) -> Double { Double(time.tv_sec) + Double(time.tv_usec) / 1e6 }
    return seconds(usage.ru_utime) + seconds(usage.ru_stime)
}
