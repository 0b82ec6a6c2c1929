import Logging
import NIOCore
import NIOPosix
import PushProtocol
import Synchronization

/// What a device client sees on its connection, in order.
public enum DeviceEvent: Sendable, Hashable {
    /// A PUSH: a stored message (ACK it) or a broadcast.
    case push(messageID: String, payload: ByteBuffer)
    /// A PONG answering our PING.
    case pong
    /// The server is draining.
    case goaway(reconnectAfterMilliseconds: UInt32, reason: String)
    /// The server sent ERROR; the connection closes next.
    case error(code: UInt16, reason: String)
    /// The connection closed.
    case closed
}

/// Why connecting failed.
public struct DeviceClientError: Error, Hashable, CustomStringConvertible {
    /// The server answered HELLO with ERROR.
    public static func rejected(code: UInt16, reason: String) -> Self { Self(code: code, reason: reason) }
    /// The connection closed, or sent something else, before WELCOME.
    public static let noWelcome = Self(code: 0, reason: "connection ended before WELCOME")

    /// The ERROR code (0 when there was none).
    public let code: UInt16
    /// The reason.
    public let reason: String
    public var description: String { code == 0 ? reason : "rejected with \(code): \(reason)" }
}

/// The settings of one device connection.
public struct DeviceClientConfiguration: Sendable {
    /// Server host.
    public var host: String
    /// Server device port.
    public var port: Int
    /// The device's client id.
    public var clientID: String
    /// The device token (a JWT when the server checks them).
    public var token: String
    /// The heartbeat to ask for (0: the server's default).
    public var heartbeatSeconds: UInt16
    /// ACK every stored message as soon as it arrives.
    public var autoAcknowledge: Bool
    /// Send PING every heartbeat.
    public var sendsPings: Bool
    /// The largest frame accepted from the server.
    public var maxFrame: Int
    /// The local address to connect from (e.g. 127.0.0.2 for load tests), if any.
    public var localHost: String?
    /// TLS and WebSocket, or neither (plain TCP).
    public var transport: DeviceClientTransport = .tcp

    /// Creates a configuration.
    public init(
        host: String = "127.0.0.1", port: Int = 9988, clientID: String, token: String = "", heartbeatSeconds: UInt16 = 0,
        autoAcknowledge: Bool = false, sendsPings: Bool = true, maxFrame: Int = 65536, localHost: String? = nil
    ) {
        self.host = host
        self.port = port
        self.clientID = clientID
        self.token = token
        self.heartbeatSeconds = heartbeatSeconds
        self.autoAcknowledge = autoAcknowledge
        self.sendsPings = sendsPings
        self.maxFrame = maxFrame
        self.localHost = localHost
    }
}

/// One device's connection to Herald, as the protocol's client side.
///
/// `connect` opens the socket, sends HELLO and returns after WELCOME. Then `events` yields
/// what the server sends; `acknowledge` ACKs a message. PINGs go out every heartbeat.
public final class DeviceClient: Sendable {
    /// The negotiated heartbeat.
    public let heartbeatSeconds: UInt16
    /// The node that answered.
    public let nodeID: String
    private let queue: EventQueue
    private let channel: any Channel

    /// Server frames after WELCOME, then `.closed`. Every access reads the same queue.
    public var events: AsyncStream<DeviceEvent> {
        let queue = queue
        return AsyncStream(unfolding: { await queue.next() })
    }

    /// The next event; nil once the connection is over and all was read, or if the calling
    /// task is cancelled, which consumes nothing.
    public func nextEvent() async -> DeviceEvent? {
        await queue.next()
    }

    private init(channel: any Channel, heartbeatSeconds: UInt16, nodeID: String, events: EventQueue) {
        self.channel = channel
        self.heartbeatSeconds = heartbeatSeconds
        self.nodeID = nodeID
        self.queue = events
    }

    /// Connects, says HELLO and waits for WELCOME. Throws `DeviceClientError` when refused.
    public static func connect(
        _ configuration: DeviceClientConfiguration, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> DeviceClient {
        let events = EventQueue()
        let welcome = group.next().makePromise(of: (UInt16, String).self)
        var bootstrap = ClientBootstrap(group: group)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try configuration.transport.install(
                        on: channel, host: configuration.host, port: configuration.port,
                        session: { DeviceClientHandler(configuration: configuration, welcome: welcome, events: events) },
                        failed: { error in
                            welcome.fail(error)
                            channel.close(promise: nil)
                        }
                    )
                }
            }
        if let localHost = configuration.localHost {
            bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: localHost, port: 0))
        }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: configuration.host, port: configuration.port).get()
        } catch {
            welcome.fail(error)
            throw error
        }
        do {
            let (heartbeat, nodeID) = try await welcome.futureResult.get()
            return DeviceClient(channel: channel, heartbeatSeconds: heartbeat, nodeID: nodeID, events: events)
        } catch {
            channel.close(promise: nil)
            throw error
        }
    }

    /// Acknowledges a message.
    public func acknowledge(_ messageID: String) {
        send(.ack(messageID: messageID))
    }

    /// Sends any frame (tests use this to misbehave).
    public func send(_ frame: Frame) {
        channel.writeAndFlush(frame.encoded(allocator: channel.allocator), promise: nil)
    }

    /// Closes the connection.
    public func close() async {
        try? await channel.close()
    }

    /// Whether the socket is still open.
    public var isActive: Bool { channel.isActive }
}

private final class DeviceClientHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let configuration: DeviceClientConfiguration
    private let welcome: EventLoopPromise<(UInt16, String)>
    private let events: EventQueue
    private let decoder: FrameDecoder
    private var received: ByteBuffer?
    private var welcomed = false
    private var saidHello = false
    private var pinger: RepeatedTask?

    init(configuration: DeviceClientConfiguration, welcome: EventLoopPromise<(UInt16, String)>, events: EventQueue) {
        self.configuration = configuration
        self.welcome = welcome
        self.events = events
        self.decoder = FrameDecoder(maxFrame: configuration.maxFrame)
    }

    /// After a WebSocket upgrade, HELLO goes out once the HTTP handlers have left.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is DeviceTransportReady { sayHello(context: context) }
        context.fireUserInboundEventTriggered(event)
    }

    func channelActive(context: ChannelHandlerContext) {
        sayHello(context: context)
        context.fireChannelActive()
    }

    private func sayHello(context: ChannelHandlerContext) {
        guard !saidHello else { return }
        saidHello = true
        let hello = Frame.hello(
            Hello(clientID: configuration.clientID, token: configuration.token, heartbeatSeconds: configuration.heartbeatSeconds)
        )
        context.writeAndFlush(wrapOutboundOut(hello.encoded(allocator: context.channel.allocator)), promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        pinger?.cancel()
        welcome.fail(DeviceClientError.noWelcome)
        events.append(.closed)
        events.finish()
        context.fireChannelInactive()
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

    private func handle(_ frame: Frame, context: ChannelHandlerContext) {
        switch frame {
        case .welcome(let heartbeat, let nodeID):
            welcomed = true
            if configuration.sendsPings, heartbeat > 0 {
                let channel = context.channel
                pinger = context.eventLoop.scheduleRepeatedTask(
                    initialDelay: .seconds(Int64(heartbeat)), delay: .seconds(Int64(heartbeat))
                ) { _ in
                    channel.writeAndFlush(Frame.ping.encoded(allocator: channel.allocator), promise: nil)
                }
            }
            welcome.succeed((heartbeat, nodeID))
        case .push(let id, let payload):
            if configuration.autoAcknowledge {
                context.writeAndFlush(wrapOutboundOut(Frame.ack(messageID: id).encoded(allocator: context.channel.allocator)), promise: nil)
            }
            events.append(.push(messageID: id, payload: payload))
        case .ping:
            context.writeAndFlush(wrapOutboundOut(Frame.pong.encoded(allocator: context.channel.allocator)), promise: nil)
        case .pong:
            events.append(.pong)
        case .goaway(let after, let reason):
            events.append(.goaway(reconnectAfterMilliseconds: after, reason: reason))
        case .error(let code, let reason):
            if !welcomed { welcome.fail(DeviceClientError.rejected(code: code, reason: reason)) }
            events.append(.error(code: code, reason: reason))
        case .hello, .ack:
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
