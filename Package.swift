// swift-tools-version:6.1
import PackageDescription

// Swift 6 language mode everywhere; nonisolated async functions run on the caller's
// executor, so a Connection actor on an event loop calls the in-memory store without a hop.
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("NonisolatedNonsendingByDefault"),
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "herald",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "herald", targets: ["PushApp"]),
        .library(name: "HeraldClient", targets: ["HeraldClient"]),
        .executable(name: "herald-bench", targets: ["HeraldBench"]),
        // The wire codec alone, for the fuzz targets in Fuzz/.
        .library(name: "PushProtocol", targets: ["PushProtocol"]),
        // The domain actors and the in-memory store, for the micro-benchmarks in Benchmarks/.
        .library(name: "HeraldActors", targets: ["Actors"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        // TLS for devices and the HTTP API (BoringSSL inside; Docs/architecture.md says what it costs).
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        // ConfigurationSupport (swift-configuration) is not used: Herald reads HERALD_* itself.
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1", traits: []),
        .package(url: "https://github.com/vapor/jwt-kit.git", from: "5.8.0"),
        // Already built for jwt-kit; Herald uses its HMAC for the relay links' token.
        .package(url: "https://github.com/apple/swift-crypto.git", "3.0.0"..<"5.0.0"),
        // herald-bench's latency percentiles (HdrHistogram; small: swift-numerics only).
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
    ],
    targets: [
        // The frames of protocol.md and a sans-IO codec. NIOCore only.
        .target(
            name: "PushProtocol",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        // OTP supervision on top of swift-service-lifecycle. Nothing push-specific.
        .target(
            name: "Supervision",
            dependencies: [
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Domain actors: connection, registry, router; the PushStore protocol and its in-memory driver.
        .target(
            name: "Actors",
            dependencies: [
                "PushProtocol",
                "Supervision",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The transports beneath a device session: TLS (reloadable credentials), WebSocket,
        // the PROXY protocol. Each hands the session the device protocol's bytes.
        .target(
            name: "Transport",
            dependencies: [
                "Actors",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        // hiredis, used only as a RESP reply parser (libhiredis-dev).
        .systemLibrary(name: "CHiredis", pkgConfig: "hiredis", providers: [.apt(["libhiredis-dev"])]),
        // The Redis implementation of PushStore: the only code that touches hiredis pointers.
        .target(
            name: "RedisStore",
            dependencies: [
                "Actors",
                "CHiredis",
                "PushProtocol",
                "Supervision",
                .product(name: "Crypto", package: "swift-crypto"),   // the scripts' SHA-1, for EVALSHA
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The cluster: membership and route table in Redis, relay links between nodes.
        .target(
            name: "Cluster",
            dependencies: [
                "Actors",
                "PushProtocol",
                "RedisStore",
                "Supervision",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // libsystemd's sd_notify (libsystemd-dev).
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        // READY / STATUS / WATCHDOG / STOPPING for systemd; a no-op without NOTIFY_SOCKET.
        .target(
            name: "SystemdNotify",
            dependencies: [
                "CSystemd",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The device client library: used by `herald device`, the tests and the load generator.
        .target(
            name: "HeraldClient",
            dependencies: [
                "PushProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // The load generator: devices through the client library and the wire codec, the
        // publisher through NIO's HTTP/1 client codec; never imports PushApp.
        .executableTarget(
            name: "HeraldBench",
            dependencies: [
                "HeraldClient",
                "PushProtocol",
                "HeraldTestSupport",   // LoopbackPort: the ports of the servers it starts
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Crypto", package: "swift-crypto"),   // HS256 device tokens (storm --jwt-secret)
            ],
            swiftSettings: swiftSettings
        ),
        // The composition root and the `herald` executable.
        .executableTarget(
            name: "PushApp",
            dependencies: [
                "Actors",
                "Cluster",
                "SystemdNotify",
                "RedisStore",
                "Supervision",
                "PushProtocol",
                "HeraldClient",
                "Transport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // Helpers shared by the test targets: a manual clock, bounded waiting, a small HTTP client.
        .target(
            name: "HeraldTestSupport",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PushProtocolTests",
            dependencies: ["PushProtocol"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "SupervisionTests",
            dependencies: ["Supervision", "HeraldTestSupport", .product(name: "ServiceLifecycleTestKit", package: "swift-service-lifecycle")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ActorsTests",
            dependencies: [
                "Actors", "HeraldTestSupport", .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "StoreTests",
            dependencies: ["Actors", "RedisStore", "HeraldTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ClusterUnitTests",
            dependencies: [
                "Cluster", "RedisStore", "HeraldTestSupport",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PushAppTests",
            dependencies: [
                "PushApp", "HeraldClient", "HeraldTestSupport", "Transport",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                // PushFastPath's tests on NIO's testing channel speak NIO's HTTP/1 types.
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
