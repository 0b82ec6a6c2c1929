import Foundation
import HeraldClient
import HeraldTestSupport
import NIOCore
import PushProtocol
import Testing

@testable import PushApp
@testable import Transport

/// The PROXY protocol and X-Forwarded-For: the parser on its own, then a real HAProxy and a
/// real nginx, configured from the samples in deploy/, in front of a node.
@Suite("Proxies: PROXY protocol v1/v2, HAProxy, nginx (issue: transports)", .timeLimit(.minutes(2)))
struct ProxyTests {
    @Test("PROXY v1 and v2 headers parse to the device's address; LOCAL and UNKNOWN leave the socket's; bad ones are refused")
    func parser() throws {
        func parse(_ bytes: [UInt8]) -> ProxyHeaderHandler.Parsed { ProxyHeaderHandler.parse(ByteBuffer(bytes: bytes)) }
        let v1 = Array("PROXY TCP4 192.0.2.7 10.0.0.1 51000 9988\r\n".utf8)
        #expect(parse(v1 + [0, 0]) == .header(try SocketAddress(ipAddress: "192.0.2.7", port: 51000), v1.count))
        #expect(parse(Array(v1.prefix(20))) == .needMore)
        #expect(parse(Array("PROXY TCP6 2001:db8::7 ::1 51000 9988\r\n".utf8)) == .header(try SocketAddress(ipAddress: "2001:db8::7", port: 51000), 39))
        #expect(parse(Array("PROXY UNKNOWN\r\n".utf8)) == .header(nil, 15))
        if case .invalid = parse(Array("PROXY TCP4 999.0.2.7 10.0.0.1 51000 9988\r\n".utf8)) {} else { Issue.record("a bad address is refused") }
        if case .invalid = parse(Array(repeating: UInt8(ascii: "P"), count: 1) + Array("ROXY TCP4 ".utf8) + Array(repeating: 0x41, count: 120)) {} else {
            Issue.record("a v1 line past 107 bytes is refused")
        }
        let signature = ProxyHeaderHandler.v2Signature
        let v2: [UInt8] = signature + [0x21, 0x11, 0x00, 0x0C, 198, 51, 100, 9, 10, 0, 0, 1, 0xC3, 0x50, 0x27, 0x04]
        #expect(parse(v2) == .header(try SocketAddress(ipAddress: "198.51.100.9", port: 50000), 28))
        #expect(parse(Array(v2.prefix(14))) == .needMore)
        #expect(parse(signature + [0x20, 0x00, 0x00, 0x00]) == .header(nil, 16), "LOCAL: a health check")
        if case .invalid = parse(signature + [0x21, 0x11, 0xFF, 0xFF]) {} else { Issue.record("a v2 header past the bound is refused") }
        if case .invalid = parse([0, 0, 0, 10, 1]) {} else { Issue.record("a device frame is no header") }
        #expect(ProxyHeaderHandler.mayBeHeader(ByteBuffer(bytes: Array("PROX".utf8))))
        #expect(!ProxyHeaderHandler.mayBeHeader(ByteBuffer(bytes: [0x16, 0x03, 0x01])), "a ClientHello is no header")
    }

    @Test("trusted proxies: CIDR blocks of IPv4 and IPv6, IPv4-mapped addresses as IPv4; X-Forwarded-For's rightmost untrusted entry")
    func trustedProxies() throws {
        guard case .success(let trusted) = TrustedProxies.parse(["10.0.0.0/8", "192.0.2.1", "2001:db8::/32"]) else {
            Issue.record("parse")
            return
        }
        #expect(trusted.contains(try SocketAddress(ipAddress: "10.200.3.4", port: 1)))
        #expect(trusted.contains(try SocketAddress(ipAddress: "::ffff:10.1.1.1", port: 1)))
        #expect(trusted.contains(try SocketAddress(ipAddress: "2001:db8:1::5", port: 1)))
        #expect(!trusted.contains(try SocketAddress(ipAddress: "192.0.2.2", port: 1)))
        #expect(!trusted.contains(try SocketAddress(ipAddress: "11.0.0.1", port: 1)))
        if case .success = TrustedProxies.parse(["10.0.0.0/33"]) { Issue.record("a prefix past 32 is refused") }
        let forwarded = forwardedFor(["203.0.113.9, 198.51.100.2", "10.0.0.7"], trusted: trusted)
        #expect(forwarded == (try SocketAddress(ipAddress: "198.51.100.2", port: 0)))
    }

    @Test("straight to the node: a PROXY header from an untrusted address, or none from a trusted proxy, closes the connection; a v1 header from a trusted one names the device")
    func headerRules() async throws {
        try await TestNode.with(["HERALD_PROXY_PROTOCOL": "tcp", "HERALD_TRUSTED_PROXIES": "127.0.0.1/32"]) { node in
            let missing = try await RawConnection.connect(port: node.devicePort)
            try await missing.send(.hello(Hello(clientID: "no-header")))
            #expect(try await missing.waitForClose().isEmpty, "closed without a word")
            let proxied = try await RawConnection.connect(port: node.devicePort)
            try await proxied.send(Array("PROXY TCP4 192.0.2.7 127.0.0.1 51000 9988\r\n".utf8))
            try await proxied.send(.hello(Hello(clientID: "behind-proxy")))
            #expect(try await proxied.waitForFrames(1).first.map { if case .welcome = $0 { true } else { false } } == true)
            let status = try JSONFields(try await HTTPTestClient.get("/v1/clients/behind-proxy", port: node.httpPort).body)
            #expect(try status.string("address") == "192.0.2.7")
            await proxied.close()
            #expect(try await node.metric("herald_proxy_protocol_refused_total") == 1)
        }
        try await TestNode.with(["HERALD_PROXY_PROTOCOL": "on", "HERALD_TRUSTED_PROXIES": "192.0.2.0/24"]) { node in
            let spoofer = try await RawConnection.connect(port: node.devicePort)
            try await spoofer.send(Array("PROXY TCP4 203.0.113.1 127.0.0.1 51000 9988\r\n".utf8))
            #expect(try await spoofer.waitForClose().isEmpty)
            #expect(try await node.metric("herald_proxy_protocol_refused_total") == 1)
            // A direct device (no header, not a proxy) is served as before.
            let direct = try await node.device("direct")
            let id = try await node.push("direct", "served")
            #expect(try await direct.pushes(1).map(\.id) == [id])
        }
    }

    @Test("a real HAProxy with send-proxy-v2 (deploy/haproxy/herald-tcp.cfg): the auth-failure limit applies to each device's own address, over TCP and TLS passthrough")
    func haproxySendProxyV2() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        let environment = pki.environment.merging([
            "HERALD_PROXY_PROTOCOL": "tcp,tls", "HERALD_TRUSTED_PROXIES": "127.0.0.1/32",
            "HERALD_DEVICE_JWT_SECRET": secret, "HERALD_MAX_AUTH_FAILURES": "2",
        ]) { $1 }
        try await TestNode.with(environment) { node in
            let (tlsFront, tcpFront) = (try LoopbackPort.free(), try LoopbackPort.free())
            let configuration = try deployConfiguration("deploy/haproxy/herald-tcp.cfg", replacing: [
                ("bind :9443", "bind 127.0.0.1:\(tlsFront)"), ("bind :9988", "bind 127.0.0.1:\(tcpFront)"),
                ("10.0.0.11:9443", "127.0.0.1:\(try node.port("tls"))"), ("10.0.0.11:9988", "127.0.0.1:\(node.devicePort)"),
                ("maxconn 200000", "maxconn 1000"),
            ], droppingLinesWith: ["10.0.0.12"])
            let file = pki.directory + "/haproxy.cfg"
            try configuration.write(toFile: file, atomically: true, encoding: .utf8)
            let haproxy = try await ProxyProcess("/usr/sbin/haproxy", ["-f", file, "-db"], port: tcpFront)
            defer { haproxy.stop() }
            try await eventually("HAProxy listens for TLS") { LoopbackPort.acceptsConnections(tlsFront) }

            let refused = DeviceClientError.rejected(code: 401, reason: "authentication failed")
            let cutOff = DeviceClientError.rejected(code: 429, reason: "too many failed authentications from this address")
            func viaHAProxy(_ id: String, token: String, from source: String, tls: Bool = false) async throws -> DeviceClient {
                var configuration = DeviceClientConfiguration(port: tls ? tlsFront : tcpFront, clientID: id, token: token, sendsPings: false, localHost: source)
                if tls { configuration.transport = DeviceClientTransport(tls: .init(context: try pki.clientContext(), serverName: "localhost"), webSocketPath: nil) }
                return try await DeviceClient.connect(configuration)
            }
            for _ in 0..<2 {
                await #expect(throws: refused) { _ = try await viaHAProxy("mallory", token: "not.a.jwt", from: "127.0.0.2") }
            }
            await #expect(throws: cutOff) { _ = try await viaHAProxy("mallory", token: "not.a.jwt", from: "127.0.0.2") }
            // HAProxy's own address is not the one cut off: other devices behind it are served.
            let alice = try await viaHAProxy("alice", token: try await token(sub: "alice"), from: "127.0.0.3")
            let bob = try await viaHAProxy("bob", token: try await token(sub: "bob"), from: "127.0.0.4", tls: true)
            for (id, source, transport) in [("alice", "127.0.0.3", "tcp"), ("bob", "127.0.0.4", "tls")] {
                let status = try JSONFields(try await HTTPTestClient.get("/v1/clients/\(id)", port: node.httpPort).body)
                #expect(try status.string("address") == source)
                #expect(try status.string("transport") == transport)
            }
            let id = try await node.push("bob", "through haproxy")
            #expect(try await bob.pushes(1).map(\.id) == [id])
            await alice.close()
            await bob.close()
        }
    }

    @Test("a real HAProxy ending TLS (deploy/haproxy/herald-tls-termination.cfg) in front of the TCP listener")
    func haproxyTLSTermination() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        try await TestNode.with(["HERALD_PROXY_PROTOCOL": "tcp", "HERALD_TRUSTED_PROXIES": "127.0.0.1"]) { node in
            let front = try LoopbackPort.free()
            let bundle = pki.directory + "/haproxy.pem"
            try (try String(contentsOfFile: pki.certificate, encoding: .utf8) + String(contentsOfFile: pki.key, encoding: .utf8))
                .write(toFile: bundle, atomically: true, encoding: .utf8)
            let configuration = try deployConfiguration("deploy/haproxy/herald-tls-termination.cfg", replacing: [
                ("bind :9443 ssl crt /etc/haproxy/herald.pem", "bind 127.0.0.1:\(front) ssl crt \(bundle)"),
                ("10.0.0.11:9988", "127.0.0.1:\(node.devicePort)"), ("maxconn 200000", "maxconn 1000"),
            ], droppingLinesWith: ["10.0.0.12"])
            let file = pki.directory + "/haproxy.cfg"
            try configuration.write(toFile: file, atomically: true, encoding: .utf8)
            let haproxy = try await ProxyProcess("/usr/sbin/haproxy", ["-f", file, "-db"], port: front)
            defer { haproxy.stop() }
            var configuration2 = DeviceClientConfiguration(port: front, clientID: "terminated", sendsPings: false, localHost: "127.0.0.5")
            configuration2.transport = DeviceClientTransport(tls: .init(context: try pki.clientContext(), serverName: "localhost"), webSocketPath: nil)
            let device = try await DeviceClient.connect(configuration2)
            let status = try JSONFields(try await HTTPTestClient.get("/v1/clients/terminated", port: node.httpPort).body)
            #expect(try status.string("address") == "127.0.0.5")
            let id = try await node.push("terminated", "tls ended at haproxy")
            #expect(try await device.pushes(1).map(\.id) == [id])
            await device.close()
        }
    }

    @Test("a real nginx proxying WebSocket (deploy/nginx/herald-websocket.conf): X-Forwarded-For names the device when nginx is trusted, and only then")
    func nginxWebSocket() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        try await TestNode.with(["HERALD_WS_ADDR": "127.0.0.1:0", "HERALD_TRUSTED_PROXIES": "127.0.0.1"]) { node in
            let front = try LoopbackPort.free()
            let site = try deployConfiguration("deploy/nginx/herald-websocket.conf", replacing: [
                ("listen 443 ssl;", "listen 127.0.0.1:\(front) ssl;"), ("server_name push.example.com;", "server_name localhost;"),
                ("/etc/nginx/tls/push.example.com.pem", pki.certificate), ("/etc/nginx/tls/push.example.com.key", pki.key),
                ("10.0.0.11:9989", "127.0.0.1:\(try node.port("ws"))"),
            ], droppingLinesWith: ["10.0.0.12"])
            let prefix = pki.directory + "/nginx"
            try FileManager.default.createDirectory(atPath: prefix + "/logs", withIntermediateDirectories: true)
            let main = """
                worker_processes 1;
                error_log \(prefix)/logs/error.log;
                pid \(prefix)/nginx.pid;
                events { worker_connections 256; }
                http {
                    access_log off;
                    client_body_temp_path \(prefix)/body; proxy_temp_path \(prefix)/proxy;
                    fastcgi_temp_path \(prefix)/fastcgi; uwsgi_temp_path \(prefix)/uwsgi; scgi_temp_path \(prefix)/scgi;
                \(site)
                }
                """
            try main.write(toFile: prefix + "/nginx.conf", atomically: true, encoding: .utf8)
            let nginx = try await ProxyProcess("/usr/sbin/nginx", ["-p", prefix, "-c", prefix + "/nginx.conf", "-g", "daemon off;"], port: front)
            defer { nginx.stop() }
            let throughNginx = try await pythonDevice(
                ["deliver", "wss://localhost:\(front)/ws", "\(node.httpPort)", "via-nginx", pki.ca],
                environment: ["WS_SOURCE": "127.0.0.6"]
            )
            #expect(try throughNginx.string("address") == "127.0.0.6")
            #expect(try throughNginx.string("payload") == "over wss")
            // Straight to the node from an untrusted address, a forged X-Forwarded-For is ignored.
            let forged = try await pythonDevice(
                ["deliver", "ws://127.0.0.1:\(try node.port("ws"))/ws", "\(node.httpPort)", "forger"],
                environment: ["WS_SOURCE": "127.0.0.7", "WS_FORWARDED_FOR": "203.0.113.66"]
            )
            #expect(try forged.string("address") == "127.0.0.7")
        }
    }
}
