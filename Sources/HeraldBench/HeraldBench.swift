import ArgumentParser

/// `herald-bench`: load for Herald, from the device side, through the client library only
/// (it never imports the server). Docs/benchmarks.md and Docs/reliability.md use it.
@main
struct HeraldBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "herald-bench",
        abstract: "Load generator for Herald, built on the device client library.",
        subcommands: [Idle.self, Unicast.self, Broadcast.self, Cluster.self, Storm.self, IdleWorker.self]
    )
}

