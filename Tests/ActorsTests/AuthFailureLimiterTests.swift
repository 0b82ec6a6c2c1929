import Actors
import Testing

@Suite("Failed authentications per address (ERROR 429 past the budget)", .timeLimit(.minutes(1)))
struct AuthFailureLimiterTests {
    let second: Int64 = 1_000_000_000

    @Test("an address may fail its burst at once, is then refused, and gets one try back per 60 s / burst")
    func budget() {
        let limiter = AuthFailureLimiter(burst: 3)
        for _ in 0..<3 {
            #expect(limiter.allows("10.0.0.1", nowNanoseconds: 0))
            limiter.failed("10.0.0.1", nowNanoseconds: 0)
        }
        #expect(!limiter.allows("10.0.0.1", nowNanoseconds: 0))
        #expect(limiter.allows("10.0.0.2", nowNanoseconds: 0), "another address is not touched")
        #expect(!limiter.allows("10.0.0.1", nowNanoseconds: 19 * second))
        #expect(limiter.allows("10.0.0.1", nowNanoseconds: 20 * second), "3 a minute: one back after 20 s")
        limiter.failed("10.0.0.1", nowNanoseconds: 20 * second)
        #expect(!limiter.allows("10.0.0.1", nowNanoseconds: 21 * second))
        #expect(limiter.allows("10.0.0.1", nowNanoseconds: 90 * second))
        #expect(limiter.trackedCount == 0, "a bucket that refilled is forgotten")
    }

    @Test("burst 0 is off")
    func off() {
        let limiter = AuthFailureLimiter(burst: 0)
        for _ in 0..<100 { limiter.failed("10.0.0.1", nowNanoseconds: 0) }
        #expect(limiter.allows("10.0.0.1", nowNanoseconds: 0))
        #expect(limiter.trackedCount == 0)
    }

    @Test("memory is bounded: past its capacity it forgets the addresses that failed least")
    func bounded() {
        let limiter = AuthFailureLimiter(burst: 10, capacity: 100)
        for _ in 0..<10 { limiter.failed("attacker", nowNanoseconds: 0) }
        for index in 0..<1000 { limiter.failed("10.1.\(index / 256).\(index % 256)", nowNanoseconds: 0) }
        #expect(limiter.trackedCount <= 100)
        #expect(!limiter.allows("attacker", nowNanoseconds: 0), "the address that failed most is still held")
    }
}
