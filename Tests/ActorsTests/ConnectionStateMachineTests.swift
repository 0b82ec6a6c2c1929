import Actors
import NIOCore
import PushProtocol
import Testing

private func message(_ sequence: UInt64, expires: Int64 = .max, id: String? = nil, generation: UInt64 = 0) -> StoredMessage {
    StoredMessage(
        clientID: "alice", id: id ?? "m\(sequence)", sequence: sequence, payload: ByteBuffer(), expiresAtMillis: expires, generation: generation
    )
}

private func clamp(_ requested: UInt16) -> UInt16 {
    SessionConfiguration(nodeID: "n").clampedHeartbeat(requested)
}

/// Time as the tests pass it in: `t(s)` is `s` seconds after the accept.
private func t(_ seconds: Double) -> NIODeadline {
    .uptimeNanoseconds(1_000_000_000_000 + UInt64(seconds * 1e9))
}

private func configuration(
    window: Int = 64, helloTimeout: TimeAmount = .seconds(10), stallTimeout: TimeAmount = .seconds(60), framesPerSecond: Int = 20
) -> SessionConfiguration {
    SessionConfiguration(nodeID: "n", window: window, helloTimeout: helloTimeout, stallTimeout: stallTimeout, maxFramesPerSecond: framesPerSecond)
}

/// A machine accepted at t(0) and activated.
private func newMachine(_ configuration: SessionConfiguration = configuration()) -> ConnectionStateMachine {
    var machine = ConnectionStateMachine(configuration: configuration, acceptedAt: t(0))
    _ = machine.activated(now: t(0), overConnectionLimit: false)
    return machine
}

/// A machine past HELLO (heartbeat `heartbeat`, at t(0)) and authentication, with its first
/// read answered by `stored`.
private func activeMachine(
    window: Int = 3, stored: [StoredMessage] = [], heartbeat: UInt16 = 30
) -> (ConnectionStateMachine, ConnectionStateMachine.Delivery) {
    var machine = newMachine(configuration(window: window))
    _ = machine.received(.hello(Hello(clientID: "alice", heartbeatSeconds: heartbeat)), now: t(0))
    guard case .start(_, _, let fetch?) = machine.authenticated() else { fatalError("no first read") }
    let delivery = machine.fetched(stored, for: fetch, nowMillis: 0)
    return (machine, delivery)
}

@Suite("Connection state machine: every session rule, time passed in", .timeLimit(.minutes(1)))
struct ConnectionStateMachineTests {
    // MARK: HELLO and authentication (protocol.md §1 rules 1-2)

    @Test("a valid HELLO asks for authentication with the clamped heartbeat, then starts the session")
    func helloThenStart() {
        var machine = newMachine()
        #expect(machine.received(.hello(Hello(clientID: "alice", token: "t", heartbeatSeconds: 1)), now: t(1))
            == .authenticate(clientID: "alice", token: "t"))
        #expect(machine.authenticated() == .start(clientID: "alice", heartbeatSeconds: 5, fetch: .init(after: 0, limit: 64)))
        #expect(machine.clientID == "alice")
    }

    @Test("the heartbeat: 0 gives the default, the rest is clamped into the range")
    func heartbeatClamp() {
        #expect(clamp(0) == 30)
        #expect(clamp(1) == 5)
        #expect(clamp(45) == 45)
        #expect(clamp(9999) == 600)
    }

    @Test(
        "anything but a valid HELLO first is 400",
        arguments: [
            Frame.ping, .ack(messageID: "x"), .hello(Hello(version: 2, clientID: "alice")),
            .hello(Hello(clientID: "bad id")), .hello(Hello(clientID: "")),
        ]
    )
    func beforeHello(frame: Frame) {
        var machine = newMachine()
        guard case .fail(.badRequest, _) = machine.received(frame, now: t(1)) else {
            Issue.record("expected 400 for \(frame)")
            return
        }
        #expect(!machine.isReading, "nothing more is read after the ERROR")
    }

    @Test("a second HELLO, or a server-only frame, is 400, and nothing is answered after it")
    func protocolViolations() {
        for frame in [Frame.hello(Hello(clientID: "alice")), .push(messageID: "m", payload: ByteBuffer()), .welcome(heartbeatSeconds: 1, nodeID: "n")] {
            var (machine, _) = activeMachine()
            guard case .fail(.badRequest, _) = machine.received(frame, now: t(1)) else {
                Issue.record("expected 400 for \(frame)")
                continue
            }
            #expect(machine.received(.ping, now: t(1)) == .none, "closed after the ERROR")
        }
    }

    @Test("a refused token is 401; a later acceptance starts nothing")
    func refusedToken() {
        var machine = newMachine()
        _ = machine.received(.hello(Hello(clientID: "alice")), now: t(1))
        #expect(machine.authenticationFailed() == .fail(.unauthorized, "authentication failed"))
        #expect(machine.authenticated() == .none)
    }

    @Test("PING is answered with PONG, before and after WELCOME")
    func ping() {
        var machine = newMachine()
        _ = machine.received(.hello(Hello(clientID: "alice")), now: t(1))
        #expect(machine.received(.ping, now: t(1)) == .reply(.pong))
        _ = machine.authenticated()
        #expect(machine.received(.ping, now: t(1)) == .reply(.pong))
    }

    @Test("a decoder error closes with its own code")
    func malformed() {
        var machine = newMachine()
        #expect(machine.malformed(FrameError(.frameTooLarge, "big")) == .fail(.frameTooLarge, "big"))
        #expect(!machine.isReading)
    }

    // MARK: The hello timeout

    @Test("the hello timer runs from the accept, not from the transport's end; no HELLO by then is 408")
    func helloTimeout() {
        var machine = ConnectionStateMachine(configuration: configuration(helloTimeout: .seconds(10)), acceptedAt: t(0))
        // A TLS handshake took 4 s: the deadline is still 10 s after the accept.
        #expect(machine.activated(now: t(4), overConnectionLimit: false) == .scheduleHelloTimeout(t(10)))
        #expect(machine.activated(now: t(5), overConnectionLimit: false) == .none, "once")
        #expect(machine.helloTimerFired(now: t(9.9)) == .none, "early")
        #expect(machine.helloTimerFired(now: t(10)) == .fail(.helloTimeout, "no HELLO within 10 s"))
        #expect(machine.received(.hello(Hello(clientID: "alice")), now: t(10.1)) == .none)
    }

    @Test("a HELLO in time disarms the hello timeout")
    func helloInTime() {
        var machine = newMachine(configuration(helloTimeout: .seconds(10)))
        _ = machine.received(.hello(Hello(clientID: "alice")), now: t(9))
        #expect(machine.helloTimerFired(now: t(10)) == .none, "authenticating")
        _ = machine.authenticated()
        #expect(machine.helloTimerFired(now: t(10)) == .none, "active")
    }

    @Test("over the node's connection limit a new socket is 429 at once")
    func connectionLimit() {
        var machine = ConnectionStateMachine(configuration: configuration(), acceptedAt: t(0))
        #expect(machine.activated(now: t(0), overConnectionLimit: true) == .fail(.tooManyRequests, "too many connections"))
        #expect(!machine.isReading)
        #expect(machine.deactivated() == .init(unregister: nil), "the count it took is given back")
    }

    // MARK: The heartbeat (rule 3)

    @Test("a device silent for 2 x heartbeat is closed; any frame, an ACK included, restarts the count")
    func heartbeatDeadline() {
        var (machine, _) = activeMachine(window: 3, stored: [message(1)], heartbeat: 10)
        #expect(machine.heartbeatCheck(now: t(19.9)) == false)
        _ = machine.received(.ack(messageID: "m1"), now: t(19.9))
        #expect(machine.heartbeatCheck(now: t(39.8)) == false)
        _ = machine.received(.ping, now: t(39))
        #expect(machine.heartbeatCheck(now: t(58.9)) == false)
        #expect(machine.heartbeatCheck(now: t(59)) == true)
        #expect(!machine.isReading)
        #expect(machine.heartbeatCheck(now: t(100)) == false, "closed once")
    }

    // MARK: The frame-rate bucket

    @Test("frames other than ACK beyond the rate (bursts of twice the rate) are 429; the bucket refills with time; ACKs are free")
    func frameRate() {
        var (machine, _) = activeMachine(window: 3, stored: [])
        // 20 a second, 40 at once: the first 40 PINGs (the HELLO took one) ...
        for index in 0..<39 { #expect(machine.received(.ping, now: t(0)) == .reply(.pong), "ping \(index)") }
        for _ in 0..<100 { #expect(machine.received(.ack(messageID: "x"), now: t(0)) != .fail(.tooManyRequests, "frames too fast")) }
        // ... then 0.5 s later 10 more ...
        for _ in 0..<10 { #expect(machine.received(.ping, now: t(0.5)) == .reply(.pong)) }
        // ... and not an eleventh.
        #expect(machine.received(.ping, now: t(0.5)) == .fail(.tooManyRequests, "frames too fast"))
        #expect(!machine.isReading)
    }

    @Test("a steady rate at the limit is never refused")
    func frameRateSteady() {
        var (machine, _) = activeMachine(window: 3, stored: [])
        for index in 1...200 {
            #expect(machine.received(.ping, now: t(Double(index) / 20)) == .reply(.pong))
        }
    }

    // MARK: The window and the store (rules 4-6)

    @Test("the first read fills the window and no more; each ACK makes room for one more read")
    func window() {
        var (machine, delivery) = activeMachine(window: 3, stored: (1...5).map { message($0) })
        #expect(delivery.send.map(\.sequence) == [1, 2, 3])
        #expect(delivery.fetch == nil, "the window is full")
        #expect(machine.inflightCount == 3)
        let ack = machine.received(.ack(messageID: "m1"), now: t(1))
        #expect(ack == .acknowledge(scheduleRecord: true, then: .init(after: 3, limit: 1)))
        let next = machine.fetched([message(4)], for: .init(after: 3, limit: 1), nowMillis: 0)
        #expect(next.send.map(\.sequence) == [4])
    }

    @Test("ACKs of one loop tick go to the store together, once, with the client id")
    func ackBatching() {
        var (machine, _) = activeMachine(window: 3, stored: (1...3).map { message($0) })
        #expect(machine.received(.ack(messageID: "m1"), now: t(1)) == .acknowledge(scheduleRecord: true, then: .init(after: 3, limit: 1)))
        #expect(machine.received(.ack(messageID: "m2"), now: t(1)) == .acknowledge(scheduleRecord: false, then: nil), "a read is out")
        #expect(machine.takeAcknowledged()! == ("alice", [.init(id: "m1", sequence: 1), .init(id: "m2", sequence: 2)]))
        #expect(machine.takeAcknowledged() == nil)
        #expect(machine.received(.ack(messageID: "m3"), now: t(2)) == .acknowledge(scheduleRecord: true, then: nil))
    }

    @Test("ACKs taken after the connection closed are not recorded: the messages stay stored")
    func ackAfterClose() {
        var (machine, _) = activeMachine(window: 3, stored: [message(1)])
        _ = machine.received(.ack(messageID: "m1"), now: t(1))
        _ = machine.deactivated()
        #expect(machine.takeAcknowledged() == nil)
    }

    @Test("a stored message that is next in order goes out at once; one out of order waits for a read")
    func fastPathKeepsOrder() {
        var (machine, _) = activeMachine(window: 10, stored: [])
        #expect(machine.stored(message(1), nowMillis: 0).send.map(\.sequence) == [1])
        // 3 arrives before 2: it must not overtake it.
        let early = machine.stored(message(3), nowMillis: 0)
        #expect(early.send.isEmpty)
        #expect(early.fetch == .init(after: 1, limit: 9))
        #expect(machine.stored(message(2), nowMillis: 0).send.map(\.sequence) == [2], "next in order, sent while the read is out")
        let read = machine.fetched([message(2), message(3)], for: .init(after: 1, limit: 9), nowMillis: 0)
        #expect(read.send.map(\.sequence) == [3], "2 was sent already and is not repeated")
    }

    @Test("a store of a newer generation (it lost writes and gives sequences again): the queue is read from the start, what is in flight is not sent twice, and its ACK keeps its old generation")
    func newerGeneration() {
        var (machine, _) = activeMachine(window: 10, stored: [message(1, generation: 1), message(2, generation: 1)])
        _ = machine.received(.ack(messageID: "m1"), now: t(1))
        _ = machine.takeAcknowledged()
        // Redis came back from an older snapshot: its counter is at 1, and "c" takes sequence 2,
        // which this connection sent already ("m2", still unacknowledged).
        let told = machine.stored(message(2, id: "c", generation: 2), nowMillis: 0)
        #expect(told.send.isEmpty && told.fetch == .init(after: 0, limit: 9), "read from the start, not ignored as sent")
        let read = machine.fetched([message(2, id: "m2", generation: 2), message(3, id: "c", generation: 2)], for: .init(after: 0, limit: 9), nowMillis: 0)
        #expect(read.send.map(\.id) == ["c"], "m2 is in flight and not sent again")
        #expect(machine.stored(message(4, id: "d", generation: 2), nowMillis: 0).send.map(\.id) == ["d"], "next in order again")
        _ = machine.received(.ack(messageID: "m2"), now: t(2))
        _ = machine.received(.ack(messageID: "c"), now: t(2))
        #expect(
            machine.takeAcknowledged()! == ("alice", [.init(id: "m2", sequence: 2, generation: 1), .init(id: "c", sequence: 3, generation: 2)]),
            "m2's sequence is of generation 1: the store finds it by id"
        )
        let stale = machine.stored(message(5, id: "old", generation: 1), nowMillis: 0)
        #expect(stale.send.isEmpty && stale.fetch == .init(after: 4, limit: 9), "a sequence of an older generation is looked up, not trusted")
    }

    @Test("after a new generation, a message acknowledged on this connection is not sent on it again: every one the store has not confirmed removing, and the last 16 it has (a failover can bring a removal back)")
    func acknowledgedHere() {
        var (machine, _) = activeMachine(window: 64, stored: (1...18).map { message($0, generation: 1) })
        _ = machine.received(.ack(messageID: "m1"), now: t(1))
        let first = machine.takeAcknowledged()!.messages  // the store call fails (Redis down): not confirmed
        #expect(machine.stored(message(19, generation: 2), nowMillis: 0).fetch == .init(after: 0, limit: 47))
        let read = machine.fetched((1...19).map { message($0, generation: 2) }, for: .init(after: 0, limit: 47), nowMillis: 0)
        #expect(read.send.map(\.id) == ["m19"], "m1 was acknowledged here, m2...m18 are in flight")
        machine.acknowledgementsRecorded(first)
        #expect(machine.stored(message(20, generation: 3), nowMillis: 0).fetch == .init(after: 0, limit: 46))
        let kept = machine.fetched([message(1, generation: 3)], for: .init(after: 0, limit: 46), nowMillis: 0)
        #expect(kept.send.isEmpty, "confirmed, and still among the last 16: a failover may have brought it back")
        for sequence in 2...17 {
            _ = machine.received(.ack(messageID: "m\(sequence)"), now: t(2))
        }
        machine.acknowledgementsRecorded(machine.takeAcknowledged()!.messages)
        #expect(machine.stored(message(21, generation: 4), nowMillis: 0).fetch == .init(after: 0, limit: 62))
        let again = machine.fetched([message(1, generation: 4), message(2, generation: 4)], for: .init(after: 0, limit: 62), nowMillis: 0)
        #expect(again.send.map(\.id) == ["m1"], "m1 is no longer among the last 16 confirmed; m2 is")
    }

    @Test("a read that crossed into another generation is made again; the first generation learnt costs no read")
    func readAcrossGenerations() {
        // A new connection learns its store's generation from its first message: no extra read.
        var (fresh, _) = activeMachine(window: 10, stored: [])
        #expect(fresh.stored(message(1, generation: 7), nowMillis: 0).send.map(\.sequence) == [1])
        var (machine, _) = activeMachine(window: 10, stored: [message(1, generation: 1)])
        // A read after 1, answered by a Redis reconnected meanwhile: it counted in generation 1.
        let early = machine.stored(message(3, generation: 1), nowMillis: 0)
        #expect(early.fetch == .init(after: 1, limit: 9))
        let crossed = machine.fetched([message(1, id: "x", generation: 2)], for: .init(after: 1, limit: 9), nowMillis: 0)
        #expect(crossed.send.isEmpty && crossed.fetch == .init(after: 0, limit: 9), "read again, from the start")
        let stale = machine.fetched([message(3, generation: 1)], for: .init(after: 0, limit: 9), nowMillis: 0)
        #expect(stale.send.isEmpty && stale.fetch == .init(after: 0, limit: 9), "a read of the older generation is made again")
        #expect(machine.fetched([message(1, id: "x", generation: 2)], for: .init(after: 0, limit: 9), nowMillis: 0).send.map(\.id) == ["x"])
    }

    @Test("an expired message is not sent by the fast path")
    func expiredNotSent() {
        var (machine, _) = activeMachine(window: 10, stored: [])
        #expect(machine.stored(message(1, expires: 100), nowMillis: 100).send.isEmpty)
    }

    @Test("an ACK of an id not sent on this connection is passed on by id alone, and frees nothing")
    func foreignAck() {
        var (machine, _) = activeMachine(window: 1, stored: [message(1)])
        #expect(machine.received(.ack(messageID: "other"), now: t(1)) == .acknowledge(scheduleRecord: true, then: nil))
        #expect(machine.inflightCount == 1)
        #expect(machine.takeAcknowledged()! == ("alice", [.init(id: "other", sequence: nil)]))
    }

    @Test("a failed read is retried on request; a nudge while a read is out asks for none")
    func failedRead() {
        var (machine, _) = activeMachine(window: 4, stored: [])
        #expect(machine.nudged() == .init(after: 0, limit: 4))
        #expect(machine.nudged() == nil, "one read at a time")
        machine.fetchFailed()
        #expect(machine.retry() == .init(after: 0, limit: 4))
    }

    // MARK: Writability and the stall timeout

    @Test("while the socket is not writable nothing is sent; writable again, the read resumes and the stall timer stops")
    func writability() {
        var (machine, _) = activeMachine(window: 10, stored: [])
        #expect(machine.writabilityChanged(false, now: t(1)) == .init(stallTimer: .start(t(61)), fetch: nil))
        #expect(machine.stored(message(1), nowMillis: 0).send.isEmpty)
        #expect(!machine.acceptsBroadcast)
        #expect(machine.writabilityChanged(true, now: t(2)) == .init(stallTimer: .cancel, fetch: .init(after: 0, limit: 10)))
        #expect(machine.acceptsBroadcast)
        #expect(machine.stallTimerFired() == false, "a cancelled timer that fires anyway does nothing")
    }

    @Test("a socket not writable for the stall timeout is closed")
    func stall() {
        var (machine, _) = activeMachine(window: 10, stored: [])
        #expect(machine.writabilityChanged(false, now: t(1)).stallTimer == .start(t(61)))
        #expect(machine.writabilityChanged(false, now: t(2)).stallTimer == .keep, "one timer")
        #expect(machine.stallTimerFired() == true)
        #expect(!machine.isReading)
    }

    // MARK: Draining, replacing, closing

    @Test("draining: GOAWAY once; a HELLO afterwards, or a token accepted afterwards, is 503")
    func draining() {
        var waiting = newMachine()
        _ = waiting.received(.hello(Hello(clientID: "alice")), now: t(1))
        #expect(waiting.goAway(reason: "bye", reconnectAfterMilliseconds: 500) == .goaway(reconnectAfterMilliseconds: 500, reason: "bye"))
        #expect(waiting.goAway(reason: "bye", reconnectAfterMilliseconds: 500) == nil, "once")
        #expect(waiting.authenticated() == .fail(.unavailable, "server is draining"))

        var fresh = newMachine()
        _ = fresh.goAway(reason: "bye", reconnectAfterMilliseconds: 500)
        #expect(fresh.received(.hello(Hello(clientID: "alice")), now: t(1)) == .fail(.unavailable, "server is draining"))
    }

    @Test("an active session keeps working after GOAWAY until the device leaves")
    func drainingActive() {
        var (machine, _) = activeMachine(window: 10, stored: [])
        #expect(machine.goAway(reason: "bye", reconnectAfterMilliseconds: 1) != nil)
        #expect(machine.stored(message(1), nowMillis: 0).send.map(\.sequence) == [1])
        #expect(machine.received(.ack(messageID: "m1"), now: t(1)) == .acknowledge(scheduleRecord: true, then: nil))
    }

    @Test("replaced by a newer connection: 409 once; closed by the node: no more frames, no GOAWAY")
    func replacedAndClosed() {
        var (machine, _) = activeMachine()
        #expect(machine.fail(.replaced, "replaced") == .fail(.replaced, "replaced"))
        #expect(machine.fail(.replaced, "replaced") == .none)
        var (kicked, _) = activeMachine()
        kicked.closeRequested()
        #expect(kicked.received(.ping, now: t(1)) == .none)
        #expect(kicked.goAway(reason: "bye", reconnectAfterMilliseconds: 1) == nil)
    }

    @Test("with send marks held back, each send keeps its time for its ACK, until taken to be recorded alone")
    func heldBackSendMarks() {
        var machine = newMachine(configuration(window: 10))
        machine.defersSendMarks = true
        _ = machine.received(.hello(Hello(clientID: "alice")), now: t(0))
        guard case .start(_, _, let fetch?) = machine.authenticated() else { fatalError("no first read") }
        #expect(machine.fetched([message(1), message(2)], for: fetch, nowMillis: 500).send.count == 2)
        #expect(machine.stored(message(3), nowMillis: 700).send.count == 1)

        _ = machine.received(.ack(messageID: "m1"), now: t(1))
        #expect(machine.takeAcknowledged()! == ("alice", [.init(id: "m1", sequence: 1, sentAtMillis: 500)]), "the ACK brings its send")
        #expect(machine.takeUnmarkedSends()! == ("alice", [.init(id: "m2", sequence: 2, sentAtMillis: 500), .init(id: "m3", sequence: 3, sentAtMillis: 700)]))
        #expect(machine.takeUnmarkedSends() == nil, "taken once")
        _ = machine.received(.ack(messageID: "m2"), now: t(1))
        #expect(
            machine.takeAcknowledged()! == ("alice", [.init(id: "m2", sequence: 2, sentAtMillis: 500, sendMarked: true)]),
            "its send was recorded alone: the ACK no longer records it, but still knows its time"
        )

        // Sends still held back when the session ends go to the teardown, whatever ended it.
        #expect(machine.stored(message(4), nowMillis: 900).send.count == 1)
        _ = machine.fail(.replaced, "replaced")
        #expect(machine.deactivated() == .init(unregister: "alice", unmarkedSends: [.init(id: "m4", sequence: 4, sentAtMillis: 900)]))

        var (plain, _) = activeMachine(window: 3, stored: [message(1)])
        _ = plain.received(.ack(messageID: "m1"), now: t(1))
        #expect(plain.takeAcknowledged()! == ("alice", [.init(id: "m1", sequence: 1)]), "without held-back marks no time is kept")
    }

    @Test("the socket's close tears the session down once, naming the client id it registered")
    func teardown() {
        var (machine, _) = activeMachine()
        #expect(machine.deactivated() == .init(unregister: "alice"))
        #expect(machine.deactivated() == nil)
        #expect(machine.clientID == nil)

        var never = ConnectionStateMachine(configuration: configuration(), acceptedAt: t(0))
        #expect(never.deactivated() == nil, "a session that never began has nothing to undo")

        var beforeWelcome = newMachine()
        _ = beforeWelcome.received(.hello(Hello(clientID: "alice")), now: t(1))
        #expect(beforeWelcome.deactivated() == .init(unregister: nil))
    }
}
