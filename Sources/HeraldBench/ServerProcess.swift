import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A child process the bench started: a Herald node, a redis-server or a device worker.
/// Only processes started here are ever signalled, by their own PID.
final class ChildProcess: @unchecked Sendable {
    let name: String
    private let process = Process()
    private let input = Pipe()
    private let output = Pipe()

    /// Starts `executable`. Standard output is read by `readLine()` when `capturesOutput`,
    /// else it goes to /dev/null; standard error is inherited, so failures show.
    init(name: String, executable: String, arguments: [String], environment: [String: String] = [:], capturesOutput: Bool = false) throws {
        self.name = name
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        process.standardInput = input
        process.standardOutput = capturesOutput ? output : FileHandle.nullDevice
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }

    /// The next line of the child's standard output, nil at its end. Blocks a thread of
    /// Dispatch's global pool (not an event loop, not the concurrency pool) until it comes.
    func readLine() async -> String? {
        let handle = output.fileHandleForReading
        return await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                var bytes: [UInt8] = []
                var byte: UInt8 = 0
                while Glibc.read(handle.fileDescriptor, &byte, 1) == 1 {
                    if byte == UInt8(ascii: "\n") { return continuation.resume(returning: String(decoding: bytes, as: UTF8.self)) }
                    bytes.append(byte)
                }
                continuation.resume(returning: bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self))
            }
        }
    }

    /// Closes the child's standard input (device workers exit on it).
    func closeInput() {
        try? input.fileHandleForWriting.close()
    }

    /// Sends `signal` and waits, bounded, for the process to end; SIGKILL after 10 s.
    func stop(signal: Int32 = SIGTERM) async {
        guard process.isRunning else { return }
        kill(pid, signal)
        let deadline = ContinuousClock.now + .seconds(10)
        while process.isRunning {
            if ContinuousClock.now > deadline {
                kill(pid, SIGKILL)
                break
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
    }
}

/// A process's CPU time, in seconds: user space and the kernel (system time).
struct CPUTime: Sendable {
    var user: Double
    var system: Double
    var total: Double { user + system }

    static let zero = CPUTime(user: 0, system: 0)
    static func + (a: CPUTime, b: CPUTime) -> CPUTime { CPUTime(user: a.user + b.user, system: a.system + b.system) }
    static func - (a: CPUTime, b: CPUTime) -> CPUTime { CPUTime(user: a.user - b.user, system: a.system - b.system) }
}

/// Readings of a process from /proc.
enum ProcFS {
    /// User and system CPU time of `pid` (clock-tick resolution, 10 ms here).
    static func cpuTime(_ pid: Int32) -> CPUTime? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")")
        else { return nil }
        // Fields after "(comm)": state is field 3, utime 14, stime 15.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        let tick = Double(sysconf(Int32(_SC_CLK_TCK)))
        return CPUTime(user: user / tick, system: system / tick)
    }

    /// User plus system CPU time of `pid`, in seconds.
    static func cpuSeconds(_ pid: Int32) -> Double? { cpuTime(pid)?.total }

    /// Resident set size of `pid`, in KiB.
    static func residentKiB(_ pid: Int32) -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return line.split(separator: " ").dropFirst().first.flatMap { Int($0) }
        }
        return nil
    }
}

/// Raises this process's open-file limit to its hard limit (one socket per device).
func raiseOpenFileLimit() {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
    limit.rlim_cur = limit.rlim_max
    _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}

/// A failure of the bench itself (not of the server under test).
struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Seconds since `start`, as a Double.
func seconds(since start: ContinuousClock.Instant) -> Double {
    let elapsed = ContinuousClock.now - start
    return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the machine, so a
/// timestamp written by the publisher can be compared with the receiver's clock.
func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}
