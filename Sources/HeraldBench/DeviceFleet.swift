import HeraldClient
import Histogram
import NIOCore
import NIOPosix
import PushProtocol
import Synchronization

/// What the devices of a run received: per sequence number (a unicast message's index, a
/// broadcast's round) how many times and when last, and the latency of every delivery.
final class DeliveryLog: Sendable {
    struct State {
        var latency = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
        var count: [UInt32]
        var lastReceipt: [UInt64]
        var deliveries = 0
        var foreign = 0
        var outOfOrder = 0
    }

    private let state: Mutex<State>

    /// A log for sequence numbers `0..<sequences`.
    init(sequences: Int) {
        state = Mutex(State(count: Array(repeating: 0, count: sequences), lastReceipt: Array(repeating: 0, count: sequences)))
    }

    fileprivate func record(_ payload: ByteBuffer, inOrderAfter previous: inout UInt64?) {
        let now = monotonicNanoseconds()
        guard let (sequence, sentAt) = Payload.read(payload) else {
            state.withLock { $0.foreign += 1 }
            return
        }
        let late = previous.map { sequence <= $0 } ?? false
        previous = sequence
        state.withLock { state in
            guard sequence < UInt64(state.count.count) else { return state.foreign += 1 }
            state.deliveries += 1
            state.count[Int(sequence)] += 1
            state.lastReceipt[Int(sequence)] = max(state.lastReceipt[Int(sequence)], now)
            if late { state.outOfOrder += 1 }
            _ = state.latency.record(now > sentAt ? (now - sentAt) / 1000 : 0)
        }
    }

    /// Deliveries so far, repeats included.
    var deliveries: Int { state.withLock { $0.deliveries } }

    func read<T>(_ body: (State) -> T) -> T { state.withLock { body($0) } }

    /// The latencies recorded since the last call (one phase of a run), in microseconds.
    func takeLatency() -> Histogram<UInt64> {
        state.withLock { state in
            defer { state.latency.reset() }
            return state.latency
        }
    }

    /// How sequence numbers `range` arrived: received at least once, received more than
    /// once (the repeats), and the last receipt of any of them.
    func summary(_ range: Range<Int>) -> (received: Int, repeats: Int, lastReceipt: UInt64) {
        state.withLock { state in
            var received = 0, repeats = 0
            var last: UInt64 = 0
            for sequence in range where state.count[sequence] > 0 {
                received += 1
                repeats += Int(state.count[sequence]) - 1
                last = max(last, state.lastReceipt[sequence])
            }
            return (received, repeats, last)
        }
    }
}

/// Many bench devices on one node: each says HELLO, reads WELCOME, then counts what it
/// receives, ACKs stored messages when `acknowledges` (one flush per read, as a good client
/// does), and PINGs every heartbeat when `pings` (starting at a random point of the first
/// interval, so the fleet's PINGs spread). Leaner than the client library's `DeviceClient`
/// (no task or event queue per device), so that the bench spends little CPU per delivery.
final class DeviceFleet: Sendable {
    struct Settings: Sendable {
        var host: String
        var port: Int
        var prefix = "bench-"
        var localHosts: [String] = []
        var heartbeatSeconds: UInt16 = 600
        var pings = false
        var acknowledges = true
        /// TLS and WebSocket beneath the device protocol, as the client library does them.
        var transport = DeviceClientTransport.tcp
    }

    let settings: Settings
    let welcomed = Atomic<Int>(0)
    let closed = Atomic<Int>(0)
    let pongs = Atomic<Int>(0)
    let log: DeliveryLog?
    private let channels = Mutex<[any Channel]>([])

    init(settings: Settings, log: DeliveryLog?) {
        self.settings = settings
        self.log = log
    }

    /// Connects devices `range` (client ids `<prefix><n>`), at most 256 connects at a time,
    /// and returns once every one of them got WELCOME; throws if one is refused or the
    /// fleet stops making progress for 30 s.
    func connect(_ range: Range<Int>, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws {
        let target = welcomed.load(ordering: .relaxed) + range.count
        var index = range.lowerBound
        while index < range.upperBound {
            let chunk = index..<min(range.upperBound, index + 256)
            var pending: [EventLoopFuture<any Channel>] = []
            for device in chunk {
                var bootstrap = ClientBootstrap(group: group)
                    .channelOption(.tcpOption(.tcp_nodelay), value: 1)
                    .connectTimeout(.seconds(10))
                    .channelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            let clientID = "\(self.settings.prefix)\(device)"
                            try self.settings.transport.install(
                                on: channel, host: self.settings.host, port: self.settings.port,
                                session: { BenchDeviceHandler(fleet: self, clientID: clientID) },
                                failed: { _ in channel.close(promise: nil) }
                            )
                        }
                    }
                if !settings.localHosts.isEmpty {
                    bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: settings.localHosts[device % settings.localHosts.count], port: 0))
                }
                pending.append(bootstrap.connect(host: settings.host, port: settings.port))
            }
            for future in pending {
                let channel = try await future.get()
                channels.withLock { $0.append(channel) }
            }
            index = chunk.upperBound
        }
        try await waitUntil("\(target) devices welcomed", stall: .seconds(30), progress: { self.welcomed.load(ordering: .relaxed) }) {
            if self.closed.load(ordering: .relaxed) > 0 { throw BenchError("\(self.closed.load(ordering: .relaxed)) devices were closed while connecting") }
            return self.welcomed.load(ordering: .relaxed) >= target
        }
    }

    var count: Int { channels.withLock { $0.count } }

    func close() async {
        let all = channels.withLock { channels in
            defer { channels = [] }
            return channels
        }
        for channel in all { channel.close(promise: nil) }
        for channel in all { try? await channel.closeFuture.get() }
    }
}

/// Polls `done` every 10 ms; throws when `progress` has not changed for `stall`.
func waitUntil(_ what: String, stall: Duration, progress: () -> Int, _ done: () throws -> Bool) async throws {
    var last = progress()
    var lastChange = ContinuousClock.now
    while try !done() {
        try await Task.sleep(for: .milliseconds(10))
        let now = progress()
        if now != last {
            last = now
            lastChange = .now
        } else if ContinuousClock.now - lastChange > stall {
            throw BenchError("stalled waiting for \(what): no progress for \(stall) (at \(now))")
        }
    }
}

private final class BenchDeviceHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let fleet: DeviceFleet
    private let clientID: String
    private let decoder = FrameDecoder(maxFrame: 1 << 20)
    private var received: ByteBuffer?
    private var unflushed = false
    private var previous: UInt64?
    private var pinger: Scheduled<Void>?

    init(fleet: DeviceFleet, clientID: String) {
        self.fleet = fleet
        self.clientID = clientID
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Over WebSocket the handler joins an active channel; it may write once the upgrade is done.
        if event is DeviceTransportReady { sayHello(context: context) }
        context.fireUserInboundEventTriggered(event)
    }

    func channelActive(context: ChannelHandlerContext) {
        sayHello(context: context)
        context.fireChannelActive()
    }

    private func sayHello(context: ChannelHandlerContext) {
        let hello = Frame.hello(Hello(clientID: clientID, heartbeatSeconds: fleet.settings.heartbeatSeconds))
        context.writeAndFlush(wrapOutboundOut(hello.encoded(allocator: context.channel.allocator)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let incoming = unwrapInboundIn(data)
        if received == nil { received = incoming } else { received!.writeImmutableBuffer(incoming) }
        do {
            while let frame = try decoder.decode(&received!) { handle(frame, context: context) }
        } catch {
            context.close(promise: nil)
        }
        if received?.readableBytes == 0 { received = nil }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if unflushed {
            unflushed = false
            context.flush()
        }
    }

    private func handle(_ frame: Frame, context: ChannelHandlerContext) {
        switch frame {
        case .welcome(let heartbeat, _):
            fleet.welcomed.add(1, ordering: .relaxed)
            if fleet.settings.pings, heartbeat > 0 { schedulePing(in: .milliseconds(Int64.random(in: 0..<Int64(heartbeat) * 1000)), heartbeat: heartbeat, context: context) }
        case .push(let id, let payload):
            fleet.log?.record(payload, inOrderAfter: &previous)
            if fleet.settings.acknowledges {
                context.write(wrapOutboundOut(Frame.ack(messageID: id).encoded(allocator: context.channel.allocator)), promise: nil)
                unflushed = true
            }
        case .ping:
            context.write(wrapOutboundOut(Frame.pong.encoded(allocator: context.channel.allocator)), promise: nil)
            unflushed = true
        case .pong:
            fleet.pongs.add(1, ordering: .relaxed)
        case .error, .goaway, .hello, .ack:
            context.close(promise: nil)
        }
    }

    private func schedulePing(in delay: TimeAmount, heartbeat: UInt16, context: ChannelHandlerContext) {
        pinger = context.eventLoop.assumeIsolated().scheduleTask(in: delay) {
            context.writeAndFlush(self.wrapOutboundOut(Frame.ping.encoded(allocator: context.channel.allocator)), promise: nil)
            self.schedulePing(in: .seconds(Int64(heartbeat)), heartbeat: heartbeat, context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        pinger?.cancel()
        fleet.closed.add(1, ordering: .relaxed)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
