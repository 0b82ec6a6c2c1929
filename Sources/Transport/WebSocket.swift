import Actors
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// The WebSocket transport's rules (protocol.md §1: one device frame per binary message).
public struct WebSocketOptions: Sendable {
    /// The one path that upgrades (`/ws`).
    public var path: String
    /// Browser origins allowed to connect (`HERALD_WS_ALLOWED_ORIGINS`); empty: any origin,
    /// and requests without an `Origin` header (devices that are not browsers) always pass.
    public var allowedOrigins: Set<String>
    /// protocol.md's `max_frame`: a message may carry one frame of that length (plus its 4
    /// length bytes), after reassembly of its fragments, and no more.
    public var maxFrame: Int
    /// The upgrade request's head, request line and headers together, in bytes; larger: 431.
    public var maxHeaderBytes: Int
    /// WebSocket pings a connection may send per second, on average, before it is closed
    /// with 1008 (a burst of twice as many is allowed).
    public var maxPingsPerSecond: Int

    /// The defaults: path `/ws`, any origin, 8 KiB of headers (nginx's default), 20 pings a second.
    public init(path: String = "/ws", allowedOrigins: Set<String> = [], maxFrame: Int = 65536, maxHeaderBytes: Int = 8192, maxPingsPerSecond: Int = 20) {
        self.path = path
        self.allowedOrigins = allowedOrigins
        self.maxFrame = maxFrame
        self.maxHeaderBytes = maxHeaderBytes
        self.maxPingsPerSecond = maxPingsPerSecond
    }

    /// The largest WebSocket message: one frame of `maxFrame` with its length prefix.
    var maxMessage: Int { maxFrame + 4 }

    /// Why a request may not upgrade, as an HTTP status and a reason; nil: it may.
    func refusal(_ head: HTTPRequestHead) -> (HTTPResponseStatus, String)? {
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? head.uri
        guard path == self.path else { return (.notFound, "no WebSocket endpoint at \(path); it is \(self.path)") }
        if !allowedOrigins.isEmpty, let origin = head.headers.first(name: "origin"), !allowedOrigins.contains(origin) {
            return (.forbidden, "origin \(origin) is not allowed")
        }
        return nil
    }
}

/// Sets up the HTTP/1 upgrade to WebSocket on a channel whose TLS, if any, is up.
enum WebSocketUpgrade {
    static func install(on channel: any Channel, setup: TransportSetup, peer: TransportPeer) throws {
        let options = setup.transport.webSocket
        let trusted = setup.transport.trustedProxies
        let metrics = setup.transport.metrics
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderFieldSize = options.maxHeaderBytes
        limits.maxHeaderListSize = options.maxHeaderBytes
        limits.maxHeaderFieldCount = 100
        let encoder = HTTPResponseEncoder()
        let decoder = ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes, limitConfiguration: limits))
        let refusals = UpgradeRefusalHandler(options: options, metrics: metrics)
        let upgrader = NIOWebSocketServerUpgrader(
            maxFrameSize: options.maxMessage,
            automaticErrorHandling: false,
            shouldUpgrade: { channel, head in
                // A refused request goes on to UpgradeRefusalHandler, which answers it.
                channel.eventLoop.makeSucceededFuture(options.refusal(head) == nil ? HTTPHeaders() : nil)
            },
            upgradePipelineHandler: { channel, head in
                channel.eventLoop.makeCompletedFuture {
                    var peer = peer
                    // Behind an HTTP reverse proxy: its X-Forwarded-For names the device, when
                    // that proxy is trusted (anyone else's header is ignored).
                    let forwardedHeaders = head.headers[canonicalForm: "x-forwarded-for"].map(String.init)
                    if !forwardedHeaders.isEmpty, trusted.contains(peer.forwardedAddress ?? channel.remoteAddress),
                       let device = forwardedFor(forwardedHeaders, trusted: trusted) {
                        peer.forwardedAddress = device
                    }
                    let operations = channel.pipeline.syncOperations
                    try operations.addHandlers(
                        NIOWebSocketFrameAggregator(
                            minNonFinalFragmentSize: 1, maxAccumulatedFrameCount: 1024,
                            maxAccumulatedFrameSize: options.maxMessage
                        ),
                        WebSocketFrameAdapter(options: options, metrics: metrics)
                    )
                    try setup.startSession(peer)
                }
            }
        )
        let upgradeHandler = HTTPServerUpgradeHandler(
            upgraders: [upgrader], httpEncoder: encoder, extraHTTPHandlers: [decoder],
            upgradeCompletionHandler: { context in
                context.pipeline.syncOperations.removeHandler(refusals, promise: nil)
            }
        )
        try channel.pipeline.syncOperations.addHandlers(encoder, decoder, upgradeHandler, refusals)
    }
}

/// Answers, with a 4xx and a close, every HTTP request that did not upgrade: a wrong path
/// (404), a forbidden origin (403), a request that is no WebSocket upgrade (426) or a bad
/// one (400), a head too large (431) or unparsable (400).
final class UpgradeRefusalHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let options: WebSocketOptions
    private let metrics: TransportMetrics
    private var upgradeError: (any Error)?
    private var answered = false

    init(options: WebSocketOptions, metrics: TransportMetrics) {
        self.options = options
        self.metrics = metrics
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = unwrapInboundIn(data) else { return }
        if let (status, reason) = options.refusal(head) {
            answer(context: context, status, reason)
        } else if upgradeError != nil {
            answer(context: context, .badRequest, "bad WebSocket upgrade request: \(upgradeError!)")
        } else {
            answer(context: context, .upgradeRequired, "this port speaks WebSocket only: GET \(options.path) with Upgrade: websocket")
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? HTTPParserError {
            if case .headerOverflow = error {
                answer(context: context, .init(statusCode: 431, reasonPhrase: "Request Header Fields Too Large"), "request head larger than \(options.maxHeaderBytes) bytes")
            } else {
                answer(context: context, .badRequest, "malformed HTTP request: \(error)")
            }
        } else if error is NIOWebSocketUpgradeError || error is HTTPServerUpgradeErrors {
            // The request comes next (not upgrading); answer it then.
            upgradeError = error
        } else {
            context.close(promise: nil)
        }
    }

    private static func word(_ status: HTTPResponseStatus) -> String {
        switch status.code {
        case 403: "forbidden"
        case 404: "not_found"
        case 426: "upgrade_required"
        case 431: "headers_too_large"
        default: "bad_request"
        }
    }

    private func answer(context: ChannelHandlerContext, _ status: HTTPResponseStatus, _ reason: String) {
        guard !answered else { return }
        answered = true
        metrics.upgradeRefused(status: Int(status.code), peer: context.channel.remoteAddress, reason: reason)
        var body = context.channel.allocator.buffer(capacity: reason.utf8.count + 32)
        // The HTTP API's error shape (protocol.md §2).
        body.writeString(#"{"error": {"code": "#)
        body.writeString(JSONString.quoted(Self.word(status)))
        body.writeString(#", "message": "#)
        body.writeString(JSONString.quoted(reason))
        body.writeString("}}\n")
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "content-length", value: "\(body.readableBytes)")
        headers.add(name: "connection", value: "close")
        if status == .upgradeRequired {
            headers.add(name: "upgrade", value: "websocket")
        }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }
}

/// Between WebSocket and the device session: a binary message in is one device frame's
/// bytes for `DeviceChannelHandler`; a frame written by the session goes out as one binary
/// message. Text, oversized messages, pings too fast and protocol errors close the
/// connection with the RFC 6455 code that says why.
final class WebSocketFrameAdapter: ChannelDuplexHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = WebSocketFrame

    private let options: WebSocketOptions
    private let metrics: TransportMetrics
    private var closeSent = false
    private var pingTokens: Int
    private var pingTokensAt = NIODeadline.now()

    init(options: WebSocketOptions, metrics: TransportMetrics) {
        self.options = options
        self.metrics = metrics
        self.pingTokens = 2 * options.maxPingsPerSecond
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard !closeSent else {
            // Our close went out: read (and drop) until the client's close comes back, so
            // that closing the socket with its data unread does not reset the connection
            // and destroy our close frame in flight (RFC 6455 §7.1.1).
            if frame.opcode == .connectionClose { context.close(promise: nil) }
            return
        }
        switch frame.opcode {
        case .binary:
            let message = frame.unmaskedData
            // protocol.md §1: exactly one frame per message. Its length prefix must cover
            // the rest of the message; a short message is passed on as is and the session's
            // decoder answers it (ERROR 400), as on TCP.
            if message.readableBytes > 4, let length = message.getInteger(at: message.readerIndex, as: UInt32.self),
               Int(length) <= options.maxFrame, Int(length) + 4 != message.readableBytes {
                return close(context: context, code: .protocolError, reason: "one binary message must carry exactly one frame")
            }
            context.fireChannelRead(wrapInboundOut(message))
        case .text:
            close(context: context, code: .unacceptableData, reason: "text messages are not part of the protocol: send binary")
        case .ping:
            guard takePingToken() else {
                return close(context: context, code: .policyViolation, reason: "pings too fast")
            }
            // A device that does not read gets no pongs piled up behind its frames.
            if context.channel.isWritable {
                context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)), promise: nil)
            }
        case .pong:
            break
        case .connectionClose:
            // Echo the close (RFC 6455 §5.5.1) and end the connection.
            var data = frame.unmaskedData
            let code = data.readWebSocketErrorCode() ?? .normalClosure
            closeSent = true
            var reply = context.channel.allocator.buffer(capacity: 2)
            reply.write(webSocketErrorCode: code)
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: reply))).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        default:
            close(context: context, code: .protocolError, reason: "unexpected opcode \(frame.opcode)")
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let bytes = unwrapOutboundIn(data)
        context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .binary, data: bytes)), promise: promise)
    }

    /// The session closes the connection (after an ERROR, a stall, a drain): a close frame first.
    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if mode == .all, !closeSent, context.channel.isActive {
            closeSent = true
            var data = context.channel.allocator.buffer(capacity: 2)
            data.write(webSocketErrorCode: .normalClosure)
            context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: data)), promise: nil)
            context.flush()
        }
        context.close(mode: mode, promise: promise)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch error {
        case NIOWebSocketFrameAggregator.Error.accumulatedFrameSizeIsTooLarge, NIOWebSocketError.invalidFrameLength:
            close(context: context, code: .messageTooLarge, reason: "message larger than one frame of max_frame (\(options.maxFrame)) bytes")
        case is NIOWebSocketFrameAggregator.Error, is NIOWebSocketError:
            close(context: context, code: .protocolError, reason: "WebSocket protocol error: \(error)")
        default:
            context.fireErrorCaught(error)
        }
    }

    private func close(context: ChannelHandlerContext, code: WebSocketErrorCode, reason: String) {
        guard !closeSent else { return }
        closeSent = true
        metrics.webSocketClosed(code: UInt16(webSocketErrorCode: code), peer: context.channel.remoteAddress, reason: reason)
        var data = context.channel.allocator.buffer(capacity: 2 + min(reason.utf8.count, 123))
        data.write(webSocketErrorCode: code)
        data.writeString(String(decoding: reason.utf8.prefix(123), as: UTF8.self))
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: data)), promise: nil)
        // The client answers with its close (then the socket closes, see channelRead), or
        // does not within two seconds.
        let channel = context.channel
        context.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
    }

    private func takePingToken() -> Bool {
        let now = NIODeadline.now()
        let rate = options.maxPingsPerSecond
        let elapsed = (now - pingTokensAt).nanoseconds
        let earned = Int(elapsed * Int64(rate) / 1_000_000_000)
        if earned > 0 {
            pingTokens = min(2 * rate, pingTokens + earned)
            pingTokensAt = now
        }
        guard pingTokens > 0 else { return false }
        pingTokens -= 1
        return true
    }
}
