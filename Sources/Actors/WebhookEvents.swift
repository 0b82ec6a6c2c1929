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
    /// Unique across the cluster and restarts (receivers dedupe by it).
    public let id: String
    /// The device it concerns: events of one device are sent in the order they were emitted.
    public let clientID: String
    /// The event's JSON object.
    public let json: String

    /// Encodes an event of `type` at `atMillis` (Unix milliseconds) about `clientID`, with
    /// `data` in the order given (`client_id` first, added here).
    public init(id: String, type: WebhookEventType, atMillis: Int64, clientID: String, data: [(String, WebhookValue)]) {
        self.id = id
        self.clientID = clientID
        var json = #"{"id":"# + Self.quoted(id) + #","type":""# + type.rawValue + #"","at":"# + String(atMillis)
        json += #","data":{"client_id":"# + Self.quoted(clientID)
        for (name, value) in data {
            json += "," + Self.quoted(name) + ":"
            switch value {
            case .string(let text): json += Self.quoted(text)
            case .integer(let number): json += String(number)
            case .null: json += "null"
            }
        }
        json += "}}"
        self.json = json
    }

    /// `text` as a JSON string, quotes included.
    static func quoted(_ text: String) -> String {
        var result = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            case let control where control.value < 0x20:
                let hex = String(control.value, radix: 16)
                result += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result + "\""
    }
}

/// Where the node's parts hand webhook events. `emit` never waits and never fails the caller:
/// a sink that cannot keep an event counts and logs the drop itself.
public protocol WebhookSink: Sendable {
    /// Whether events of `type` are wanted (`HERALD_WEBHOOK_EVENTS`): callers skip building
    /// the others.
    func wants(_ type: WebhookEventType) -> Bool
    /// Queues an event of `type` about `clientID` now.
    func emit(_ type: WebhookEventType, clientID: String, data: [(String, WebhookValue)])
}
