import Actors
import Crypto
import FoundationEssentials
import JWTKit

/// Device authentication by JWT (protocol.md §1, rule 2): HS256 under the configured secret,
/// `sub` equal to the client id, `exp` (if present) strictly in the future. Any other
/// algorithm, `none` included, is refused before the signature is even looked at.
///
/// Synchronous and shared by nothing but its immutable key: it runs on the event loop of the
/// connection whose HELLO it checks, so a reconnect storm spreads its checks over every loop.
/// (jwt-kit's `JWTKeyCollection` is an actor: every check in the process would queue on its
/// one executor, off the loops.) jwt-kit parses the token; the MAC is swift-crypto's HMAC,
/// compared in constant time.
struct JWTDeviceAuthenticator: DeviceAuthenticator {
    private struct Claims: JWTPayload {
        var sub: SubjectClaim
        var exp: ExpirationClaim?
        func verify(using algorithm: some JWTAlgorithm) async throws {}
    }

    private let key: SymmetricKey
    private let parser = DefaultJWTParser()
    private let now: @Sendable () -> Date

    init(secret: String, now: @escaping @Sendable () -> Date = { Date() }) {
        self.key = SymmetricKey(data: Array(secret.utf8))
        self.now = now
    }

    func authenticate(clientID: String, token: String) -> Bool {
        let bytes = Array(token.utf8)
        guard let (header, claims, signature) = try? parser.parse(bytes, as: Claims.self), header.alg == "HS256",
            let signedEnd = bytes.lastIndex(of: UInt8(ascii: "."))
        else { return false }
        guard HMAC<SHA256>.isValidAuthenticationCode(signature, authenticating: bytes[..<signedEnd], using: key) else {
            return false
        }
        guard claims.sub.value == clientID else { return false }
        if let exp = claims.exp, exp.value <= now() { return false }
        return true
    }
}
