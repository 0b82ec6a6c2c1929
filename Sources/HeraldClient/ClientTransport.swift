import NIOCore
import NIOHTTP1
import NIOSSL
import NIOWebSocket

/// How a device client reaches the server: TLS or not, WebSocket or not.
public struct DeviceClientTransport: Sendable {
    /// TLS: the context (trust roots, client certificate) and the name the server's
    /// certificate must carry; nil: no TLS.
    public var tls: TLS?
    /// WebSocket: the path to upgrade on (`/ws`); nil: the device protocol straight on the socket.
    public var webSocketPath: String?

    /// TLS settings of a client.
    public struct TLS: Sendable {
        /// The context every connection of this client uses (sessions resume within it).
        public var context: NIOSSLContext
        /// The server's name, checked against its certificate and sent as SNI (nil: not checked).
        public var serverName: String?

        /// Names the context and the server.
        public init(context: NIOSSLContext, serverName: String?) {
            self.context = context
            self.serverName = serverName
        }

        /// A client context trusting `caFile` (PEM), or the system's trust store when nil;
        /// with `certificateFile` and `keyFile`, it presents that certificate (mutual TLS).
        public static func context(caFile: String?, certificateFile: String? = nil, keyFile: String? = nil, verifyHostname: Bool = true) throws -> NIOSSLContext {
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.minimumTLSVersion = .tlsv12
            if let caFile {
                configuration.trustRoots = .file(caFile)
            }
            if !verifyHostname { configuration.certificateVerification = .noHostnameVerification }
            if let certificateFile, let keyFile {
                configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificateFile).map { .certificate($0) }
                configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem))
            }
            return try NIOSSLContext(configuration: configuration)
        }
    }

    /// Plain TCP.
    public static let tcp = DeviceClientTransport(tls: nil, webSocketPath: nil)

    /// Creates a transport.
    public init(tls: TLS?, webSocketPath: String?) {
        self.tls = tls
        self.webSocketPath = webSocketPath
    }

    /// Adds the transport's handlers, then (once a WebSocket upgrade, if any, is done) `session`;
    /// `failed` is called if the upgrade is refused or fails. For clients that drive the
    /// device protocol themselves (herald-bench's lean devices): `session` is added either
    /// before the channel is active (TCP, TLS) or during the upgrade (WebSocket), so it should
    /// say HELLO in `channelActive`, or on ``DeviceTransportReady`` when the channel was
    /// already active (a write before the upgrade has finished would be lost).
    public func install(on channel: any Channel, host: String, port: Int, session: @escaping @Sendable () -> any ChannelHandler, failed: @escaping @Sendable (any Error) -> Void) throws {
        let operations = channel.pipeline.syncOperations
        if let tls {
            let serverName = tls.serverName.flatMap { name in (try? SocketAddress(ipAddress: name, port: 0)) == nil ? name : nil }
            try operations.addHandler(try NIOSSLClientHandler(context: tls.context, serverHostname: serverName))
        }
        guard let path = webSocketPath else {
            return try operations.addHandler(session())
        }
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: port == (tls == nil ? 80 : 443) ? host : "\(host):\(port)")
        headers.add(name: "Content-Length", value: "0")
        let upgrader = NIOTypedWebSocketClientUpgrader<Bool>(
            maxFrameSize: 1 << 24,
            upgradePipelineHandler: { channel, _ in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(
                        NIOWebSocketFrameAggregator(minNonFinalFragmentSize: 1, maxAccumulatedFrameCount: 1024, maxAccumulatedFrameSize: 1 << 24),
                        WebSocketClientAdapter(),
                        session()
                    )
                    return true
                }
            }
        )
        let configuration = NIOTypedHTTPClientUpgradeConfiguration<Bool>(
            upgradeRequestHead: HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers),
            upgraders: [upgrader],
            notUpgradingCompletionHandler: { channel in
                channel.eventLoop.makeCompletedFuture { false }
            }
        )
        let upgraded = try operations.configureUpgradableHTTPClientPipeline(configuration: .init(upgradeConfiguration: configuration))
        upgraded.whenComplete { result in
            switch result {
            case .success(true): channel.pipeline.fireUserInboundEventTriggered(DeviceTransportReady())
            case .success(false): failed(DeviceClientError(code: 0, reason: "the server refused the WebSocket upgrade on \(path)"))
            case .failure(let error): failed(error)
            }
        }
    }
}

/// Fired through the pipeline once the WebSocket upgrade is complete: the moment a
/// session added by ``DeviceClientTransport/install(on:host:port:session:failed:)`` may write.
public struct DeviceTransportReady: Sendable {}

/// The client side of protocol.md §1 over WebSocket: each frame out is one masked binary
/// message, each binary message in one frame's bytes.
final class WebSocketClientAdapter: ChannelDuplexHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = WebSocketFrame

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .binary:
            context.fireChannelRead(wrapInboundOut(frame.unmaskedData))
        case .ping:
            send(context: context, WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData))
        case .connectionClose:
            context.close(promise: nil)
        default:
            break
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        context.write(wrapOutboundOut(masked(WebSocketFrame(fin: true, opcode: .binary, data: unwrapOutboundIn(data)))), promise: promise)
    }

    private func send(context: ChannelHandlerContext, _ frame: WebSocketFrame) {
        context.writeAndFlush(wrapOutboundOut(masked(frame)), promise: nil)
    }

    private func masked(_ frame: WebSocketFrame) -> WebSocketFrame {
        var frame = frame
        frame.maskKey = .random()
        return frame
    }
}

/// A device server named as a URL: `tcp://`, `tls://`, `ws://` or `wss://`, or a bare
/// `host:port` (TCP). WebSocket URLs take their path (default `/ws`).
public struct DeviceServerURL: Sendable, Hashable {
    /// The scheme: tcp, tls, ws or wss.
    public var scheme: String
    /// The host.
    public var host: String
    /// The port (the scheme's conventional one when the URL gives none).
    public var port: Int
    /// The WebSocket path.
    public var path: String

    /// Parses `text`; nil if it is none of the forms above.
    public init?(_ text: String) {
        var rest = Substring(text)
        if let range = rest.firstRange(of: "://") {
            scheme = rest[..<range.lowerBound].lowercased()
            rest = rest[range.upperBound...]
        } else {
            scheme = "tcp"
        }
        guard ["tcp", "tls", "ws", "wss"].contains(scheme) else { return nil }
        var pathPart = ""
        if let slash = rest.firstIndex(of: "/") {
            pathPart = String(rest[slash...])
            rest = rest[..<slash]
        }
        let defaultPort = ["tcp": 9988, "tls": 9443, "ws": 9989, "wss": 9444][scheme]!
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { return nil }
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            if after.isEmpty { port = defaultPort } else {
                guard after.hasPrefix(":"), let value = Int(after.dropFirst()) else { return nil }
                port = value
            }
        } else if let colon = rest.lastIndex(of: ":") {
            host = String(rest[..<colon])
            guard let value = Int(rest[rest.index(after: colon)...]) else { return nil }
            port = value
        } else {
            host = String(rest)
            port = defaultPort
        }
        guard !host.isEmpty, (1...65535).contains(port) else { return nil }
        path = pathPart.isEmpty ? "/ws" : pathPart
    }

    /// Whether TLS wraps the connection.
    public var usesTLS: Bool { scheme == "tls" || scheme == "wss" }

    /// The transport this URL asks for, with `tls` settings when it uses TLS.
    public func transport(tls: DeviceClientTransport.TLS?) -> DeviceClientTransport {
        DeviceClientTransport(tls: usesTLS ? tls : nil, webSocketPath: scheme.hasPrefix("ws") ? path : nil)
    }
}
