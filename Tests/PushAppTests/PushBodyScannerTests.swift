import FoundationEssentials
import NIOCore
import Testing

@testable import PushApp

/// What JSONDecoder makes of a push body: the reference the scanner must agree with.
private struct Reference: Decodable, Equatable {
    var client_id: String?
    var data: String?
    var data_base64: String?
    var ttl_s: Int64?
}

private struct ReferenceBatch: Decodable {
    var messages: [Reference]
}

private func fields(_ reference: Reference) -> PushBodyScanner.Fields {
    .init(clientID: reference.client_id, data: reference.data, dataBase64: reference.data_base64, ttlSeconds: reference.ttl_s)
}

@Suite("PushBodyScanner: the plain push body without JSONDecoder, never a different reading", .timeLimit(.minutes(1)))
struct PushBodyScannerTests {
    @Test(
        "plain bodies are read exactly as JSONDecoder reads them",
        arguments: [
            #"{"client_id":"alice","data":"hello"}"#,
            #" { "client_id" : "a.b:c@d-e_f" , "data_base64" : "aGk=" , "ttl_s" : 60 } "#,
            "{\n\t\"ttl_s\": -5,\r\n\"data\": \"\", \"client_id\": \"x\"}",
            #"{"ttl_s":0}"#,
            #"{"ttl_s":-0}"#,
            #"{}"#,
            #"{"data":"{not json} [1, 2]"}"#,
        ]
    )
    func agrees(body: String) throws {
        let reference = try JSONDecoder().decode(Reference.self, from: Data(body.utf8))
        #expect(PushBodyScanner.push(ByteBuffer(string: body)) == fields(reference))
    }

    @Test(
        "anything but the plain shape is left to JSONDecoder",
        arguments: [
            #"{"client_id":"al\u0069ce"}"#, #"{"client_id":"a\"b"}"#, #"{"data":"é"}"#, #"{"data":null}"#,
            #"{"ttl_s":1.0}"#, #"{"ttl_s":1e3}"#, #"{"ttl_s":01}"#, #"{"ttl_s":"60"}"#, #"{"ttl_s":1234567890123456789}"#,
            #"{"other":"x"}"#, #"{"data":"a","data":"b"}"#, #"{"data":["a"]}"#, #"{"data":"a",}"#, #"{"data":"a"} x"#,
            #"{"data":"a""#, #"["data"]"#, "", "{\"client_id\":\"tab\tinside\"}", #"{"data":"a"}{"#,
        ]
    )
    func declines(body: String) {
        #expect(PushBodyScanner.push(ByteBuffer(string: body)) == nil)
    }

    @Test("batches of the plain shape are read as JSONDecoder reads them; others are declined")
    func batches() throws {
        let body = #"{"messages": [{"client_id":"a","data":"1"}, {"client_id":"b","data_base64":"Mg==","ttl_s":9}]}"#
        let reference = try JSONDecoder().decode(ReferenceBatch.self, from: Data(body.utf8))
        #expect(PushBodyScanner.batch(ByteBuffer(string: body)) == reference.messages.map(fields))
        #expect(PushBodyScanner.batch(ByteBuffer(string: #"{"messages":[]}"#)) == [])
        for declined in [#"{"messages":[{"x":1}]}"#, #"{"messages":[],"more":1}"#, #"{"messages":{}}"#, #"{"messages":[{"data":"a"},]}"#] {
            #expect(PushBodyScanner.batch(ByteBuffer(string: declined)) == nil, "\(declined)")
        }
    }

    @Test("generated bodies: wherever the scanner reads one, JSONDecoder reads the same")
    func generated() throws {
        var generator = SystemRandomNumberGenerator()
        let pieces = [
            #""client_id""#, #""data""#, #""data_base64""#, #""ttl_s""#, #""x""#, ":", ",", " ", "{", "}", "[", "]", #""v""#,
            #""a b""#, "0", "-1", "42", "1.5", "null", "true", #""\n""#, #""é""#, "007", "\n",
        ]
        var read = 0
        for _ in 0..<20_000 {
            var body = "{"
            for _ in 0..<Int.random(in: 0...9, using: &generator) { body += pieces.randomElement(using: &generator)! }
            if Bool.random(using: &generator) { body += "}" }
            let scanned = PushBodyScanner.push(ByteBuffer(string: body))
            let reference = try? JSONDecoder().decode(Reference.self, from: Data(body.utf8))
            if let scanned {
                read += 1
                #expect(reference.map(fields) == scanned, "\(body)")
            }
        }
        #expect(read > 100, "the generator reaches the plain shape")
    }
}
