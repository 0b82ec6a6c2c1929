import ArgumentParser
import Foundation

/// How a scenario prints its results.
struct OutputOptions: ParsableArguments {
    @Flag(help: "Print the report as one JSON object instead of a table.")
    var json = false

    @Option(help: "Also write the JSON report to this file.")
    var jsonFile: String?
}

/// The result of one scenario: named figures in the order they were measured.
struct Report: Encodable {
    struct Figure: Encodable {
        var name: String
        var value: Double
        var unit: String
    }

    var scenario: String
    var date = ISO8601DateFormatter().string(from: Date())
    var parameters: [String: String] = [:]
    var figures: [Figure] = []
    /// Messages or devices that did not arrive as they should; a correct run has none.
    var problems: [String] = []

    init(scenario: String, parameters: [String: String]) {
        self.scenario = scenario
        self.parameters = parameters
    }

    mutating func add(_ name: String, _ value: Double, _ unit: String = "") {
        figures.append(Figure(name: name, value: value, unit: unit))
    }

    /// Prints the report; throws (exit status 1) when it records a problem.
    func emit(_ options: OutputOptions) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let json = String(decoding: try encoder.encode(self), as: UTF8.self)
        if let file = options.jsonFile { try (json + "\n").write(toFile: file, atomically: true, encoding: .utf8) }
        if options.json {
            print(json)
        } else {
            print("herald-bench \(scenario), \(date)")
            print(parameters.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
            let width = figures.map(\.name.count).max() ?? 0
            for figure in figures {
                print("  " + figure.name.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + format(figure.value) + (figure.unit.isEmpty ? "" : " " + figure.unit))
            }
            for problem in problems { print("  PROBLEM: \(problem)") }
        }
        if !problems.isEmpty { throw ExitCode.failure }
    }

    private func format(_ value: Double) -> String {
        if value == value.rounded(), abs(value) < 1e15 { return String(Int(value)) }
        if abs(value) >= 100 { return String(format: "%.1f", value) }
        if abs(value) >= 1 { return String(format: "%.2f", value) }
        return String(format: "%.4f", value)
    }
}

/// The least-squares slope of `points`.
func slope(_ points: [(x: Double, y: Double)]) -> Double {
    let n = Double(points.count)
    let meanX = points.map(\.x).reduce(0, +) / n
    let meanY = points.map(\.y).reduce(0, +) / n
    let covariance = points.map { ($0.x - meanX) * ($0.y - meanY) }.reduce(0, +)
    let variance = points.map { ($0.x - meanX) * ($0.x - meanX) }.reduce(0, +)
    return variance == 0 ? 0 : covariance / variance
}
