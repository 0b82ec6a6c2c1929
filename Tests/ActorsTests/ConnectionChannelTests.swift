import Logging
import Metrics
import NIOCore
import NIOEmbedded
import PushProtocol
import Synchronization
import Testing

@testable import Actors

/// One device connection on NIO's testing channel: the real `Connection` and
/// `DeviceChannelHandler`, bytes in and out, no socket, and the loop's manual clock for every
/// timer (hello timeout, heartbeat sweep, stall timeout).
private struct Harness {
    let channel: NIOAsyncTestingChannel
    let loop: NIOAsyncTestingEventLoop
    let connection: Connection
    let services: DeviceServices
    let store: InMemoryPushStore
    private let decoder = FrameDecoder()

    /// With `receiptsOffPath`, the store keeps message status and answers asynchronously, as
    /// Redis does (`SlowReceipts`): the connection then holds each send's mark for its ACK.
    init(
        configuration: SessionConfiguration = SessionConfiguration(nodeID: "n"), authenticator: any DeviceAuthenticator = OpenDeviceAuthenticator(),
        receiptsOffPath: SlowReceipts? = nil
    ) async throws {
        loop = NIOAsyncTestingEventLoop()
        channel = NIOAsyncTestingChannel(loop: loop)
        store = receiptsOffPath?.store ?? InMemoryPushStore(maxPending: 100)
        services = DeviceServices(
            configuration: configuration, store: receiptsOffPath ?? store, registry: ConnectionRegistry(), authenticator: authenticator,
            metrics: NodeMetrics(factory: NOOPMetricsHandler.instance), logger: Logger(label: "test"),
            heartbeats: HeartbeatSweeps(loops: [loop])
        )
        let (channel, services) = (channel, services)
        connection = try await loop.submit {
            let connection = Connection(channel: channel, services: services)
            try channel.pipeline.syncOperations.addHandler(DeviceChannelHandler(connection: connection, maxFrame: 1024))
            return connection
        }.get()
        try await channel.connect(to: SocketAddress(ipAddress: "192.0.2.7", port: 4000)).get()
    }

    func send(_ frame: Frame) async throws {
        try await channel.writeInbound(frame.encoded(allocator: ByteBufferAllocator()))
        await settle()
    }

    func send(bytes: [UInt8]) async throws {
        try await channel.writeInbound(ByteBuffer(bytes: bytes))
        await settle()
    }

    /// Runs what is due on the loop, and what that enqueued, a few rounds deep (a task's
    /// continuation after a store call is one more job on the loop). Time does not move.
    func settle() async {
        for _ in 0..<8 { await loop.run() }
    }

    /// Every frame the connection wrote so far.
    func written() async throws -> [Frame] {
        var frames: [Frame] = []
        while var buffer = try await channel.readOutbound(as: ByteBuffer.self) {
            while let frame = try decoder.decode(&buffer) { frames.append(frame) }
        }
        return frames
    }

    func hello(_ clientID: String = "alice", token: String = "", heartbeat: UInt16 = 30) async throws -> [Frame] {
        try await send(.hello(Hello(clientID: clientID, token: token, heartbeatSeconds: heartbeat)))
        return try await written()
    }

    var isOpen: Bool { channel.isActive }
}

/// An in-memory store with message status, seen through the asynchronous `PushStore` and
/// `ReceiptStore` alone (not `SynchronousPushStore`): how a connection sees the Redis store,
/// without a Redis. Counts the send marks written on their own.
final class SlowReceipts: ReceiptStore {
    let store = InMemoryPushStore(maxPending: 100, receiptRetentionMillis: 60_000)
    private let marks = Mutex<[Acknowledgement]>([])
    /// The sends recorded alone (not by an ACK), in order.
    var markedAlone: [Acknowledgement] { marks.withLock { $0 } }

    var keepsReceipts: Bool { true }
    func messageID(_ base: String, for clientID: String) -> String { base }
    func append(_ messages: [NewMessage]) async throws(StoreError) -> [StoredMessage] { try store.append(messages) }
    func pending(for clientID: String, after sequence: UInt64, limit: Int) async -> [StoredMessage] {
        store.pending(for: clientID, after: sequence, limit: limit)
    }
    func acknowledge(clientID: String, messages: [Acknowledgement]) async -> Int { store.acknowledge(clientID: clientID, messages: messages) }
    func pendingCount(for clientID: String) async -> Int { store.pendingCount(for: clientID) }
    func removeExpired() async -> Int { store.removeExpired() }
    func ping() async {}
    func receipt(of id: String) async -> MessageReceipt? { store.receipt(of: id) }
    func pendingReceipts(for clientID: String, after sequence: UInt64, limit: Int) async -> [MessageReceipt] {
        store.pendingReceipts(for: clientID, after: sequence, limit: limit)
    }
    func markSent(clientID: String, sends: [Acknowledgement]) async {
        marks.withLock { $0 += sends }
        store.markSent(clientID: clientID, sends: sends)
    }
    /// At once, so that the test sees it without waiting for a task.
    func markSentDetached(clientID: String, sends: [Acknowledgement]) {
        marks.withLock { $0 += sends }
        store.markSent(clientID: clientID, sends: sends)
    }
}

/// Accepts exactly one token.
private struct OneToken: DeviceAuthenticator {
    func authenticate(clientID: String, token: String) -> Bool { token == "good" }
}

@Suite("Connection + DeviceChannelHandler on NIO's testing channel, time on the loop's clock", .timeLimit(.minutes(1)))
struct ConnectionChannelTests {
    @Test("HELLO gets WELCOME; a stored message goes out as PUSH; its ACK deletes it from the store")
    func deliverAndAcknowledge() async throws {
        let harness = try await Harness()
        #expect(try await harness.hello() == [.welcome(heartbeatSeconds: 30, nodeID: "n")])
        let stored = try harness.store.append([NewMessage(clientID: "alice", id: "m1", payload: ByteBuffer(string: "hi"), expiresAtMillis: .max)])
        harness.connection.deliver(stored[0])
        await harness.settle()
        #expect(try await harness.written() == [.push(messageID: "m1", payload: ByteBuffer(string: "hi"))])
        #expect(harness.store.pendingCount(for: "alice") == 1, "kept until the ACK")
        try await harness.send(.ack(messageID: "m1"))
        #expect(harness.store.pendingCount(for: "alice") == 0)
    }

    @Test("status kept off the delivery's path (Redis): a send's mark goes with its ACK, or alone at the second sweep after, or at the close")
    func heldBackSendMarks() async throws {
        let harness = try await Harness(receiptsOffPath: SlowReceipts())
        _ = try await harness.hello()
        let before = WallClock.millisecondsSinceEpoch()
        let stored = try harness.store.append((1...3).map { NewMessage(clientID: "alice", id: "m\($0)", payload: ByteBuffer(), expiresAtMillis: .max) })
        for message in stored { harness.connection.deliver(message) }
        await harness.settle()
        let after = WallClock.millisecondsSinceEpoch()
        #expect(try await harness.written().count == 3)
        #expect(harness.store.receipt(of: "m1")?.state == .stored, "the mark waits for the ACK")

        // m1's ACK records its send, with the time of the write, in the same store call.
        try await harness.send(.ack(messageID: "m1"))
        let acked = try #require(harness.store.receipt(of: "m1"))
        #expect(acked.state == .acked && (before...after).contains(acked.sentAtMillis ?? 0))

        // m2 and m3 get no ACK: one sweep later they still wait, at the next one they are recorded alone.
        let receipts = try #require(harness.services.store as? SlowReceipts)
        await harness.loop.advanceTime(by: .seconds(1))
        #expect(receipts.markedAlone.isEmpty && harness.store.receipt(of: "m2")?.state == .stored)
        await harness.loop.advanceTime(by: .seconds(1))
        #expect(receipts.markedAlone.map(\.id) == ["m2", "m3"])
        let sent = try #require(harness.store.receipt(of: "m2"))
        #expect(sent.state == .sent && (before...after).contains(sent.sentAtMillis ?? 0), "recorded later, at the write's time")
        try await harness.send(.ack(messageID: "m2"))
        #expect(harness.store.receipt(of: "m2")?.state == .acked && receipts.markedAlone.count == 2)

        // A send still waiting when the connection closes is recorded then.
        let fourth = try harness.store.append([NewMessage(clientID: "alice", id: "m4", payload: ByteBuffer(), expiresAtMillis: .max)])
        harness.connection.deliver(fourth[0])
        await harness.settle()
        #expect(harness.store.receipt(of: "m4")?.state == .stored)
        try await harness.channel.close()
        await harness.settle()
        #expect(harness.store.receipt(of: "m4")?.state == .sent && receipts.markedAlone.map(\.id) == ["m2", "m3", "m4"])
    }

    @Test("messages stored before the HELLO are read and sent after WELCOME, in order")
    func pendingOnConnect() async throws {
        let harness = try await Harness()
        _ = try harness.store.append((1...3).map { NewMessage(clientID: "alice", id: "m\($0)", payload: ByteBuffer(), expiresAtMillis: .max) })
        let frames = try await harness.hello()
        #expect(frames.first == .welcome(heartbeatSeconds: 30, nodeID: "n"))
        #expect(frames.dropFirst().compactMap { if case .push(let id, _) = $0 { id } else { nil } } == ["m1", "m2", "m3"])
    }

    @Test("no HELLO within the hello timeout (the loop's clock): ERROR 408 and the output closed")
    func helloTimeout() async throws {
        let harness = try await Harness(configuration: SessionConfiguration(nodeID: "n", helloTimeout: .seconds(10)))
        await harness.loop.advanceTime(by: .milliseconds(9_999))
        #expect(try await harness.written() == [])
        await harness.loop.advanceTime(by: .milliseconds(1))
        #expect(try await harness.written() == [.error(.helloTimeout, "no HELLO within 10 s")])
        await harness.loop.advanceTime(by: .seconds(2))
        #expect(!harness.isOpen)
    }

    @Test("a bad token is 401; a good one WELCOME")
    func tokens() async throws {
        let refused = try await Harness(authenticator: OneToken())
        #expect(try await refused.hello(token: "bad") == [.error(.unauthorized, "authentication failed")])
        let accepted = try await Harness(authenticator: OneToken())
        #expect(try await accepted.hello(token: "good") == [.welcome(heartbeatSeconds: 30, nodeID: "n")])
    }

    @Test("a device silent for 2 x heartbeat is closed by its loop's sweep; one that PINGs is not")
    func heartbeat() async throws {
        let silent = try await Harness()
        _ = try await silent.hello(heartbeat: 10)
        await silent.loop.advanceTime(by: .seconds(19))
        #expect(silent.isOpen)
        try await silent.send(.ping)
        await silent.loop.advanceTime(by: .seconds(19))
        #expect(silent.isOpen, "the PING restarted the count")
        await silent.loop.advanceTime(by: .seconds(2))
        #expect(!silent.isOpen)
    }

    @Test("the sweep looks at a PINGing device about once per two heartbeats, not every second, and still closes it once silent")
    func sweepLooksOnlyWhenDue() async throws {
        let harness = try await Harness()
        _ = try await harness.hello(heartbeat: 10)
        let sweep = harness.services.heartbeats.sweep(for: harness.loop)
        for _ in 0..<12 {
            await harness.loop.advanceTime(by: .seconds(5))
            try await harness.send(.ping)
        }
        #expect(harness.isOpen)
        let checks = try await harness.loop.submit { sweep.checks }.get()
        #expect(checks >= 2 && checks <= 5, "60 s of PINGs every 5 s at heartbeat 10: \(checks) looks, not one a second")
        await harness.loop.advanceTime(by: .seconds(20))
        #expect(!harness.isOpen, "silent for 2 x heartbeat after the last PING")
    }

    @Test("frames beyond the rate are 429 and nothing after is answered")
    func frameRate() async throws {
        let harness = try await Harness(configuration: SessionConfiguration(nodeID: "n", maxFramesPerSecond: 5))
        _ = try await harness.hello()
        for _ in 0..<9 { try await harness.send(.ping) }
        #expect(try await harness.written() == Array(repeating: .pong, count: 9))
        try await harness.send(.ping)
        #expect(try await harness.written() == [.error(.tooManyRequests, "frames too fast")])
        try await harness.send(.ping)
        #expect(try await harness.written() == [])
    }

    @Test("a socket left unwritable for the stall timeout is closed; one that drains in time is not")
    func stall() async throws {
        let harness = try await Harness(configuration: SessionConfiguration(nodeID: "n", stallTimeout: .seconds(5)))
        _ = try await harness.hello()
        harness.channel.isWritable = false
        harness.channel.pipeline.fireChannelWritabilityChanged()
        await harness.loop.advanceTime(by: .seconds(4))
        harness.channel.isWritable = true
        harness.channel.pipeline.fireChannelWritabilityChanged()
        await harness.loop.advanceTime(by: .seconds(4))
        #expect(harness.isOpen)
        harness.channel.isWritable = false
        harness.channel.pipeline.fireChannelWritabilityChanged()
        await harness.loop.advanceTime(by: .seconds(5))
        #expect(!harness.isOpen)
    }

    @Test("draining: GOAWAY once, and a HELLO afterwards is 503")
    func draining() async throws {
        let harness = try await Harness(configuration: SessionConfiguration(nodeID: "n", reconnectAfterMilliseconds: 250))
        harness.connection.goAway(reason: "draining")
        harness.connection.goAway(reason: "draining")
        await harness.settle()
        #expect(try await harness.written() == [.goaway(reconnectAfterMilliseconds: 250, reason: "draining")])
        #expect(try await harness.hello() == [.error(.unavailable, "server is draining")])
    }

    @Test("a malformed frame closes that connection with ERROR and its code")
    func malformed() async throws {
        let harness = try await Harness()
        try await harness.send(bytes: [0, 0, 0x10, 0, 1])   // declares 4096 bytes, over the 1024 allowed
        let frames = try await harness.written()
        guard case .error(ErrorCode.frameTooLarge.rawValue, _) = frames.first else {
            Issue.record("expected ERROR 413, got \(frames)")
            return
        }
        #expect(frames.count == 1)
    }
}
