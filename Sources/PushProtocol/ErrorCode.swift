/// The error codes of protocol.md §1, rule 9. After sending any of them the server closes.
public enum ErrorCode: UInt16, Sendable, CaseIterable, CustomStringConvertible {
    /// A malformed frame or a protocol violation.
    case badRequest = 400
    /// Authentication failed.
    case unauthorized = 401
    /// No complete HELLO within the hello timeout.
    case helloTimeout = 408
    /// Replaced by a newer connection for the same client id.
    case replaced = 409
    /// A frame longer than `max_frame`.
    case frameTooLarge = 413
    /// Too many connections, or frames too fast.
    case tooManyRequests = 429
    /// The server is not ready, or draining.
    case unavailable = 503

    public var description: String { "\(rawValue)" }
}

/// A frame the decoder cannot accept, with the wire code to answer it with.
public struct FrameError: Error, Hashable, CustomStringConvertible {
    /// The code for the ERROR frame.
    public let code: ErrorCode
    /// A short reason for the ERROR frame and the log.
    public let reason: String

    /// Creates a frame error.
    public init(_ code: ErrorCode, _ reason: String) {
        self.code = code
        self.reason = reason
    }

    public var description: String { "\(code.rawValue) \(reason)" }
}
