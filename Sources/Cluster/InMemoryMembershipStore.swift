import Actors
import Synchronization

/// The membership store in this process's memory, its leases timed by `clock`: the driver
/// the cluster's logic is tested with (several `Membership`s sharing one store stand for
/// nodes sharing one Redis, a manual clock for real leases).
public final class InMemoryMembershipStore<C: Clock>: MembershipStore where C.Duration == Duration {
    private struct Lease {
        var member: Member
        var expires: C.Instant
    }

    private let clock: C
    private let leases = Mutex<[String: Lease]>([:])

    /// An empty store on `clock`.
    public init(clock: C) {
        self.clock = clock
    }

    public func renew(_ member: Member?, lease: Duration) async throws(StoreError) -> [Member] {
        let now = clock.now
        return leases.withLock { leases in
            leases = leases.filter { now < $0.value.expires }
            if let member { leases[member.nodeID] = Lease(member: member, expires: now.advanced(by: lease)) }
            return leases.values.map(\.member).sorted { $0.nodeID < $1.nodeID }
        }
    }

    public func leave(nodeID: String, incarnation: UInt64) async throws(StoreError) -> Bool {
        leases.withLock { leases in
            guard leases[nodeID]?.member.incarnation == incarnation else { return false }
            leases[nodeID] = nil
            return true
        }
    }
}
