import Actors
import Benchmark
import CoreMetrics
import Foundation
import Logging
import NIOCore
import NIOEmbedded
import PushProtocol

/// The device codec, the registry and the in-memory store, per operation (Docs/benchmarks.md).
/// `HERALD_BENCH_SMOKE=1` runs each benchmark a few times only (CI keeps them working).
let benchmarks: @Sendable () -> Void = {
    let smoke = ProcessInfo.processInfo.environment["HERALD_BENCH_SMOKE"] != nil
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .mallocCountTotal, .throughput],
        maxDuration: smoke ? .milliseconds(50) : .seconds(2), maxIterations: smoke ? 10 : 1_000_000
    )

    // 64 ACK frames in one read: what a device sends back for a full window.
    var acks = ByteBuffer()
    for index in 0..<64 {
        var frame = Frame.ack(messageID: "1a2353d0bfa-e8c2f7c758800240-\(index)").encoded()
        acks.writeBuffer(&frame)
    }
    let decoder = FrameDecoder(maxFrame: 65536)
    Benchmark("decode 64 ACK frames") { benchmark in
        for _ in benchmark.scaledIterations {
            var input = acks
            var count = 0
            while let frame = try decoder.decode(&input) {
                blackHole(frame)
                count += 1
            }
            precondition(count == 64)
        }
    }

    let payload = ByteBuffer(repeating: 0x61, count: 64)
    Benchmark("encode one PUSH frame (64-byte payload)") { benchmark in
        var buffer = ByteBufferAllocator().buffer(capacity: 128)
        for _ in benchmark.scaledIterations {
            buffer.clear()
            blackHole(buffer.writePushFrame(messageID: "1a2353d0bfa-e8c2f7c758800240-7", payload: payload))
        }
    }

    let store = InMemoryPushStore(maxPending: 1_000_000)
    Benchmark("in-memory store: append, read, acknowledge one message") { benchmark in
        var sequence = 0
        for _ in benchmark.scaledIterations {
            sequence += 1
            let id = "m\(sequence)"
            let stored = try store.append([NewMessage(clientID: "device", id: id, payload: payload, expiresAtMillis: Int64.max)])
            blackHole(store.pending(for: "device", after: stored[0].sequence - 1, limit: 64))
            precondition(store.acknowledgeNow(clientID: "device", messages: [Acknowledgement(id: id, sequence: stored[0].sequence)]) == 1)
        }
    }

    // The registry as a push finds its device: 10,000 registered connections, one lookup.
    let services = DeviceServices(
        configuration: SessionConfiguration(nodeID: "bench"), store: store, registry: ConnectionRegistry(),
        authenticator: OpenDeviceAuthenticator(), metrics: NodeMetrics(factory: NOOPMetricsHandler.instance), logger: Logger(label: "bench")
    )
    let loop = EmbeddedEventLoop()
    let ids = (0..<10_000).map { "device-\($0)" }
    for id in ids {
        _ = services.registry.register(id, Connection(channel: EmbeddedChannel(loop: loop), services: services))
    }
    Benchmark("registry: look up one of 10,000 connected devices") { benchmark in
        var index = 0
        for _ in benchmark.scaledIterations {
            index = (index &+ 7919) % ids.count
            blackHole(services.registry.connection(for: ids[index]))
        }
    }
}
