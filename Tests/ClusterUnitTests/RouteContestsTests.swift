import Testing

@testable import Cluster

/// When a route refresh closes a connection as replaced (ERROR 409, after which the client
/// library stops): only on a second refresh that still finds the route another's, so that a
/// connection whose own route write has not landed yet is not taken for a replaced one.
@Suite("Route contests: which refreshed connections are closed as replaced", .timeLimit(.minutes(1)))
struct RouteContestsTests {
    @Test("a route found another's once closes nothing; found so again a period later, the connection is closed")
    func secondRefreshCloses() {
        var contests = RouteContests()
        #expect(contests.replaced([("a", 1, .another), ("b", 2, .extended)], unclaimed: [:]).isEmpty)
        let replaced = contests.replaced([("a", 1, .another), ("b", 2, .extended)], unclaimed: [:])
        #expect(replaced.map(\.clientID) == ["a"] && replaced.map(\.session) == [1])
        // Closed once: a third finding starts over.
        #expect(contests.replaced([("a", 1, .another)], unclaimed: [:]).isEmpty)
    }

    @Test("the connection's own route write landing in between (extended, restored) clears the first finding")
    func ownWriteLandsInBetween() {
        var contests = RouteContests()
        for outcome in [RouteRefreshOutcome.extended, .restored] {
            #expect(contests.replaced([("a", 1, .another)], unclaimed: [:]).isEmpty)
            #expect(contests.replaced([("a", 1, outcome)], unclaimed: [:]).isEmpty)
            #expect(contests.replaced([("a", 1, .another)], unclaimed: [:]).isEmpty, "after \(outcome), a first finding again")
            #expect(contests.replaced([("a", 1, .extended)], unclaimed: [:]).isEmpty)
        }
    }

    @Test("a connection whose route write is failing (unclaimed) is never closed as replaced")
    func unclaimedIsNeverClosed() {
        var contests = RouteContests()
        for _ in 0..<3 { #expect(contests.replaced([("a", 1, .another)], unclaimed: ["a": 1]).isEmpty) }
        // Once its write succeeded, two findings are needed again.
        #expect(contests.replaced([("a", 1, .another)], unclaimed: [:]).isEmpty)
        #expect(contests.replaced([("a", 1, .another)], unclaimed: [:]).map(\.session) == [1])
    }

    @Test("a newer connection of the device (another session) or an ended one does not inherit a finding")
    func sessionsAreNotConfused() {
        var contests = RouteContests()
        #expect(contests.replaced([("a", 1, .another)], unclaimed: [:]).isEmpty)
        #expect(contests.replaced([("a", 2, .another)], unclaimed: [:]).isEmpty, "session 2's first finding")
        #expect(contests.replaced([("a", 2, .another)], unclaimed: [:]).map(\.session) == [2])
        #expect(contests.replaced([("b", 3, .another)], unclaimed: [:]).isEmpty)
        contests.ended("b", session: 3)
        #expect(contests.replaced([("b", 3, .another)], unclaimed: [:]).isEmpty, "forgotten when it ended")
    }
}
