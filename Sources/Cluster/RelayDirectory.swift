import Synchronization

/// The running relays by peer node id (each registers itself while it runs), and the client
/// ids of messages routed to a peer that has no relay here yet (it started, or restarted,
/// after this node last read the member list): the relay NUDGEs them on its first link.
final class RelayDirectory: Sendable {
    /// A peer process: its node id and incarnation.
    struct Peer: Hashable {
        var nodeID: String
        var incarnation: UInt64
    }

    /// What waits for a peer's relay: client ids to NUDGE, or (past the bound) a RESYNC.
    struct Waiting {
        var clientIDs: Set<String> = []
        var resync = false
        /// Member-list reads that did not list the peer (two: it is not coming).
        var absences = 0
    }

    private struct State {
        var relays: [String: Relay] = [:]
        var waiting: [Peer: Waiting] = [:]
    }
    private let state = Mutex(State())
    private let maxWaiting: Int

    init(maxWaiting: Int) {
        self.maxWaiting = maxWaiting
    }

    /// Registers a running relay; returns what waited for its peer.
    func add(_ relay: Relay) -> Waiting {
        state.withLock {
            $0.relays[relay.peer.nodeID] = relay
            return $0.waiting.removeValue(forKey: Peer(nodeID: relay.peer.nodeID, incarnation: relay.peer.incarnation)) ?? Waiting()
        }
    }

    func remove(_ relay: Relay) {
        state.withLock { if $0.relays[relay.peer.nodeID] === relay { $0.relays[relay.peer.nodeID] = nil } }
    }

    /// The relay to `nodeID` if it is to the process `incarnation`.
    func relay(to nodeID: String, incarnation: UInt64) -> Relay? {
        state.withLock { $0.relays[nodeID] }.flatMap { $0.peer.incarnation == incarnation ? $0 : nil }
    }

    /// The relay to the process `incarnation` of `nodeID`; if there is none yet, `clientIDs`
    /// are kept for it (atomically with its registration, so none falls in between).
    func relay(to nodeID: String, incarnation: UInt64, orKeep clientIDs: some Sequence<String>) -> Relay? {
        state.withLock { state in
            if let relay = state.relays[nodeID], relay.peer.incarnation == incarnation { return relay }
            let peer = Peer(nodeID: nodeID, incarnation: incarnation)
            var waiting = state.waiting[peer] ?? Waiting()
            if !waiting.resync {
                waiting.clientIDs.formUnion(clientIDs)
                if waiting.clientIDs.count > maxWaiting {
                    waiting.clientIDs = []
                    waiting.resync = true
                }
            }
            state.waiting[peer] = waiting
            return nil
        }
    }

    /// After a read of the member list: forgets what waits for peers missing from two reads in
    /// a row (dead: their devices reconnect elsewhere and read their queues there).
    func memberListRead(live: Set<Peer>) {
        state.withLock { state in
            for (peer, var waiting) in state.waiting {
                waiting.absences = live.contains(peer) ? 0 : waiting.absences + 1
                state.waiting[peer] = waiting.absences >= 2 ? nil : waiting
            }
        }
    }

    var all: [Relay] { state.withLock { Array($0.relays.values) } }
}
