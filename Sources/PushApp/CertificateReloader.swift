import ServiceLifecycle
import Supervision
import Transport
import UnixSignals

/// Reloads the TLS certificate on SIGHUP (the convention of nginx, HAProxy and mosquitto):
/// new handshakes use the new files, open connections keep their session, and files that
/// cannot be used are refused with one log line while the old certificate stays in use.
final class CertificateReloader: Service, HealthReporting {
    private let reload: @Sendable () -> Bool
    private let credentials: TLSCredentials

    init(reload: @escaping @Sendable () -> Bool, credentials: TLSCredentials) {
        self.reload = reload
        self.credentials = credentials
    }

    func run() async throws {
        // Trapping SIGHUP also keeps its default action (ending the process) away.
        let signals = await UnixSignalsSequence(trapping: .sighup)
        for await _ in signals.cancelOnGracefulShutdown() {
            _ = reload()
        }
    }

    func healthReport() async -> HealthReport {
        let loaded = credentials.loaded
        return HealthReport(name: "tls", healthy: true, state: "serving \(loaded.subject)")
    }
}
