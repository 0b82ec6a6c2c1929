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
        // Bytes, then one String: a few hundred instructions, where appending to a String
        // piece by piece cost tens of thousands (measured with callgrind).
        var json: [UInt8] = []
        json.reserveCapacity(192)
        json.append(contentsOf: #"{"id":"#.utf8)
        Self.appendQuoted(id, to: &json)
        json.append(contentsOf: #","type":""#.utf8)
        json.append(contentsOf: type.rawValue.utf8)
        json.append(contentsOf: #"","at":"#.utf8)
        Self.appendInteger(atMillis, to: &json)
        json.append(contentsOf: #","data":{"client_id":"#.utf8)
        Self.appendQuoted(clientID, to: &json)
        for (name, value) in data {
            json.append(UInt8(ascii: ","))
            Self.appendQuoted(name, to: &json)
            json.append(UInt8(ascii: ":"))
            switch value {
            case .string(let text): Self.appendQuoted(text, to: &json)
            case .integer(let number): Self.appendInteger(number, to: &json)
            case .null: json.append(contentsOf: "null".utf8)
            }
        }
        json.append(contentsOf: "}}".utf8)
        self.json = String(decoding: json, as: UTF8.self)
    }

    /// Appends `text` as a JSON string, quotes included: its bytes at once when nothing in it
    /// needs an escape (ids and names never do), else escaped.
    static func appendQuoted(_ text: String, to json: inout [UInt8]) {
        if text.utf8.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) {
            json.append(contentsOf: JSONString.quoted(text).utf8)
        } else {
            json.append(UInt8(ascii: "\""))
            json.append(contentsOf: text.utf8)
            json.append(UInt8(ascii: "\""))
        }
    }

    /// Appends the decimal digits of `number` (a small string: no allocation).
    static func appendInteger(_ number: Int64, to json: inout [UInt8]) {
        json.append(contentsOf: String(number).utf8)
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
