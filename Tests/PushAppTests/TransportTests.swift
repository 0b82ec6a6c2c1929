import Foundation
import HeraldClient
import HeraldTestSupport
import NIOCore
import PushProtocol
import Testing

@testable import PushApp

/// TLS, WebSocket and HTTPS against real handshakes, with clients nobody here wrote
/// (openssl s_client, Python's ssl and websockets, curl) beside Herald's own.
@Suite("Transports: TLS, WebSocket, HTTPS (issue: transports)", .timeLimit(.minutes(2)))
struct TransportTests {
    @Test("a device over TLS receives its push and its ACK deletes it, with an ECDSA or an RSA certificate", arguments: [false, true])
    func tlsDelivery(rsa: Bool) async throws {
        let pki = try await TestPKI.make(rsa: rsa)
        defer { pki.remove() }
        try await TestNode.with(pki.environment) { node in
            let device = try await node.device("tls-device", over: "tls", pki: pki)
            let id = try await node.push("tls-device", "sealed")
            let pushes = try await device.pushes(1)
            #expect(pushes.map(\.id) == [id] && pushes.map(\.text) == ["sealed"])
            device.acknowledge(id)
            try await eventually("the ACK deleted it") { try await node.pending("tls-device") == 0 }
            await device.close()
            #expect(try await node.metric("herald_tls_handshakes_total") >= 1)
        }
    }

    @Test("devices over ws:// and wss:// (Herald's client) receive pushes in order and keep every session rule", arguments: ["ws", "wss"])
    func webSocketDelivery(transport: String) async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        try await TestNode.with(pki.environment) { node in
            let device = try await node.device("web-\(transport)", over: transport, pki: pki)
            let first = try await node.push("web-\(transport)", "one")
            let second = try await node.push("web-\(transport)", "two")
            #expect(try await device.pushes(2).map(\.id) == [first, second])
            device.acknowledge(first)
            device.acknowledge(second)
            try await eventually("both deleted") { try await node.pending("web-\(transport)") == 0 }
            // Takeover (protocol.md rule 5) holds across transports: a TCP connection with the
            // same client id replaces the WebSocket one, which gets ERROR 409.
            let replacement = try await node.device("web-\(transport)")
            guard case .error(409, _) = try await device.next() else {
                Issue.record("expected ERROR 409 on the replaced WebSocket session")
                return
            }
            await replacement.close()
        }
    }

    @Test("Python's ssl and the websockets package speak the device protocol over ws:// and wss://")
    func pythonWebSocketDevice() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        try await TestNode.with(pki.environment) { node in
            for (scheme, port) in [("ws", try node.port("ws")), ("wss", try node.port("wss"))] {
                let host = scheme == "wss" ? "localhost" : "127.0.0.1"
                let result = try await pythonDevice(
                    ["deliver", "\(scheme)://\(host):\(port)/ws", "\(node.httpPort)", "py-\(scheme)"] + (scheme == "wss" ? [pki.ca] : [])
                )
                #expect(try result.string("pushed") == result.string("received"))
                #expect(try result.string("payload") == "over \(scheme)")
                #expect(try result.bool("pong"))
                try await eventually("the ACK deleted it") { try await node.pending("py-\(scheme)") == 0 }
            }
        }
    }

    @Test("WebSocket hostile input: text 1003, max_frame + 1 1009, fragments past max_frame 1009, a ping flood 1008; a normal device is still served")
    func webSocketHostileInput() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        try await TestNode.with(pki.environment.merging(["HERALD_MAX_FRAME": "8192"]) { $1 }) { node in
            let ws = "ws://127.0.0.1:\(try node.port("ws"))/ws"
            let wss = "wss://localhost:\(try node.port("wss"))/ws"
            #expect(try await pythonDevice(["text", ws]).int("close_code") == 1003)
            #expect(try await pythonDevice(["oversize", ws, "8192"]).int("close_code") == 1009)
            let fragmented = try await pythonDevice(["fragments", ws, "8192"])
            #expect(try fragmented.bool("welcomed"), "a HELLO in three fragments is one frame")
            #expect(try fragmented.int("close_code") == 1009)
            #expect(try await pythonDevice(["pingflood", wss, pki.ca]).int("close_code") == 1008)
            #expect(try await node.metric(#"herald_websocket_closes_total{code="1009"}"#) == 2)
            let device = try await node.device("after-the-storm", over: "wss", pki: pki)
            let id = try await node.push("after-the-storm", "still served")
            #expect(try await device.pushes(1).map(\.id) == [id])
        }
    }

    @Test("bad upgrade requests get an HTTP 4xx: wrong path 404, no upgrade 426, bad key 400, forbidden origin 403, huge head 431")
    func badUpgrades() async throws {
        try await TestNode.with(["HERALD_WS_ADDR": "127.0.0.1:0", "HERALD_WS_ALLOWED_ORIGINS": "https://app.example.com"]) { node in
            let port = try node.port("ws")
            let upgrade = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]
            #expect(try await HTTPTestClient.get("/elsewhere", port: port, headers: upgrade).status == 404)
            #expect(try await HTTPTestClient.get("/ws", port: port).status == 426)
            let badKey = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "7")]
            #expect(try await HTTPTestClient.get("/ws", port: port, headers: badKey).status == 400)
            #expect(try await HTTPTestClient.get("/ws", port: port, headers: upgrade + [("Origin", "https://evil.example.com")]).status == 403)
            let huge = try await HTTPTestClient.get("/ws", port: port, headers: upgrade + [("X-Padding", String(repeating: "p", count: 20_000))])
            #expect(huge.status == 431)
            #expect(huge.body.contains(#""code": "headers_too_large""#))
            // The allowed origin, and a client without an Origin (a device, not a browser), upgrade.
            let allowed = try await HTTPTestClient.get("/ws", port: port, headers: upgrade + [("Origin", "https://app.example.com")], timeout: .seconds(5))
            #expect(allowed.status == 101)
        }
    }

    @Test("openssl s_client: TLS 1.0 and 1.1 refused, 1.2 and 1.3 accepted, the chain served and verified")
    func opensslInterop() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        try await TestNode.with(pki.environment) { node in
            let port = try node.port("tls")
            for old in ["-tls1", "-tls1_1"] {
                let refused = try await opensslClient(port: port, [old, "-cipher", "DEFAULT:@SECLEVEL=0"])
                #expect(refused.status != 0, "\(old) must be refused")
            }
            for version in ["-tls1_2", "-tls1_3"] {
                let accepted = try await opensslClient(port: port, [version, "-CAfile", pki.ca, "-showcerts"])
                #expect(accepted.standardOutput.contains("Verify return code: 0 (ok)"), "\(version): \(accepted.standardOutput)")
                #expect(accepted.standardOutput.components(separatedBy: "-----BEGIN CERTIFICATE-----").count - 1 == 2, "leaf and intermediate served")
            }
            #expect(try await node.metric(#"herald_tls_handshake_failures_total{reason="protocol_version"}"#) >= 2)
        }
    }

    @Test("a stalled handshake is closed at the hello timeout, garbage instead of a ClientHello at once; both counted; a device is still served")
    func stalledAndGarbageHandshakes() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        // 5 s, not 1: the garbage must be read before the timeout to count as not TLS, and a
        // loaded machine running the whole suite has delayed that read past a second.
        try await TestNode.with(pki.environment.merging(["HERALD_HELLO_TIMEOUT_S": "5"]) { $1 }) { node in
            let garbage = try await RawConnection.connect(port: try node.port("tls"))
            try await garbage.send(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            let silent = try await RawConnection.connect(port: try node.port("tls"))
            let upgradeNever = try await RawConnection.connect(port: try node.port("ws"))
            _ = try await garbage.waitForClose(timeout: .seconds(20))
            _ = try await silent.waitForClose(timeout: .seconds(20))
            _ = try await upgradeNever.waitForClose(timeout: .seconds(20))
            // Counted as the node closes them, which the client may see first: read until counted.
            try await eventually("both failures counted", timeout: .seconds(20)) {
                let timeouts = try await node.metric(#"herald_tls_handshake_failures_total{reason="timeout"}"#)
                let notTLS = try await node.metric(#"herald_tls_handshake_failures_total{reason="not_tls"}"#)
                return timeouts >= 1 && notTLS >= 1
            }
            #expect(try await node.metric(#"herald_tls_handshake_failures_total{reason="timeout"}"#) == 1)
            #expect(try await node.metric(#"herald_tls_handshake_failures_total{reason="not_tls"}"#) == 1)
            let device = try await node.device("patient", over: "tls", pki: pki)
            let id = try await node.push("patient", "served")
            #expect(try await device.pushes(1).map(\.id) == [id])
        }
    }

    @Test("a TLS device that completes the handshake and never reads is cut off by the write-buffer bound")
    func tlsDeviceThatNeverReads() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        try await TestNode.with(pki.environment.merging(["HERALD_WRITE_STALL_TIMEOUT_S": "1"]) { $1 }) { node in
            let stuck = try await RawConnection.connect(port: try node.port("tls"), tls: try pki.clientContext(), smallReceiveBuffer: true)
            try await stuck.send(.hello(Hello(clientID: "stuck")))
            _ = try await stuck.waitForFrames(1)
            try await stuck.stopReading()
            let payload = ByteBuffer(repeating: 0x61, count: 4096)
            var broadcasts = 0
            try await eventually("the stalled TLS device is closed", timeout: .seconds(20), poll: .milliseconds(20)) {
                if broadcasts < 20_000 {
                    for _ in 0..<50 { _ = node.node.router.broadcast(payload) }
                    broadcasts += 50
                }
                return node.node.registry.connection(for: "stuck") == nil
            }
            #expect(broadcasts < 20_000, "closed while the server still had broadcasts to write")
            let device = try await node.device("reader", over: "tls", pki: pki)
            let id = try await node.push("reader", "served")
            #expect(try await device.pushes(1).map(\.id) == [id])
        }
    }

    @Test("HERALD_TLS_MAX_HANDSHAKES: with the handshakes in progress at the bound the TLS listener stops accepting, and takes the next device once one is over")
    func handshakeBound() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        // A hello timeout long enough that both stalled sockets are surely in their handshakes
        // at once, however loaded the machine (they are accepted one after the other).
        let environment = pki.environment.merging(["HERALD_TLS_MAX_HANDSHAKES": "2", "HERALD_HELLO_TIMEOUT_S": "3"]) { $1 }
        try await TestNode.with(environment) { node in
            // Two sockets that never send a ClientHello hold both places until the hello timeout.
            let stalled = [try await RawConnection.connect(port: try node.port("tls")), try await RawConnection.connect(port: try node.port("tls"))]
            try await eventually("the listener paused") { try await node.metric("herald_tls_accept_paused_total") >= 1 }
            // This device waits in the listen backlog: its handshake can only begin, and its
            // WELCOME only come, once a stalled handshake has timed out.
            let device = try await withTimeout("a device past the bound", .seconds(15)) { try await node.device("patient", over: "tls", pki: pki) }
            #expect(try await node.metric(#"herald_tls_handshake_failures_total{reason="timeout"}"#) >= 1)
            let id = try await node.push("patient", "after the wait")
            #expect(try await device.pushes(1).map(\.id) == [id])
            for connection in stalled { await connection.close() }
        }
    }

    @Test("mutual TLS: a device certificate naming the client id is accepted, another id is 401, no certificate fails the handshake")
    func mutualTLS() async throws {
        let pki = try await TestPKI.make(devices: ["dev-1"])
        defer { pki.remove() }
        try await TestNode.with(pki.environment.merging(["HERALD_TLS_CLIENT_CA": pki.ca]) { $1 }) { node in
            let device = try await node.device("dev-1", over: "tls", pki: pki, certificateOf: "dev-1")
            let id = try await node.push("dev-1", "for the certified")
            #expect(try await device.pushes(1).map(\.id) == [id])
            await #expect(throws: DeviceClientError.rejected(code: 401, reason: "authentication failed")) {
                _ = try await node.device("dev-2", over: "wss", pki: pki, certificateOf: "dev-1")
            }
            await #expect(throws: (any Error).self) {
                _ = try await node.device("dev-1", over: "tls", pki: pki)
            }
            let port = try node.port("tls")
            let withCertificate = try await opensslClient(port: port, ["-CAfile", pki.ca, "-cert", pki.deviceCertificate("dev-1"), "-key", pki.deviceKey("dev-1")])
            #expect(withCertificate.standardOutput.contains("Verify return code: 0 (ok)"))
            try await eventually("the missing certificate counted") {
                try await node.metric(#"herald_tls_handshake_failures_total{reason="no_client_certificate"}"#) >= 1
            }
        }
    }

    @Test("session resumption: a reconnecting client resumes its TLS 1.2 or 1.3 session (mutual TLS too) and is welcomed", arguments: ["-tls1_2", "-tls1_3"])
    func sessionResumption(version: String) async throws {
        let pki = try await TestPKI.make(devices: ["dev-1"])
        defer { pki.remove() }
        try await TestNode.with(pki.environment.merging(["HERALD_TLS_CLIENT_CA": pki.ca]) { $1 }) { node in
            let session = pki.directory + "/session\(version)"
            // A HELLO, so that the server writes (WELCOME) and with it its TLS 1.3 ticket; then
            // s_client ends when its standard input does: once the WELCOME (naming the node)
            // has arrived, or after ten seconds.
            func connect(_ sessionArgument: String) async throws -> String {
                let output = pki.directory + "/s_client\(version)\(sessionArgument).out"
                let hello = "printf '\\000\\000\\000\\015\\001\\001\\000\\005dev-1\\000\\000\\000\\000'; "
                    + "for _ in $(seq 100); do grep -q test-node \(output) && break; sleep 0.1; done"
                let command = "(\(hello)) | openssl s_client -connect 127.0.0.1:\(try node.port("tls")) \(version) -CAfile \(pki.ca) -cert \(pki.deviceCertificate("dev-1")) -key \(pki.deviceKey("dev-1")) \(sessionArgument) \(session) > \(output) 2>&1; cat \(output)"
                return try await runTool("bash", ["-c", command]).standardOutput
            }
            let first = try await connect("-sess_out")
            #expect(first.contains("New, TLSv1"))
            #expect(first.contains("test-node"), "WELCOME names the node")
            let second = try await connect("-sess_in")
            #expect(second.contains("Reused, TLSv1"), "\(second)")
            #expect(second.contains("test-node"), "a resumed session keeps the certificate's names: WELCOME, not 401")
        }
    }

    @Test("HTTPS API: curl pushes over TLS; /v1/stats lists every bound listener")
    func httpsAPI() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        try await TestNode.with(pki.environment) { node in
            let device = try await node.device("curl-target")
            let https = try node.port("https")
            let curl = try await runTool("curl", [
                "-s", "--cacert", pki.ca, "-X", "POST", "https://localhost:\(https)/v1/push",
                "-d", #"{"client_id": "curl-target", "data": "over https"}"#, "-w", "\n%{http_code}",
            ])
            #expect(curl.standardOutput.hasSuffix("\n202"), "\(curl.standardOutput) \(curl.standardError)")
            #expect(try await device.pushes(1).map(\.text) == ["over https"])
            let stats = try JSONFields(try await HTTPTestClient.get("/v1/stats", port: node.httpPort).body)
            let listeners = try #require(stats.object["listeners"] as? [String: String])
            for name in ["tcp", "tls", "ws", "wss", "http", "https"] {
                #expect(listeners[name] == "127.0.0.1:\(try node.port(name))")
            }
        }
    }

    @Test("SIGHUP reloads the certificate for new handshakes; open connections stay; a broken file is refused and the old one stays")
    func certificateReload() async throws {
        let pki = try await TestPKI.make(commonName: "first.herald.test")
        defer { pki.remove() }
        let herald = try HeraldTestProcess(environment: pki.environment.merging([
            "HERALD_NODE_ID": "reload", "HERALD_TCP_ADDR": "127.0.0.1:0", "HERALD_HTTP_ADDR": "127.0.0.1:0", "HERALD_LOG_LEVEL": "info",
        ]) { $1 })
        defer { kill(herald.process.processIdentifier, SIGTERM) }
        let tlsPort = try await herald.boundPort("transport=tls")
        let httpPort = try await herald.boundPort("HTTP API bound")
        func servedSubject() async throws -> String {
            let output = try await opensslClient(port: tlsPort, ["-CAfile", pki.ca]).standardOutput
            return output.split(separator: "\n").first { $0.hasPrefix("subject=") }.map(String.init) ?? output
        }
        #expect(try await servedSubject().contains("first.herald.test"))
        var configuration = DeviceClientConfiguration(port: tlsPort, clientID: "stays", sendsPings: false)
        configuration.transport = DeviceClientTransport(tls: .init(context: try pki.clientContext(), serverName: "localhost"), webSocketPath: nil)
        let device = try await DeviceClient.connect(configuration)

        try await pki.issue(commonName: "second.herald.test")
        kill(herald.process.processIdentifier, SIGHUP)
        try await eventually("the reload logged") { herald.stderr.contains("TLS certificate reloaded") }
        #expect(try await servedSubject().contains("second.herald.test"))

        try "not a certificate\n".write(toFile: pki.certificate, atomically: true, encoding: .utf8)
        kill(herald.process.processIdentifier, SIGHUP)
        try await eventually("the refusal logged") { herald.stderr.contains("TLS certificate reload refused") }
        #expect(try await servedSubject().contains("second.herald.test"), "the previous certificate stays in use")
        #expect(herald.stderr.components(separatedBy: "reload refused").count == 2, "one line for one refusal")

        // The connection opened before both reloads is still served.
        let pushed = try await HTTPTestClient.post("/v1/push", port: httpPort, json: #"{"client_id": "stays", "data": "after reloads"}"#)
        #expect(pushed.status == 202)
        #expect(try await device.pushes(1).map(\.text) == ["after reloads"])
        #expect(herald.process.isRunning)
        await device.close()
    }

    @Test("listener configuration: an empty address turns a listener off; TLS listeners need a certificate; some device listener must stay")
    func listenerConfiguration() throws {
        let tlsOnly = try NodeConfiguration.load([
            "HERALD_TCP_ADDR": "", "HERALD_HTTP_ADDR": " ", "HERALD_TLS_CERT": "/c.pem", "HERALD_TLS_KEY": "/k.pem", "HERALD_WSS_ADDR": "",
        ])
        #expect(tlsOnly.tcpAddress == nil && tlsOnly.httpAddress == nil && tlsOnly.wssAddress == nil && tlsOnly.wsAddress == nil)
        #expect(tlsOnly.tlsAddress?.description == "0.0.0.0:9443" && tlsOnly.httpsAddress?.description == "0.0.0.0:8443")
        let plain = try NodeConfiguration.load([:])
        #expect(plain.tcpAddress?.port == 9988 && plain.tlsAddress == nil && plain.wsAddress == nil && plain.httpsAddress == nil)
        #expect(throws: ConfigurationError.self) { try NodeConfiguration.load(["HERALD_TLS_ADDR": "0.0.0.0:9443"]) }
        #expect(throws: ConfigurationError.self) { try NodeConfiguration.load(["HERALD_TLS_CERT": "/c.pem"]) }
        #expect(throws: ConfigurationError.self) { try NodeConfiguration.load(["HERALD_TCP_ADDR": ""]) }
        #expect(throws: ConfigurationError.self) { try NodeConfiguration.load(["HERALD_WS_ALLOWED_ORIGINS": "app.example.com"]) }
    }
}
