import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// The publishing side of a unicast run: `total` messages through `/v1/push` (one request per
/// message) or `/v1/push/batch`, message `i` to device `i % devices`, over keep-alive
/// connections that each send their next request when the previous one is answered.
///
/// Connection `c` of `C` sends messages `c, c + C, c + 2C, ...`; with `C` dividing the number
/// of devices, every device's messages go through one connection, one after another, so the
/// store accepts them in sequence order and they must arrive in that order.
///
/// At a fixed `rate` message `i` is due at `start + i / rate`; its payload carries that due
/// time, not the time it left, so a server that falls behind shows in the latency instead of
/// slowing the load down (no coordinated omission). At full speed the payload carries the
/// time the request was written.
final class PushLoad: Sendable {
    let total: Int
    let offset: Int
    let devices: Int
    let batch: Int
    let payloadBytes: Int
    let rate: Double?
    let prefix: String
    let apiKey: String?

    let accepted = Atomic<Int>(0)
    let refused = Atomic<Int>(0)
    private let startNanos = Atomic<UInt64>(0)
    private let lastAnswerNanos = Atomic<UInt64>(0)
    private let firstRefusal = Mutex<String?>(nil)

    /// Message `i` carries sequence number `offset + i` and goes to device `(offset + i) % devices`.
    init(total: Int, offset: Int = 0, devices: Int, batch: Int, payloadBytes: Int, rate: Double?, prefix: String, apiKey: String?) {
        self.total = total
        self.offset = offset
        self.devices = devices
        self.batch = max(1, batch)
        self.payloadBytes = max(Payload.headerBytes, payloadBytes)
        self.rate = rate
        self.prefix = prefix
        self.apiKey = apiKey
    }

    /// Messages answered so far (202 or not).
    var answered: Int { accepted.load(ordering: .relaxed) + refused.load(ordering: .relaxed) }
    /// The first non-202 answer, for the report.
    var refusal: String? { firstRefusal.withLock { $0 } }
    /// Seconds from the start to the last answer.
    var answerSeconds: Double {
        Double(lastAnswerNanos.load(ordering: .relaxed) &- startNanos.load(ordering: .relaxed)) / 1e9
    }
    var startedAt: UInt64 { startNanos.load(ordering: .relaxed) }

    /// The largest number of connections up to `wanted` that divides the number of devices.
    static func connections(_ wanted: Int, devices: Int) -> Int {
        (1...max(1, min(wanted, devices))).last { devices % $0 == 0 } ?? 1
    }

    /// Opens `connections` connections to `host:port` (`PushLoad.connections(_:devices:)` of
    /// them) and starts sending at once.
    func start(host: String, port: Int, connections wanted: Int, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> [any Channel] {
        let connections = Self.connections(wanted, devices: devices)
        startNanos.store(monotonicNanoseconds(), ordering: .relaxed)
        var channels: [any Channel] = []
        for index in 0..<connections {
            let channel = try await ClientBootstrap(group: group)
                .channelOption(.tcpOption(.tcp_nodelay), value: 1)
                .connectTimeout(.seconds(5))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(PushLoadHandler(load: self, host: host, index: index, connections: connections))
                    }
                }
                .connect(host: host, port: port).get()
            channels.append(channel)
        }
        return channels
    }

    /// When message `index` is due, in CLOCK_MONOTONIC nanoseconds (now at full speed).
    fileprivate func dueTime(of index: Int) -> UInt64 {
        guard let rate else { return monotonicNanoseconds() }
        return startNanos.load(ordering: .relaxed) + UInt64(Double(index) / rate * 1e9)
    }

    fileprivate func answer(status: UInt, messages: Int, body: String) {
        if status == 202 {
            accepted.add(messages, ordering: .relaxed)
        } else {
            refused.add(messages, ordering: .relaxed)
            firstRefusal.withLock { if $0 == nil { $0 = "\(status) \(body)" } }
        }
        lastAnswerNanos.store(monotonicNanoseconds(), ordering: .relaxed)
    }

    /// The request body for messages `indices`, all stamped `sentAt`.
    fileprivate func body(_ indices: StrideTo<Int>, sentAt: UInt64, allocator: ByteBufferAllocator) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 16 + batch * (payloadBytes + prefix.utf8.count + 40))
        if batch > 1 { buffer.writeStaticString(#"{"messages":["#) }
        var first = true
        for index in indices.lazy.map({ $0 + self.offset }) {
            if !first { buffer.writeStaticString(",") }
            first = false
            buffer.writeStaticString(#"{"client_id":""#)
            buffer.writeString(prefix)
            buffer.writeString(String(index % devices))
            buffer.writeStaticString(#"","data":""#)
            Payload.write(sequence: UInt64(index), sentAt: sentAt, bytes: payloadBytes, into: &buffer)
            buffer.writeStaticString(#""}"#)
        }
        if batch > 1 { buffer.writeStaticString("]}") }
        return buffer
    }
}

/// The payload of a bench message: 16 hex digits of sequence number (the message's index,
/// or a broadcast's round), 16 of CLOCK_MONOTONIC nanoseconds when it was due, then padding.
enum Payload {
    static let headerBytes = 32

    static func write(sequence: UInt64, sentAt: UInt64, bytes: Int, into buffer: inout ByteBuffer) {
        writeHex(sequence, into: &buffer)
        writeHex(sentAt, into: &buffer)
        if bytes > headerBytes { buffer.writeRepeatingByte(UInt8(ascii: "x"), count: bytes - headerBytes) }
    }

    static func string(sequence: UInt64, sentAt: UInt64, bytes: Int) -> String {
        var buffer = ByteBuffer()
        write(sequence: sequence, sentAt: sentAt, bytes: bytes, into: &buffer)
        return String(buffer: buffer)
    }

    /// The sequence number and due time of a payload, nil if it is not a bench payload.
    static func read(_ payload: ByteBuffer) -> (sequence: UInt64, sentAt: UInt64)? {
        guard payload.readableBytes >= headerBytes else { return nil }
        return payload.withUnsafeReadableBytes { bytes in
            guard let sequence = parseHex(bytes[0..<16]), let sentAt = parseHex(bytes[16..<32]) else { return nil }
            return (sequence, sentAt)
        }
    }

    private static let digits = Array("0123456789abcdef".utf8)

    private static func writeHex(_ value: UInt64, into buffer: inout ByteBuffer) {
        var shift = 60
        while shift >= 0 {
            buffer.writeInteger(digits[Int((value >> UInt64(shift)) & 0xF)])
            shift -= 4
        }
    }

    private static func parseHex(_ bytes: Slice<UnsafeRawBufferPointer>) -> UInt64? {
        var value: UInt64 = 0
        for byte in bytes {
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            default: return nil
            }
            value = value << 4 | UInt64(digit)
        }
        return value
    }
}

/// Sends one request, waits for its answer, sends the next (on this connection's event loop).
private final class PushLoadHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = Never
    typealias OutboundOut = HTTPClientRequestPart

    private let load: PushLoad
    private let host: String
    /// This connection's messages are `index, index + stride, ...`; `taken` of them are sent.
    private let index: Int
    private let stride: Int
    private var taken = 0
    private var inFlight = 0
    private var status: UInt = 0
    private var body = ""

    init(load: PushLoad, host: String, index: Int, connections: Int) {
        self.load = load
        self.host = host
        self.index = index
        self.stride = connections
    }

    func channelActive(context: ChannelHandlerContext) {
        sendNext(context: context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = head.status.code
            body = ""
        case .body(let buffer):
            if status != 202 { body += String(buffer: buffer) }
        case .end:
            load.answer(status: status, messages: inFlight, body: body)
            inFlight = 0
            sendNext(context: context)
        }
    }

    private func sendNext(context: ChannelHandlerContext) {
        let first = index + taken * stride
        guard first < load.total else { return }
        let end = min(load.total, first + load.batch * stride)
        let indices = Swift.stride(from: first, to: end, by: stride)
        let count = (end - first + stride - 1) / stride
        taken += count
        inFlight = count
        let due = load.dueTime(of: first)
        let now = monotonicNanoseconds()
        if due > now + 50_000 {
            context.eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(Int64(due - now))) {
                self.send(indices, sentAt: due, context: context)
            }
        } else {
            send(indices, sentAt: due, context: context)
        }
    }

    private func send(_ indices: StrideTo<Int>, sentAt: UInt64, context: ChannelHandlerContext) {
        let body = load.body(indices, sentAt: sentAt, allocator: context.channel.allocator)
        let path = load.batch > 1 ? "/v1/push/batch" : "/v1/push"
        let head = requestHead(method: .POST, path: path, host: host, apiKey: load.apiKey, bodyLength: body.readableBytes)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if inFlight > 0 { load.answer(status: 0, messages: inFlight, body: "connection closed") }
        inFlight = 0
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
