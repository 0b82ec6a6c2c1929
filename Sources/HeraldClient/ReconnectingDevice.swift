import NIOCore
import NIOPosix
import PushProtocol

/// A device that stays connected: it reconnects after a close, a refusal or a GOAWAY, with
/// jittered exponential backoff (so that devices of a dead node do not all come back at the
/// same instant), and hands every PUSH to `onPush`, acknowledging it after `onPush` returns.
///
/// It stops for good after ERROR 409: another connection with the same client id took over
/// (protocol.md rule 5), and reconnecting would only take it back, back and forth.
///
/// With several `servers`, a device whose connection failed or was lost tries another one,
/// chosen at random, so that the devices of a node that died spread over the others.
public struct ReconnectingDevice: Sendable {
    /// Whether the device is connected, as `run` reports it.
    public enum State: Sendable, Hashable {
        /// Past WELCOME, on this node.
        case connected(nodeID: String)
        /// The connection ended (or a connection attempt failed after a connected state).
        case disconnected
    }

    /// What happened to the device's connection, as `run` reports it; its description is a
    /// line for a log.
    public enum Event: Sendable, Hashable, CustomStringConvertible {
        /// Past WELCOME.
        case connected(host: String, port: Int, nodeID: String, heartbeatSeconds: UInt16)
        /// The server sent GOAWAY; the device reconnects after about the delay it gave.
        case draining(reason: String, reconnectAfterMilliseconds: UInt32)
        /// The server sent ERROR (409: replaced, and the device stops after the close).
        case serverError(code: UInt16, reason: String)
        /// The connection closed.
        case closed
        /// A connection attempt failed; the next one comes after `retryIn`.
        case connectFailed(error: String, retryIn: Duration)
        /// Another connection of the same client id took over: the device stops for good.
        case replaced

        public var description: String {
            switch self {
            case .connected(let host, let port, let nodeID, let heartbeat):
                "connected to \(host):\(port) (node \(nodeID), heartbeat \(heartbeat) s)"
            case .draining(let reason, let after): "server draining (\(reason)); reconnecting in \(after) ms"
            case .serverError(let code, let reason): "server error \(code): \(reason)"
            case .closed: "connection closed"
            case .connectFailed(let error, let delay): "connect failed: \(error); retrying in \(delay)"
            case .replaced: "replaced by another connection of this client id; not reconnecting"
            }
        }
    }

    /// The connection settings (auto-acknowledge is managed here; host and port are the first
    /// of `servers`).
    public var configuration: DeviceClientConfiguration
    /// The servers (host, port) to connect to; the configuration's first.
    public var servers: [(host: String, port: Int)]
    /// The first backoff delay, and the spread of reconnects after a lost connection.
    public var initialBackoff: Duration = .milliseconds(500)
    /// The longest backoff delay.
    public var maxBackoff: Duration = .seconds(30)

    /// Creates a device; `alternates` are further servers to try.
    public init(configuration: DeviceClientConfiguration, alternates: [(host: String, port: Int)] = []) {
        self.configuration = configuration
        self.servers = [(configuration.host, configuration.port)] + alternates
    }

    /// Runs until cancelled, or until another connection of the same client id replaces it.
    public func run(
        onPush: @Sendable (String, ByteBuffer) async -> Void,
        onEvent: @Sendable (Event) -> Void = { _ in },
        onState: @Sendable (State) -> Void = { _ in }
    ) async {
        var attempt = 0
        var configuration = configuration
        configuration.autoAcknowledge = false
        var server = 0
        var replaced = false
        while !Task.isCancelled, !replaced {
            // Full jitter: the devices of one dead node come back spread over the whole delay,
            // not all at once (a reconnect storm is what brings the surviving nodes down).
            var delay = Backoff.fullJitter(attempt: attempt, initial: initialBackoff, max: maxBackoff)
            (configuration.host, configuration.port) = servers[server]
            do {
                let client = try await DeviceClient.connect(configuration)
                onEvent(.connected(host: configuration.host, port: configuration.port, nodeID: client.nodeID, heartbeatSeconds: client.heartbeatSeconds))
                onState(.connected(nodeID: client.nodeID))
                defer { onState(.disconnected) }
                attempt = 0
                delay = Backoff.fullJitter(attempt: 0, initial: initialBackoff, max: maxBackoff)
                for await event in client.events {
                    switch event {
                    case .push(let id, let payload):
                        await onPush(id, payload)
                        client.acknowledge(id)
                    case .goaway(let after, let reason):
                        onEvent(.draining(reason: reason, reconnectAfterMilliseconds: after))
                        // After the server's hint, spread like any reconnect.
                        delay = .milliseconds(Int64(after)) + Backoff.fullJitter(attempt: 0, initial: initialBackoff, max: maxBackoff)
                        await client.close()
                    case .error(let code, let reason):
                        onEvent(.serverError(code: code, reason: reason))
                        if code == 409 { replaced = true }
                    case .pong:
                        break
                    case .closed:
                        onEvent(.closed)
                    }
                }
            } catch {
                attempt += 1
                onEvent(.connectFailed(error: "\(error)", retryIn: delay))
            }
            if servers.count > 1 {
                server = (server + Int.random(in: 1..<servers.count)) % servers.count
            }
            if replaced {
                onEvent(.replaced)
            } else {
                try? await Task.sleep(for: delay)
            }
        }
    }
}
