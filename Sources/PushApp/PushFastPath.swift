import Actors
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOSSL
import Transport
import NIOHTTPTypes
import PushProtocol

/// Serves `POST /v1/push`, `/v1/push/batch` and `/v1/broadcast` on the connection's event
/// loop, in front of Hummingbird's router.
///
/// Hummingbird serves every request of a connection in a task, through its router: more work
/// than storing the message (Docs/benchmarks.md). This handler takes the requests that need
/// nothing of the router: the right method and path, a valid API key (or none configured), a
/// `Content-Length` within the endpoint's limit, no `Expect` and no `Connection: close`. It
/// collects the body, validates and stores it through the same acceptor as the router
/// (`HTTPAPI.acceptNow`/`accept`: same checks, same JSON, same errors), inline when the store
/// answers at once, else in a task that runs on this loop, and writes the response itself. Every other request, including every one that will be refused before its
/// body is read (401, 413), goes on to the router untouched.
///
/// Responses keep the requests' order: a request is served here only while the router owes
/// this connection no response, and while this handler works out a response, what arrives
/// after it waits here (and once something waits, no further reads are asked of the socket).
/// It sits after Hummingbird's `HTTPConnectionStateHandler`, so the idle timeout sees its
/// requests.
final class PushFastPath: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

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
    }

    private let api: HTTPAPI
    private let keys: SecretSet
    private let serverName: String
    private var state = State.idle
    /// Requests passed to the router and not yet answered by it.
    private var routedInFlight = 0
    /// Parts that arrived while a response was being worked out, in order.
    private var waiting = CircularBuffer<HTTPRequestPart>()
    /// A read the pipeline asked for while a response was being worked out.
    private var readHeld = false
    /// Parts were passed on since the last read-complete.
    private var passedOn = false
    /// The head of the last 202 written, and its body's length.
    private var acceptedHead: (length: Int, head: HTTPResponse)?
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

    private func handle(_ part: HTTPRequestPart, context: ChannelHandlerContext) {
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

    private func passOn(_ part: HTTPRequestPart, context: ChannelHandlerContext) {
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
    private func servable(_ head: HTTPRequest) -> HTTPAPI.Acceptance? {
        guard head.method == .post, let target = head.path,
            let endpoint = HTTPAPI.Acceptance(path: target[..<(target.firstIndex(of: "?") ?? target.endIndex)])
        else { return nil }
        // One pass over the fields; a repeated Content-Length or Authorization goes to the router.
        var length: Int?
        var authorization: String?
        for field in head.headerFields {
            switch field.name {
            case .contentLength:
                guard length == nil, let value = Int(field.value) else { return nil }
                length = value
            case .transferEncoding, .expect:
                return nil
            case .connection:
                guard field.value.lowercased() == "keep-alive" else { return nil }
            case .authorization:
                guard authorization == nil else { return nil }
                authorization = field.value
            default:
                continue
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
            return responded(context: context, status: failure.status, json: failure.body)
        }
        let executor = self.executor ?? EventLoopTaskExecutor(context.eventLoop)
        self.executor = executor
        let loop = context.eventLoop
        let handler = NIOLoopBound(self, eventLoop: loop)
        let context = NIOLoopBound(context, eventLoop: loop)
        let api = api
        Task(executorPreference: executor) {
            let status: HTTPResponse.Status
            let json: ByteBuffer
            do {
                json = try await api.accept(endpoint, body: body, on: loop)
                status = .accepted
            } catch {
                let failure = APIError.from(error)
                (status, json) = (failure.status, failure.body)
            }
            handler.value.responded(context: context.value, status: status, json: json)
        }
    }

    private func responded(context: ChannelHandlerContext, status: HTTPResponse.Status, json: ByteBuffer) {
        let response: HTTPResponse
        if status == .accepted, let cached = acceptedHead, cached.length == json.readableBytes {
            // A 202's body has the same length every time (message ids have a fixed length):
            // its head is made once per connection.
            response = cached.head
        } else {
            response = HTTPResponse(
                status: status,
                headerFields: [.contentType: "application/json", .contentLength: String(json.readableBytes), .server: serverName]
            )
            if status == .accepted { acceptedHead = (json.readableBytes, response) }
        }
        context.write(wrapOutboundOut(.head(response)), promise: nil)
        context.write(wrapOutboundOut(.body(json)), promise: nil)
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
    }
}

/// Hummingbird's HTTP/1.1 child channel with `PushFastPath` placed after its connection state
/// handler.
struct HeraldHTTP1Channel: ServerChildChannel {
    typealias Value = HTTP1Channel.Value

    let inner: HTTP1Channel
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
            if let fastPath = makeFastPath() {
                let operations = channel.pipeline.syncOperations
                try operations.addHandler(fastPath, position: .after(try operations.handler(type: HTTPConnectionStateHandler.self)))
            }
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
