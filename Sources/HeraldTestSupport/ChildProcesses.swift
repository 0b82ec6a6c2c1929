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
