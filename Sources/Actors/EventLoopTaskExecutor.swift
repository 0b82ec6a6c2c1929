import NIOCore

/// A task executor that runs every job on one event loop: tasks that prefer it (the fast
/// path's store calls, every request Hummingbird's router serves on that connection) start,
/// resume and end on the loop of their HTTP connection, never on Swift's global pool. Jobs
/// run in the order they were enqueued, after what the loop had queued before them.
public final class EventLoopTaskExecutor: TaskExecutor {
    /// The loop every job runs on.
    public let eventLoop: any EventLoop

    /// An executor for `eventLoop`.
    public init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute { [self] in job.runSynchronously(on: asUnownedTaskExecutor()) }
    }
}
