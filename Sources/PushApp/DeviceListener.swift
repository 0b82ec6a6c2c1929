import Actors
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Supervision

/// The device-protocol TCP listener. Its child spec's `start` binds the socket, so the
/// supervisor starts later siblings (and the node reports ready) only once devices can connect.
///
/// On graceful shutdown it drains (protocol.md rule 8): stops accepting, sends GOAWAY to
/// every device, waits for them to leave up to the drain timeout, then closes the rest.
/// Pending messages stay in the store for the devices' next connection.
final class DeviceListener: Service, HealthReporting {
    let serverChannel: any Channel
    private let tracker: ConnectionTracker
    private let drainTimeout: Duration
    private let logger: Logger
    private let onDrain: @Sendable () -> Void

    private init(
        serverChannel: any Channel, tracker: ConnectionTracker, drainTimeout: Duration, logger: Logger,
        onDrain: @escaping @Sendable () -> Void
    ) {
        self.serverChannel = serverChannel
        self.tracker = tracker
        self.drainTimeout = drainTimeout
        self.logger = logger
        self.onDrain = onDrain
    }

    /// Binds `address` and returns the listener, accepting already.
    static func bind(
        _ address: SocketAddressSpec, group: any EventLoopGroup, services: DeviceServices,
        tracker: ConnectionTracker, drainTimeout: Duration, logger: Logger, onDrain: @escaping @Sendable () -> Void
    ) async throws -> DeviceListener {
        let maxFrame = services.configuration.maxFrame
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 4096)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: 32 * 1024, high: 64 * 1024))
            // NIO keeps each channel's last receive buffer for reuse: sized for a device's
            // small frames (it grows by itself for a burst of ACKs), an idle connection keeps
            // 256 bytes rather than 2 KiB.
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 256, maximum: 65536))
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let connection = Connection(channel: channel, services: services)
                    tracker.add(connection)
                    channel.closeFuture.whenComplete { _ in tracker.remove(connection) }
                    try channel.pipeline.syncOperations.addHandler(DeviceChannelHandler(connection: connection, maxFrame: maxFrame))
                }
            }
            .bind(host: address.host, port: address.port)
            .get()
        logger.info("device listener bound", metadata: ["address": "\(channel.localAddress.map { "\($0)" } ?? "?")"])
        return DeviceListener(serverChannel: channel, tracker: tracker, drainTimeout: drainTimeout, logger: logger, onDrain: onDrain)
    }

    var port: Int? { serverChannel.localAddress?.port }

    func run() async throws {
        // Run until shutdown (graceful: drain) or cancellation (the supervisor's kill: just close).
        let graceful = await withTaskCancellationHandler {
            (try? await gracefulShutdown()) != nil && !Task.isCancelled
        } onCancel: { [serverChannel] in
            serverChannel.close(promise: nil)
        }
        try? await serverChannel.close()
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
        HealthReport(name: "devices", healthy: serverChannel.isActive, state: serverChannel.isActive ? "listening" : "closed")
    }
}
