import NIOCore

/// The parts of Redis Cluster's client contract that are pure: which slot a key hashes to,
/// which argument of a command is its key, what an error reply redirects to, and the slot
/// map read from `CLUSTER SLOTS` (https://redis.io/docs/reference/cluster-spec/).
enum RedisCluster {
    static let slotCount = 16384

    /// The slot of `key`: CRC16 (XMODEM) of its hash tag (the part between the first `{` and
    /// the next `}`, when not empty) or of the whole key, modulo 16384.
    static func slot<Bytes: Collection<UInt8>>(of key: Bytes) -> Int {
        var hashed = key[...]
        if let open = key.firstIndex(of: UInt8(ascii: "{")) {
            let rest = key[key.index(after: open)...]
            if let close = rest.firstIndex(of: UInt8(ascii: "}")), close != rest.startIndex {
                hashed = key[rest.startIndex..<close]
            }
        }
        var crc: UInt16 = 0
        for byte in hashed {
            crc = (crc << 8) ^ crcTable[Int(UInt8(truncatingIfNeeded: crc >> 8) ^ byte)]
        }
        return Int(crc) & (slotCount - 1)
    }

    /// The shortest hash tag of `[0-9A-Za-z]` that hashes to `slot` (the first found, in the
    /// order of length then of those characters): a key `...{tag}...` made with it lives in
    /// that slot. Message ids carry their device's (Docs/store.md, "Message status").
    static func tag(forSlot slot: Int) -> String { slotTags[slot] }

    private static let slotTags: [String] = {
        let alphabet = Array("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz".utf8)
        var tags = [String?](repeating: nil, count: slotCount)
        var missing = slotCount
        var candidates: [[UInt8]] = [[]]
        while missing > 0 {
            candidates = candidates.flatMap { prefix in alphabet.map { prefix + [$0] } }
            for candidate in candidates where tags[slot(of: candidate)] == nil {
                tags[slot(of: candidate)] = String(decoding: candidate, as: UTF8.self)
                missing -= 1
            }
        }
        return tags.map { $0! }
    }()

    private static let crcTable: [UInt16] = (0..<256).map { index in
        var crc = UInt16(index) << 8
        for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        return crc
    }

    /// The slot of the key `command` acts on, or nil for a command without a key (PING, WAIT,
    /// SCRIPT, ...), which any master may run. Herald's commands name their key first (`GET k`,
    /// `XDEL k id`), scripts in the first of their KEYS; every key of one command shares a hash
    /// tag, so the first decides.
    static func slot(of command: [RedisArgument]) -> Int? {
        guard case .string(let name)? = command.first else { return nil }
        let keyIndex: Int
        switch name.uppercased() {
        case "EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO":
            guard command.count > 3, case .integer(let keys) = command[2], keys > 0 else { return nil }
            keyIndex = 3
        case "XGROUP", "XINFO":
            keyIndex = 2
        case "HERALD.APPEND":
            // HERALD.APPEND version cap slack retention keep numkeys KEYS... (RedisModule/herald.c)
            keyIndex = 7
        case "HERALD.ACK":
            // HERALD.ACK version now retention numkeys KEYS... (RedisModule/herald.c)
            keyIndex = 5
        case "XREAD", "XREADGROUP":
            // The first key follows STREAMS (the stream commands of the webhook queue).
            guard let streams = command.firstIndex(where: { if case .string(let word) = $0 { word.uppercased() == "STREAMS" } else { false } })
            else { return nil }
            keyIndex = streams + 1
        case "PING", "WAIT", "SCRIPT", "INFO", "TIME", "ROLE", "CLUSTER", "ASKING", "AUTH", "HELLO", "SELECT", "COMMAND",
            "DBSIZE", "FLUSHALL", "FLUSHDB", "READONLY", "READWRITE", "ECHO":
            return nil
        default:
            keyIndex = 1
        }
        guard command.count > keyIndex else { return nil }
        switch command[keyIndex] {
        case .string(let key): return slot(of: Array(key.utf8))
        case .bytes(let key): return slot(of: key.readableBytesView)
        case .integer(let key): return slot(of: Array(String(key).utf8))
        }
    }

    /// What an error reply asks a cluster client to do instead of answering.
    enum Redirect: Equatable {
        /// The slot lives on another master now: update the map and resend there.
        case moved(slot: Int, to: RedisConfiguration.Endpoint)
        /// The key is being migrated: resend once to that node, after `ASKING`.
        case ask(slot: Int, to: RedisConfiguration.Endpoint)
        /// A multi-key command during a slot migration, or the cluster cannot serve the slot
        /// now: wait a little and resend.
        case tryAgain
        case clusterDown

        init?(error message: String) {
            let words = message.split(separator: " ")
            switch words.first {
            case "TRYAGAIN": self = .tryAgain
            case "CLUSTERDOWN": self = .clusterDown
            case "MOVED", "ASK":
                guard words.count == 3, let slot = Int(words[1]), (0..<RedisCluster.slotCount).contains(slot),
                    let colon = words[2].lastIndex(of: ":"), let port = Int(words[2][words[2].index(after: colon)...])
                else { return nil }
                let endpoint = RedisConfiguration.Endpoint(host: String(words[2][..<colon]), port: port)
                self = words[0] == "MOVED" ? .moved(slot: slot, to: endpoint) : .ask(slot: slot, to: endpoint)
            default: return nil
            }
        }
    }

    /// Which master serves each slot.
    struct SlotMap: Sendable {
        private(set) var masters: [RedisConfiguration.Endpoint] = []
        /// Per slot, an index into `masters`; -1 where no master serves the slot.
        private var owners = [Int16](repeating: -1, count: RedisCluster.slotCount)

        init() {}

        /// Reads a `CLUSTER SLOTS` reply; nil when it is not one or serves no slot. A master
        /// that announces no host (an empty string) is reached where it was asked, `asked`.
        init?(clusterSlots reply: RESPValue, asked: RedisConfiguration.Endpoint) {
            guard case .array(let ranges) = reply, !ranges.isEmpty else { return nil }
            for range in ranges {
                guard case .array(let fields) = range, fields.count >= 3, let low = fields[0].int64, let high = fields[1].int64,
                    0 <= low, low <= high, high < RedisCluster.slotCount,
                    case .array(let master) = fields[2], master.count >= 2, let port = master[1].int64
                else { return nil }
                let host = master[0].string.flatMap { $0.isEmpty || $0 == "?" ? nil : $0 } ?? asked.host
                assign(Int(low)...Int(high), to: RedisConfiguration.Endpoint(host: host, port: Int(port)))
            }
        }

        /// Whether every slot has a master.
        var isComplete: Bool { !owners.contains(-1) }

        func master(of slot: Int) -> RedisConfiguration.Endpoint? {
            let owner = owners[slot]
            return owner < 0 ? nil : masters[Int(owner)]
        }

        /// Gives `slots` to `endpoint` (a MOVED reply, or a range of CLUSTER SLOTS).
        mutating func assign(_ slots: ClosedRange<Int>, to endpoint: RedisConfiguration.Endpoint) {
            let index: Int
            if let known = masters.firstIndex(of: endpoint) {
                index = known
            } else {
                index = masters.count
                masters.append(endpoint)
            }
            for slot in slots { owners[slot] = Int16(index) }
        }
    }
}
