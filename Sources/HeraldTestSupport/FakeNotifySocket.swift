import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A stand-in for systemd's notification socket, in-process: an `AF_UNIX` datagram socket in a temporary directory, read by a thread of
/// its own. Start a process with `NOTIFY_SOCKET=path`; each assignment it sends (`READY=1`,
/// `STATUS=...`) lands in `log`, and `arrivals` records when. It only records: killing a
/// silent process is what the real-systemd test checks. (Plain POSIX calls: NIO's datagram
/// channel cannot take datagrams from an unbound Unix socket, which is what sd_notify sends from.)
public final class FakeNotifySocket: Sendable {
    /// The socket's path, for `NOTIFY_SOCKET`.
    public let path: String
    /// Every assignment received, in order.
    public let log = EventLog()
    private let directory: String
    private let descriptor: Int32
    private let state = Mutex<(arrivals: [(entry: String, at: ContinuousClock.Instant)], closed: Bool)>(([], false))

    private init(path: String, directory: String, descriptor: Int32) {
        self.path = path
        self.directory = directory
        self.descriptor = descriptor
    }

    /// Binds a fresh socket and starts reading it.
    public static func start() throws -> FakeNotifySocket {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("herald-notify-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = directory + "/notify.sock"
        let descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        guard descriptor >= 0 else { throw POSIXError(.EIO) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { bytes in
            for (index, byte) in path.utf8.enumerated() where index < bytes.count - 1 { bytes[index] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else {
            Glibc.close(descriptor)
            throw POSIXError(.EADDRINUSE)
        }
        // Reads wake up every 100 ms to notice close().
        var timeout = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let socket = FakeNotifySocket(path: path, directory: directory, descriptor: descriptor)
        Thread.detachNewThread { socket.readLoop() }
        return socket
    }

    private func readLoop() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !state.withLock({ $0.closed }) {
            let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { continue }
            let now = ContinuousClock.now
            for line in String(decoding: buffer[..<count], as: UTF8.self).split(separator: "\n") {
                state.withLock { $0.arrivals.append((String(line), now)) }
                log.append(String(line))
            }
        }
        Glibc.close(descriptor)
    }

    /// When each assignment arrived, in order.
    public var arrivals: [(entry: String, at: ContinuousClock.Instant)] { state.withLock { $0.arrivals } }

    /// Stops reading, closes the socket and removes its directory.
    public func close() {
        state.withLock { $0.closed = true }
        try? FileManager.default.removeItem(atPath: directory)
    }
}
