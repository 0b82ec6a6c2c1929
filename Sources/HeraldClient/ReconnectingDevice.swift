import NIOCore
import NIOPosix

/// A device that stays connected: it reconnects after a close, a refusal or a GOAWAY, with
/// jittered exponential backoff (so that devices of a dead node do not all come back at the
/// same instant), and hands every PUSH to `onPush`, acknowledging it after `onPush` returns.
///
/// It stops for good after ERROR 409: another connection with the same client id took over
/// (protocol.md rule 5), and reconnecting would only take it back, back and forth.
public struct ReconnectingDevice: Sendable {
    /// The connection settings (auto-acknowledge is managed here).
    public var configuration: DeviceClientConfiguration
    /// The first backoff delay.
    public var initialBackoff: Duration = .milliseconds(500)
    /// The longest backoff delay.
    public var maxBackoff: Duration = .seconds(30)

    /// Creates a device.
    public init(configuration: DeviceClientConfiguration) {
        self.configuration = configuration
    }

    /// The delay before attempt `attempt` (0-based): full jitter over an exponential ceiling.
    public static func backoff(attempt: Int, initial: Duration, max: Duration, random: Double) -> Duration {
        let ceiling = min(initial * (1 << min(attempt, 20)), max)
        return ceiling * random
    }

    /// Runs until cancelled, or until another connection of the same client id replaces it.
    public func run(
        onPush: @Sendable (String, ByteBuffer) async -> Void,
        onEvent: @Sendable (String) -> Void = { _ in }
    ) async {
        var attempt = 0
        var configuration = configuration
        configuration.autoAcknowledge = false
        var replaced = false
        while !Task.isCancelled, !replaced {
            var delay = Self.backoff(attempt: attempt, initial: initialBackoff, max: maxBackoff, random: Double.random(in: 0.5...1))
            do {
                let client = try await DeviceClient.connect(configuration)
                onEvent("connected to \(configuration.host):\(configuration.port) (node \(client.nodeID), heartbeat \(client.heartbeatSeconds) s)")
                attempt = 0
                delay = initialBackoff
                for await event in client.events {
                    switch event {
                    case .push(let id, let payload):
                        await onPush(id, payload)
                        client.acknowledge(id)
                    case .goaway(let after, let reason):
                        onEvent("server draining (\(reason)); reconnecting in \(after) ms")
                        delay = .milliseconds(Int64(after))
                        await client.close()
                    case .error(let code, let reason):
                        onEvent("server error \(code): \(reason)")
                        if code == 409 { replaced = true }
                    case .pong:
                        break
                    case .closed:
                        onEvent("connection closed")
                    }
                }
            } catch {
                attempt += 1
                onEvent("connect failed: \(error); retrying in \(delay)")
            }
            if replaced {
                onEvent("replaced by another connection of this client id; not reconnecting")
            } else {
                try? await Task.sleep(for: delay)
            }
        }
    }
}
