// swift-tools-version:6.1
import PackageDescription

// libFuzzer targets, kept out of the main package so that its build stays lean. Build and run
// with scripts/fuzz (which passes -sanitize=fuzzer,address and -parse-as-library).
let package = Package(
    name: "herald-fuzz",
    dependencies: [.package(name: "herald", path: "..")],
    targets: [
        // Device and relay frame decoders: never crash, never hang, and whatever they accept
        // re-encodes to a frame that decodes to the same value.
        .executableTarget(
            name: "FrameFuzzer",
            dependencies: [.product(name: "PushProtocol", package: "herald")]
        )
    ]
)
