import Logging
import ServiceLifecycle

/// Runs a service so that cancelling it (the supervisor's kill) shuts it down gracefully.
///
/// Hummingbird's server does not survive being cancelled while its accept loop holds
/// connections it has accepted but not yet handed to a handler: they are dropped, and an
/// `NIOAsyncChannel` dropped that way traps ("Deinited NIOAsyncWriter without calling
/// finish()"; swift-nio 2.101, Hummingbird 2.28), or, when it is not deallocated, its close
/// is never seen and the server never returns. Under a steady load of requests, killing the
/// API child hit one or the other in about one kill of three. Its graceful shutdown has no
/// such gap: the listener closes, the connections already accepted are served, then it
/// returns. So the service runs in a task of its own, out of reach of our cancellation, and
/// cancellation or graceful shutdown of ours becomes a graceful shutdown of it. Should that
/// never end, the supervisor abandons the child when its shutdown timeout has passed.
struct ShutdownOnCancel<Inner: Service>: Service {
    let inner: Inner
    let logger: Logger

    func run() async throws {
        let group = ServiceGroup(configuration: .init(services: [.init(service: inner)], logger: logger))
        let running = Task { try await group.run() }
        try await withTaskCancellationHandler {
            try await withGracefulShutdownHandler {
                try await running.value
            } onGracefulShutdown: {
                Task { await group.triggerGracefulShutdown() }
            }
        } onCancel: {
            Task { await group.triggerGracefulShutdown() }
        }
    }
}
