import Actors
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import Transport
import PushProtocol

/// Serves `POST /v1/push`, `/v1/push/batch` and `/v1/broadcast` on the connection's event
/// loop, right after NIO's HTTP/1.1 decoder, in front of Hummingbird.
///
/// Hummingbird serves every request of a connection in a task, through its router, after
/// converting it to HTTP types: more work than storing the message (Docs/benchmarks.md). This
/// handler takes the requests that need nothing of the router: the right method and path,
/// HTTP/1.1, a valid API key (or none configured), a `Content-Length` within the endpoint's
/// limit, no `Expect` and no `Connection: close`. It collects the body, validates and stores
/// it through the same acceptor as the router (`HTTPAPI.acceptNow`/`accept`: same checks,
/// same JSON, same errors), inline when the store answers at once, else in a task that runs on
/// this loop, and writes the response itself. Every other request, including every one that
/// will be refused before its body is read (401, 413), goes on to the router untouched.
///
/// Responses keep the requests' order: a request is served here only while the router owes
/// this connection no response, and while this handler works out a response, what arrives
/// after it waits here (and once something waits, no further reads are asked of the socket).
/// The connection's time limits are `HTTPTimeoutHandler`'s, in front of this one, for both
/// paths. A graceful shutdown's quiesce event waits here while a request of ours is under way,
/// then goes on to Hummingbird, which closes the connection once the router owes nothing.
final class PushFastPath: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        /// Between requests.
        case idle
        /// This request is the router's: its parts pass on.
        case forwarding
        /// This request is ours: its body so far (nil before the first part).
        case collecting(HTTPAPI.Acceptance, ByteBuffer?)
        /// Its body is in; the answer is being worked out.
        case responding

        var isResponding: Bool {
            if case .responding = self { return true }
            return false
        }

        var isIdle: Bool {
            if case .idle = self { return true }
            return false
        }
    }

    private let api: HTTPAPI
    private let keys: SecretSet
    private let serverName: String
    private var state = State.idle
    /// Requests passed to the router and not yet answered by it.
    private var routedInFlight = 0
    /// Parts that arrived while a response was being worked out, in order.
    private var waiting = CircularBuffer<HTTPServerRequestPart>()
    /// A read the pipeline asked for while a response was being worked out.
    private var readHeld = false
    /// Parts were passed on since the last read-complete.
    private var passedOn = false
    /// The head of the last 202 written, and its body's length.
    private var acceptedHead: (length: Int, head: HTTPResponseHead)?
    /// A quiesce event held until the request of ours under way is answered.
    private var quiesceHeld = false
    /// This connection's loop as a task executor, once a store call had to be awaited.
    private var executor: EventLoopTaskExecutor?

    init(api: HTTPAPI, keys: SecretSet, serverName: String) {
        self.api = api
        self.keys = keys
        self.serverName = serverName
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if state.isResponding {
            waiting.append(part)
        } else {
            handle(part, context: context)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        passedOn = false
        context.fireChannelReadComplete()
    }

    private func handle(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch (state, part) {
        case (.idle, .head(let head)):
            if routedInFlight == 0, let endpoint = servable(head) {
                state = .collecting(endpoint, nil)
            } else {
                state = .forwarding
                routedInFlight += 1
                passOn(part, context: context)
            }
        case (.collecting(let endpoint, var body), .body(let chunk)):
            // A body in one part (the usual case) is kept as it came; later parts are appended
            // once the state no longer holds the buffer, so it is not copied on write.
            state = .responding
            if body == nil {
                body = chunk
            } else {
                body!.writeImmutableBuffer(chunk)
            }
            state = .collecting(endpoint, body)
        case (.collecting(let endpoint, let body), .end):
            state = .responding
            api.node.metrics.httpFastPathRequests.increment()
            respond(context: context, endpoint: endpoint, body: body ?? ByteBuffer())
        case (.forwarding, .end):
            state = .idle
            passOn(part, context: context)
        case (.forwarding, _), (.idle, _):
            passOn(part, context: context)
        case (.collecting, .head), (.responding, _):
            // The HTTP decoder sends a request's end before the next head.
            context.close(promise: nil)
        }
    }

    private func passOn(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        passedOn = true
        context.fireChannelRead(wrapInboundOut(part))
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        // Only the router writes through here, and only for requests it was passed; the guard
        // keeps a stray end (none is known) from leaving the count below zero, which would turn
        // the fast path off for the rest of the connection.
        if case .end = unwrapOutboundIn(data), routedInFlight > 0 { routedInFlight -= 1 }
        context.write(data, promise: promise)
    }

    func read(context: ChannelHandlerContext) {
        // A client that waits for each answer sends nothing while one is worked out, so its
        // read passes on and the socket stays registered for reading: holding it would cost
        // two `epoll_ctl` calls per request (NIO drops read interest when a read event ends
        // with no read asked for). Once a pipelining client's next request is waiting here,
        // reads are held, so what waits is at most one socket read.
        if state.isResponding, !waiting.isEmpty {
            readHeld = true
        } else {
            context.read()
        }
    }

    /// The endpoint, when this request is one this handler serves.
    private func servable(_ head: HTTPRequestHead) -> HTTPAPI.Acceptance? {
        guard head.method == .POST, head.version == .http1_1,
            let endpoint = HTTPAPI.Acceptance(path: head.uri[..<(head.uri.firstIndex(of: "?") ?? head.uri.endIndex)])
        else { return nil }
        // One pass over the fields; a repeated Content-Length or Authorization goes to the router.
        var length: Int?
        var authorization: String?
        for (name, value) in head.headers {
            if name.isHeaderName("content-length") {
                guard length == nil, let value = Int(value) else { return nil }
                length = value
            } else if name.isHeaderName("transfer-encoding") || name.isHeaderName("expect") {
                return nil
            } else if name.isHeaderName("connection") {
                guard value.isHeaderName("keep-alive") else { return nil }
            } else if name.isHeaderName("authorization") {
                guard authorization == nil else { return nil }
                authorization = value
            }
        }
        guard let length, length <= api.bodyLimit(endpoint), keys.admits(authorization: authorization) else { return nil }
        return endpoint
    }

    /// Answers a request of ours: at once when the store does not make us wait (the
    /// in-memory store), else from a task that runs on this loop (`EventLoopTaskExecutor`),
    /// so neither the store call nor its answer changes thread.
    private func respond(context: ChannelHandlerContext, endpoint: HTTPAPI.Acceptance, body: ByteBuffer) {
        context.eventLoop.preconditionInEventLoop()
        do {
            if let json = try api.acceptNow(endpoint, body: body, on: context.eventLoop) {
                return responded(context: context, status: .accepted, json: json)
            }
        } catch {
            let failure = APIError.from(error)
            return responded(context: context, status: HTTPResponseStatus(statusCode: Int(failure.status.code)), json: failure.body)
        }
        let executor = self.executor ?? EventLoopTaskExecutor(context.eventLoop)
        self.executor = executor
        let loop = context.eventLoop
        let handler = NIOLoopBound(self, eventLoop: loop)
        let context = NIOLoopBound(context, eventLoop: loop)
        let api = api
        Task(executorPreference: executor) {
            let status: HTTPResponseStatus
            let json: ByteBuffer
            do {
                json = try await api.accept(endpoint, body: body, on: loop)
                status = .accepted
            } catch {
                let failure = APIError.from(error)
                (status, json) = (HTTPResponseStatus(statusCode: Int(failure.status.code)), failure.body)
            }
            handler.value.responded(context: context.value, status: status, json: json)
        }
    }

    private func responded(context: ChannelHandlerContext, status: HTTPResponseStatus, json: ByteBuffer) {
        let response: HTTPResponseHead
        if status == .accepted, let cached = acceptedHead, cached.length == json.readableBytes {
            // A 202's body has the same length every time (message ids have a fixed length):
            // its head is made once per connection.
            response = cached.head
        } else {
            response = HTTPResponseHead(
                version: .http1_1, status: status,
                headers: ["Content-Type": "application/json", "Content-Length": String(json.readableBytes), "Server": serverName]
            )
            if status == .accepted { acceptedHead = (json.readableBytes, response) }
        }
        context.write(wrapOutboundOut(.head(response)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(json))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        state = .idle
        // What arrived meanwhile, in order, until the next request of ours.
        while !state.isResponding, let part = waiting.popFirst() {
            handle(part, context: context)
        }
        // The router's channel takes what it was given at a read-complete.
        if passedOn {
            passedOn = false
            context.fireChannelReadComplete()
        }
        if readHeld, !state.isResponding {
            readHeld = false
            context.read()
        }
        if quiesceHeld, state.isIdle {
            quiesceHeld = false
            context.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Hummingbird closes the connection at a quiesce when its router owes nothing: a
        // request of ours under way would lose its answer (its message perhaps stored).
        if event is ChannelShouldQuiesceEvent {
            switch state {
            case .collecting, .responding:
                quiesceHeld = true
                return
            case .idle, .forwarding:
                break
            }
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// Hummingbird's HTTP/1.1 child channel with Herald's handlers placed right after NIO's HTTP
/// decoder, in front of the conversion to HTTP types: `HTTPTimeoutHandler` (the connection's
/// time limits; Hummingbird's own idle timeout is off, as it would not see the fast path's
/// requests), then `PushFastPath`.
struct HeraldHTTP1Channel: ServerChildChannel {
    typealias Value = HTTP1Channel.Value

    let inner: HTTP1Channel
    /// HERALD_HTTP_IDLE_TIMEOUT_S.
    let timeout: TimeAmount
    let makeFastPath: @Sendable () -> PushFastPath?
    /// HTTPS: the credentials new handshakes use (reloaded on SIGHUP); nil: plain HTTP.
    var tls: TLSCredentials?

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        if let tls {
            do {
                try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls.context))
            } catch {
                return channel.eventLoop.makeFailedFuture(error)
            }
        }
        return inner.setup(channel: channel, logger: logger).flatMapThrowing { value in
            let operations = channel.pipeline.syncOperations
            let decoder = try operations.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self)
            var handlers: [any ChannelHandler] = [HTTPTimeoutHandler(timeout: timeout)]
            if let fastPath = makeFastPath() { handlers.append(fastPath) }
            try operations.addHandlers(handlers, position: .after(decoder))
            return value
        }
    }
    /// Serves the connection's requests through Hummingbird's router with the connection's
    /// event loop as the task executor: each request's handler (and the store calls it
    /// awaits) runs on that loop, as the fast path's do, instead of hopping to the global
    /// pool and back.
    func handle(value: Value, logger: Logger) async {
        await withTaskExecutorPreference(EventLoopTaskExecutor(value.channel.eventLoop)) {
            await inner.handle(value: value, logger: logger)
        }
    }
}

extension String {
    /// Whether this header name (or token) is `lowercase`, ignoring ASCII case.
    fileprivate func isHeaderName(_ lowercase: StaticString) -> Bool {
        let expected = UnsafeBufferPointer(start: lowercase.utf8Start, count: lowercase.utf8CodeUnitCount)
        return utf8.count == expected.count
            && utf8.elementsEqual(expected) { byte, lower in (byte &- UInt8(ascii: "A") < 26 ? byte | 0x20 : byte) == lower }
    }
}
