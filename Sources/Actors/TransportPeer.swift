import NIOCore

/// What the transport beneath a device session learned about the device before its first
/// frame: which listener it came in by, its real address, and, with mutual TLS, the names its
/// verified certificate carries. The session rules are the same whatever the transport; only
/// these facts differ.
public struct TransportPeer: Sendable {
    /// The listener's transport: `tcp`, `tls`, `ws` or `wss`.
    public var transport: String
    /// The device's address as a trusted proxy reported it (PROXY protocol, `X-Forwarded-For`);
    /// nil: the socket's own peer address is the device's.
    public var forwardedAddress: SocketAddress?
    /// With mutual TLS: the subject common name and DNS names of the device's verified
    /// certificate, one of which the HELLO's client id must equal; nil without mutual TLS.
    public var certificateNames: [String]?

    /// Creates the facts of one transport.
    public init(transport: String, forwardedAddress: SocketAddress? = nil, certificateNames: [String]? = nil) {
        self.transport = transport
        self.forwardedAddress = forwardedAddress
        self.certificateNames = certificateNames
    }

    /// A plain TCP socket with nothing in front of it.
    public static let tcp = TransportPeer(transport: "tcp")
}
