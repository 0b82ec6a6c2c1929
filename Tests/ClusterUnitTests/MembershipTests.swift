import Actors
import HeraldTestSupport
import Logging
import Synchronization
import Testing

@testable import Cluster

/// The membership service's rules on a manual clock and the in-memory store: renewals every
/// refresh interval, leases that run out, leaving on shutdown, retries after a failure. No
/// real lease is waited for.
@Suite("Membership on a manual clock", .timeLimit(.minutes(1)))
struct MembershipTests {
    /// What one node's membership service reported, renewal by renewal.
    final class Reports: Sendable {
        private let lists = Mutex<[[String]?]>([])
        func record(_ members: [Member]?) { lists.withLock { $0.append(members.map { $0.map(\.nodeID) }) } }
        var all: [[String]?] { lists.withLock { $0 } }
        var last: [String]?? { lists.withLock { $0.last } }
    }

    /// A store that fails while `failing` is set, as Redis does while it is down.
    final class FlakyStore: MembershipStore {
        let inner: any MembershipStore
        let failing = Atomic<Bool>(false)
        init(_ inner: any MembershipStore) { self.inner = inner }
        func renew(_ member: Member?, lease: Duration) async throws(StoreError) -> [Member] {
            if failing.load(ordering: .relaxed) { throw StoreError(.unavailable, "down") }
            return try await inner.renew(member, lease: lease)
        }
        func leave(nodeID: String, incarnation: UInt64) async throws(StoreError) -> Bool {
            try await inner.leave(nodeID: nodeID, incarnation: incarnation)
        }
    }

    private static func configuration(_ nodeID: String) -> ClusterConfiguration {
        var configuration = ClusterConfiguration(nodeID: nodeID, incarnation: UInt64(nodeID.unicodeScalars.first!.value), token: "", relayMaxFrame: 1 << 16)
        configuration.lease = .seconds(10)
        configuration.refreshInterval = .seconds(2)
        return configuration
    }

    /// The warnings a service logged.
    final class Warnings: Sendable {
        let seen = Mutex<[String]>([])

        struct Handler: LogHandler {
            let warnings: Warnings
            var metadata: Logger.Metadata = [:]
            var logLevel: Logger.Level = .warning
            subscript(metadataKey key: String) -> Logger.Metadata.Value? {
                get { metadata[key] }
                set { metadata[key] = newValue }
            }
            func log(event: LogEvent) {
                if event.level >= .warning { warnings.seen.withLock { $0.append("\(event.message)") } }
            }
        }
    }

    private static func service(
        _ nodeID: String, store: any MembershipStore, clock: ManualClock, reports: Reports, relayAddress: String? = "127.0.0.1:7000",
        warnings: Warnings? = nil
    ) -> Membership<ManualClock> {
        var logger = warnings.map { handler in Logger(label: "membership-test") { _ in Warnings.Handler(warnings: handler) } } ?? Logger(label: "membership-test")
        if warnings == nil { logger.logLevel = .critical }
        return Membership(
            configuration: configuration(nodeID), store: store, clock: clock, relayAddress: { relayAddress }, connections: { 3 },
            logger: logger, onRefresh: { members, _ in reports.record(members) }
        )
    }

    @Test("two nodes see each other within one refresh interval, and a node that left is gone from the next list")
    func joinAndLeave() async throws {
        let clock = ManualClock()
        let store = InMemoryMembershipStore(clock: clock)
        let (a, b) = (Reports(), Reports())
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await Self.service("a", store: store, clock: clock, reports: a).run() }
            let nodeB = Task { try await Self.service("b", store: store, clock: clock, reports: b).run() }
            try await clock.waitForSleepers(atLeast: 2)
            clock.advance(by: .seconds(2))
            try await clock.waitForSleepers(atLeast: 2)
            #expect(a.last == ["a", "b"])
            #expect(b.last == ["a", "b"])
            nodeB.cancel()
            try await nodeB.value
            clock.advance(by: .seconds(2))
            try await clock.waitForSleepers(atLeast: 1)
            #expect(a.last == ["a"], "b left on shutdown: no wait for its lease")
            group.cancelAll()
        }
    }

    @Test("a node that stops renewing (killed) is listed until its lease runs out, and not after")
    func leaseRunsOut() async throws {
        let clock = ManualClock()
        let store = InMemoryMembershipStore(clock: clock)
        // c renews once, at 0 s, and dies: its lease runs to 10 s.
        _ = try await store.renew(Member(nodeID: "c", incarnation: 9, relayAddress: "127.0.0.1:7009", connections: 0), lease: .seconds(10))
        let a = Reports()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await Self.service("a", store: store, clock: clock, reports: a).run() }
            try await clock.waitForSleepers(atLeast: 1)
            for _ in 0..<4 {
                clock.advance(by: .seconds(2))
                try await clock.waitForSleepers(atLeast: 1)
            }
            #expect(a.all.allSatisfy { $0 == ["a", "c"] }, "renewals at 0, 2, 4, 6 and 8 s list c")
            clock.advance(by: .seconds(2))
            try await clock.waitForSleepers(atLeast: 1)
            #expect(a.last == ["a"], "at 10 s c's lease has run out")
            #expect(a.all.count == 6)
            group.cancelAll()
        }
    }

    @Test("a node whose relay listener is not bound yet reads the list without listing itself")
    func notListedBeforeItsListener() async throws {
        let clock = ManualClock()
        let store = InMemoryMembershipStore(clock: clock)
        let (a, b) = (Reports(), Reports())
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await Self.service("a", store: store, clock: clock, reports: a).run() }
            try await clock.waitForSleepers(atLeast: 1)
            group.addTask { try await Self.service("b", store: store, clock: clock, reports: b, relayAddress: nil).run() }
            try await clock.waitForSleepers(atLeast: 2)
            clock.advance(by: .seconds(2))
            try await clock.waitForSleepers(atLeast: 2)
            #expect(a.last == ["a"])
            #expect(b.last == ["a"])
            group.cancelAll()
        }
    }

    @Test("after a failed renewal the next try comes soon (50 ms, doubling), then back to the refresh interval")
    func retriesAfterFailure() async throws {
        let clock = ManualClock()
        let store = FlakyStore(InMemoryMembershipStore(clock: clock))
        store.failing.store(true, ordering: .relaxed)
        let a = Reports()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await Self.service("a", store: store, clock: clock, reports: a).run() }
            try await clock.waitForSleepers(atLeast: 1)
            #expect(a.all.count == 1 && a.last == .some(nil), "a failure is reported as no list")
            clock.advance(by: .milliseconds(99))
            try await clock.waitForSleepers(atLeast: 1)
            #expect(a.all.count == 1, "after one failure, the retry is 100 ms away")
            clock.advance(by: .milliseconds(1))
            try await clock.waitForSleepers(atLeast: 1)
            #expect(a.all.count == 2)
            store.failing.store(false, ordering: .relaxed)
            clock.advance(by: .milliseconds(200))
            try await clock.waitForSleepers(atLeast: 1)
            #expect(a.all.count == 3 && a.last == ["a"])
            clock.advance(by: .milliseconds(1999))
            try await clock.waitForSleepers(atLeast: 1)
            #expect(a.all.count == 3, "renewed: the next is a whole refresh interval away")
            clock.advance(by: .milliseconds(1))
            try await clock.waitForSleepers(atLeast: 1)
            #expect(a.all.count == 4)
            group.cancelAll()
        }
    }

    @Test("a first renewal that fails at start (the Redis connections still opening) and then succeeds logs no warning; a failure after that does")
    func noWarningAtStart() async throws {
        let clock = ManualClock()
        let store = FlakyStore(InMemoryMembershipStore(clock: clock))
        store.failing.store(true, ordering: .relaxed)
        let (a, warnings) = (Reports(), Warnings())
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await Self.service("a", store: store, clock: clock, reports: a, warnings: warnings).run() }
            try await clock.waitForSleepers(atLeast: 1)
            store.failing.store(false, ordering: .relaxed)
            clock.advance(by: .milliseconds(100))
            try await clock.waitForSleepers(atLeast: 1)
            #expect(a.last == ["a"])
            #expect(warnings.seen.withLock { $0 }.isEmpty, "the first try's failure is not worth a warning")
            store.failing.store(true, ordering: .relaxed)
            clock.advance(by: .seconds(2))
            try await clock.waitForSleepers(atLeast: 1)
            #expect(a.last == .some(nil))
            #expect(warnings.seen.withLock { $0 } == ["cluster membership renewal failed"])
            group.cancelAll()
        }
    }
}
