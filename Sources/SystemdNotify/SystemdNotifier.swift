import CSystemd
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The service manager's notification socket (`sd_notify(3)` through libsystemd).
///
/// Without `NOTIFY_SOCKET` in the environment (not started by systemd with `Type=notify`),
/// every call is a no-op, so the same binary runs anywhere.
public struct SystemdNotifier: Sendable {
    /// Whether a service manager listens (`NOTIFY_SOCKET` is set).
    public let isEnabled: Bool
    /// The watchdog interval systemd expects pings within (`WatchdogSec=`), when enabled for
    /// this process (`WATCHDOG_USEC`, and `WATCHDOG_PID` naming this process if set).
    public let watchdogInterval: Duration?

    /// Reads the environment systemd set up for this process.
    public init() {
        isEnabled = (getenv("NOTIFY_SOCKET").map { String(cString: $0) } ?? "").isEmpty == false
        var microseconds: UInt64 = 0
        if sd_watchdog_enabled(0, &microseconds) > 0, microseconds > 0 {
            watchdogInterval = .microseconds(Int64(clamping: microseconds))
        } else {
            watchdogInterval = nil
        }
    }

    /// Sends `state` (newline-separated `KEY=value` assignments). Returns whether it was sent.
    @discardableResult
    public func notify(_ state: String) -> Bool {
        guard isEnabled else { return false }
        return sd_notify(0, state) > 0
    }
}
