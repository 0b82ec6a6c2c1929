import Actors
import Crypto
import FoundationEssentials
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import PushProtocol
import ServiceLifecycle
import Synchronization

/// Where webhooks go: `HERALD_WEBHOOK_URL`, taken apart.
struct WebhookTarget: Sendable, Hashable {
    var https: Bool
    var host: String
    var port: Int
    /// The request target: path and query.
    var path: String
    /// The `Host` header.
    var hostHeader: String

    /// Parses an `http://` or `https://` URL; nil for anything else.
    init?(_ text: String) {
        guard let url = URL(string: text), let scheme = url.scheme?.lowercased(), scheme == "http" || scheme == "https",
            let host = url.host, !host.isEmpty, url.user == nil
        else { return nil }
        https = scheme == "https"
        self.host = host.hasPrefix("[") ? String(host.dropFirst().dropLast()) : host
        port = url.port ?? (https ? 443 : 80)
        let path = url.path.isEmpty ? "/" : url.path
        self.path = url.query.map { "\(path)?\($0)" } ?? path
        let bracketed = self.host.contains(":") ? "[\(self.host)]" : self.host
        hostHeader = url.port.map { "\(bracketed):\($0)" } ?? bracketed
    }
}

/// The webhook's settings (Docs/webhooks.md).
struct WebhookSettings: Sendable {
    var target: WebhookTarget
    var secret: String
    var events: Set<WebhookEventType>
    /// How long a batch is retried before it is given up.
    var retryFor: Duration
    /// The bound on one attempt: connect, send, the answer's head and body.
    var timeout: Duration
    /// Batches in flight at once (the queue's lanes).
    var concurrency: Int
    /// Events one POST carries at most.
    var batch: Int
    /// Events waiting at most (memory).
    var queueCapacity: Int
    /// On Redis: how long a node's hold on a lane lasts unless renewed, so how soon another
    /// node sends the lanes of a node that died.
    var lease: Duration = .seconds(10)
}

/// What outlives a restart of the sender child: whether a receiver said 410 Gone.
final class WebhookState: Sendable {
    private let gone = Atomic<Bool>(false)
    var isGone: Bool { gone.load(ordering: .relaxed) }
    func markGone() { gone.store(true, ordering: .relaxed) }
}

/// The webhook's metrics (Docs/operations.md).
final class WebhookMetrics: Sendable {
    let sent: Counter
    let retried: Counter
    let failed: Counter
    let givenUp: Counter
    let stopped: Gauge
    let queued: Counter
    let dropped: Counter
    let depth: Gauge
    let oldestAge: Gauge
    let lanesHeld: Gauge
    private let seen = Mutex<(queued: Int, dropped: Int)>((0, 0))

    init(factory: any MetricsFactory) {
        queued = Counter(label: "herald_webhook_events_queued_total", factory: factory)
        dropped = Counter(label: "herald_webhook_events_dropped_total", factory: factory)
        depth = Gauge(label: "herald_webhook_queue_depth", factory: factory)
        oldestAge = Gauge(label: "herald_webhook_oldest_event_age_seconds", factory: factory)
        lanesHeld = Gauge(label: "herald_webhook_lanes_held", factory: factory)
        sent = Counter(label: "herald_webhook_events_sent_total", factory: factory)
        retried = Counter(label: "herald_webhook_attempts_failed_total", factory: factory)
        failed = Counter(label: "herald_webhook_events_rejected_total", factory: factory)
        givenUp = Counter(label: "herald_webhook_events_given_up_total", factory: factory)
        stopped = Gauge(label: "herald_webhook_stopped", factory: factory)
    }

    /// Takes the queue's figures (read when /metrics is scraped).
    func observe(_ queue: any WebhookQueue) {
        let counts = queue.figures
        depth.record(counts.depth)
        lanesHeld.record(counts.lanesHeld)
        oldestAge.record(counts.oldestQueuedAt.map { Double(max(0, WallClock.millisecondsSinceEpoch() - $0)) / 1000 } ?? 0)
        let (newQueued, newDropped) = seen.withLock { seen in
            defer { seen = (counts.queued, counts.dropped) }
            return (counts.queued - seen.queued, counts.dropped - seen.dropped)
        }
        if newQueued > 0 { queued.increment(by: Int64(newQueued)) }
        if newDropped > 0 { dropped.increment(by: Int64(newDropped)) }
    }
}

/// Sends the queued webhook events: one task per lane, each POSTing its lane's oldest events
/// as one batch, signed, and retrying that batch (with full-jitter exponential backoff) until
/// the receiver takes it or `retryFor` has passed, so a device's events arrive in order. A 410
/// stops every lane until the node is restarted with the webhook configured again. On Redis a
/// node sends the lanes it holds a lease on (`RedisWebhookQueue`), kept by `maintain`.
struct WebhookSender: Service {
    let queue: any WebhookQueue
    let settings: WebhookSettings
    let state: WebhookState
    let metrics: WebhookMetrics
    let group: any EventLoopGroup
    let tls: NIOSSLContext?
    let logger: Logger
    /// The first retry waits up to this; each further one up to twice the last, at most `backoffCap`.
    var backoffBase: Duration = .milliseconds(500)
    var backoffCap: Duration = .seconds(60)
    /// How long a lane waits for more events when fewer than a batch wait: under load a
    /// request carries a full batch rather than the one or two events of the moment.
    var linger: Duration = .milliseconds(50)

    enum Outcome: Equatable {
        case delivered
        case gone
        case rejected(Int)
        case retry(String)
    }

    func run() async throws {
        try await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { lanes in
                lanes.addTask { await queue.maintain() }
                // Each lane runs on an event loop, where its store connection and its HTTP
                // connection live too: a batch's reads, POST and removal resume where their
                // replies arrive, with no hop to another thread and back.
                let loops = Array(group.makeIterator())
                for lane in 0..<queue.laneCount {
                    let loop = loops[lane % loops.count]
                    lanes.addTask(executorPreference: EventLoopTaskExecutor(loop)) { await runLane(lane, on: loop) }
                }
            }
            // Stopped by a 410: stay up (a returning child would be restarted) until shutdown.
            while !Task.isCancelled { try await Task.sleep(for: .seconds(3600)) }
        }
    }

    private func runLane(_ lane: Int, on loop: any EventLoop) async {
        let http = WebhookHTTP(target: settings.target, timeout: settings.timeout, group: loop, tls: tls)
        defer { http.close() }
        while !Task.isCancelled && !state.isGone {
            var batch = await queue.next(lane: lane, limit: settings.batch)
            guard !batch.isEmpty else { return }
            if batch.count < settings.batch {
                try? await Task.sleep(for: linger)
                batch = await queue.next(lane: lane, limit: settings.batch)
                guard !batch.isEmpty else { return }
            }
            // The body's bytes once, in the buffer that is written (and signed) as it is.
            var body = ByteBuffer()
            body.reserveCapacity(16 + batch.reduce(0) { $0 + $1.json.utf8.count + 1 })
            body.writeStaticString(#"{"events":["#)
            for (index, event) in batch.enumerated() {
                if index > 0 { body.writeStaticString(",") }
                body.writeString(event.json)
            }
            body.writeStaticString("]}")
            let started = ContinuousClock.now
            var attempt = 0
            while !Task.isCancelled {
                if state.isGone { return }
                switch await post(body, on: http) {
                case .delivered:
                    metrics.sent.increment(by: Int64(batch.count))
                    await remove(batch, lane: lane)
                case .gone:
                    state.markGone()
                    metrics.stopped.record(1)
                    logger.error(
                        "the webhook receiver answered 410 Gone: webhooks are stopped until the node restarts with HERALD_WEBHOOK_URL set again",
                        metadata: ["herald.webhook": "\(settings.target.hostHeader)"]
                    )
                    return
                case .rejected(let status):
                    metrics.failed.increment(by: Int64(batch.count))
                    logger.warning(
                        "the webhook receiver refused a batch; it is not sent again",
                        metadata: ["status": "\(status)", "events": "\(batch.count)", "first": "\(batch[0].id)"]
                    )
                    await remove(batch, lane: lane)
                case .retry(let reason):
                    metrics.retried.increment()
                    attempt += 1
                    if ContinuousClock.now - started >= settings.retryFor {
                        metrics.givenUp.increment(by: Int64(batch.count))
                        logger.error(
                            "a webhook batch was given up after HERALD_WEBHOOK_RETRY_S",
                            metadata: ["reason": "\(reason)", "events": "\(batch.count)", "first": "\(batch[0].id)"]
                        )
                        await remove(batch, lane: lane)
                    } else {
                        logger.debug("webhook attempt failed, retrying", metadata: ["reason": "\(reason)", "attempt": "\(attempt)"])
                        try? await Task.sleep(for: backoff(attempt: attempt))
                        continue
                    }
                }
                break
            }
        }
    }

    /// Removes a batch that is done with, trying again while Redis is away (else the batch would
    /// be sent again: harmless, receivers dedupe, but avoidable).
    private func remove(_ batch: [WebhookEvent], lane: Int) async {
        var attempt = 0
        while await !queue.remove(lane: lane, batch: batch), !Task.isCancelled {
            attempt += 1
            try? await Task.sleep(for: backoff(attempt: attempt))
        }
    }

    /// The wait before retry `attempt` (1-based): up to `backoffBase`, then doubling, at most
    /// `backoffCap`.
    func backoff(attempt: Int) -> Duration {
        Backoff.fullJitter(attempt: attempt - 1, initial: backoffBase, max: backoffCap)
    }

    /// One attempt: the signed POST on the lane's connection, and what its answer means.
    func post(_ body: ByteBuffer, on http: WebhookHTTP) async -> Outcome {
        let timestamp = Int64(WallClock.millisecondsSinceEpoch() / 1000)
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: settings.target.hostHeader)
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        headers.add(name: "User-Agent", value: "herald-webhooks")
        headers.add(name: "Herald-Signature", value: "t=\(timestamp),v1=\(Self.signature(secret: settings.secret, timestamp: timestamp, body: body))")
        do {
            let status: Int
            do {
                status = try await http.post(headers: headers, body: body)
            } catch let failure as WebhookHTTP.Failure where failure.onReusedConnection {
                // A kept-alive connection the receiver may have closed as we sent: once more, on
                // a new connection, at once (the failed attempt still counts).
                metrics.retried.increment()
                status = try await http.post(headers: headers, body: body)
            }
            switch status {
            case 200..<300: return .delivered
            case 410: return .gone
            case 408, 409, 429: return .retry("HTTP \(status)")
            case 400..<500: return .rejected(status)
            default: return .retry("HTTP \(status)")
            }
        } catch {
            return .retry("\(error)")
        }
    }

    /// Lowercase hex HMAC-SHA256, under the secret's UTF-8 bytes, of "<timestamp>.<body>".
    static func signature(secret: String, timestamp: Int64, body: ByteBuffer) -> String {
        var hmac = HMAC<SHA256>(key: SymmetricKey(data: Array(secret.utf8)))
        hmac.update(data: Array("\(timestamp).".utf8))
        body.withUnsafeReadableBytes { hmac.update(data: $0) }
        let digits = Array("0123456789abcdef".utf8)
        var hex: [UInt8] = []
        hex.reserveCapacity(64)
        for byte in hmac.finalize() {
            hex.append(digits[Int(byte >> 4)])
            hex.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: hex, as: UTF8.self)
    }
}

/// The HTTP/1.1 client of one lane: POSTs one request at a time on a kept-alive connection,
/// opened again when the receiver closed it, it failed, or it sat idle for `idleLimit`; the
/// smallest client the webhook needs (NIOHTTP1, NIOSSL for https; Docs/webhooks.md says why
/// not a library). Used by one lane's task only, one call at a time.
final class WebhookHTTP: @unchecked Sendable {
    struct Failure: Error, CustomStringConvertible {
        let description: String
        /// The connection closed before any answer.
        var beforeAnswer = false
        /// ... and it was a kept-alive one: perhaps the receiver closing it while idle, as the
        /// request went out (the caller sends again at once, on a new one).
        var onReusedConnection = false
    }

    private let target: WebhookTarget
    private let group: any EventLoopGroup
    private let tls: NIOSSLContext?
    private let timeout: Duration
    /// A connection idle this long is not reused (receivers close idle ones, nginx after 75 s).
    let idleLimit: Duration = .seconds(20)
    private var channel: (any Channel)?
    private var lastUsed = ContinuousClock.now

    init(target: WebhookTarget, timeout: Duration, group: any EventLoopGroup, tls: NIOSSLContext?) {
        self.target = target
        self.timeout = timeout
        self.group = group
        self.tls = tls
    }

    deinit { channel?.close(promise: nil) }

    /// Sends the request and returns the answer's status once the answer has ended; throws on a
    /// refused or cut connection, or after `timeout` for the attempt.
    func post(headers: HTTPHeaders, body: ByteBuffer) async throws -> Int {
        let started = ContinuousClock.now
        if let channel, channel.isActive, started - lastUsed < idleLimit {
            do {
                return try await send(headers: headers, body: body, on: channel, within: timeout)
            } catch var failure as Failure where failure.beforeAnswer {
                close()
                failure.onReusedConnection = true
                throw failure
            } catch {
                close()
                throw error
            }
        }
        close()
        let channel = try await connect()
        self.channel = channel
        do {
            return try await send(headers: headers, body: body, on: channel, within: timeout - (ContinuousClock.now - started))
        } catch {
            close()
            throw error
        }
    }

    func close() {
        channel?.close(promise: nil)
        channel = nil
    }

    private func connect() async throws -> any Channel {
        let loop = group.next()
        let target = target
        let tls = tls
        let bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(timeout.timeAmount)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if target.https, let tls {
                        let name = target.host.contains(":") || target.host.allSatisfy({ $0.isNumber || $0 == "." }) ? nil : target.host
                        try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: name))
                    }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(StatusHandler())
                }
            }
        do {
            // An IP literal needs no resolver (getaddrinfo runs on a thread of its own).
            if let address = try? SocketAddress(ipAddress: target.host, port: target.port) {
                return try await bootstrap.connect(to: address).get()
            }
            return try await bootstrap.connect(host: target.host, port: target.port).get()
        } catch {
            throw Failure(description: "connecting to \(target.hostHeader): \(error)")
        }
    }

    private func send(headers: HTTPHeaders, body: ByteBuffer, on channel: any Channel, within timeout: Duration) async throws -> Int {
        let answer = channel.eventLoop.makePromise(of: Int.self)
        let timer = channel.eventLoop.scheduleTask(in: timeout.timeAmount) {
            answer.fail(Failure(description: "no answer within \(timeout)"))
            channel.close(promise: nil)
        }
        defer { timer.cancel() }
        let head = HTTPRequestHead(version: .http1_1, method: .POST, uri: target.path, headers: headers)
        channel.eventLoop.execute {
            guard let handler = try? channel.pipeline.syncOperations.handler(type: StatusHandler.self) else {
                return answer.fail(Failure(description: "the connection closed", beforeAnswer: true))
            }
            handler.expect(answer)
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            channel.write(HTTPClientRequestPart.body(.byteBuffer(body)), promise: nil)
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        }
        let status = try await answer.futureResult.get()
        lastUsed = ContinuousClock.now
        return status
    }

    /// Completes the request's promise with the status once the response has ended (closing
    /// the connection when the receiver asked to), or fails it when the connection goes first.
    private final class StatusHandler: ChannelInboundHandler {
        typealias InboundIn = HTTPClientResponsePart
        private var answer: EventLoopPromise<Int>?
        private var status: Int?
        private var keepAlive = true
        private var answered = false

        func expect(_ promise: EventLoopPromise<Int>) {
            answer = promise
            status = nil
            answered = false
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                status = Int(head.status.code)
                keepAlive = head.isKeepAlive
                answered = true
            case .body: break
            case .end:
                finish(status.map { .success($0) } ?? .failure(Failure(description: "an answer without a status")))
                if !keepAlive { context.close(promise: nil) }
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            finish(.failure(Failure(description: "the connection closed before the answer ended", beforeAnswer: !answered)))
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            finish(.failure(Failure(description: "\(error)", beforeAnswer: !answered)))
            context.close(promise: nil)
        }

        private func finish(_ result: Result<Int, any Error>) {
            guard let answer else { return }
            self.answer = nil
            answer.completeWith(result)
        }
    }
}
