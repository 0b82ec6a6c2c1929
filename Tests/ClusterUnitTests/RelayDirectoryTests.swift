import Logging
import Metrics
import NIOPosix
import Testing

@testable import Cluster

/// The directory's promise: a message routed to a peer process that has no relay here yet is
/// not forgotten; its client id is handed to that peer's relay when it starts, to NUDGE.
@Suite("Relay directory: what waits for a relay that does not exist yet", .timeLimit(.minutes(1)))
struct RelayDirectoryTests {
    private func relay(to nodeID: String, incarnation: UInt64, directory: RelayDirectory) -> Relay {
        Relay(
            peer: Member(nodeID: nodeID, incarnation: incarnation, relayAddress: "127.0.0.1:1", connections: 0),
            configuration: ClusterConfiguration(nodeID: "self", incarnation: 1, token: "", relayMaxFrame: 1 << 16),
            group: MultiThreadedEventLoopGroup.singleton, directory: directory, metrics: RelayMetrics(factory: NOOPMetricsHandler.instance),
            logger: Logger(label: "test")
        )
    }

    @Test("client ids routed before the relay exists are handed to it when it registers, once")
    func keptUntilTheRelayStarts() {
        let directory = RelayDirectory(maxWaiting: 100)
        #expect(directory.relay(to: "b", incarnation: 7, orKeep: ["d1", "d2"]) == nil)
        #expect(directory.relay(to: "b", incarnation: 7, orKeep: ["d2", "d3"]) == nil)
        let relay = relay(to: "b", incarnation: 7, directory: directory)
        let waiting = directory.add(relay)
        #expect(waiting.clientIDs == ["d1", "d2", "d3"])
        #expect(!waiting.resync)
        #expect(directory.relay(to: "b", incarnation: 7, orKeep: ["d4"]) === relay)
        #expect(directory.add(relay).clientIDs.isEmpty, "handed over once; d4 went to the relay itself")
    }

    @Test("a relay to another incarnation of the peer gets nothing meant for the one the route named")
    func perIncarnation() {
        let directory = RelayDirectory(maxWaiting: 100)
        _ = directory.relay(to: "b", incarnation: 8, orKeep: ["d1"])
        #expect(directory.add(relay(to: "b", incarnation: 7, directory: directory)).clientIDs.isEmpty)
        #expect(directory.relay(to: "b", incarnation: 8, orKeep: ["d2"]) == nil)
        #expect(directory.add(relay(to: "b", incarnation: 8, directory: directory)).clientIDs == ["d1", "d2"])
    }

    @Test("past the bound, the relay is asked to RESYNC every device instead")
    func boundedByResync() {
        let directory = RelayDirectory(maxWaiting: 2)
        _ = directory.relay(to: "b", incarnation: 1, orKeep: ["d1", "d2", "d3"])
        let waiting = directory.add(relay(to: "b", incarnation: 1, directory: directory))
        #expect(waiting.resync)
        #expect(waiting.clientIDs.isEmpty)
    }

    @Test("what waits for a peer absent from two member-list reads in a row is dropped (its devices reconnect elsewhere)")
    func forgottenWhenThePeerIsGone() {
        let directory = RelayDirectory(maxWaiting: 100)
        let peer = RelayDirectory.Peer(nodeID: "b", incarnation: 1)
        _ = directory.relay(to: "b", incarnation: 1, orKeep: ["d1"])
        directory.memberListRead(live: [])
        directory.memberListRead(live: [peer])
        directory.memberListRead(live: [])
        #expect(directory.add(relay(to: "b", incarnation: 1, directory: directory)).clientIDs == ["d1"], "absent once, then present: kept")
        _ = directory.relay(to: "c", incarnation: 1, orKeep: ["d2"])
        directory.memberListRead(live: [])
        directory.memberListRead(live: [])
        #expect(directory.add(relay(to: "c", incarnation: 1, directory: directory)).clientIDs.isEmpty)
    }
}
