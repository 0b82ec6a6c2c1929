import HeraldClient
import HeraldTestSupport
import NIOCore
import PushProtocol
import Testing

@testable import PushApp

@Suite("Delivery, end to end (protocol.md §1 rules 5-7)", .timeLimit(.minutes(1)))
struct DeliveryTests {
    @Test("a push to a connected device arrives as PUSH, and its ACK deletes it")
    func pushAndAck() async throws {
        try await TestNode.with { node in
            let alice = try await node.device("alice")
            #expect(alice.nodeID == "test-node")
            let id = try await node.push("alice", "hello")
            let pushes = try await alice.pushes(1)
            #expect(pushes[0].id == id)
            #expect(pushes[0].text == "hello")
            #expect(try await node.pending("alice") == 1, "delivered is not deleted")
            alice.acknowledge(id)
            try await eventually("ACK deletes") { try await node.pending("alice") == 0 }
            await alice.close()
        }
    }

    @Test("messages for an offline device wait, and arrive in order when it connects")
    func offlineThenConnect() async throws {
        try await TestNode.with { node in
            var ids: [String] = []
            for index in 0..<20 { ids.append(try await node.push("bob", "m\(index)")) }
            let bob = try await node.device("bob", autoAcknowledge: true)
            let pushes = try await bob.pushes(20)
            #expect(pushes.map(\.id) == ids)
            #expect(pushes.map(\.text) == (0..<20).map { "m\($0)" })
            try await eventually { try await node.pending("bob") == 0 }
            await bob.close()
        }
    }

    @Test("unacknowledged messages are sent again on the next connection, acknowledged ones are not")
    func redeliveryAfterReconnect() async throws {
        try await TestNode.with { node in
            let first = try await node.device("carol")
            let ids = [try await node.push("carol", "a"), try await node.push("carol", "b"), try await node.push("carol", "c")]
            _ = try await first.pushes(3)
            first.acknowledge(ids[0])
            try await eventually { try await node.pending("carol") == 2 }
            await first.close()
            let second = try await node.device("carol")
            #expect(try await second.pushes(2).map(\.id) == [ids[1], ids[2]])
            await second.close()
        }
    }

    @Test("a second HELLO for the same id takes over: the old connection gets 409, the new one the unacked messages in order")
    func takeover() async throws {
        try await TestNode.with { node in
            let old = try await node.device("dave")
            let ids = [try await node.push("dave", "1"), try await node.push("dave", "2")]
            _ = try await old.pushes(2)
            let new = try await node.device("dave")
            var sawReplaced = false
            for await event in old.events {
                if case .error(409, _) = event { sawReplaced = true }
            }
            #expect(sawReplaced)
            #expect(try await new.pushes(2).map(\.id) == ids)
            let third = try await node.push("dave", "3")
            #expect(try await new.pushes(1).map(\.id) == [third])
            await new.close()
        }
    }

    @Test("at most `window` PUSH frames are unacknowledged; each ACK lets one more out")
    func window() async throws {
        try await TestNode.with(["HERALD_WINDOW": "4"]) { node in
            let device = try await node.device("erin")
            var ids: [String] = []
            for index in 0..<10 { ids.append(try await node.push("erin", "\(index)")) }
            let firstFour = try await device.pushes(4)
            #expect(firstFour.map(\.id) == Array(ids[0..<4]))
            await #expect(throws: TimedOut.self) { _ = try await device.next(timeout: .milliseconds(300)) }
            device.acknowledge(ids[0])
            #expect(try await device.pushes(1).map(\.id) == [ids[4]])
            for id in ids[1...4] { device.acknowledge(id) }
            #expect(try await device.pushes(4).map(\.id) == Array(ids[5..<9]))
            await device.close()
        }
    }

    @Test("a broadcast reaches every connected device, is not stored and needs no ACK")
    func broadcast() async throws {
        try await TestNode.with(["HERALD_WINDOW": "1"]) { node in
            let devices = [try await node.device("f1"), try await node.device("f2"), try await node.device("f3")]
            _ = try await node.push("f1", "fills the window")
            _ = try await devices[0].pushes(1)
            let response = try await HTTPTestClient.post("/v1/broadcast", port: node.httpPort, json: #"{"data": "to all"}"#)
            #expect(response.status == 202)
            let id = try JSONFields(response.body).string("id")
            for device in devices {
                let push = try await device.pushes(1)
                #expect(push[0].id == id)
                #expect(push[0].text == "to all")
            }
            devices[1].acknowledge(id)
            #expect(try await node.pending("f2") == 0)
            #expect(try await node.pending("f1") == 1)
            for device in devices { await device.close() }
        }
    }

    @Test("an expired message is never delivered")
    func expiry() async throws {
        try await TestNode.with { node in
            _ = try await node.push("gina", "short-lived", ttl: 1)
            let keep = try await node.push("gina", "long-lived", ttl: 60)
            try await eventually("the first message expires", timeout: .seconds(5)) { try await node.pending("gina") == 1 }
            let device = try await node.device("gina")
            #expect(try await device.pushes(1).map(\.id) == [keep])
            await #expect(throws: TimedOut.self) { _ = try await device.next(timeout: .milliseconds(200)) }
            await device.close()
        }
    }

    @Test("an ACK of another device's message id deletes nothing")
    func foreignAck() async throws {
        try await TestNode.with { node in
            let id = try await node.push("hank", "mine")
            let mallory = try await node.device("mallory")
            mallory.acknowledge(id)
            _ = try await node.push("mallory", "sync")
            _ = try await mallory.pushes(1)  // the ACK before it was processed
            #expect(try await node.pending("hank") == 1)
            await mallory.close()
        }
    }
}
