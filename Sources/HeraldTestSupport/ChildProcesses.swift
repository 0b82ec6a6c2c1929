import Foundation

/// How the tests start child processes (redis-server, redis-cli, herald, openssl, proxies)
/// while they run in parallel.
///
/// Foundation's `Process` on Linux learns that a child has exited when a socket it hands that
/// child is closed, and it closes the parent's other descriptors in the child from a list it
/// makes just before spawning. A child started by another thread in between inherits the
/// first child's socket (or a pipe of it) and keeps it open, so the first child's exit, or the
/// end of its output, goes unnoticed until the second child ends (swift-corelibs-foundation
/// issue 4795 describes the same inheritance): the likeliest reason a test once waited its
/// whole 30 s for `openssl s_client` to exit while redis-servers were being started. So every
/// child is started under one lock, and every pipe to a child is made under it too, with both
/// ends closed on exec (the child's own standard streams are `dup2` copies, which stay open).
public enum ChildProcesses {
    private static let lock = NSLock()

    /// A pipe for a child's standard stream, made while no child is being started, its two
    /// descriptors closed on exec.
    public static func pipe() -> Pipe {
        lock.withLock {
            let pipe = Pipe()
            for descriptor in [pipe.fileHandleForReading.fileDescriptor, pipe.fileHandleForWriting.fileDescriptor] {
                _ = fcntl(descriptor, F_SETFD, fcntl(descriptor, F_GETFD) | FD_CLOEXEC)
            }
            return pipe
        }
    }

    /// Starts `process` while no other child is being started.
    public static func run(_ process: Process) throws {
        try lock.withLock { try process.run() }
    }
}

/// Collects what a child writes to a pipe, on a thread of its own that reads until the end.
///
/// Not `readabilityHandler`: on Linux it is not reliably called at a pipe's end, so a test
/// could not tell "the child has written everything" from "a chunk is still on its way", and
/// a test that read the text right after the child's exit could miss its last line.
public final class PipeReader: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    private var ended = false

    /// Starts reading the read end of `pipe` (give the write end to the child).
    public init(_ pipe: Pipe) {
        let handle = pipe.fileHandleForReading
        let thread = Thread { [self] in
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                lock.withLock { data.append(chunk) }
            }
            lock.withLock { ended = true }
        }
        thread.start()
    }

    /// What has been read so far.
    public var text: String { lock.withLock { String(decoding: data, as: UTF8.self) } }

    /// True once the pipe's end was read: every writer (the child and anything it started) has
    /// closed it, and `text` holds everything.
    public var isEnded: Bool { lock.withLock { ended } }
}
