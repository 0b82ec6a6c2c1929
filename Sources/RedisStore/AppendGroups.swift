import Actors
import Synchronization

/// Group commit for appends: the requests that reach the store on one event loop in one tick
/// go to Redis as one script call (`RedisPushStore.appendScript`), each still all or nothing
/// on its own (Docs/store.md, "Group commit").
///
/// The first request of a loop's tick leads: it opens a group and yields once (its task runs
/// on its connection's loop, so the yield puts it behind the jobs that loop has queued, the
/// other requests read in the same tick); the requests that arrive meanwhile join the group
/// and wait; the leader then closes the group, runs it and hands each member its own result.
/// A request alone is a group of one, as before. No timer: grouping never waits for traffic
/// that is not already there.
final class AppendGroups: Sendable {
    typealias Outcome = Result<[StoredMessage], StoreError>

    /// One group: its members' requests, each with the continuation of its waiting caller.
    /// Touched only under its loop's lock (`open`).
    private final class Group: @unchecked Sendable {
        var followers: [(messages: [NewMessage], continuation: CheckedContinuation<Outcome?, Never>)] = []
        var messageCount: Int
        init(messageCount: Int) { self.messageCount = messageCount }
    }

    /// A loop's open group, if any.
    private final class Slot: Sendable {
        let group = Mutex<Group?>(nil)
    }

    /// The open group of each event loop (callers off the loops share them by turns).
    private let open: [Slot]
    /// A group closes to newcomers at this many messages (the script's argument list stays
    /// bounded; the next request leads a new group).
    let maxMessages: Int

    init(loops: Int, maxMessages: Int = 1_000) {
        open = (0..<max(loops, 1)).map { _ in Slot() }
        self.maxMessages = maxMessages
    }

    /// Appends `messages` (one request) as a member of the caller's loop's group: `run` is
    /// given the requests of the group, in arrival order, and returns one outcome each.
    func append(
        _ messages: [NewMessage], loop: Int, run: ([[NewMessage]]) async -> [Outcome]
    ) async throws(StoreError) -> [StoredMessage] {
        let slot = open[loop % open.count]
        var led: Group?
        let joined: Outcome? = await withCheckedContinuation { continuation in
            let isFollower = slot.group.withLock { current -> Bool in
                if let group = current, group.messageCount + messages.count <= maxMessages {
                    group.followers.append((messages, continuation))
                    group.messageCount += messages.count
                    return true
                }
                let group = Group(messageCount: messages.count)
                current = group
                led = group
                return false
            }
            if !isFollower { continuation.resume(returning: nil) }
        }
        if let joined { return try joined.get() }
        guard let group = led else { preconditionFailure("neither a member nor a leader") }
        await Task.yield()
        let followers = slot.group.withLock { current in
            if current === group { current = nil }
            return group.followers
        }
        let outcomes = await run([messages] + followers.map(\.messages))
        for (follower, outcome) in zip(followers, outcomes.dropFirst()) { follower.continuation.resume(returning: outcome) }
        return try outcomes[0].get()
    }
}
