import Foundation
import HeraldClient
import HeraldTestSupport
import Logging
import NIOCore
import NIOPosix
import PushProtocol
import ServiceLifecycleTestKit
import Testing

@testable import PushApp

/// A real Herald node in this process, on loopback ports chosen by the kernel.
struct TestNode: Sendable {
    let node: HeraldNode
    let devicePort: Int
    let httpPort: Int
    let shutdown: GracefulShutdownTestTrigger

    /// Starts a node with `environment` over test defaults, runs `body`, then shuts the node
    /// down gracefully and checks it stopped cleanly. With `waitForStore` (the default), `body`
    /// starts once every Redis connection is up: a node that has just bound its ports may still
    /// be asking the sentinels for the master, and a push then is a correct 503 the test did
    /// not ask for. Tests of a node that cannot connect pass `false`.
    static func with(
        _ environment: [String: String] = [:],
        waitForStore: Bool = true,
        _ body: @Sendable (TestNode) async throws -> Void
    ) async throws {
        var values = [
            "HERALD_NODE_ID": "test-node", "HERALD_TCP_ADDR": "127.0.0.1:0", "HERALD_HTTP_ADDR": "127.0.0.1:0",
            "HERALD_RELAY_ADDR": "127.0.0.1:0",
            "HERALD_DRAIN_TIMEOUT_S": "2",
        ]
        values.merge(environment) { $1 }
        let configuration = try NodeConfiguration.load(values)
        var logger = Logger(label: "test-node")
        // HERALD_TEST_LOG=debug (or info, ...) shows the in-process node's log when chasing a failure.
        logger.logLevel = ProcessInfo.processInfo.environment["HERALD_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .critical
        let node = try await HeraldNode.make(configuration: configuration, logger: logger)
        try await testGracefulShutdown { trigger in
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await node.run() }
                try await eventually("ports bound") { node.devicePort != nil && node.httpPort != nil }
                if waitForStore, let redis = node.redis {
                    try await eventually("every Redis connection up", timeout: .seconds(30)) { redis.isConnected }
                }
                let test = TestNode(node: node, devicePort: node.devicePort!, httpPort: node.httpPort!, shutdown: trigger)
                do {
                    try await body(test)
                } catch {
                    trigger.triggerGracefulShutdown()
                    try? await group.waitForAll()
                    throw error
                }
                trigger.triggerGracefulShutdown()
                try await group.waitForAll()  // bounded by the test's time limit
            }
        }
    }

    func device(
        _ clientID: String, token: String = "", heartbeat: UInt16 = 0, autoAcknowledge: Bool = false
    ) async throws -> DeviceClient {
        try await DeviceClient.connect(
            DeviceClientConfiguration(
                port: devicePort, clientID: clientID, token: token, heartbeatSeconds: heartbeat,
                autoAcknowledge: autoAcknowledge, sendsPings: false
            )
        )
    }

    func raw() async throws -> RawConnection {
        try await RawConnection.connect(port: devicePort)
    }

    @discardableResult
    func push(_ clientID: String, _ data: String, ttl: Int? = nil, headers: [(String, String)] = []) async throws -> String {
        let ttlField = ttl.map { ", \"ttl_s\": \($0)" } ?? ""
        let response = try await HTTPTestClient.post(
            "/v1/push", port: httpPort, json: #"{"client_id": "\#(clientID)", "data": "\#(data)"\#(ttlField)}"#, headers: headers
        )
        try #require(response.status == 202, "push answered \(response.status) \(response.body)")
        return try JSONFields(response.body).string("id")
    }

    /// Pushes `data` to `clientID` until the node accepts it (a store coming back answers 503
    /// first), within `timeout`; the message id.
    @discardableResult
    func pushOnceAccepted(_ clientID: String, _ data: String, timeout: Duration = .seconds(15)) async throws -> String {
        var id = ""
        try await eventually("pushes accepted again", timeout: timeout) {
            let response = try await HTTPTestClient.post("/v1/push", port: httpPort, json: #"{"client_id": "\#(clientID)", "data": "\#(data)"}"#)
            if response.status == 202 { id = try JSONFields(response.body).string("id") }
            return response.status == 202
        }
        return id
    }

    func pending(_ clientID: String) async throws -> Int {
        let response = try await HTTPTestClient.get("/v1/clients/\(clientID)", port: httpPort)
        return try JSONFields(response.body).int("pending")
    }
}

/// Reads fields of a JSON object in tests.
struct JSONFields {
    let object: [String: Any]
    init(_ text: String) throws {
        object = try #require(try JSONSerializationShim.object(text))
    }
    func string(_ key: String) throws -> String { try #require(object[key] as? String, "\(key) in \(object)") }
    func int(_ key: String) throws -> Int { try #require(object[key] as? Int, "\(key) in \(object)") }
    func bool(_ key: String) throws -> Bool { try #require(object[key] as? Bool, "\(key) in \(object)") }
    func strings(_ key: String) throws -> [String] { try #require(object[key] as? [String], "\(key) in \(object)") }
    func isNull(_ key: String) -> Bool { object.keys.contains(key) && object[key] is NSNullShim }
}

extension DeviceClient {
    /// The next event, failing after `timeout`.
    func next(timeout: Duration = .seconds(10)) async throws -> DeviceEvent {
        let event = try await withTimeout("next device event", timeout) { await self.nextEvent() }
        return event ?? .closed
    }

    /// The next `count` pushes (skipping PONGs), as (id, text).
    func pushes(_ count: Int, timeout: Duration = .seconds(10)) async throws -> [(id: String, text: String)] {
        var result: [(String, String)] = []
        while result.count < count {
            switch try await next(timeout: timeout) {
            case .push(let id, let payload): result.append((id, String(buffer: payload)))
            case .pong: continue
            case let other: throw UnexpectedEvent(event: other)
            }
        }
        return result
    }
}

struct UnexpectedEvent: Error {
    let event: DeviceEvent
}
