import CoreMetrics

/// The relay links' metrics (Docs/operations.md lists them).
public final class RelayMetrics: Sendable {
    /// Messages written to relay links.
    let relayed: Counter
    /// Messages or broadcasts not written because a link was down or full (the messages
    /// stay stored; their devices are nudged when the link is back).
    let dropped: Counter
    /// Messages received from peers for this node's devices.
    let received: Counter
    /// Links established / lost.
    let linksUp: Counter
    let linksDown: Counter
    /// Inbound links refused (bad token, malformed first frame).
    let refused: Counter

    /// Creates the metrics with `factory`.
    public init(factory: any MetricsFactory) {
        relayed = Counter(label: "herald_relay_messages_sent_total", factory: factory)
        dropped = Counter(label: "herald_relay_dropped_total", factory: factory)
        received = Counter(label: "herald_relay_messages_received_total", factory: factory)
        linksUp = Counter(label: "herald_relay_links_up_total", factory: factory)
        linksDown = Counter(label: "herald_relay_links_down_total", factory: factory)
        refused = Counter(label: "herald_relay_links_refused_total", factory: factory)
    }
}
