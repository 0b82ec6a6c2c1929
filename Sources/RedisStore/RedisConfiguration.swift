import NIOCore

/// Where Redis is and how to talk to it: `redis://[:password@]host:port[/db]`.
public struct RedisConfiguration: Sendable, Hashable {
    /// Redis host.
    public var host: String
    /// Redis port.
    public var port: Int
    /// The password for `AUTH`, if any.
    public var password: String?
    /// The database for `SELECT`.
    public var database: Int
    /// How long one command may take before the connection is considered stuck.
    public var commandTimeout: TimeAmount
    /// How long connecting may take.
    public var connectTimeout: TimeAmount

    /// Creates a configuration.
    public init(
        host: String = "127.0.0.1", port: Int = 6379, password: String? = nil, database: Int = 0,
        commandTimeout: TimeAmount = .seconds(2), connectTimeout: TimeAmount = .seconds(2)
    ) {
        self.host = host
        self.port = port
        self.password = password
        self.database = database
        self.commandTimeout = commandTimeout
        self.connectTimeout = connectTimeout
    }

    /// Parses `redis://[:password@]host[:port][/db]`; nil when it is not such a URL.
    public init?(url: String) {
        guard url.hasPrefix("redis://") else { return nil }
        var rest = Substring(url.dropFirst("redis://".count))
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            // `:password` or `user:password` (the user is ignored: Herald uses the default user).
            if let colon = credentials.firstIndex(of: ":") {
                password = String(credentials[credentials.index(after: colon)...])
            } else {
                password = String(credentials)
            }
            if password?.isEmpty == true { password = nil }
        }
        var database = 0
        if let slash = rest.firstIndex(of: "/") {
            let db = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
            if !db.isEmpty {
                guard let number = Int(db), number >= 0 else { return nil }
                database = number
            }
        }
        var host = String(rest)
        var port = 6379
        if let colon = rest.lastIndex(of: ":") {
            guard let number = Int(rest[rest.index(after: colon)...]), (1...65535).contains(number) else { return nil }
            port = number
            host = String(rest[..<colon])
        }
        guard !host.isEmpty else { return nil }
        self.init(host: host, port: port, password: password, database: database)
    }
}
