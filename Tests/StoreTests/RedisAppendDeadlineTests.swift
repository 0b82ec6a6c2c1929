import Actors
import HeraldTestSupport
import NIOCore
import Glibc
import Synchronization
import Testing

import RedisStore

/// "A 503 never stores": the append script (and Herald's Redis module, `module`) refuses to run once Redis's clock has passed the
/// append's deadline (Docs/store.md, "A 503 never stores"). The deadlines here are set
/// from Redis's own clock (`TIME`), so the outcome does not depend on how fast the test runs.
@Suite("Redis append deadline", .timeLimit(.minutes(1)))
struct RedisAppendDeadlineTests {
    /// Redis's clock, in ms since the epoch.
    private static func redisMillis(_ client: RedisClient) async throws -> Int64 {
        guard case .array(let parts) = try await client.send([.string("TIME")]), parts.count == 2,
            let seconds = parts[0].string.flatMap({ Int64($0) }), let micros = parts[1].string.flatMap({ Int64($0) })
        else { throw StoreError(.unavailable, "unexpected reply to TIME") }
        return seconds * 1000 + micros / 1000
    }

    private static func message(_ clientID: String, _ id: String) -> NewMessage {
        NewMessage(clientID: clientID, id: id, payload: ByteBuffer(string: id), expiresAtMillis: WallClock.millisecondsSinceEpoch() + 60_000)
    }

    /// Appends one message, returning the error it failed with, if any.
    private static func failure(of store: RedisPushStore, _ message: NewMessage) async -> StoreError? {
        do {
            _ = try await store.append([message])
            return nil
        } catch {
            return error
        }
    }

    @Test("an append that reaches Redis after its deadline (an earlier second, or earlier in the same one) is refused and stores nothing", arguments: [false, true])
    func lateAppendStoresNothing(module: Bool) async throws {
        try await withRedisClient(module: module) { client in
            let deadline = Mutex<Int64>(0)
            let store = RedisPushStore(client: client, maxPending: 10, appendDeadline: { deadline.withLock { $0 } })
            for (device, before) in [("late-seconds", Int64(1500)), ("late-millis", 1)] {
                let redisNow = try await Self.redisMillis(client)
                deadline.withLock { $0 = redisNow - before }
                let refused = try #require(await Self.failure(of: store, Self.message(device, "\(device)-1")), "\(device): stored")
                #expect(refused.code == .unavailable && refused.message.contains("after its deadline"), "\(device): \(refused)")
                #expect(try await store.pendingCount(for: device) == 0, "\(device): the refused append stored nothing")
                // Nor did it take a sequence: the next message on time is the device's first.
                deadline.withLock { $0 = redisNow + 60_000 }
                #expect(try await store.append([Self.message(device, "\(device)-2")])[0].sequence == 1)
            }
        }
    }

    @Test("an append that reaches Redis before its deadline is stored, also in the deadline's own second", arguments: [false, true])
    func timelyAppendIsStored(module: Bool) async throws {
        try await withRedisClient(module: module) { client in
            let deadline = Mutex<Int64>(0)
            let store = RedisPushStore(client: client, maxPending: 10_000, appendDeadline: { deadline.withLock { $0 } })
            // The deadline: the last millisecond of the second Redis's clock is in. When Redis's
            // clock is still in that second, short of its last millisecond, after the append,
            // the script ran in the deadline's second before the deadline (it then compares the
            // milliseconds), and must have stored it. Otherwise (a slow machine) the outcome
            // proves nothing either way, and the test tries again.
            var proved = false
            var attempts = 0
            while !proved {
                attempts += 1
                try #require(attempts <= 1_000, "no append both started and ended within one of Redis's seconds")
                let before = try await Self.redisMillis(client)
                deadline.withLock { $0 = before / 1000 * 1000 + 999 }
                let failure = await Self.failure(of: store, Self.message("timely", "t\(attempts)"))
                let after = try await Self.redisMillis(client)
                guard after / 1000 == before / 1000, after % 1000 < 999 else { continue }
                #expect(failure == nil, "refused within its deadline: \(failure.map(\.description) ?? "")")
                proved = true
            }
            // In a later second than the deadline's, the seconds alone decide: a deadline a
            // minute ahead.
            deadline.withLock { $0 = WallClock.millisecondsSinceEpoch() + 60_000 }
            #expect(await Self.failure(of: store, Self.message("timely", "later")) == nil)
        }
    }

    @Test(
        "an append failed while its deadline is still ahead (its connection closed on a timeout) answers only after the deadline, so a paused Redis that resumes at once does not store it",
        arguments: [false, true]
    )
    func failureWaitsOutTheDeadline(module: Bool) async throws {
        try await RedisServer.with(arguments: module ? try await HeraldRedisModule.arguments() : []) { server in
            // The node closes a connection when its oldest command times out, failing the later
            // ones too, whose deadlines may still be ahead. Here the append is that command: a
            // deadline 1.5 s past its 1 s timeout stands for a later command's.
            try await withRedisClient(url: server.url, commandTimeout: .seconds(1)) { client in
                let deadline = Mutex<Int64>(0)
                let store = RedisPushStore(client: client, maxPending: 10, appendDeadline: { deadline.withLock { $0 } })
                deadline.withLock { $0 = WallClock.millisecondsSinceEpoch() + 60_000 }
                _ = try await store.append([Self.message("paused", "first")])  // the module is asked about once
                server.kill(signal: SIGSTOP)
                defer { server.kill(signal: SIGCONT) }
                let set = WallClock.millisecondsSinceEpoch() + 2_500
                deadline.withLock { $0 = set }
                let refused = try #require(await Self.failure(of: store, Self.message("paused", "second")), "stored while Redis was paused")
                #expect(refused.code == .unavailable)
                #expect(WallClock.millisecondsSinceEpoch() > set, "answered before its deadline: \(refused)")
                server.kill(signal: SIGCONT)
                // Redis now reads the append's bytes, after its deadline: LATE, a no-op.
                try await eventually("redis answers again", timeout: .seconds(10)) { (try? await store.pendingCount(for: "paused")) != nil }
                #expect(try await store.pending(for: "paused", after: 0, limit: 10).map(\.id) == ["first"], "the 503'd append was stored")
            }
        }
    }
}
