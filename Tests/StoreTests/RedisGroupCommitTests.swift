import Actors
import HeraldTestSupport
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import RedisStore

/// Group commit (Docs/store.md): the appends one event loop starts in one tick are one script
/// call, and each keeps the promises of an append made alone.
@Suite("Redis group commit", .timeLimit(.minutes(1)))
struct RedisGroupCommitTests {
    /// Starts one append task per request on `loop`, all within one loop tick, in order.
    private static func appendInOneTick(
        _ requests: [[NewMessage]], on loop: any EventLoop, _ append: @escaping @Sendable ([NewMessage]) async throws(StoreError) -> [StoredMessage]
    ) async throws -> [Result<[StoredMessage], StoreError>] {
        let executor = EventLoopTaskExecutor(loop)
        let tasks = try await loop.submit {
            requests.map { request in
                Task(executorPreference: executor) { () async -> Result<[StoredMessage], StoreError> in
                    do throws(StoreError) { return .success(try await append(request)) } catch { return .failure(error) }
                }
            }
        }.get()
        var results: [Result<[StoredMessage], StoreError>] = []
        for task in tasks { results.append(await task.value) }
        return results
    }

    private static func message(_ clientID: String, _ id: String) -> NewMessage {
        NewMessage(clientID: clientID, id: id, payload: ByteBuffer(string: id), expiresAtMillis: WallClock.millisecondsSinceEpoch() + 60_000)
    }

    @Test("requests started on one loop in one tick are one script call; a refused one (429) stores nothing and leaves no gap")
    func oneScriptCallEachAllOrNothing() async throws {
        try await withRedisClient { client in
            let store = RedisPushStore(client: client, maxPending: 2)
            _ = try await store.append([Self.message("full", "f1"), Self.message("full", "f2")])
            let before = try await scriptCalls(client)
            let results = try await Self.appendInOneTick(
                [
                    [Self.message("a", "a1")],
                    [Self.message("full", "f3")],
                    [Self.message("b", "b1"), Self.message("c", "c1")],
                    [Self.message("a", "a2")],
                    [Self.message("d", "d1"), Self.message("full", "f4")],
                    [Self.message("d", "d2")],
                ],
                on: client.loops[0], store.append
            )
            let calls = try await scriptCalls(client) - before
            #expect(calls == 1, "six requests, one EVALSHA, not \(calls)")
            let stored = results.map { try? $0.get().map(\.id) }
            #expect(stored == [["a1"], nil, ["b1", "c1"], ["a2"], nil, ["d2"]])
            for refused in [results[1], results[4]] {
                #expect(throws: StoreError(.pendingFull, "")) { try refused.get() }
            }
            #expect(try results[3].get()[0].sequence == results[0].get()[0].sequence + 1)
            // d1 was refused with the batch it came in: d2 is d's first, and the next is second.
            #expect(try results[5].get()[0].sequence == 1)
            #expect(try await store.append([Self.message("d", "d3")])[0].sequence == 2)
            #expect(try await store.pending(for: "full", after: 0, limit: 10).map(\.id) == ["f1", "f2"])
            #expect(try await store.pending(for: "d", after: 0, limit: 10).map(\.id) == ["d2", "d3"])
            #expect(try await store.pending(for: "a", after: 0, limit: 10).map(\.id) == ["a1", "a2"])
        }
    }

    @Test("a group closes at its message bound: the next request leads a group of its own")
    func boundedGroups() async throws {
        let groups = AppendGroups(loops: 1, maxMessages: 3)
        let sizes = Mutex<[Int]>([])
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let requests = (0..<5).map { [Self.message("a", "m\($0)")] }
        let results = try await Self.appendInOneTick(requests, on: loop) { request async throws(StoreError) in
            try await groups.append(request, loop: 0) { members in
                sizes.withLock { $0.append(members.count) }
                return members.map { .success($0.map { StoredMessage(clientID: $0.clientID, id: $0.id, sequence: 0, payload: $0.payload, expiresAtMillis: 0) }) }
            }
        }
        #expect(sizes.withLock { $0 } == [3, 2])
        #expect(results.map { try? $0.get().map(\.id) } == requests.map { $0.map(\.id) })
    }
}
