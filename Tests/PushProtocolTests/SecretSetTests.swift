import PushProtocol
import Testing

@Suite("API keys")
struct SecretSetTests {
    @Test("with keys, only `Bearer <one of them>` is admitted; with none, everything is")
    func admits() {
        let keys = SecretSet(["k-one", "k-two-longer"])
        #expect(keys.admits(authorization: "Bearer k-one"))
        #expect(keys.admits(authorization: "Bearer k-two-longer"))
        for refused in [nil, "", "Bearer", "Bearer ", "Bearer k-on", "Bearer k-one ", "Bearer k-onf", "Basic k-one", "k-one", "Bearer  k-one"] {
            #expect(!keys.admits(authorization: refused), "\(refused ?? "no header")")
        }
        let open = SecretSet([])
        #expect(open.admits(authorization: nil))
        #expect(open.admits(authorization: "Bearer anything"))
    }
}
