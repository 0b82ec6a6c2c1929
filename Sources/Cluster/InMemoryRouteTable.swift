import Actors
import Synchronization

/// The route table in this process's memory, its TTL kept by `clock`: the driver the
/// cluster's logic is tested with (a manual clock instead of real leases), and the reference
/// the Redis driver is held to by the conformance suite. One table shared by several routers
/// in one process stands for the Redis that a cluster's nodes share.
public final class InMemoryRouteTable<C: Clock>: RouteTable where C.Duration == Duration {
    private struct Entry {
        var route: Route
        var expires: C.Instant
    }

    private let clock: C
    private let ttl: Duration
    private let entries = Mutex<[String: Entry]>([:])

    /// A table whose routes live `ttl` unless refreshed, by `clock`.
    public init(clock: C, ttl: Duration) {
        self.clock = clock
        self.ttl = ttl
    }

    /// `clientID`'s route, if it has one that has not expired (the caller holds the lock).
    private static func live(_ entries: inout [String: Entry], _ clientID: String, now: C.Instant) -> Route? {
        guard let entry = entries[clientID] else { return nil }
        guard now < entry.expires else {
            entries[clientID] = nil
            return nil
        }
        return entry.route
    }

    public func claim(_ clientID: String, _ route: Route) async throws(StoreError) -> Route? {
        let now = clock.now
        return entries.withLock { entries in
            defer { entries[clientID] = Entry(route: route, expires: now.advanced(by: ttl)) }
            return Self.live(&entries, clientID, now: now)
        }
    }

    public func release(_ clientID: String, _ route: Route) async throws(StoreError) {
        let now = clock.now
        entries.withLock { entries in
            if Self.live(&entries, clientID, now: now) == route { entries[clientID] = nil }
        }
    }

    public func refresh(_ refreshed: [(clientID: String, route: Route)]) async throws(StoreError) -> [RouteRefreshOutcome] {
        let now = clock.now
        return entries.withLock { entries in
            refreshed.map { clientID, route in
                let current = Self.live(&entries, clientID, now: now)
                guard current == nil || current == route else { return .another }
                entries[clientID] = Entry(route: route, expires: now.advanced(by: ttl))
                return current == nil ? .restored : .extended
            }
        }
    }

    public func lookup(_ clientIDs: [String]) async throws(StoreError) -> [Route?] {
        let now = clock.now
        return entries.withLock { entries in clientIDs.map { Self.live(&entries, $0, now: now) } }
    }
}
