import Actors
import Logging
import NIOCore
import NIOSSL
import NIOTLS

/// A device listener's transport: what lies between the socket and the device protocol.
public enum DeviceTransportKind: String, Sendable, CaseIterable {
    /// The device protocol straight on TCP.
    case tcp
    /// The device protocol inside TLS.
    case tls
    /// One device frame per binary WebSocket message (protocol.md §1).
    case ws
    /// WebSocket inside TLS.
    case wss

    /// Whether TLS wraps the connection.
    public var usesTLS: Bool { self == .tls || self == .wss }
    /// Whether the device protocol rides WebSocket messages.
    public var usesWebSocket: Bool { self == .ws || self == .wss }
}

/// Installs a device transport's handlers on an accepted channel and starts the device
/// session once the transport is up: at once for plain TCP, after the TLS handshake, after
/// the WebSocket upgrade, or after both.
///
/// The whole setup counts against the hello timeout (protocol.md rule 1 runs from the
/// accept): a socket whose handshake or upgrade is not done by then is closed; once the
/// session starts, its `Connection` keeps the same deadline for the HELLO. The session
/// itself never learns its transport beyond the `TransportPeer` it is given.
public struct DeviceTransport: Sendable {
    /// The transport.
    public let kind: DeviceTransportKind
    /// The credentials new handshakes use (tls and wss).
    public let tls: TLSCredentials?
    /// The WebSocket rules (ws and wss).
    public let webSocket: WebSocketOptions
    /// Whether connections begin with a PROXY protocol header (from `trustedProxies` only).
    public let proxyProtocol: Bool
    /// The proxies whose PROXY headers and `X-Forwarded-For` headers are believed.
    public let trustedProxies: TrustedProxies
    /// protocol.md's `hello_timeout`, from the accept.
    public let helloTimeout: TimeAmount
    /// Counters and throttled log lines.
    public let metrics: TransportMetrics
    /// Bounds the TLS handshakes in progress (tls and wss; nil: no bound).
    public let handshakeGate: HandshakeGate?
    /// Starts the device session on `channel`: creates its `Connection` with the peer's
    /// facts and the accept time, and adds `DeviceChannelHandler` last in the pipeline.
    public let startSession: @Sendable (_ channel: any Channel, _ peer: TransportPeer, _ acceptedAt: NIODeadline) throws -> Void

    /// Describes one listener's transport.
    public init(
        kind: DeviceTransportKind, tls: TLSCredentials?, webSocket: WebSocketOptions,
        proxyProtocol: Bool = false, trustedProxies: TrustedProxies = .none, helloTimeout: TimeAmount,
        metrics: TransportMetrics, handshakeGate: HandshakeGate? = nil,
        startSession: @escaping @Sendable (_ channel: any Channel, _ peer: TransportPeer, _ acceptedAt: NIODeadline) throws -> Void
    ) {
        precondition(!kind.usesTLS || tls != nil, "a \(kind) listener needs TLS credentials")
        self.kind = kind
        self.tls = tls
        self.webSocket = webSocket
        self.proxyProtocol = proxyProtocol
        self.trustedProxies = trustedProxies
        self.helloTimeout = helloTimeout
        self.metrics = metrics
        self.handshakeGate = kind.usesTLS ? handshakeGate : nil
        self.startSession = startSession
    }

    /// Sets up a freshly accepted channel (from the server bootstrap's child initializer).
    public func install(on channel: any Channel) throws {
        let acceptedAt = NIODeadline.now()
        guard kind != .tcp || proxyProtocol else {
            return try startSession(channel, TransportPeer(transport: kind.rawValue), acceptedAt)
        }
        let setup = TransportSetup(transport: self, channel: channel, acceptedAt: acceptedAt)
        guard proxyProtocol else { return try setup.proxyHeaderRead(forwarded: nil) }
        let metrics = metrics
        try channel.pipeline.syncOperations.addHandler(
            ProxyHeaderHandler(
                trusted: trustedProxies,
                onHeader: { forwarded in try setup.proxyHeaderRead(forwarded: forwarded) },
                onRefused: { [channel] reason in metrics.proxyHeaderRefused(peer: channel.remoteAddress, reason: reason) }
            )
        )
    }
}

/// One channel's way from accept to session: the deadline, and what comes after TLS.
final class TransportSetup: Sendable {
    let transport: DeviceTransport
    let channel: any Channel
    let acceptedAt: NIODeadline
    private let state: NIOLoopBound<State>

    private final class State {
        var timer: Scheduled<Void>?
        /// The handshake finished, or its failure was counted.
        var tlsSettled = false
        /// The handshake holds a place in the listener's `HandshakeGate`.
        var gated = false
        /// The device's address from a PROXY header or `X-Forwarded-For`.
        var forwarded: SocketAddress?
        var sessionStarted = false
    }

    init(transport: DeviceTransport, channel: any Channel, acceptedAt: NIODeadline) {
        self.transport = transport
        self.channel = channel
        self.acceptedAt = acceptedAt
        let state = NIOLoopBound(State(), eventLoop: channel.eventLoop)
        self.state = state
        state.value.timer = channel.eventLoop.scheduleTask(deadline: acceptedAt + transport.helloTimeout) { [channel] in
            let current = state.value
            guard !current.sessionStarted else { return }
            if transport.kind.usesTLS, !current.tlsSettled {
                transport.metrics.handshakeFailed(.timeout, peer: current.forwarded ?? channel.remoteAddress, detail: "no complete handshake within the hello timeout")
                _ = TransportSetup.settle(current, transport)
            }
            channel.close(promise: nil)
        }
        channel.closeFuture.whenComplete { _ in
            let current = state.value
            current.timer?.cancel()
            TransportSetup.leaveGate(current, transport)
        }
    }

    /// Marks the handshake settled, once: true the first time. Frees its place in the gate.
    private static func settle(_ current: State, _ transport: DeviceTransport) -> Bool {
        guard !current.tlsSettled else { return false }
        current.tlsSettled = true
        leaveGate(current, transport)
        return true
    }

    /// Frees the handshake's place in the gate, if it holds one (at most once).
    private static func leaveGate(_ current: State, _ transport: DeviceTransport) {
        guard current.gated else { return }
        current.gated = false
        transport.handshakeGate?.leave()
    }

    /// The device's address as far as it is known: a trusted proxy's word, else the socket's.
    var deviceAddress: SocketAddress? { state.value.forwarded ?? channel.remoteAddress }

    /// What the session will learn of its transport so far.
    var peer: TransportPeer {
        TransportPeer(transport: transport.kind.rawValue, forwardedAddress: state.value.forwarded)
    }

    /// The PROXY header, if the listener takes one, is read: TLS comes next, or what follows it.
    func proxyHeaderRead(forwarded: SocketAddress?) throws {
        state.value.forwarded = forwarded
        if let tls = transport.tls, transport.kind.usesTLS {
            let handler = NIOSSLServerHandler(context: tls.context)
            if let gate = transport.handshakeGate, !state.value.tlsSettled {
                state.value.gated = true
                gate.enter()
            }
            try channel.pipeline.syncOperations.addHandlers(handler, TLSHandshakeWatcher(setup: self, mutual: tls.isMutual))
        } else {
            try transportUp(peer)
        }
    }

    /// A trusted HTTP proxy named the device (`X-Forwarded-For`).
    func forwardedByHTTPProxy(_ address: SocketAddress) {
        state.value.forwarded = address
    }

    /// The TLS handshake is done.
    func tlsCompleted() {
        _ = Self.settle(state.value, transport)
    }

    /// The TLS handshake failed or the socket closed during it: counted once.
    func tlsFailed(_ reason: HandshakeFailure, detail: String) {
        guard !state.value.tlsSettled else { return }
        transport.metrics.handshakeFailed(reason, peer: deviceAddress, detail: detail)
        _ = Self.settle(state.value, transport)
    }

    /// TLS, if any, is up: the WebSocket upgrade comes next, or the session starts.
    func transportUp(_ peer: TransportPeer) throws {
        if transport.kind.usesWebSocket {
            try WebSocketUpgrade.install(on: channel, setup: self, peer: peer)
        } else {
            try startSession(peer)
        }
    }

    /// The session starts: from here the `Connection`'s hello timer holds the same deadline.
    func startSession(_ peer: TransportPeer) throws {
        let current = state.value
        current.sessionStarted = true
        current.timer?.cancel()
        current.timer = nil
        try transport.startSession(channel, peer, acceptedAt)
    }
}

/// Waits for the TLS handshake: then reads the device certificate's names (mutual TLS) and
/// hands over to what comes next. Counts and logs failed handshakes by reason.
final class TLSHandshakeWatcher: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let setup: TransportSetup
    private let mutual: Bool
    private var done = false

    init(setup: TransportSetup, mutual: Bool) {
        self.setup = setup
        self.mutual = mutual
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let event = event as? TLSUserEvent, case .handshakeCompleted = event, !done else {
            return context.fireUserInboundEventTriggered(event)
        }
        done = true
        setup.tlsCompleted()
        setup.transport.metrics.handshakeCompleted()
        let ssl = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self)
        var peer = setup.peer
        if mutual {
            peer.certificateNames = ssl?.peerCertificate?.deviceNames ?? []
        }
        do {
            try setup.transportUp(peer)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        } catch {
            context.close(promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard !done else { return context.fireErrorCaught(error) }
        done = true
        setup.tlsFailed(HandshakeFailure(error), detail: "\(error)")
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !done {
            done = true
            setup.tlsFailed(.closed, detail: "closed during the handshake")
        }
        context.fireChannelInactive()
    }
}
