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

    @Test("malformed URLs are refused", arguments: [
        "http://x", "redis://", "redis://h:0", "redis://h:70000", "redis://h/x", "redis+sentinel://s1,s2", "redis+sentinel://s1/",
        "redis+sentinel:///m", "redis+sentinel://s1:x/m",
    ])
    func malformed(url: String) {
        #expect(RedisConfiguration(url: url) == nil)
    }
}
