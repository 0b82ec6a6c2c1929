import NIOCore

extension Duration {
    /// Whole milliseconds (toward zero), as Redis's `PX`, lease scores and JSON times take them.
    public var wholeMilliseconds: Int64 {
        components.seconds * 1_000 + components.attoseconds / 1_000_000_000_000_000
    }

    /// Whole nanoseconds (toward zero).
    public var wholeNanoseconds: Int64 {
        components.seconds * 1_000_000_000 + components.attoseconds / 1_000_000_000
    }

    /// The same span as NIO's `TimeAmount`, for timers on an event loop.
    public var timeAmount: TimeAmount { .nanoseconds(wholeNanoseconds) }
}

/// Reconnect and retry delays: exponential backoff with full jitter (a uniform delay between 0
/// and the ceiling `initial x 2^attempt`, at most `max`), so that the clients of a node that
/// went away do not all come back at once. The one backoff of the project: the client
/// library, the relays, the Redis connections and the webhook sender all wait by it.
public enum Backoff {
    /// The delay before retry `attempt` (0-based), given `random` uniform in 0...1.
    public static func fullJitter(attempt: Int, initial: Duration, max: Duration, random: Double = .random(in: 0...1)) -> Duration {
        let ceiling = min(initial * (1 << min(Swift.max(attempt, 0), 30)), max)
        return ceiling * random
    }
}
