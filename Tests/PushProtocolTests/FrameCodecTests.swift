import NIOCore
import PushProtocol
import Testing

private func bytes(_ hex: String) -> ByteBuffer {
    let digits = hex.filter { !$0.isWhitespace }
    var buffer = ByteBuffer()
    var index = digits.startIndex
    while index < digits.endIndex {
        let next = digits.index(index, offsetBy: 2)
        buffer.writeInteger(UInt8(digits[index..<next], radix: 16)!)
        index = next
    }
    return buffer
}

/// Golden vectors: the frames of protocol.md §1, byte for byte (also in Docs/protocol.md).
let goldenVectors: [(String, Frame, String)] = [
    ("HELLO", .hello(Hello(clientID: "alice", token: "t", heartbeatSeconds: 30)),
     "0000000e 01 01 0005 616c696365 0001 74 001e"),
    ("WELCOME", .welcome(heartbeatSeconds: 30, nodeID: "n1"), "00000007 02 001e 0002 6e31"),
    ("PING", .ping, "00000001 03"),
    ("PONG", .pong, "00000001 04"),
    ("PUSH", .push(messageID: "m1", payload: ByteBuffer(string: "hi")), "00000007 05 0002 6d31 6869"),
    ("PUSH with empty payload", .push(messageID: "m1", payload: ByteBuffer()), "00000005 05 0002 6d31"),
    ("ACK", .ack(messageID: "m1"), "00000005 06 0002 6d31"),
    ("ERROR", .error(code: 409, reason: "replaced"), "0000000d 07 0199 0008 7265706c61636564"),
    ("GOAWAY", .goaway(reconnectAfterMilliseconds: 1000, reason: "bye"), "0000000a 08 000003e8 0003 627965"),
]

@Suite("Frame codec", .timeLimit(.minutes(1)))
struct FrameCodecTests {
    @Test("every frame encodes to its golden bytes and decodes back", arguments: goldenVectors.indices)
    func golden(index: Int) throws {
        let (name, frame, hex) = goldenVectors[index]
        #expect(frame.encoded() == bytes(hex), "\(name)")
        var input = bytes(hex)
        #expect(try FrameDecoder().decode(&input) == frame, "\(name)")
        #expect(input.readableBytes == 0)
    }

    @Test("the PUSH fast path writes the same bytes as the general encoder")
    func pushFastPath() {
        var fast = ByteBuffer()
        fast.writePushFrame(messageID: "abc", payload: ByteBuffer(string: "payload"))
        #expect(fast == Frame.push(messageID: "abc", payload: ByteBuffer(string: "payload")).encoded())
    }

    @Test("input fed one byte at a time yields each frame exactly when its last byte arrives")
    func dripFed() throws {
        var all = ByteBuffer()
        for (_, frame, _) in goldenVectors { all.writeFrame(frame) }
        let decoder = FrameDecoder()
        var received = ByteBuffer()
        var frames: [Frame] = []
        while let byte = all.readSlice(length: 1) {
            received.writeImmutableBuffer(byte)
            while let frame = try decoder.decode(&received) { frames.append(frame) }
        }
        #expect(frames == goldenVectors.map(\.1))
        #expect(received.readableBytes == 0)
    }

    @Test("coalesced input yields every frame in order, and a trailing partial frame waits")
    func coalesced() throws {
        var all = ByteBuffer()
        for (_, frame, _) in goldenVectors { all.writeFrame(frame) }
        all.writeBytes([0, 0, 0, 5, 6])
        var frames: [Frame] = []
        let decoder = FrameDecoder()
        while let frame = try decoder.decode(&all) { frames.append(frame) }
        #expect(frames == goldenVectors.map(\.1))
        #expect(all.readableBytes == 5)
    }

    @Test("a zero length is 400")
    func zeroLength() {
        var input = bytes("00000000")
        #expect(throws: FrameError(.badRequest, "frame length 0")) { try FrameDecoder().decode(&input) }
    }

    @Test("a length above max_frame is 413 as soon as the length is read, before any body")
    func oversizedLength() {
        var input = bytes("00010001")
        #expect { try FrameDecoder(maxFrame: 65536).decode(&input) } throws: { ($0 as? FrameError)?.code == .frameTooLarge }
    }

    @Test("a length equal to max_frame is allowed")
    func lengthAtMax() throws {
        var input = ByteBuffer()
        input.writeFrame(.push(messageID: "m", payload: ByteBuffer(repeating: 7, count: 16 - 4)))
        #expect(input.getInteger(at: 0, as: UInt32.self) == 16)
        #expect(try FrameDecoder(maxFrame: 16).decode(&input) != nil)
    }

    @Test("an unknown type is 400")
    func unknownType() {
        var input = bytes("00000001 09")
        #expect { try FrameDecoder().decode(&input) } throws: { ($0 as? FrameError)?.code == .badRequest }
    }

    @Test(
        "truncated, over-long and non-UTF-8 bodies are 400",
        arguments: [
            "00000002 01 01",  // HELLO cut after the version
            "00000009 01 01 0005 616c696365",  // HELLO without token and heartbeat
            "00000002 03 00",  // PING with a body
            "00000004 06 0005 6d",  // ACK whose string is longer than the frame
            "00000005 06 0002 ff fe",  // ACK that is not UTF-8
            "00000008 02 001e 0002 6e31 00",  // WELCOME with a trailing byte
        ]
    )
    func malformedBodies(hex: String) {
        var input = bytes(hex)
        #expect { try FrameDecoder().decode(&input) } throws: { ($0 as? FrameError)?.code == .badRequest }
    }

    @Test("client ids follow protocol.md: 1 to 128 bytes of [A-Za-z0-9._:@-]")
    func clientIDs() {
        #expect(Identifiers.isValidClientID("alice"))
        #expect(Identifiers.isValidClientID("A-z_0.9:@x"))
        #expect(Identifiers.isValidClientID(String(repeating: "a", count: 128)))
        #expect(!Identifiers.isValidClientID(String(repeating: "a", count: 129)))
        #expect(!Identifiers.isValidClientID(""))
        #expect(!Identifiers.isValidClientID("a b"))
        #expect(!Identifiers.isValidClientID("a/b"))
        #expect(!Identifiers.isValidClientID("é"))
    }

    @Test("message ids are 1 to 64 bytes of printable ASCII")
    func messageIDs() {
        #expect(Identifiers.isValidMessageID("0123-abc"))
        #expect(!Identifiers.isValidMessageID(""))
        #expect(Identifiers.isValidMessageID("a b"))
        #expect(!Identifiers.isValidMessageID("a\u{7f}"))
        #expect(!Identifiers.isValidMessageID("a\nb"))
        #expect(!Identifiers.isValidMessageID(String(repeating: "a", count: 65)))
    }
}
