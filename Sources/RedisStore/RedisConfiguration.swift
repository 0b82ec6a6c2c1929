import NIOCore

/// Where Redis is and how to talk to it: `redis://[:password@]host:port[/db]`, a Redis on the
/// same host through its Unix socket: `unix://[:password@]/path/to/redis.sock[?db=N]`, through
/// Sentinel: `redis+sentinel://[:password@]host:port[,host:port...]/master-name[/db]`, or a
/// Redis Cluster: `redis+cluster://[:password@]host:port[,host:port...]` (seed nodes).
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
    /// With Redis Cluster: the seed nodes asked for the slot map (any one reachable suffices).
    public var clusterSeeds: [Endpoint] = []
    /// A single Redis on this host reached through its Unix socket (`unixsocket` in
    /// redis.conf) instead of TCP; `host` and `port` are then unused.
    public var socketPath: String?

    /// Whether this names a Redis Cluster.
    public var isCluster: Bool { !clusterSeeds.isEmpty }

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

    /// Parses `redis://[:password@]host[:port][/db]`,
    /// `redis+sentinel://[:password@]host[:port][,host[:port]...]/master-name[/db]` (sentinels on
    /// port 26379 unless given) or `redis+cluster://[:password@]host[:port][,host[:port]...][/db]`
    /// (a database other than 0 parses, and is refused by the node at start: a cluster has no
    /// `SELECT`), or `unix://[:password@]/path[?db=N]` (the form of redis-py and go-redis); nil
    /// when it is none of them.
    public init?(url: String) {
        if url.hasPrefix("unix://") {
            self.init(socketURL: url.dropFirst("unix://".count))
            return
        }
        for (scheme, kind) in [("redis+sentinel://", Kind.sentinel), ("redis+cluster://", .cluster), ("redis://", .single)]
        where url.hasPrefix(scheme) {
            self.init(kind: kind, rest: Substring(url.dropFirst(scheme.count)))
            return
        }
        return nil
    }

    private enum Kind { case single, sentinel, cluster }

    private init?(socketURL whole: Substring) {
        var rest = whole
        var password: String?
        if !rest.hasPrefix("/") {
            // `[user]:password@/path`: the credentials end at the first `@` before the path.
            guard let at = rest.firstIndex(of: "@") else { return nil }
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            password = credentials.firstIndex(of: ":").map { String(credentials[credentials.index(after: $0)...]) } ?? String(credentials)
            if password?.isEmpty == true { password = nil }
        }
        var database = 0
        if let question = rest.firstIndex(of: "?") {
            let query = rest[rest.index(after: question)...]
            rest = rest[..<question]
            guard query.hasPrefix("db="), let number = Int(query.dropFirst(3)), number >= 0 else { return nil }
            database = number
        }
        // A socket's path must fit `sun_path` (108 bytes with its NUL).
        guard rest.hasPrefix("/"), rest.count > 1, !rest.hasSuffix("/"), rest.utf8.count < 108 else { return nil }
        self.init(host: String(rest), port: 0, password: password, database: database)
        socketPath = String(rest)
    }

    private init?(kind: Kind, rest whole: Substring) {
        var rest = whole
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            // `:password` or `user:password` (the user is ignored: Herald uses the default user).
            password = credentials.firstIndex(of: ":").map { String(credentials[credentials.index(after: $0)...]) } ?? String(credentials)
            if password?.isEmpty == true { password = nil }
        }
        let parts = rest.split(separator: "/", omittingEmptySubsequences: false)
        // single and cluster: hosts[/db]; sentinel: hosts/master[/db].
        let databaseIndex = kind == .sentinel ? 2 : 1
        guard parts.count <= databaseIndex + 1 else { return nil }
        if kind == .sentinel {
            guard parts.count >= 2, !parts[1].isEmpty else { return nil }
        }
        var database = 0
        if parts.count > databaseIndex, !parts[databaseIndex].isEmpty {
            guard let number = Int(parts[databaseIndex]), number >= 0 else { return nil }
            database = number
        }
        let defaultPort = kind == .sentinel ? 26379 : 6379
        var endpoints: [Endpoint] = []
        for item in parts[0].split(separator: ",", omittingEmptySubsequences: false) {
            var host = item
            var port = defaultPort
            if let colon = item.lastIndex(of: ":") {
                guard let number = Int(item[item.index(after: colon)...]), (1...65535).contains(number) else { return nil }
                port = number
                host = item[..<colon]
            }
            if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
            guard !host.isEmpty else { return nil }
            endpoints.append(Endpoint(host: String(host), port: port))
        }
        guard !endpoints.isEmpty, kind != .single || endpoints.count == 1 else { return nil }
        self.init(host: endpoints[0].host, port: kind == .sentinel ? 6379 : endpoints[0].port, password: password, database: database)
        switch kind {
        case .single: break
        case .sentinel:
            sentinels = endpoints
            masterName = String(parts[1])
        case .cluster:
            clusterSeeds = endpoints
        }
    }
}
