import Logging
import NIOCore
import PushProtocol

/// A message the API accepted for one device, before it has an id.
public struct PushRequest: Sendable {
    /// The device (already validated).
    public var clientID: String
    /// The payload (already within `max_payload`).
    public var payload: ByteBuffer
    /// Its time to live.
    public var ttlSeconds: Int64

    /// Creates a request.
    public init(clientID: String, payload: ByteBuffer, ttlSeconds: Int64) {
        self.clientID = clientID
        self.payload = payload
        self.ttlSeconds = ttlSeconds
    }
}

/// What the API knows of one device.
public struct ClientStatus: Sendable, Hashable {
    /// Connected to a node now.
    public var online: Bool
    /// The node it is connected to.
    public var node: String?
    /// Stored, unexpired, unacknowledged messages.
    public var pending: Int
}

/// The push path of a node: store first, then hand to the device's connection.
///
/// A message is delivered from the store's point of view: `push` returns only after the
/// store has the message, and the connection is only notified; if the notification is lost
/// (no connection, connection closing), the message waits in the store for the next
/// connection's read.
public final class MessageRouter: Sendable {
    private let store: any PushStore
    private let synchronousStore: (any SynchronousPushStore)?
    private let receipts: (any ReceiptStore)?
    private let broadcasts: (any BroadcastReceiptStore)?
    /// Where `message.rejected` goes; nil without a webhook.
    private let events: (any WebhookSink)?
    /// The receipt store that makes message ids, when it adds to them (not the memory store's).
    private let idMaker: (any ReceiptStore)?
    private let registry: ConnectionRegistry
    private let ids: MessageIDGenerator
    private let metrics: NodeMetrics
    private let nodeID: String
    private let cluster: any ClusterLink
    private let now: @Sendable () -> Int64

    /// Creates the router of a node.
    public init(
        nodeID: String, store: any PushStore, registry: ConnectionRegistry, metrics: NodeMetrics,
        cluster: any ClusterLink = LoneNode(), ids: MessageIDGenerator = MessageIDGenerator(),
        broadcasts: (any BroadcastReceiptStore)? = nil, events: (any WebhookSink)? = nil,
        now: @escaping @Sendable () -> Int64 = WallClock.millisecondsSinceEpoch
    ) {
        self.events = events
        let receipts = (store as? any ReceiptStore).flatMap { $0.keepsReceipts ? $0 : nil }
        self.receipts = receipts
        self.idMaker = receipts is any SynchronousPushStore ? nil : receipts
        self.broadcasts = broadcasts
        self.nodeID = nodeID
        self.cluster = cluster
        self.store = store
        self.synchronousStore = store as? any SynchronousPushStore
        self.registry = registry
        self.ids = ids
        self.metrics = metrics
        self.now = now
    }

    /// Stores `requests` atomically, then notifies the connected devices. Returns the message
    /// ids in request order. Throws the store's error, in which case nothing was stored.
    /// Runs where it is called; with a synchronous store it never suspends (`pushNow`).
    public func push(_ requests: [PushRequest]) async throws(StoreError) -> [String] {
        if let synchronousStore { return try pushNow(requests, into: synchronousStore) }
        let messages = newMessages(requests)
        let start = ContinuousClock.now
        let stored: [StoredMessage]
        do {
            stored = try await store.append(messages)
        } catch {
            rejected(error, count: messages.count)
            throw error
        }
        return notify(stored, storedIn: ContinuousClock.now - start)
    }

    /// `message.rejected` for a push refused because a device's queue is full.
    private func rejected(_ error: StoreError, count: Int) {
        guard error.code == .pendingFull, let events, let clientID = error.clientID else { return }
        events.emit(.messageRejected, clientID: clientID, data: [("reason", .string("pending_full")), ("messages", .integer(Int64(count)))])
    }

    /// `push`, at once, when the store is synchronous (the in-memory store); nil otherwise
    /// (call `push`). For the API's event-loop path: no task, no suspension.
    public func pushNow(_ requests: [PushRequest]) throws(StoreError) -> [String]? {
        guard let synchronousStore else { return nil }
        return try pushNow(requests, into: synchronousStore)
    }

    private func pushNow(_ requests: [PushRequest], into store: any SynchronousPushStore) throws(StoreError) -> [String] {
        let messages = newMessages(requests)
        let start = ContinuousClock.now
        let stored: [StoredMessage]
        do {
            stored = try store.appendNow(messages)
        } catch {
            rejected(error, count: messages.count)
            throw error
        }
        return notify(stored, storedIn: ContinuousClock.now - start)
    }

    private func newMessages(_ requests: [PushRequest]) -> [NewMessage] {
        let now = now()
        guard let receipts = idMaker else {
            return requests.map {
                NewMessage(clientID: $0.clientID, id: ids.next(), payload: $0.payload, expiresAtMillis: now + $0.ttlSeconds * 1000)
            }
        }
        return requests.map {
            NewMessage(
                clientID: $0.clientID, id: receipts.messageID(ids.next(), for: $0.clientID), payload: $0.payload,
                expiresAtMillis: now + $0.ttlSeconds * 1000
            )
        }
    }

    /// Records the store's latency, hands each stored message to its device's connection on
    /// this node or to the cluster, and returns the ids.
    private func notify(_ stored: [StoredMessage], storedIn elapsed: Duration) -> [String] {
        metrics.storeLatency.recordNanoseconds(elapsed.wholeNanoseconds)
        metrics.pushesAccepted.increment(by: Int64(stored.count))
        var elsewhere: [StoredMessage] = []
        for message in stored {
            if let connection = registry.connection(for: message.clientID) {
                connection.deliver(message)
            } else {
                elsewhere.append(message)
            }
        }
        if !elsewhere.isEmpty { cluster.forward(elsewhere) }
        return stored.map(\.id)
    }

    /// Sends `payload` as a PUSH to every device connected to any live node now; never
    /// stored. Returns the broadcast's message id and how many connections of this node it
    /// was handed to.
    public func broadcast(_ payload: ByteBuffer) -> (id: String, recipients: Int) {
        let id = ids.next()
        let recipients = broadcastLocally(messageID: id, payload: payload)
        recordBroadcast(id: id, sent: recipients, acceptedAtMillis: now())
        cluster.broadcast(messageID: id, payload: payload)
        return (id, recipients)
    }

    /// Sends a broadcast to this node's own devices; returns how many it was handed to.
    @discardableResult
    public func broadcastLocally(messageID id: String, payload: ByteBuffer) -> Int {
        registry.broadcast(messageID: id, payload: payload)
    }

    /// The device's status as the API reports it.
    public func status(of clientID: String) async throws(StoreError) -> ClientStatus {
        let pending = try await store.pendingCount(for: clientID)
        if registry.connection(for: clientID) != nil {
            return ClientStatus(online: true, node: nodeID, pending: pending)
        }
        let location = try await cluster.locate(clientID)
        return ClientStatus(online: location != nil, node: location?.nodeID, pending: pending)
    }

    /// Records that this node wrote broadcast `id` to `sent` connections: at once in memory,
    /// else by a task (the status may lag the 202 by a store round trip).
    public func recordBroadcast(id: String, sent: Int, acceptedAtMillis: Int64?) {
        if let table = broadcasts as? BroadcastReceipts {
            return table.recordBroadcast(id: id, node: nodeID, sent: sent, acceptedAtMillis: acceptedAtMillis)
        }
        guard let broadcasts else { return }
        let nodeID = nodeID
        Task { try? await broadcasts.recordBroadcast(id: id, node: nodeID, sent: sent, acceptedAtMillis: acceptedAtMillis) }
    }

    /// Whether this node keeps message status (`receipt(of:)`, `pendingReceipts`).
    public var keepsReceipts: Bool { receipts != nil }

    /// The status of message `id`: a device's message, a broadcast, or nil (unknown, forgotten,
    /// or no status kept).
    public func receipt(of id: String) async throws(StoreError) -> Receipt? {
        if let receipts, let receipt = try await receipts.receipt(of: id) { return .message(receipt) }
        return try await broadcasts?.broadcastReceipt(of: id).map(Receipt.broadcast)
    }

    /// Up to `limit` receipts of `clientID`'s pending messages after `sequence`, in order.
    public func pendingReceipts(for clientID: String, after sequence: UInt64, limit: Int) async throws(StoreError) -> [MessageReceipt] {
        guard let receipts else { return [] }
        return try await receipts.pendingReceipts(for: clientID, after: sequence, limit: limit)
    }

    /// Closes the device's connection on whichever node holds it. Returns whether one did.
    public func disconnect(_ clientID: String) async throws(StoreError) -> Bool {
        if let connection = registry.connection(for: clientID) {
            connection.close()
            return true
        }
        return try await cluster.disconnect(clientID)
    }
}
