import Synchronization

/// Failed device authentications per remote address, as token buckets: an address may fail
/// `burst` times at once and then `burst` times a minute; beyond that every HELLO from it is
/// refused with ERROR 429 (before its token is even checked) until its bucket refills.
///
/// It bounds what a flood of bad tokens costs (JWT checks, log lines, connections) without
/// touching devices elsewhere. Devices behind one NAT share a bucket, and it is only spent by
/// failures, so set `burst` above what a NAT's worth of devices with expired tokens would fail
/// in a minute (Docs/operations.md). At most `capacity` addresses are tracked; past it, the
/// fullest buckets (those that failed least) are forgotten first.
public final class AuthFailureLimiter: Sendable {
    private struct Bucket {
        var tokens: Double
        var updatedNanoseconds: Int64
    }

    private let burst: Double
    private let capacity: Int
    private let buckets = Mutex<[String: Bucket]>([:])
    /// How many addresses `buckets` holds, readable without its lock: while no address has a
    /// failure on record (a storm of good tokens), a HELLO takes no process-wide lock at all.
    private let tracked = Atomic<Int>(0)

    /// Creates a limiter; `burst` 0 turns it off.
    public init(burst: Int, capacity: Int = 100_000) {
        self.burst = Double(burst)
        self.capacity = capacity
    }

    /// Whether the limiter is on.
    public var isEnabled: Bool { burst > 0 }

    /// Whether any address has failures on record (when not, every address may try). No lock.
    public var hasFailures: Bool { isEnabled && tracked.load(ordering: .relaxed) > 0 }

    /// Whether `address` may try to authenticate now (it has failures left).
    public func allows(_ address: String, nowNanoseconds: Int64) -> Bool {
        guard isEnabled, tracked.load(ordering: .relaxed) > 0 else { return true }
        return buckets.withLock { buckets in
            guard var bucket = buckets[address] else { return true }
            refill(&bucket, now: nowNanoseconds)
            if bucket.tokens >= burst {
                buckets[address] = nil  // full again: nothing to remember
                tracked.store(buckets.count, ordering: .relaxed)
                return true
            }
            buckets[address] = bucket
            return bucket.tokens >= 1
        }
    }

    /// Records a failed authentication from `address`.
    public func failed(_ address: String, nowNanoseconds: Int64) {
        guard isEnabled else { return }
        buckets.withLock { buckets in
            var bucket = buckets[address] ?? Bucket(tokens: burst, updatedNanoseconds: nowNanoseconds)
            refill(&bucket, now: nowNanoseconds)
            bucket.tokens = max(0, bucket.tokens - 1)
            buckets[address] = bucket
            if buckets.count > capacity { forgetFullest(&buckets, now: nowNanoseconds) }
            tracked.store(buckets.count, ordering: .relaxed)
        }
    }

    /// Addresses currently tracked.
    public var trackedCount: Int { buckets.withLock { $0.count } }

    private func refill(_ bucket: inout Bucket, now: Int64) {
        let elapsed = Double(max(0, now - bucket.updatedNanoseconds)) / 1e9
        bucket.tokens = min(burst, bucket.tokens + elapsed * burst / 60)
        bucket.updatedNanoseconds = now
    }

    private func forgetFullest(_ buckets: inout [String: Bucket], now: Int64) {
        var levels = buckets.map { address, bucket -> (String, Double) in
            var bucket = bucket
            refill(&bucket, now: now)
            return (address, bucket.tokens)
        }
        levels.sort { $0.1 > $1.1 }
        for (address, _) in levels.prefix(max(1, buckets.count - capacity * 9 / 10)) { buckets[address] = nil }
    }
}
