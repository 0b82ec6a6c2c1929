import Synchronization

/// Makes message ids unique across the cluster without coordination.
///
/// An id is `<ms since epoch, hex>-<64 random bits of this process, hex>-<counter, hex>`:
/// the random part tells processes apart (nodes, and restarts of one node), the counter
/// tells apart the ids of one process, and the time keeps ids readable and roughly sortable.
/// At most 11 + 1 + 16 + 1 + 16 = 45 printable ASCII bytes, inside the 64 the protocol allows.
public final class MessageIDGenerator: Sendable {
    private let instance: String
    private let counter = Atomic<UInt64>(0)
    private let now: @Sendable () -> Int64

    /// Creates a generator with a fresh random process part.
    public init(now: @escaping @Sendable () -> Int64 = WallClock.millisecondsSinceEpoch) {
        var generator = SystemRandomNumberGenerator()
        // Always 16 digits: ids of one process keep one length whatever the draw.
        let digits = String(generator.next() as UInt64, radix: 16)
        self.instance = String(repeating: "0", count: 16 - digits.count) + digits
        self.now = now
    }

    /// The next id.
    public func next() -> String {
        let count = counter.add(1, ordering: .relaxed).newValue
        return "\(String(now(), radix: 16))-\(instance)-\(String(count, radix: 16))"
    }
}
