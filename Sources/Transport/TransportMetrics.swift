import CoreMetrics
import Logging
import NIOCore
import NIOSSL
import Synchronization

/// What the transports count, and their log lines, rate-limited: a storm of failing
/// handshakes (a scanner, a fleet with an expired CA) costs one log line per reason a
/// minute, with the number of those left out.
public final class TransportMetrics: Sendable {
    private let factory: any MetricsFactory
    private let logger: Logger
    private let failures = Mutex<[String: Counter]>([:])
    private let handshakes: Counter
    private let proxyRefusals: Counter
    private let acceptPauses: Counter
    private let webSocketCloses = Mutex<[UInt16: Counter]>([:])
    private let throttle = Mutex<[String: Throttled]>([:])

    private struct Throttled {
        var windowStart: NIODeadline
        var left: Int
    }

    /// Creates the metrics with `factory`; `logger` gets the throttled lines.
    public init(factory: any MetricsFactory, logger: Logger) {
        self.factory = factory
        self.logger = logger
        handshakes = Counter(label: "herald_tls_handshakes_total", factory: factory)
        proxyRefusals = Counter(label: "herald_proxy_protocol_refused_total", factory: factory)
        acceptPauses = Counter(label: "herald_tls_accept_paused_total", factory: factory)
        for reason in HandshakeFailure.allCases { _ = failureCounter(reason.rawValue) }
    }

    /// A TLS handshake completed (full or resumed: NIOSSL does not say which).
    public func handshakeCompleted() {
        handshakes.increment()
    }

    /// A TLS listener stopped accepting: `HERALD_TLS_MAX_HANDSHAKES` handshakes were in progress.
    public func acceptPaused() {
        acceptPauses.increment()
    }

    /// A TLS handshake failed: counted in `herald_tls_handshake_failures_total{reason}` and
    /// logged (throttled) with the peer and what BoringSSL said.
    public func handshakeFailed(_ reason: HandshakeFailure, peer: SocketAddress?, detail: String) {
        failureCounter(reason.rawValue).increment()
        // A socket closed mid-handshake is everyday (a phone losing signal, a load
        // balancer's TCP health check): counted, not logged.
        guard reason != .closed else { return }
        log("TLS handshake failed", key: "tls." + reason.rawValue, metadata: [
            "reason": "\(reason.rawValue)", "peer": "\(peer?.description ?? "?")", "detail": "\(detail)",
        ])
    }

    /// A WebSocket connection was closed by the server with `code` (RFC 6455 §7.4).
    public func webSocketClosed(code: UInt16, peer: SocketAddress?, reason: String) {
        let counter = webSocketCloses.withLock { counters in
            if let counter = counters[code] { return counter }
            let counter = Counter(label: "herald_websocket_closes_total", dimensions: [("code", "\(code)")], factory: factory)
            counters[code] = counter
            return counter
        }
        counter.increment()
        log("WebSocket closed by the server", key: "ws.\(code)", metadata: [
            "code": "\(code)", "peer": "\(peer?.description ?? "?")", "reason": "\(reason)",
        ])
    }

    /// A connection was closed for its PROXY header: missing or malformed from a trusted
    /// proxy, or present from anyone else.
    public func proxyHeaderRefused(peer: SocketAddress?, reason: String) {
        proxyRefusals.increment()
        log("PROXY protocol header refused", key: "proxy", metadata: ["peer": "\(peer?.description ?? "?")", "reason": "\(reason)"])
    }

    /// An upgrade request was refused with an HTTP status.
    public func upgradeRefused(status: Int, peer: SocketAddress?, reason: String) {
        log("WebSocket upgrade refused", key: "upgrade.\(status)", metadata: [
            "status": "\(status)", "peer": "\(peer?.description ?? "?")", "reason": "\(reason)",
        ])
    }

    private func failureCounter(_ reason: String) -> Counter {
        failures.withLock { counters in
            if let counter = counters[reason] { return counter }
            let counter = Counter(label: "herald_tls_handshake_failures_total", dimensions: [("reason", reason)], factory: factory)
            counters[reason] = counter
            return counter
        }
    }

    /// At most one line per key a minute; the next line says how many were left out.
    private func log(_ message: Logger.Message, key: String, metadata: Logger.Metadata) {
        let now = NIODeadline.now()
        let suppressed: Int? = throttle.withLock { entries in
            var entry = entries[key] ?? Throttled(windowStart: now - .minutes(2), left: 0)
            if now - entry.windowStart >= .minutes(1) {
                let left = entry.left
                entry = Throttled(windowStart: now, left: 0)
                entries[key] = entry
                return left
            }
            entry.left += 1
            entries[key] = entry
            return nil
        }
        guard let suppressed else { return }
        var metadata = metadata
        if suppressed > 0 { metadata["similar_lines_left_out"] = "\(suppressed)" }
        logger.warning(message, metadata: metadata)
    }
}

/// Why a TLS handshake failed, as `herald_tls_handshake_failures_total` labels it.
public enum HandshakeFailure: String, Sendable, CaseIterable {
    /// Not finished within the hello timeout.
    case timeout
    /// The client offered only versions below TLS 1.2.
    case protocolVersion = "protocol_version"
    /// The bytes were not TLS at all (plain device protocol, HTTP, garbage).
    case notTLS = "not_tls"
    /// Mutual TLS: the device sent no certificate.
    case noClientCertificate = "no_client_certificate"
    /// Mutual TLS: the device's certificate does not chain to the configured CA (or expired).
    case badClientCertificate = "bad_client_certificate"
    /// No cipher suite or signature algorithm in common.
    case noSharedCipher = "no_shared_cipher"
    /// The client refused our certificate (an alert from it: unknown CA, bad certificate...).
    case clientAlert = "client_alert"
    /// The connection closed before the handshake finished.
    case closed
    /// Anything else.
    case other

    /// Classifies what NIOSSL reported.
    public init(_ error: any Error) {
        let text = String(describing: error).uppercased()
        func has(_ words: String...) -> Bool { words.contains { text.contains($0) } }
        if let error = error as? NIOSSLError, case .uncleanShutdown = error {
            self = .closed
        } else if error is ChannelError || error is IOError {
            self = .closed
        } else if has("UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION") {
            self = .protocolVersion
        } else if has("PEER_DID_NOT_RETURN_A_CERTIFICATE") {
            self = .noClientCertificate
        } else if has("CERTIFICATE_VERIFY_FAILED", "NOTVALIDATEDREASON", "CERTIFICATE_VERIFICATION") {
            self = .badClientCertificate
        } else if has("NO_SHARED_CIPHER", "NO_COMMON_SIGNATURE_ALGORITHMS", "NO_CIPHERS_AVAILABLE") {
            self = .noSharedCipher
        } else if has("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG", "RECORD_TOO_LARGE", "DECODE_ERROR", "UNEXPECTED_RECORD", "EXCESSIVE_MESSAGE_SIZE", "WRONG_SSL_VERSION") {
            self = .notTLS
        } else if has("ALERT") {
            self = .clientAlert
        } else {
            self = .other
        }
    }
}
