/// The identifier rules of protocol.md §1.
public enum Identifiers {
    /// The longest client id, in bytes.
    public static let maxClientIDLength = 128
    /// The longest message id, in bytes.
    public static let maxMessageIDLength = 64

    /// Whether `id` is a valid `client_id`: 1 to 128 bytes of `[A-Za-z0-9._:@-]`.
    public static func isValidClientID(_ id: String) -> Bool {
        let utf8 = id.utf8
        guard !utf8.isEmpty, utf8.count <= maxClientIDLength else { return false }
        return utf8.allSatisfy(isClientIDByte)
    }

    /// Whether `byte` may appear in a client id.
    @inlinable
    public static func isClientIDByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: ":"),
            UInt8(ascii: "@"), UInt8(ascii: "-"):
            true
        default:
            false
        }
    }

    /// Whether `id` is a valid `msg_id`: 1 to 64 bytes of printable ASCII.
    public static func isValidMessageID(_ id: String) -> Bool {
        let utf8 = id.utf8
        guard !utf8.isEmpty, utf8.count <= maxMessageIDLength else { return false }
        return utf8.allSatisfy { $0 >= 0x20 && $0 <= 0x7E }
    }
}
