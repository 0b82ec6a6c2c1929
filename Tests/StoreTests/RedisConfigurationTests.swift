import RedisStore
import Testing

@Suite("HERALD_REDIS_URL forms")
struct RedisConfigurationTests {
    @Test("redis:// with password, port and database")
    func plain() throws {
        let configuration = try #require(RedisConfiguration(url: "redis://:s3cret@10.0.0.5:6380/2"))
        #expect(configuration.host == "10.0.0.5" && configuration.port == 6380)
        #expect(configuration.password == "s3cret" && configuration.database == 2)
        #expect(configuration.masterName == nil && configuration.sentinels.isEmpty)
    }

    @Test("redis+sentinel:// lists the sentinels (26379 by default) and names the master")
    func sentinel() throws {
        let configuration = try #require(RedisConfiguration(url: "redis+sentinel://:pw@s1:26380,s2,10.0.0.3:26381/mymaster/1"))
        #expect(configuration.sentinels.map(\.description) == ["s1:26380", "s2:26379", "10.0.0.3:26381"])
        #expect(configuration.masterName == "mymaster")
        #expect(configuration.password == "pw" && configuration.database == 1)
    }

    @Test("redis+cluster:// lists the seed nodes (6379 by default)")
    func cluster() throws {
        let configuration = try #require(RedisConfiguration(url: "redis+cluster://:pw@10.0.0.1:7000,n2,[::1]:7002"))
        #expect(configuration.clusterSeeds.map(\.description) == ["10.0.0.1:7000", "n2:6379", "[::1]:7002"])
        #expect(configuration.isCluster && configuration.password == "pw" && configuration.database == 0)
        #expect(try #require(RedisConfiguration(url: "redis+cluster://n1/3")).database == 3, "parsed; the node refuses it at start")
        #expect(!(try #require(RedisConfiguration(url: "redis://h"))).isCluster)
    }

    @Test("unix:// names a socket, with an optional password and database")
    func unixSocket() throws {
        let plain = try #require(RedisConfiguration(url: "unix:///run/redis/redis-server.sock"))
        #expect(plain.socketPath == "/run/redis/redis-server.sock" && plain.password == nil && plain.database == 0)
        #expect(!plain.isCluster && plain.masterName == nil)
        let full = try #require(RedisConfiguration(url: "unix://:pw@/tmp/r.sock?db=2"))
        #expect(full.socketPath == "/tmp/r.sock" && full.password == "pw" && full.database == 2)
        #expect(try #require(RedisConfiguration(url: "unix://default:pw@/tmp/r.sock")).password == "pw", "the user is ignored")
        #expect(try #require(RedisConfiguration(url: "redis://h")).socketPath == nil)
    }

    @Test("malformed URLs are refused", arguments: [
        "unix://", "unix:///", "unix://relative.sock", "unix://pw/tmp/r.sock", "unix:///tmp/r.sock?db=-1", "unix:///tmp/r.sock?db=x",
        "unix:///tmp/r.sock?password=x", "unix:///tmp/dir/", "unix:///" + String(repeating: "x", count: 110),
        "http://x", "redis://", "redis://h:0", "redis://h:70000", "redis://h/x", "redis+sentinel://s1,s2", "redis+sentinel://s1/",
        "redis+sentinel:///m", "redis+sentinel://s1:x/m", "redis://a,b", "redis+cluster://", "redis+cluster://a,,b",
        "redis+cluster://a:0", "redis+cluster://a/m/1",
    ])
    func malformed(url: String) {
        #expect(RedisConfiguration(url: url) == nil)
    }
}
