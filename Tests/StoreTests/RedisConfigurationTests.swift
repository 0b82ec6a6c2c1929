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

    @Test("malformed URLs are refused", arguments: [
        "http://x", "redis://", "redis://h:0", "redis://h:70000", "redis://h/x", "redis+sentinel://s1,s2", "redis+sentinel://s1/",
        "redis+sentinel:///m", "redis+sentinel://s1:x/m", "redis://a,b", "redis+cluster://", "redis+cluster://a,,b",
        "redis+cluster://a:0", "redis+cluster://a/m/1",
    ])
    func malformed(url: String) {
        #expect(RedisConfiguration(url: url) == nil)
    }
}
