import Actors
import Crypto
import FoundationEssentials
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
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
                for lane in 0..<queue.laneCount { lanes.addTask { await runLane(lane) } }
            }
            // Stopped by a 410: stay up (a returning child would be restarted) until shutdown.
            while !Task.isCancelled { try await Task.sleep(for: .seconds(3600)) }
        }
    }

    private func runLane(_ lane: Int) async {
        while !Task.isCancelled && !state.isGone {
            var batch = await queue.next(lane: lane, limit: settings.batch)
            guard !batch.isEmpty else { return }
            if batch.count < settings.batch {
                try? await Task.sleep(for: linger)
                batch = await queue.next(lane: lane, limit: settings.batch)
                guard !batch.isEmpty else { return }
            }
            let body = #"{"events":["# + batch.map(\.json).joined(separator: ",") + "]}"
            let started = ContinuousClock.now
            var attempt = 0
            while !Task.isCancelled {
                if state.isGone { return }
                switch await post(body) {
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

    /// Full jitter: a uniform wait between 0 and min(cap, base x 2^(attempt-1)).
    func backoff(attempt: Int) -> Duration {
        let ceiling = min(backoffCap, backoffBase * (1 << min(attempt - 1, 30)))
        let millis = ceiling.components.seconds * 1000 + ceiling.components.attoseconds / 1_000_000_000_000_000
        return .milliseconds(Int64.random(in: 0...max(1, millis)))
    }

    /// One attempt: the signed POST and what its answer means.
    func post(_ body: String) async -> Outcome {
        let timestamp = Int64(WallClock.millisecondsSinceEpoch() / 1000)
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: settings.target.hostHeader)
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        headers.add(name: "User-Agent", value: "herald-webhooks")
        headers.add(name: "Herald-Signature", value: "t=\(timestamp),v1=\(Self.signature(secret: settings.secret, timestamp: timestamp, body: body))")
        headers.add(name: "Connection", value: "close")
        do {
            let status = try await WebhookHTTP.post(
                target: settings.target, headers: headers, body: ByteBuffer(string: body), timeout: settings.timeout, group: group, tls: tls
            )
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
    static func signature(secret: String, timestamp: Int64, body: String) -> String {
        var hmac = HMAC<SHA256>(key: SymmetricKey(data: Array(secret.utf8)))
        hmac.update(data: Array("\(timestamp).".utf8))
        hmac.update(data: Array(body.utf8))
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

/// A POST on a connection of its own, closed after the answer: the smallest HTTP/1.1 client
/// the webhook needs (NIOHTTP1, NIOSSL for https; Docs/webhooks.md says why not a library).
enum WebhookHTTP {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// Sends the request and returns the answer's status once the answer has ended; throws on a
    /// refused or cut connection, or after `timeout` in all.
    static func post(
        target: WebhookTarget, headers: HTTPHeaders, body: ByteBuffer, timeout: Duration, group: any EventLoopGroup, tls: NIOSSLContext?
    ) async throws -> Int {
        let loop = group.next()
        let answer = loop.makePromise(of: Int.self)
        let amount = TimeAmount.nanoseconds(Int64(timeout.components.seconds) * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000)
        let bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(amount)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if target.https, let tls {
                        let name = target.host.contains(":") || target.host.allSatisfy({ $0.isNumber || $0 == "." }) ? nil : target.host
                        try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: name))
                    }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(StatusHandler(answer: answer))
                }
            }
        let timer = loop.scheduleTask(in: amount) { answer.fail(Failure(description: "no answer within \(timeout)")) }
        defer { timer.cancel() }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: target.host, port: target.port).get()
        } catch {
            answer.fail(error)
            throw Failure(description: "connecting to \(target.hostHeader): \(error)")
        }
        defer { channel.close(promise: nil) }
        channel.write(HTTPClientRequestPart.head(HTTPRequestHead(version: .http1_1, method: .POST, uri: target.path, headers: headers)), promise: nil)
        channel.write(HTTPClientRequestPart.body(.byteBuffer(body)), promise: nil)
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        return try await answer.futureResult.get()
    }

    /// Completes `answer` with the status once the response has ended, or fails it when the
    /// connection goes first (NIO ignores a second completion: the timeout's, or this one's).
    private final class StatusHandler: ChannelInboundHandler {
        typealias InboundIn = HTTPClientResponsePart
        private let answer: EventLoopPromise<Int>
        private var status: Int?
        private var done = false

        init(answer: EventLoopPromise<Int>) {
            self.answer = answer
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head): status = Int(head.status.code)
            case .body: break
            case .end:
                finish(status.map { .success($0) } ?? .failure(Failure(description: "an answer without a status")))
                context.close(promise: nil)
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            finish(.failure(Failure(description: "the connection closed before the answer ended")))
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            finish(.failure(error))
            context.close(promise: nil)
        }

        private func finish(_ result: Result<Int, any Error>) {
            guard !done else { return }
            done = true
            answer.completeWith(result)
        }
    }
}
