import Actors

/// Runs `operation` on every element of `inputs` at once (a task each) and returns the
/// outcomes in the order of `inputs`.
///
/// Every fan-out of the Redis code goes through here, and the child task is written the one
/// way that is known to be compiled right: Swift 6.3.1 at `-O` miscompiles a task's closure of
/// the form `do { return (index, .success(try await f())) } catch { ... }`, where the index
/// comes back as garbage (it took down every node of a fault-suite run on a Redis Cluster;
/// Docs/architecture.md, "A miscompile to keep away from"). Here the outcome is computed in a
/// statement of its own and the pair is made after the `await`.
public func concurrently<Input: Sendable, Output: Sendable>(
    _ inputs: [Input], _ operation: @escaping @Sendable (Input) async throws(StoreError) -> Output
) async -> [Result<Output, StoreError>] {
    if inputs.count == 1 {
        // One element: no task, no hop.
        do throws(StoreError) {
            return [.success(try await operation(inputs[0]))]
        } catch {
            return [.failure(error)]
        }
    }
    return await withTaskGroup(of: (Int, Result<Output, StoreError>).self) { group in
        for (index, input) in inputs.enumerated() {
            group.addTask {
                let outcome: Result<Output, StoreError>
                do throws(StoreError) {
                    outcome = .success(try await operation(input))
                } catch {
                    outcome = .failure(error)
                }
                return (index, outcome)
            }
        }
        var outcomes = [Result<Output, StoreError>](repeating: .failure(StoreError(.unavailable, "not run")), count: inputs.count)
        for await (index, outcome) in group { outcomes[index] = outcome }
        return outcomes
    }
}
