import NIOCore
import PushProtocol
import Testing

@Suite("Backoff and durations")
struct TimingTests {
    @Test("backoff grows exponentially to its ceiling, with the whole span below it jittered (full jitter)")
    func backoff() {
        let initial = Duration.milliseconds(500)
        let max = Duration.seconds(30)
        #expect(Backoff.fullJitter(attempt: 0, initial: initial, max: max, random: 1) == .milliseconds(500))
        #expect(Backoff.fullJitter(attempt: 3, initial: initial, max: max, random: 1) == .seconds(4))
        #expect(Backoff.fullJitter(attempt: 40, initial: initial, max: max, random: 1) == .seconds(30))
        #expect(Backoff.fullJitter(attempt: 3, initial: initial, max: max, random: 0.5) == .seconds(2))
        // Full jitter reaches down to no wait at all (an "equal jitter" would stop at half).
        #expect(Backoff.fullJitter(attempt: 3, initial: initial, max: max, random: 0) == .zero)
        #expect(Backoff.fullJitter(attempt: -1, initial: initial, max: max, random: 1) == .milliseconds(500))
        #expect(Backoff.fullJitter(attempt: .max, initial: initial, max: max, random: 1) == .seconds(30))
    }

    @Test("durations convert to whole milliseconds and nanoseconds (toward zero) and to NIO's TimeAmount")
    func conversions() {
        #expect(Duration.milliseconds(1_500).wholeMilliseconds == 1_500)
        #expect(Duration.microseconds(2_999).wholeMilliseconds == 2)
        #expect(Duration.seconds(3).wholeNanoseconds == 3_000_000_000)
        #expect(Duration.nanoseconds(7).wholeNanoseconds == 7)
        #expect(Duration.milliseconds(250).timeAmount == .milliseconds(250))
    }
}
