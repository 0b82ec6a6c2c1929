import Actors
import HeraldTestSupport
import NIOCore
import Synchronization
import Testing

import RedisStore

/// "A 503 never stores": the append script refuses to run once Redis's clock has passed the
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

    @Test("an append that reaches Redis after its deadline (an earlier second, or earlier in the same one) is refused and stores nothing")
    func lateAppendStoresNothing() async throws {
        try await withRedisClient { client in
            let deadline = Mutex<Int64>(0)
            let store = RedisPushStore(client: client, maxPending: 10, appendDeadline: { deadline.withLock { $0 } })
            for (device, before) in [("late-seconds", Int64(1500)), ("late-millis", 1)] {
                let redisNow = try await Self.redisMillis(client)
                deadline.withLock { $0 = redisNow - before }
                await #expect(throws: StoreError(.unavailable, "")) { try await store.append([Self.message(device, "\(device)-1")]) }
                #expect(try await store.pendingCount(for: device) == 0, "\(device): the refused append stored nothing")
                // Nor did it take a sequence: the next message on time is the device's first.
                deadline.withLock { $0 = redisNow + 60_000 }
                #expect(try await store.append([Self.message(device, "\(device)-2")])[0].sequence == 1)
            }
        }
    }

    @Test("an append that reaches Redis before its deadline is stored, also in the deadline's own second")
    func timelyAppendIsStored() async throws {
        try await withRedisClient { client in
            let deadline = Mutex<Int64>(0)
            let store = RedisPushStore(client: client, maxPending: 100_000, appendDeadline: { deadline.withLock { $0 } })
            // 300 ms ahead: in the same second as Redis's clock when that is at most 600 ms into
            // it (the script then compares the milliseconds), in the next one otherwise (it
            // compares the seconds alone). Appends go on until the first case has run too,
            // which takes at most the rest of a second.
            var sameSecond = false
            var appended = 0
            while !sameSecond {
                let redisNow = try await Self.redisMillis(client)
                sameSecond = redisNow % 1000 <= 600
                deadline.withLock { $0 = redisNow + 300 }
                let stored = try await store.append([Self.message("timely", "t\(appended)")])
                appended += 1
                #expect(stored[0].sequence == UInt64(appended))
                try #require(appended < 100_000, "Redis's clock did not reach the start of a second")
            }
            #expect(try await store.pendingCount(for: "timely") == appended)
        }
    }
}
