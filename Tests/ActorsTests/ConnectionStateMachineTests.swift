import Actors
import NIOCore
import PushProtocol
import Testing

private func message(_ sequence: UInt64, expires: Int64 = .max) -> StoredMessage {
    StoredMessage(clientID: "alice", id: "m\(sequence)", sequence: sequence, payload: ByteBuffer(), expiresAtMillis: expires)
}

private func clamp(_ requested: UInt16) -> UInt16 {
    SessionConfiguration(nodeID: "n").clampedHeartbeat(requested)
}

/// A machine past HELLO and authentication, with its first read answered by `stored`.
private func activeMachine(window: Int = 3, stored: [StoredMessage] = []) -> (ConnectionStateMachine, ConnectionStateMachine.Delivery) {
    var machine = ConnectionStateMachine(window: window)
    _ = machine.received(.hello(Hello(clientID: "alice")), heartbeat: clamp)
    guard case .start(_, _, let fetch?) = machine.authenticated() else { fatalError("no first read") }
    let delivery = machine.fetched(stored, for: fetch)
    return (machine, delivery)
}

@Suite("Connection state machine", .timeLimit(.minutes(1)))
struct ConnectionStateMachineTests {
    @Test("a valid HELLO asks for authentication with the clamped heartbeat, then starts the session")
    func helloThenStart() {
        var machine = ConnectionStateMachine(window: 64)
        #expect(machine.received(.hello(Hello(clientID: "alice", token: "t", heartbeatSeconds: 1)), heartbeat: clamp)
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
        var machine = ConnectionStateMachine(window: 64)
        guard case .fail(.badRequest, _) = machine.received(frame, heartbeat: clamp) else {
            Issue.record("expected 400 for \(frame)")
            return
        }
    }

    @Test("a second HELLO, or a server-only frame, is 400")
    func protocolViolations() {
        for frame in [Frame.hello(Hello(clientID: "alice")), .push(messageID: "m", payload: ByteBuffer()), .welcome(heartbeatSeconds: 1, nodeID: "n")] {
            var (machine, _) = activeMachine()
            guard case .fail(.badRequest, _) = machine.received(frame, heartbeat: clamp) else {
                Issue.record("expected 400 for \(frame)")
                continue
            }
            #expect(machine.received(.ping, heartbeat: clamp) == .none, "closed after the ERROR")
        }
    }

    @Test("a refused token is 401")
    func refusedToken() {
        var machine = ConnectionStateMachine(window: 64)
        _ = machine.received(.hello(Hello(clientID: "alice")), heartbeat: clamp)
        #expect(machine.authenticationFailed() == .fail(.unauthorized, "authentication failed"))
        #expect(machine.authenticated() == .none)
    }

    @Test("PING is answered with PONG, before and after WELCOME")
    func ping() {
        var machine = ConnectionStateMachine(window: 64)
        _ = machine.received(.hello(Hello(clientID: "alice")), heartbeat: clamp)
        #expect(machine.received(.ping, heartbeat: clamp) == .reply(.pong))
        _ = machine.authenticated()
        #expect(machine.received(.ping, heartbeat: clamp) == .reply(.pong))
    }

    @Test("the first read fills the window and no more; each ACK makes room for one more read")
    func window() {
        let (machine0, delivery) = activeMachine(window: 3, stored: (1...5).map { message($0) })
        var machine = machine0
        #expect(delivery.send.map(\.sequence) == [1, 2, 3])
        #expect(delivery.fetch == nil, "the window is full")
        #expect(machine.inflightCount == 3)
        let ack = machine.received(.ack(messageID: "m1"), heartbeat: clamp)
        #expect(ack == .acknowledge(messageID: "m1", then: .init(after: 3, limit: 1)))
        let next = machine.fetched([message(4)], for: .init(after: 3, limit: 1))
        #expect(next.send.map(\.sequence) == [4])
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
        let read = machine.fetched([message(2), message(3)], for: .init(after: 1, limit: 9))
        #expect(read.send.map(\.sequence) == [3], "2 was sent already and is not repeated")
    }

    @Test("an expired message is not sent by the fast path")
    func expiredNotSent() {
        var (machine, _) = activeMachine(window: 10, stored: [])
        #expect(machine.stored(message(1, expires: 100), nowMillis: 100).send.isEmpty)
    }

    @Test("while the socket is not writable nothing is sent; writable again, the read resumes")
    func writability() {
        var (machine, _) = activeMachine(window: 10, stored: [])
        #expect(machine.writabilityChanged(false) == nil)
        #expect(machine.stored(message(1), nowMillis: 0).send.isEmpty)
        #expect(machine.writabilityChanged(true) == .init(after: 0, limit: 10))
    }

    @Test("an ACK of an id not sent on this connection is passed on but frees nothing")
    func foreignAck() {
        var (machine, _) = activeMachine(window: 1, stored: [message(1)])
        #expect(machine.received(.ack(messageID: "other"), heartbeat: clamp) == .acknowledge(messageID: "other", then: nil))
        #expect(machine.inflightCount == 1)
    }

    @Test("a failed read is retried on request")
    func failedRead() {
        var machine = ConnectionStateMachine(window: 4)
        _ = machine.received(.hello(Hello(clientID: "alice")), heartbeat: clamp)
        _ = machine.authenticated()
        machine.fetchFailed()
        #expect(machine.retry() == .init(after: 0, limit: 4))
    }

    @Test("a decoder error closes with its own code")
    func malformed() {
        var machine = ConnectionStateMachine(window: 4)
        #expect(machine.malformed(FrameError(.frameTooLarge, "big")) == .fail(.frameTooLarge, "big"))
    }
}
