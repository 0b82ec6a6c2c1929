import Actors
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Supervision
import Transport

/// The device listeners, one socket per configured transport (tcp, tls, ws, wss), as one
/// supervised child. Its child spec's `start` binds every socket, so the supervisor starts
/// later siblings (and the node reports ready) only once devices can connect.
///
/// On graceful shutdown it drains (protocol.md rule 8): stops accepting, sends GOAWAY to
/// every device, waits for them to leave up to the drain timeout, then closes the rest.
/// Pending messages stay in the store for the devices' next connection.
final class DeviceListener: Service, HealthReporting {
    /// The bound sockets, by transport.
    let serverChannels: [DeviceTransportKind: any Channel]
    private let tracker: ConnectionTracker
    private let drainTimeout: Duration
    private let logger: Logger
    private let onDrain: @Sendable () -> Void

    private init(
        serverChannels: [DeviceTransportKind: any Channel], tracker: ConnectionTracker, drainTimeout: Duration, logger: Logger,
        onDrain: @escaping @Sendable () -> Void
    ) {
        self.serverChannels = serverChannels
        self.tracker = tracker
        self.drainTimeout = drainTimeout
        self.logger = logger
        self.onDrain = onDrain
    }

    private static let receiveBuffers = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 256, maximum: 65536)

    /// Binds every listener in `listeners` and returns them, accepting already. A failure to
    /// bind one closes those already bound.
    static func bind(
        _ listeners: [(DeviceTransport, SocketAddressSpec)], group: any EventLoopGroup,
        tracker: ConnectionTracker, drainTimeout: Duration, logger: Logger, onDrain: @escaping @Sendable () -> Void
    ) async throws -> DeviceListener {
        var channels: [DeviceTransportKind: any Channel] = [:]
        do {
            for (transport, address) in listeners {
                let channel = try await ServerBootstrap(group: group)
                    .serverChannelOption(.backlog, value: 4096)
                    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                    .childChannelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            // Set here, synchronously: the bootstrap's child options are applied
                            // through a chain of futures, ~35,000 instructions per accepted socket.
                            guard let options = channel.syncOptions else { throw ChannelError.operationUnsupported }
                            try options.setOption(.tcpOption(.tcp_nodelay), value: 1)
                            try options.setOption(.writeBufferWaterMark, value: .init(low: 32 * 1024, high: 64 * 1024))
                            // NIO keeps each channel's last receive buffer for reuse: sized for a
                            // device's small frames (it grows by itself for a burst of ACKs), an idle
                            // connection keeps 256 bytes rather than 2 KiB.
                            try options.setOption(.recvAllocator, value: Self.receiveBuffers)
                            try transport.install(on: channel)
                        }
                    }
                    .bind(host: address.host, port: address.port)
                    .get()
                channels[transport.kind] = channel
                transport.handshakeGate?.attach(channel)
                logger.info("device listener bound", metadata: [
                    "transport": "\(transport.kind.rawValue)", "address": "\(channel.localAddress.map { "\($0)" } ?? "?")",
                ])
            }
        } catch {
            for channel in channels.values { try? await channel.close() }
            throw error
        }
        return DeviceListener(serverChannels: channels, tracker: tracker, drainTimeout: drainTimeout, logger: logger, onDrain: onDrain)
    }

    /// The session a transport starts once it is up: the `Connection`, tracked for the drain,
    /// and its frame handler last in the pipeline.
    static func sessionStarter(services: DeviceServices, tracker: ConnectionTracker)
        -> @Sendable (any Channel, TransportPeer, NIODeadline) throws -> Void
    {
        let maxFrame = services.configuration.maxFrame
        return { channel, peer, acceptedAt in
            let connection = Connection(channel: channel, services: services, peer: peer, acceptedAt: acceptedAt)
            tracker.add(connection)
            channel.closeFuture.whenComplete { _ in tracker.remove(connection) }
            try channel.pipeline.syncOperations.addHandler(DeviceChannelHandler(connection: connection, maxFrame: maxFrame))
        }
    }

    /// The bound ports, by transport.
    var ports: [DeviceTransportKind: Int] { serverChannels.compactMapValues { $0.localAddress?.port } }

    func run() async throws {
        // Run until shutdown (graceful: drain) or cancellation (the supervisor's kill: just close).
        let graceful = await withTaskCancellationHandler {
            (try? await gracefulShutdown()) != nil && !Task.isCancelled
        } onCancel: { [serverChannels] in
            for channel in serverChannels.values { channel.close(promise: nil) }
        }
        for channel in serverChannels.values { try? await channel.close() }
        guard graceful else { throw CancellationError() }
        try await drain()
    }

    private func drain() async throws {
        onDrain()
        let connections = tracker.all
        logger.info("draining devices", metadata: ["connections": "\(connections.count)", "timeout": "\(drainTimeout)"])
        for connection in connections { connection.goAway(reason: "server draining") }
        let tracker = tracker
        let drainTimeout = drainTimeout
        let leftInTime = await withTaskGroup(of: Bool.self) { group in
            group.addTask { await tracker.waitUntilEmpty(); return true }
            group.addTask {
                try? await Task.sleep(for: drainTimeout)
                return false
            }
            let first = await group.next()!
            group.cancelAll()
            if !first {
                // Close what is left; that also ends the empty-waiter task.
                for connection in tracker.all { connection.close() }
            }
            await group.waitForAll()
            return first
        }
        logger.info("drain finished", metadata: ["left_in_time": "\(leftInTime)"])
    }

    func healthReport() async -> HealthReport {
        let listening = serverChannels.values.allSatisfy(\.isActive)
        return HealthReport(name: "devices", healthy: listening, state: listening ? "listening" : "closed")
    }
}
