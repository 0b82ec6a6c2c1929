import Synchronization

/// The events a webhook can be sent (Docs/webhooks.md has each one's `data`).
public enum WebhookEventType: String, Sendable, Hashable, CaseIterable {
    /// A device acknowledged a message: the message left its queue.
    case messageAcked = "message.acked"
    /// A message's TTL passed before an acknowledgement.
    case messageExpired = "message.expired"
    /// A push was refused because the device's pending queue was full (429).
    case messageRejected = "message.rejected"
    /// A device completed HELLO on this node.
    case deviceConnected = "device.connected"
    /// A device's connection ended, with the reason.
    case deviceDisconnected = "device.disconnected"
}

/// A value in an event's `data`: a JSON string, integer or null.
public enum WebhookValue: Sendable, Hashable {
    case string(String)
    case integer(Int64)
    case null
}

/// One event, encoded once when it is emitted: `{"id", "type", "at", "data"}`.
public struct WebhookEvent: Sendable, Hashable {
    /// Unique across the cluster and restarts (receivers dedupe by it); an event about a
    /// message has the id `WebhookEventIDs.id(of:message:)` makes, the same each time it is
    /// made again.
    public let id: String
    /// The device it concerns: events of one device are sent in the order they were emitted.
    public let clientID: String
    /// The event's JSON object.
    public let json: String
    /// Where its queue keeps it (a Redis stream entry id); nil in memory.
    public var queueID: String?

    /// An event read back from a queue.
    public init(id: String, clientID: String, json: String, queueID: String?) {
        self.id = id
        self.clientID = clientID
        self.json = json
        self.queueID = queueID
    }

    /// Encodes an event of `type` at `atMillis` (Unix milliseconds) about `clientID`, with
    /// `data` in the order given (`client_id` first, added here).
    public init(id: String, type: WebhookEventType, atMillis: Int64, clientID: String, data: [(String, WebhookValue)]) {
        self.id = id
        self.clientID = clientID
        // Bytes, then one String: a few hundred instructions, where appending to a String
        // piece by piece cost tens of thousands (measured with callgrind).
        var json: [UInt8] = []
        json.reserveCapacity(192)
        Self.appendStatic(#"{"id":"#, to: &json)
        Self.appendQuoted(id, to: &json)
        Self.appendStatic(#","type":""#, to: &json)
        var name = type.rawValue
        name.withUTF8 { json.append(contentsOf: $0) }
        Self.appendStatic(#"","at":"#, to: &json)
        Self.appendInteger(atMillis, to: &json)
        Self.appendStatic(#","data":{"client_id":"#, to: &json)
        Self.appendQuoted(clientID, to: &json)
        for (name, value) in data {
            json.append(UInt8(ascii: ","))
            Self.appendQuoted(name, to: &json)
            json.append(UInt8(ascii: ":"))
            switch value {
            case .string(let text): Self.appendQuoted(text, to: &json)
            case .integer(let number): Self.appendInteger(number, to: &json)
            case .null: Self.appendStatic("null", to: &json)
            }
        }
        Self.appendStatic("}}", to: &json)
        self.json = String(decoding: json, as: UTF8.self)
        queueID = nil
    }

    /// Appends `text` as a JSON string, quotes included: its bytes at once when nothing in it
    /// needs an escape (ids and names never do), else escaped.
    static func appendQuoted(_ text: String, to json: inout [UInt8]) {
        var text = text
        let plain = text.withUTF8 { bytes in
            guard !bytes.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) else { return false }
            json.append(UInt8(ascii: "\""))
            json.append(contentsOf: bytes)
            json.append(UInt8(ascii: "\""))
            return true
        }
        if !plain { json.append(contentsOf: JSONString.quoted(text).utf8) }
    }

    /// Appends the decimal digits of `number`, without making a String: written from the
    /// last digit into a small buffer, then appended at once.
    static func appendInteger(_ number: Int64, to json: inout [UInt8]) {
        if number < 0 { json.append(UInt8(ascii: "-")) }
        var magnitude = number.magnitude
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { digits in
            var start = digits.count
            repeat {
                start -= 1
                digits[start] = UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: magnitude % 10)
                magnitude /= 10
            } while magnitude > 0
            json.append(contentsOf: UnsafeBufferPointer(rebasing: digits[start...]))
        }
    }

    /// Appends a literal's bytes at once (not byte by byte, as a String's UTF-8 view would).
    static func appendStatic(_ text: StaticString, to json: inout [UInt8]) {
        json.append(contentsOf: UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }
}

/// Event ids. An event about a message (`message.acked`, `message.expired`) is named after it,
/// `ack-<message id>` or `exp-<message id>`: the store may write such an event again (an ACK
/// repeated after a crash between the event and the delete, Docs/webhooks.md), and the copy
/// then has the same id for the receiver to drop. Every other event gets
/// `ev-<64 random bits of this process, hex>-<counter, hex>`, unique across nodes and restarts
/// as message ids are.
public final class WebhookEventIDs: Sendable {
    private let prefix: String
    private let counter = Atomic<UInt64>(0)

    /// Ids with a fresh random prefix.
    public init() {
        var generator = SystemRandomNumberGenerator()
        let random = String(generator.next() as UInt64, radix: 16)
        prefix = "ev-" + String(repeating: "0", count: 16 - random.count) + random + "-"
    }

    /// The id of an event of `type`, about `message` when it concerns one.
    public func id(of type: WebhookEventType, message: String?) -> String {
        switch (type, message) {
        case (.messageAcked, let message?): "ack-" + message
        case (.messageExpired, let message?): "exp-" + message
        default: prefix + String(counter.add(1, ordering: .relaxed).newValue, radix: 16)
        }
    }
}

/// Where the node's parts hand webhook events. `emit` never waits and never fails the caller:
/// a sink that cannot keep an event counts and logs the drop itself.
public protocol WebhookSink: Sendable {
    /// Whether events of `type` are wanted (`HERALD_WEBHOOK_EVENTS`): callers skip building
    /// the others.
    func wants(_ type: WebhookEventType) -> Bool
    /// Queues an event of `type` about `clientID` (and `message`, for a message's events) now.
    func emit(_ type: WebhookEventType, clientID: String, message: String?, data: [(String, WebhookValue)])
}

extension WebhookSink {
    /// Queues an event of `type` about `clientID` that concerns no one message.
    public func emit(_ type: WebhookEventType, clientID: String, data: [(String, WebhookValue)]) {
        emit(type, clientID: clientID, message: nil, data: data)
    }
}

/// A queue the webhook sender takes events from: `laneCount` lanes, a device's events always
/// in the same lane, each lane sent one batch at a time, in order. In memory on a lone node
/// (`MemoryWebhookQueue`); a stream per lane in Redis otherwise (`RedisWebhookQueue`), where a
/// node sends only the lanes it holds a lease on.
public protocol WebhookQueue: WebhookSink {
    /// How many lanes there are (the sender's concurrency).
    var laneCount: Int { get }
    /// Up to `limit` of lane `lane`'s oldest events that this node is to send, waiting until
    /// there is one; empty once the task is cancelled. They stay queued until `remove`.
    func next(lane: Int, limit: Int) async -> [WebhookEvent]
    /// Removes `batch` (what `next` returned, delivered or given up) from lane `lane`; false
    /// when that failed (Redis unreachable): the caller tries again, or the batch is sent again.
    func remove(lane: Int, batch: [WebhookEvent]) async -> Bool
    /// Keeps what the queue needs kept while the sender runs (Redis: the lanes' leases), until
    /// the task is cancelled; then lets go of it (another node takes the lanes at once).
    func maintain() async
    /// Events waiting, events this node ever queued, events it dropped; when the oldest waiting
    /// event was queued (Unix ms), nil when none waits.
    var figures: WebhookQueueFigures { get }
}

/// A webhook queue's figures, for /metrics.
public struct WebhookQueueFigures: Sendable, Equatable {
    public var depth: Int
    public var queued: Int
    public var dropped: Int
    public var oldestQueuedAt: Int64?
    /// Lanes this node sends (all of them in memory; those it holds a lease on in Redis).
    public var lanesHeld: Int

    public init(depth: Int, queued: Int, dropped: Int, oldestQueuedAt: Int64?, lanesHeld: Int) {
        self.depth = depth
        self.queued = queued
        self.dropped = dropped
        self.oldestQueuedAt = oldestQueuedAt
        self.lanesHeld = lanesHeld
    }
}

extension WebhookQueue {
    /// The lane of `clientID`'s events: FNV-1a of its bytes, so every node agrees.
    public func lane(of clientID: String) -> Int {
        var hash: UInt64 = 14_695_981_039_346_656_037
        for byte in clientID.utf8 { hash = (hash ^ UInt64(byte)) &* 1_099_511_628_211 }
        return Int(hash % UInt64(laneCount))
    }
}

/// JSON string quoting, for bodies written by hand (webhook events, the WebSocket refusals).
public enum JSONString {
    /// `text` as a JSON string, quotes included.
    public static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case let control where control.value < 0x20:
                let hex = String(control.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
