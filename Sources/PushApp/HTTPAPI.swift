import Actors
import Cluster
import FoundationEssentials
import Hummingbird
import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif
import PushProtocol

/// The backends' HTTP API of protocol.md §2 (and Docs/http-api.md).
struct HTTPAPI: Sendable {
    let node: HeraldNode

    private var configuration: NodeConfiguration { node.configuration }
    /// The most messages one batch may carry (Docs/http-api.md).
    static let maxBatch = 1000

    /// The Hummingbird router with every endpoint.
    func router() -> Hummingbird.Router<BasicRequestContext> {
        let router = Hummingbird.Router(context: BasicRequestContext.self)
        var routes: [(method: HTTPRequest.Method, path: String)] = [
            (.post, "/v1/push"), (.post, "/v1/push/batch"), (.post, "/v1/broadcast"), (.get, "/v1/clients/{client_id}"),
            (.delete, "/v1/clients/{client_id}/connection"), (.get, "/v1/stats"), (.get, "/healthz"), (.get, "/readyz"),
            (.get, "/metrics"), (.get, "/v1/messages/{id}"), (.get, "/v1/clients/{client_id}/messages"),
        ]
        if configuration.faultHooks {
            routes += [(.post, "/debug/kill/{child}"), (.post, "/debug/wedge-event-loop"), (.post, "/debug/stop-relaying")]
        }
        router.add(middleware: APIErrorMiddleware(keys: SecretSet(configuration.apiKeys), routes: routes))
        router.post("/v1/push") { request, _ in try await push(request) }
        router.post("/v1/push/batch") { request, _ in try await batch(request) }
        router.post("/v1/broadcast") { request, _ in try await broadcast(request) }
        router.get("/v1/clients/{client_id}") { _, context in try await client(context) }
        router.delete("/v1/clients/{client_id}/connection") { _, context in try await disconnect(context) }
        router.get("/v1/messages/{id}") { _, context in try await message(context) }
        router.get("/v1/clients/{client_id}/messages") { request, context in try await clientMessages(request, context) }
        router.get("/v1/stats") { _, _ in stats() }
        router.get("/healthz") { _, _ in await health() }
        router.get("/readyz") { _, _ in await ready() }
        router.get("/metrics") { _, _ in metrics() }
        if configuration.faultHooks {
            router.post("/debug/kill/{child}") { _, context in try await kill(context) }
            router.post("/debug/wedge-event-loop") { _, _ in wedgeEventLoop() }
            router.post("/debug/stop-relaying") { _, _ in stopRelaying() }
        }
        return router
    }

    // MARK: Pushing

    // Optional fields may be absent, not null: `"ttl_s": null` is a wrong type (400), so that
    // "exactly one of data and data_base64" has one meaning (Docs/http-api.md).
    private struct PushBody: Decodable {
        var client_id: String?
        var data: String?
        var data_base64: String?
        var ttl_s: Int64?

        enum CodingKeys: String, CodingKey { case client_id, data, data_base64, ttl_s }

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            client_id = try container.decodeUnlessAbsent(String.self, forKey: .client_id)
            data = try container.decodeUnlessAbsent(String.self, forKey: .data)
            data_base64 = try container.decodeUnlessAbsent(String.self, forKey: .data_base64)
            ttl_s = try container.decodeUnlessAbsent(Int64.self, forKey: .ttl_s)
        }

        init(_ fields: PushBodyScanner.Fields) {
            (client_id, data, data_base64, ttl_s) = (fields.clientID, fields.data, fields.dataBase64, fields.ttlSeconds)
        }
    }

    private struct BatchBody: Decodable {
        var messages: [PushBody]?

        enum CodingKeys: String, CodingKey { case messages }

        init(from decoder: any Decoder) throws {
            messages = try decoder.container(keyedBy: CodingKeys.self).decodeUnlessAbsent([PushBody].self, forKey: .messages)
        }

        init(_ messages: [PushBodyScanner.Fields]) {
            self.messages = messages.map(PushBody.init)
        }
    }

    private struct BroadcastBody: Decodable {
        var data: String?
        var data_base64: String?

        enum CodingKeys: String, CodingKey { case data, data_base64 }

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            data = try container.decodeUnlessAbsent(String.self, forKey: .data)
            data_base64 = try container.decodeUnlessAbsent(String.self, forKey: .data_base64)
        }
    }

    private func push(_ request: Request) async throws -> Response {
        let body = try await collect(request, for: .push)
        return JSONBody.response(status: .accepted, bytes: try await accept(.push, body: body, on: Self.connectionLoop()))
    }

    private func batch(_ request: Request) async throws -> Response {
        let body = try await collect(request, for: .batch)
        return JSONBody.response(status: .accepted, bytes: try await accept(.batch, body: body, on: Self.connectionLoop()))
    }

    private func broadcast(_ request: Request) async throws -> Response {
        let body = try await collect(request, for: .broadcast)
        return JSONBody.response(status: .accepted, bytes: try await accept(.broadcast, body: body, on: Self.connectionLoop()))
    }

    /// The endpoints that take a message: served by the router, or on the event loop by
    /// `PushFastPath` when the request needs nothing else of Hummingbird's.
    enum Acceptance: Sendable {
        case push, batch, broadcast

        init?(path: Substring) {
            switch path {
            case "/v1/push": self = .push
            case "/v1/push/batch": self = .batch
            case "/v1/broadcast": self = .broadcast
            default: return nil
            }
        }
    }

    /// The most bytes a request body of `endpoint` may have.
    func bodyLimit(_ endpoint: Acceptance) -> Int {
        bodyLimit(messages: endpoint == .batch ? Self.maxBatch : 1)
    }

    /// What a valid request to a message endpoint asks for.
    private enum Accepted {
        /// Store these (one for `/v1/push`, answered with `id`; a batch, answered with `ids`).
        case messages([PushRequest], batch: Bool)
        /// Send this to every connected device.
        case broadcast(ByteBuffer)
    }

    /// The loop the router's handler runs on: its connection's, which `HeraldHTTP1Channel`
    /// gives Hummingbird's task as executor.
    private static func connectionLoop() -> any EventLoop {
        guard let loop = MultiThreadedEventLoopGroup.currentEventLoop else {
            preconditionFailure("a router handler ran off its connection's event loop (see HeraldHTTP1Channel.handle)")
        }
        return loop
    }

    /// The one acceptor of both HTTP entries (the router, and `PushFastPath` on the event
    /// loop): validates and stores (or broadcasts) the JSON `body` of a request to
    /// `endpoint`; the 202 response's JSON body. Throws `APIError` (4xx, 503); nothing is
    /// stored then. Runs on `eventLoop`, the HTTP connection's, from either entry, and checks
    /// it (Docs/architecture.md, "The push path"); a store call it awaits resumes there.
    func accept(_ endpoint: Acceptance, body: ByteBuffer, on eventLoop: any EventLoop) async throws -> ByteBuffer {
        eventLoop.preconditionInEventLoop()
        switch try validated(endpoint, body: body) {
        case .messages(let requests, let batch):
            let ids: [String]
            do {
                ids = try await node.router.push(requests)
            } catch {
                throw Self.apiError(error)
            }
            return Self.reply(ids, batch: batch)
        case .broadcast(let payload):
            return try broadcast(payload)
        }
    }

    /// `accept`, at once, when the store answers without waiting (the in-memory store); nil
    /// when it must be awaited (call `accept`). No task, no suspension.
    func acceptNow(_ endpoint: Acceptance, body: ByteBuffer, on eventLoop: any EventLoop) throws -> ByteBuffer? {
        eventLoop.preconditionInEventLoop()
        switch try validated(endpoint, body: body) {
        case .messages(let requests, let batch):
            let ids: [String]?
            do {
                ids = try node.router.pushNow(requests)
            } catch {
                throw Self.apiError(error)
            }
            return ids.map { Self.reply($0, batch: batch) }
        case .broadcast(let payload):
            return try broadcast(payload)
        }
    }

    private func validated(_ endpoint: Acceptance, body: ByteBuffer) throws -> Accepted {
        switch endpoint {
        case .push:
            // The plain shape without JSONDecoder; anything else through it (PushBodyScanner).
            let push = try PushBodyScanner.push(body).map(PushBody.init) ?? decode(PushBody.self, from: body)
            return .messages([try validate(push, at: nil)], batch: false)
        case .batch:
            let batch = try PushBodyScanner.batch(body).map(BatchBody.init) ?? decode(BatchBody.self, from: body)
            guard let messages = batch.messages else { throw APIError.badRequest("missing field messages") }
            guard !messages.isEmpty else { throw APIError.badRequest("messages is empty") }
            guard messages.count <= Self.maxBatch else {
                throw APIError.badRequest("a batch carries at most \(Self.maxBatch) messages, got \(messages.count)")
            }
            return .messages(try messages.enumerated().map { try validate($0.element, at: $0.offset) }, batch: true)
        case .broadcast:
            let broadcast = try decode(BroadcastBody.self, from: body)
            return .broadcast(try self.payload(data: broadcast.data, base64: broadcast.data_base64, at: nil))
        }
    }

    private func broadcast(_ payload: ByteBuffer) throws -> ByteBuffer {
        guard !node.isDraining else { throw APIError.unavailable("node is draining") }
        let (id, _) = node.router.broadcast(payload)
        return JSONBody.bytes("id", id)
    }

    private static func reply(_ ids: [String], batch: Bool) -> ByteBuffer {
        batch ? JSONBody.bytes("ids", ids) : JSONBody.bytes("id", ids[0])
    }

    private static func apiError(_ error: StoreError) -> APIError {
        switch error.code {
        case .pendingFull: APIError.tooManyRequests(error.message)
        case .unavailable: APIError.unavailable("store unavailable: \(error.message)")
        }
    }

    private func validate(_ body: PushBody, at index: Int?) throws -> PushRequest {
        let prefix = index.map { "messages[\($0)]: " } ?? ""
        guard let clientID = body.client_id else { throw APIError.badRequest("\(prefix)missing field client_id") }
        guard Identifiers.isValidClientID(clientID) else {
            throw APIError.badRequest("\(prefix)client_id must be 1 to 128 characters of [A-Za-z0-9._:@-]")
        }
        let payload = try payload(data: body.data, base64: body.data_base64, at: index)
        let ttl = body.ttl_s ?? configuration.defaultTTLSeconds
        guard ttl >= 1, ttl <= configuration.maxTTLSeconds else {
            throw APIError.badRequest("\(prefix)ttl_s must be from 1 to \(configuration.maxTTLSeconds)")
        }
        return PushRequest(clientID: clientID, payload: payload, ttlSeconds: ttl)
    }

    private func payload(data: String?, base64: String?, at index: Int?) throws -> ByteBuffer {
        let prefix = index.map { "messages[\($0)]: " } ?? ""
        let payload: ByteBuffer
        switch (data, base64) {
        case (let text?, nil):
            payload = ByteBuffer(string: text)
        case (nil, let encoded?):
            guard let bytes = Data(base64Encoded: encoded) else {
                throw APIError.badRequest("\(prefix)data_base64 is not standard base64 with padding")
            }
            payload = ByteBuffer(bytes: bytes)
        case (nil, nil):
            throw APIError.badRequest("\(prefix)one of data or data_base64 is required")
        case (.some, .some):
            throw APIError.badRequest("\(prefix)give data or data_base64, not both")
        }
        guard payload.readableBytes <= configuration.maxPayload else {
            throw APIError.payloadTooLarge("\(prefix)payload is \(payload.readableBytes) bytes, above max_payload \(configuration.maxPayload)")
        }
        return payload
    }

    /// A JSON string can spend up to 6 bytes per payload byte (`\u0000`), base64 4/3:
    /// the body limit leaves room for either, plus the other fields.
    private func bodyLimit(messages: Int) -> Int {
        messages * (configuration.maxPayload * 6 + 512) + 1024
    }

    private func collect(_ request: Request, for endpoint: Acceptance) async throws -> ByteBuffer {
        let limit = bodyLimit(endpoint)
        do {
            return try await request.body.collect(upTo: limit)
        } catch let error as HTTPError where error.status == .contentTooLarge {
            throw APIError.payloadTooLarge("request body above \(limit) bytes")
        }
    }

    /// One decoder for every request (it holds only its options; decoding is thread-safe).
    private static let decoder = JSONDecoder()

    private func decode<T: Decodable>(_ type: T.Type, from buffer: ByteBuffer) throws -> T {
        do {
            return try Self.decoder.decode(T.self, from: Data(buffer.readableBytesView))
        } catch DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context) {
            let field = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
            throw APIError.badRequest("wrong type for \(field.isEmpty ? "body" : String(field.dropFirst(field.hasPrefix(".") ? 1 : 0)))")
        } catch {
            throw APIError.badRequest("malformed JSON", code: "malformed_json")
        }
    }

    // MARK: Devices

    private struct ClientBody: Encodable {
        var client_id: String
        var online: Bool
        var node: String?
        var pending: Int
        /// Herald's addition, only when the device is connected to the node answering: its
        /// address (what a trusted proxy reported, else the socket's) and its transport.
        var address: String?
        var transport: String?

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(client_id, forKey: .client_id)
            try container.encode(online, forKey: .online)
            try container.encode(node, forKey: .node)  // null, not absent, when offline
            try container.encode(pending, forKey: .pending)
            try container.encodeIfPresent(address, forKey: .address)
            try container.encodeIfPresent(transport, forKey: .transport)
        }
        enum CodingKeys: CodingKey { case client_id, online, node, pending, address, transport }
    }

    private func clientID(_ context: BasicRequestContext) throws -> String {
        // Ids are legal in paths as they are, but a client may still percent-encode them (`%3A`).
        guard let raw = context.parameters.get("client_id"), let id = Self.percentDecoded(raw), Identifiers.isValidClientID(id) else {
            throw APIError.badRequest("client_id must be 1 to 128 characters of [A-Za-z0-9._:@-]")
        }
        return id
    }

    private func client(_ context: BasicRequestContext) async throws -> Response {
        let id = try clientID(context)
        let status: ClientStatus
        do {
            status = try await node.router.status(of: id)
        } catch {
            throw APIError.unavailable("store unavailable: \(error.message)")
        }
        let local = node.registry.connection(for: id)
        return JSONBody.response(
            status: .ok,
            ClientBody(
                client_id: id, online: status.online, node: status.node, pending: status.pending,
                address: local?.remoteHost, transport: local?.peer.transport
            )
        )
    }

    // MARK: Message status

    private struct MessageBody: Encodable {
        var receipt: MessageReceipt

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(receipt.id, forKey: .id)
            try container.encode(receipt.clientID, forKey: .client_id)
            try container.encode(receipt.state.rawValue, forKey: .state)
            try container.encode(receipt.acceptedAtMillis, forKey: .accepted_at)
            try container.encode(receipt.sentAtMillis, forKey: .sent_at)  // null, not absent, until sent
            try container.encode(receipt.ackedAtMillis, forKey: .acked_at)
            try container.encode(receipt.expiresAtMillis, forKey: .expires_at)
        }
        enum CodingKeys: CodingKey { case id, client_id, state, accepted_at, sent_at, acked_at, expires_at }
    }

    private struct BroadcastStatusBody: Encodable {
        var id: String
        var type = "broadcast"
        var accepted_at: Int64
        var sent: [String: Int]
    }

    private struct PendingBody: Encodable {
        var id: String
        var sequence: UInt64
        var state: String
        var accepted_at: Int64
        var age_ms: Int64
        var sent_at: Int64?
        var expires_at: Int64

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(id, forKey: .id)
            try container.encode(sequence, forKey: .sequence)
            try container.encode(state, forKey: .state)
            try container.encode(accepted_at, forKey: .accepted_at)
            try container.encode(age_ms, forKey: .age_ms)
            try container.encode(sent_at, forKey: .sent_at)
            try container.encode(expires_at, forKey: .expires_at)
        }
        enum CodingKeys: CodingKey { case id, sequence, state, accepted_at, age_ms, sent_at, expires_at }
    }

    private struct PendingListBody: Encodable {
        var client_id: String
        var messages: [PendingBody]
        /// The `after` of the next page; null on the last page.
        var next_after: UInt64?

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(client_id, forKey: .client_id)
            try container.encode(messages, forKey: .messages)
            try container.encode(next_after, forKey: .next_after)
        }
        enum CodingKeys: CodingKey { case client_id, messages, next_after }
    }

    /// The most entries one page of `GET /v1/clients/{id}/messages` carries, and its default.
    static let maxPage = 1000
    static let defaultPage = 100

    private static let receiptsOff = APIError(
        status: .notFound, code: "receipts_off", message: "this node keeps no message status (HERALD_RECEIPT_RETENTION_S=0, or a store without status)"
    )

    private func message(_ context: BasicRequestContext) async throws -> Response {
        guard let raw = context.parameters.get("id"), let id = Self.percentDecoded(raw), Identifiers.isValidMessageID(id) else {
            throw APIError.badRequest("a message id is 1 to 64 printable ASCII characters")
        }
        let receipt: Receipt?
        do {
            receipt = try await node.router.receipt(of: id)
        } catch {
            throw APIError.unavailable("store unavailable: \(error.message)")
        }
        switch receipt {
        case .message(let receipt):
            return JSONBody.response(status: .ok, MessageBody(receipt: receipt))
        case .broadcast(let broadcast):
            return JSONBody.response(
                status: .ok, BroadcastStatusBody(id: broadcast.id, accepted_at: broadcast.acceptedAtMillis, sent: broadcast.sent)
            )
        case nil:
            guard node.router.keepsReceipts else { throw Self.receiptsOff }
            throw APIError(status: .notFound, code: "not_found", message: "no message \(id) (unknown, or forgotten after HERALD_RECEIPT_RETENTION_S)")
        }
    }

    private func clientMessages(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let id = try clientID(context)
        guard node.router.keepsReceipts else { throw Self.receiptsOff }
        let query = request.uri.queryParameters
        var after: UInt64 = 0
        if let text = query.get("after") {
            // A sequence: 0 to 2^63 - 1, as Docs/openapi.yaml says (an int64 for every client's JSON).
            guard let value = Int64(text), value >= 0 else {
                throw APIError.badRequest("after must be a sequence, from 0 to \(Int64.max)")
            }
            after = UInt64(value)
        }
        var limit = Self.defaultPage
        if let text = query.get("limit") {
            guard let value = Int(text), (1...Self.maxPage).contains(value) else {
                throw APIError.badRequest("limit must be from 1 to \(Self.maxPage)")
            }
            limit = value
        }
        let receipts: [MessageReceipt]
        do {
            // One more than the page, to know whether another follows.
            receipts = try await node.router.pendingReceipts(for: id, after: after, limit: limit + 1)
        } catch {
            throw APIError.unavailable("store unavailable: \(error.message)")
        }
        let now = WallClock.millisecondsSinceEpoch()
        let page = receipts.prefix(limit).map { receipt in
            PendingBody(
                id: receipt.id, sequence: receipt.sequence, state: receipt.state.rawValue, accepted_at: receipt.acceptedAtMillis,
                age_ms: max(0, now - receipt.acceptedAtMillis), sent_at: receipt.sentAtMillis, expires_at: receipt.expiresAtMillis
            )
        }
        return JSONBody.response(
            status: .ok,
            PendingListBody(client_id: id, messages: page, next_after: receipts.count > limit ? page.last?.sequence : nil)
        )
    }

    private func disconnect(_ context: BasicRequestContext) async throws -> Response {
        let id = try clientID(context)
        do {
            _ = try await node.router.disconnect(id)
        } catch {
            throw APIError.unavailable("store unavailable: \(error.message)")
        }
        return Response(status: .noContent)
    }

    // MARK: Operations

    private struct StatsBody: Encodable {
        var node: String
        var connections: Int
        var sockets: Int
        var uptime_s: Int64
        var draining: Bool
        var store: String
        /// Bound listeners: tcp, tls, ws, wss, http, https -> host:port.
        var listeners: [String: String]
        var cluster: ClusterBody?
    }

    /// The cluster as of the last lease renewal (at most a refresh interval old).
    private struct ClusterBody: Encodable {
        var live_nodes: Int
        var connections: Int
        var nodes: [NodeBody]
    }

    private struct NodeBody: Encodable {
        var node: String
        var connections: Int
        var relay: String
    }

    private func stats() -> Response {
        let cluster = node.cluster.map { cluster in
            let members = cluster.view.members
            return ClusterBody(
                live_nodes: members.count, connections: members.reduce(0) { $0 + $1.connections },
                nodes: members.map { NodeBody(node: $0.nodeID, connections: $0.connections, relay: $0.relayAddress) }
            )
        }
        return JSONBody.response(
            status: .ok,
            StatsBody(
                node: configuration.nodeID, connections: node.registry.count, sockets: node.metrics.openConnectionCount,
                uptime_s: node.uptime.components.seconds, draining: node.isDraining, store: node.storeKind,
                listeners: node.boundAddresses, cluster: cluster
            )
        )
    }

    private struct ReadyBody: Encodable {
        var ready: Bool
        var reason: String
    }

    private func health() async -> Response {
        let report = await node.health()
        return JSONBody.response(status: report.healthy ? .ok : .serviceUnavailable, report)
    }

    private func ready() async -> Response {
        let (ready, reason) = await node.readiness()
        return JSONBody.response(status: ready ? .ok : .serviceUnavailable, ReadyBody(ready: ready, reason: reason))
    }

    private func metrics() -> Response {
        if let store = node.store as? InMemoryPushStore, store.keepsReceipts {
            let counts = store.receiptCounts
            node.metrics.observeReceipts(kept: counts.kept, forgottenEarly: counts.forgottenEarly)
        }
        if let queue = node.webhookQueue { node.webhookMetrics.observe(queue) }
        var bytes: [UInt8] = []
        node.prometheus.emit(into: &bytes)
        return Response(
            status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes))
        )
    }

    private func kill(_ context: BasicRequestContext) async throws -> Response {
        guard let child = context.parameters.get("child") else { throw APIError.notFound }
        do {
            try await node.root.kill(childID: child)
        } catch {
            throw APIError(status: .notFound, code: "not_found", message: "no child \(child)")
        }
        return Response(status: .accepted)
    }

    /// Fault hook: blocks one event loop's thread for good (a hung loop, as a deadlock or a
    /// runaway computation would leave it), after answering. Only the watchdog gets the
    /// process out of this: systemd restarts it.
    private func wedgeEventLoop() -> Response {
        let loop = node.group.next()
        loop.scheduleTask(in: .milliseconds(100)) {
            node.logger.critical("fault hook: wedging an event loop")
            while true { usleep(1_000_000) }
        }
        return Response(status: .accepted)
    }

    /// Fault hook: from now on this node stores pushes and relays none of them to its peers,
    /// as if it died right after each append (the peers must still get them delivered).
    private func stopRelaying() -> Response {
        node.cluster?.relaying.store(false, ordering: .relaxed)
        return Response(status: node.cluster == nil ? .notFound : .accepted)
    }

    /// `raw` with `%XX` escapes decoded; nil for a malformed escape or bytes that are not UTF-8.
    static func percentDecoded(_ raw: String) -> String? {
        guard raw.contains("%") else { return raw }
        var bytes: [UInt8] = []
        var utf8 = raw.utf8.makeIterator()
        while let byte = utf8.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = utf8.next().flatMap(Self.hexValue), let low = utf8.next().flatMap(Self.hexValue) else { return nil }
            bytes.append(high << 4 | low)
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

extension KeyedDecodingContainer {
    /// The value, or nil when the key is absent; a present `null` is a type error.
    func decodeUnlessAbsent<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        contains(key) ? try decode(type, forKey: key) : nil
    }
}
