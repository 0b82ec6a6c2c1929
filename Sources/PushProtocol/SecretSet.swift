/// Secrets checked in constant time: the API keys, the relay token.
public struct SecretSet: Sendable {
    private let keys: [[UInt8]]

    /// Creates the set.
    public init(_ keys: [String]) {
        self.keys = keys.map { Array($0.utf8) }
    }

    /// Whether there is any secret (authentication is on).
    public var isEnabled: Bool { !keys.isEmpty }

    /// Whether `candidate` equals one of the keys. Takes the same time whichever key matches,
    /// where the strings first differ, and whether any matches: every key is compared over
    /// the candidate's whole length, with no early exit.
    public func accepts(_ candidate: Substring) -> Bool {
        let candidate = Array(candidate.utf8)
        var matched: UInt8 = 0
        for key in keys {
            var difference: UInt8 = key.count == candidate.count ? 0 : 1
            for index in candidate.indices {
                let keyByte = index < key.count ? key[index] : 0
                difference |= keyByte ^ candidate[index]
            }
            matched |= difference == 0 ? 1 : 0
        }
        return matched == 1
    }

    /// Whether an `Authorization` header value lets a request in: always when no key is set,
    /// otherwise only `Bearer <key>` with one of the keys (the scheme as the protocol spells it).
    public func admits(authorization header: String?) -> Bool {
        guard isEnabled else { return true }
        guard let header, header.hasPrefix("Bearer ") else { return false }
        return accepts(header.dropFirst("Bearer ".count))
    }
}
