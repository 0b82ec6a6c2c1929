import NIOCore

/// Where Redis is and how to talk to it: `redis://[:password@]host:port[/db]`, or through
/// Sentinel: `redis+sentinel://[:password@]host:port[,host:port...]/master-name[/db]`.
public struct RedisConfiguration: Sendable, Hashable {
    /// A Sentinel to ask where the master is.
    public struct Endpoint: Sendable, Hashable, CustomStringConvertible {
        public var host: String
        public var port: Int
        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }
        public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

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
    /// With Sentinel: the sentinels, asked in turn on every (re)connect; `host`/`port` are
    /// then only the last master found.
    public var sentinels: [Endpoint] = []
    /// With Sentinel: the monitored master's name.
    public var masterName: String?

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

    /// Parses `redis://[:password@]host[:port][/db]` or
    /// `redis+sentinel://[:password@]host[:port][,host[:port]...]/master-name[/db]` (sentinels on
    /// port 26379 unless given); nil when it is neither.
    public init?(url: String) {
        if url.hasPrefix("redis+sentinel://") {
            self.init(sentinelURL: Substring(url.dropFirst("redis+sentinel://".count)))
            return
        }
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

    private init?(sentinelURL: Substring) {
        var rest = sentinelURL
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            password = credentials.firstIndex(of: ":").map { String(credentials[credentials.index(after: $0)...]) } ?? String(credentials)
            if password?.isEmpty == true { password = nil }
        }
        let parts = rest.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2 || parts.count == 3, !parts[1].isEmpty else { return nil }
        var database = 0
        if parts.count == 3, !parts[2].isEmpty {
            guard let number = Int(parts[2]), number >= 0 else { return nil }
            database = number
        }
        var sentinels: [Endpoint] = []
        for item in parts[0].split(separator: ",") {
            var host = item
            var port = 26379
            if let colon = item.lastIndex(of: ":") {
                guard let number = Int(item[item.index(after: colon)...]), (1...65535).contains(number) else { return nil }
                port = number
                host = item[..<colon]
            }
            guard !host.isEmpty else { return nil }
            sentinels.append(Endpoint(host: String(host), port: port))
        }
        guard !sentinels.isEmpty else { return nil }
        self.init(host: sentinels[0].host, port: 6379, password: password, database: database)
        self.sentinels = sentinels
        self.masterName = String(parts[1])
    }
}
