/// When a route refresh finds a device's route held by another connection (`.another`), which
/// of this node's connections to close as replaced (ERROR 409).
///
/// A connection registers here before its route write (`ClusterRouter.connected`) runs, so a
/// refresh can find the route still naming the device's previous connection: on a node that
/// died, for one. Read as a takeover, that would close the new connection with 409, after
/// which the client library does not reconnect (a fault-suite storm over TLS lost a device
/// so, its route write slowed by the storm's load). So a connection is closed only when a
/// second refresh, a refresh period later, still finds the route another's, and never while
/// its route write is failing (`unclaimed`): a real takeover whose KICK was lost is closed one
/// period later than it would be otherwise.
struct RouteContests {
    /// Client id -> the session found once with its route held by another connection.
    private var contested: [String: UInt64] = [:]

    /// The sessions to close as replaced, from one refresh's outcomes (`refreshed`: client id,
    /// session, outcome), leaving out those in `unclaimed` (client id -> session).
    mutating func replaced(
        _ refreshed: [(clientID: String, session: UInt64, outcome: RouteRefreshOutcome)], unclaimed: [String: UInt64]
    ) -> [(clientID: String, session: UInt64)] {
        var replaced: [(clientID: String, session: UInt64)] = []
        for entry in refreshed {
            guard entry.outcome == .another, unclaimed[entry.clientID] != entry.session else {
                if contested[entry.clientID] == entry.session { contested[entry.clientID] = nil }
                continue
            }
            if contested[entry.clientID] == entry.session {
                contested[entry.clientID] = nil
                replaced.append((entry.clientID, entry.session))
            } else {
                contested[entry.clientID] = entry.session
            }
        }
        return replaced
    }

    /// Forgets a connection that ended.
    mutating func ended(_ clientID: String, session: UInt64) {
        if contested[clientID] == session { contested[clientID] = nil }
    }
}
