import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Free TCP ports on 127.0.0.1 for servers that are started, and restarted, on a port chosen in
/// advance (a Redis killed and restarted by a test, the nodes of a benchmark).
///
/// The port comes from below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
/// Binding port 0 would give one from inside it, and until the server binds (or binds again,
/// after a restart) any outgoing connection on the machine can take that port as its source
/// port: the server then fails with EADDRINUSE.
public enum LoopbackPort {
    private static let handedOut = Mutex<Set<Int>>([])

    /// A port that nothing listens on now, not handed out before by this process.
    public static func free() throws -> Int {
        let range = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)) ?? "32768"
        let ephemeralLow = range.split(whereSeparator: \.isWhitespace).first.flatMap { Int($0) } ?? 32768
        let candidates = max(1024, ephemeralLow / 3)..<ephemeralLow
        guard !candidates.isEmpty else {
            throw LoopbackPortError(description: "the ephemeral range starts at \(ephemeralLow): no port below it to choose")
        }
        for _ in 0..<1000 {
            let port = Int.random(in: candidates)
            let fresh = handedOut.withLock { $0.insert(port).inserted }
            if fresh, canBind(port) { return port }
        }
        throw LoopbackPortError(description: "no free port on 127.0.0.1 in \(candidates)")
    }

    /// Whether something accepts TCP connections on 127.0.0.1:`port` (a blocking connect on
    /// loopback: answered or refused at once).
    public static func acceptsConnections(_ port: Int) -> Bool {
        withSocket(port) { fd, address, length in connect(fd, address, length) == 0 }
    }

    private static func canBind(_ port: Int) -> Bool {
        withSocket(port) { fd, address, length in bind(fd, address, length) == 0 }
    }

    /// Runs `body` with a fresh TCP socket and the address 127.0.0.1:`port`; closes the socket.
    private static func withSocket(_ port: Int, _ body: (Int32, UnsafePointer<sockaddr>, socklen_t) -> Bool) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }
}

public struct LoopbackPortError: Error, CustomStringConvertible {
    public let description: String
}
