import Actors
import FoundationEssentials
import JWTKit

/// Device authentication by JWT (protocol.md §1, rule 2): HS256 under the configured secret,
/// `sub` equal to the client id, `exp` (if present) strictly in the future. Any other
/// algorithm, `none` included, is refused before the signature is even looked at.
struct JWTDeviceAuthenticator: DeviceAuthenticator {
    private struct Claims: JWTPayload {
        var sub: SubjectClaim
        var exp: ExpirationClaim?
        func verify(using algorithm: some JWTAlgorithm) async throws {}
    }

    private struct Header: Decodable {
        var alg: String
    }

    private let keys: JWTKeyCollection
    private let now: @Sendable () -> Date

    init(secret: String, now: @escaping @Sendable () -> Date = { Date() }) async {
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        self.keys = keys
        self.now = now
    }

    func authenticate(clientID: String, token: String) async -> Bool {
        guard Self.algorithm(of: token) == "HS256" else { return false }
        do {
            let claims = try await keys.verify(token, as: Claims.self)
            guard claims.sub.value == clientID else { return false }
            if let exp = claims.exp, exp.value <= now() { return false }
            return true
        } catch {
            return false
        }
    }

    /// The `alg` of a compact JWS's header, or nil when the token is not one.
    static func algorithm(of token: String) -> String? {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let data = Data(base64URLEncoded: String(parts[0])) else { return nil }
        return try? JSONDecoder().decode(Header.self, from: data).alg
    }
}

extension Data {
    /// Decodes unpadded base64url (RFC 7515 §2).
    init?(base64URLEncoded text: String) {
        guard !text.contains("=") else { return nil }
        var base64 = String(text.map { $0 == "-" ? "+" : $0 == "_" ? "/" : $0 })
        base64 += String(repeating: "=", count: (4 - base64.count % 4) % 4)
        self.init(base64Encoded: base64)
    }
}
