/// Decides whether a HELLO's token lets a device use its client id (protocol.md §1, rule 2).
public protocol DeviceAuthenticator: Sendable {
    /// Whether `token` authenticates `clientID`. Runs on the event loop of the connection that
    /// asked, inline: it must not block, and should share no lock or actor across loops.
    func authenticate(clientID: String, token: String) -> Bool
}

/// Device authentication turned off: every token is accepted (logged at start-up).
public struct OpenDeviceAuthenticator: DeviceAuthenticator {
    /// Creates the authenticator.
    public init() {}
    public func authenticate(clientID: String, token: String) -> Bool { true }
}
