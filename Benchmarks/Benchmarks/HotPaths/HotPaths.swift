import Actors
import Benchmark
import NIOCore
import PushProtocol

/// The device codec and the in-memory store, per operation (Docs/benchmarks.md).
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .cpuTotal, .mallocCountTotal, .throughput], maxDuration: .seconds(2))

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
            precondition(store.acknowledge(clientID: "device", messageIDs: [id]) == 1)
        }
    }
}
