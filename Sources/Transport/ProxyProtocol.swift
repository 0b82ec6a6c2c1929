import NIOCore

/// Addresses as CIDR blocks (`10.0.0.0/8`, `2001:db8::/32`, or a single address): the proxies
/// whose PROXY headers and `X-Forwarded-For` headers are believed (`HERALD_TRUSTED_PROXIES`).
public struct TrustedProxies: Sendable, Hashable {
    private struct Block: Sendable, Hashable {
        var bytes: [UInt8]
        var prefix: Int
    }

    private let blocks: [Block]

    /// Parses each entry; nil names the first entry that is not a CIDR block.
    public static func parse(_ entries: [String]) -> Result<TrustedProxies, ParseError> {
        var blocks: [Block] = []
        for entry in entries {
            let parts = entry.split(separator: "/", maxSplits: 1).map(String.init)
            guard let bytes = Self.bytes(ofAddress: parts[0]) else { return .failure(ParseError(entry: entry)) }
            var prefix = bytes.count * 8
            if parts.count == 2 {
                guard let value = Int(parts[1]), (0...bytes.count * 8).contains(value) else { return .failure(ParseError(entry: entry)) }
                prefix = value
            }
            blocks.append(Block(bytes: bytes, prefix: prefix))
        }
        return .success(TrustedProxies(blocks: blocks))
    }

    /// An entry that is not a CIDR block.
    public struct ParseError: Error, Sendable {
        /// The entry.
        public let entry: String
    }

    /// No proxy is trusted.
    public static let none = TrustedProxies(blocks: [])

    /// Whether no proxy is trusted.
    public var isEmpty: Bool { blocks.isEmpty }

    /// Whether `address` lies in one of the blocks (an IPv4-mapped IPv6 address as its IPv4).
    public func contains(_ address: SocketAddress?) -> Bool {
        guard let text = address?.ipAddress, let bytes = Self.bytes(ofAddress: text) else { return false }
        return blocks.contains { block in
            guard block.bytes.count == bytes.count else { return false }
            var bits = block.prefix
            for index in 0..<bytes.count where bits > 0 {
                let mask: UInt8 = bits >= 8 ? 0xFF : ~(0xFF >> UInt8(bits))
                if block.bytes[index] & mask != bytes[index] & mask { return false }
                bits -= 8
            }
            return true
        }
    }

    /// The bytes of an IPv4 or IPv6 address in text; IPv4-mapped IPv6 gives the IPv4 bytes.
    static func bytes(ofAddress text: String) -> [UInt8]? {
        guard let address = try? SocketAddress(ipAddress: text, port: 0) else { return nil }
        switch address {
        case .v4(let v4):
            return withUnsafeBytes(of: v4.address.sin_addr.s_addr) { Array($0) }
        case .v6(let v6):
            let bytes = withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
            if bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xFF, bytes[11] == 0xFF { return Array(bytes[12...]) }
            return bytes
        default:
            return nil
        }
    }
}

/// The PROXY protocol (HAProxy's specification, versions 1 and 2) in front of a device
/// listener: a trusted proxy's connection must begin with a header naming the device's
/// address; anyone else's must not carry one. Either way a violation closes the connection.
///
/// The header is read whole before anything else (TLS, WebSocket, the device protocol)
/// sees a byte; its bytes count against the hello timeout like the rest of the setup.
final class ProxyHeaderHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// v1 lines are at most 107 bytes; v2 headers carry TLVs, bounded here.
    static let maxV2Length = 4096
    static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    static let v1Signature = Array("PROXY ".utf8)

    private let trusted: TrustedProxies
    private let onHeader: (_ forwarded: SocketAddress?) throws -> Void
    private let onRefused: (_ reason: String) -> Void
    private var buffer: ByteBuffer?
    private var done = false

    /// `onHeader` runs once the header (or, from an untrusted peer, its absence) is known,
    /// with the device's address (nil: the socket's own); it adds what comes next.
    init(trusted: TrustedProxies, onHeader: @escaping (SocketAddress?) throws -> Void, onRefused: @escaping (String) -> Void) {
        self.trusted = trusted
        self.onHeader = onHeader
        self.onRefused = onRefused
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else { return context.fireChannelRead(data) }
        var incoming = unwrapInboundIn(data)
        if buffer == nil { buffer = incoming } else { buffer!.writeBuffer(&incoming) }
        let fromProxy = trusted.contains(context.channel.remoteAddress)
        switch Self.parse(buffer!) {
        case .needMore:
            if !fromProxy, !Self.mayBeHeader(buffer!) { return pass(context: context, forwarded: nil) }
        case .invalid(let reason):
            if fromProxy || Self.mayBeHeader(buffer!) {
                return refuse(context: context, fromProxy ? "no valid PROXY header from a trusted proxy: \(reason)" : reason)
            }
            pass(context: context, forwarded: nil)
        case .header(let forwarded, let length):
            guard fromProxy else { return refuse(context: context, "a PROXY header from an address not in HERALD_TRUSTED_PROXIES") }
            buffer!.moveReaderIndex(forwardBy: length)
            pass(context: context, forwarded: forwarded)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        done = true
        context.fireChannelInactive()
    }

    private func pass(context: ChannelHandlerContext, forwarded: SocketAddress?) {
        done = true
        do {
            try onHeader(forwarded)
        } catch {
            return context.close(promise: nil)
        }
        if let rest = buffer, rest.readableBytes > 0 {
            context.fireChannelRead(wrapInboundOut(rest))
            context.fireChannelReadComplete()
        }
        buffer = nil
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    private func refuse(context: ChannelHandlerContext, _ reason: String) {
        done = true
        buffer = nil
        onRefused(reason)
        context.close(promise: nil)
    }

    /// Whether the bytes so far could still be the start of a PROXY header.
    static func mayBeHeader(_ bytes: ByteBuffer) -> Bool {
        let view = Array(bytes.readableBytesView.prefix(12))
        return view.prefix(6).elementsEqual(v1Signature.prefix(min(view.count, 6))) || view.elementsEqual(v2Signature.prefix(view.count))
    }

    enum Parsed: Equatable {
        case needMore
        case invalid(String)
        /// The device's address (nil for LOCAL or UNKNOWN: the connection's own), and the header's length.
        case header(SocketAddress?, Int)

        static func == (left: Parsed, right: Parsed) -> Bool {
            switch (left, right) {
            case (.needMore, .needMore): true
            case (.invalid(let a), .invalid(let b)): a == b
            case (.header(let a, let m), .header(let b, let n)): a == b && m == n
            default: false
            }
        }
    }

    /// Parses a PROXY header at the start of `bytes` (pure: the tests feed it directly).
    static func parse(_ bytes: ByteBuffer) -> Parsed {
        let view = bytes.readableBytesView
        guard let first = view.first else { return .needMore }
        if first == 0x0D { return parseV2(bytes) }
        if first == UInt8(ascii: "P") { return parseV1(bytes) }
        return .invalid("the connection does not begin with a PROXY header")
    }

    private static func parseV1(_ bytes: ByteBuffer) -> Parsed {
        let view = Array(bytes.readableBytesView.prefix(107))
        let signed = min(view.count, v1Signature.count)
        guard view.prefix(signed).elementsEqual(v1Signature.prefix(signed)) else { return .invalid("not a PROXY header") }
        guard let end = view.firstIndex(of: 0x0A) else {
            return view.count >= 107 ? .invalid("PROXY v1 line longer than 107 bytes") : .needMore
        }
        guard end > 0, view[end - 1] == 0x0D else { return .invalid("PROXY v1 line not ended by CRLF") }
        let line = String(decoding: view[..<(end - 1)], as: UTF8.self)
        let fields = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        guard fields.count >= 2, fields[0] == "PROXY" else { return .invalid("malformed PROXY v1 line") }
        if fields[1] == "UNKNOWN" { return .header(nil, end + 1) }
        guard fields.count == 6, fields[1] == "TCP4" || fields[1] == "TCP6",
              let sourcePort = Int(fields[4]), (0...65535).contains(sourcePort), Int(fields[5]).map({ (0...65535).contains($0) }) == true,
              let source = try? SocketAddress(ipAddress: fields[2], port: sourcePort),
              (fields[1] == "TCP4") == (source.protocol == .inet)
        else { return .invalid("malformed PROXY v1 line") }
        return .header(source, end + 1)
    }

    private static func parseV2(_ bytes: ByteBuffer) -> Parsed {
        let view = bytes.readableBytesView
        let prefix = Array(view.prefix(16))
        guard prefix.starts(with: v2Signature.prefix(min(prefix.count, 12))) else { return .invalid("not a PROXY header") }
        guard prefix.count == 16 else { return .needMore }
        guard prefix[12] >> 4 == 2 else { return .invalid("PROXY v2 header of an unknown version") }
        let length = Int(prefix[14]) << 8 | Int(prefix[15])
        guard length <= maxV2Length else { return .invalid("PROXY v2 header longer than \(maxV2Length) bytes") }
        guard view.count >= 16 + length else { return .needMore }
        let total = 16 + length
        switch prefix[12] & 0x0F {
        case 0x0:  // LOCAL: the proxy's own connection (a health check); the socket's address stands.
            return .header(nil, total)
        case 0x1:
            break
        default:
            return .invalid("PROXY v2 header with an unknown command")
        }
        let body = Array(view.dropFirst(16).prefix(length))
        switch prefix[13] >> 4 {
        case 0x1:  // AF_INET: 4 + 4 address bytes, 2 + 2 port bytes
            guard body.count >= 12 else { return .invalid("PROXY v2 IPv4 addresses truncated") }
            let host = body[0..<4].map(String.init).joined(separator: ".")
            let port = Int(body[8]) << 8 | Int(body[9])
            return (try? SocketAddress(ipAddress: host, port: port)).map { .header($0, total) } ?? .invalid("bad PROXY v2 IPv4 address")
        case 0x2:  // AF_INET6: 16 + 16, 2 + 2
            guard body.count >= 36 else { return .invalid("PROXY v2 IPv6 addresses truncated") }
            let groups = stride(from: 0, to: 16, by: 2).map { String(Int(body[$0]) << 8 | Int(body[$0 + 1]), radix: 16) }
            let port = Int(body[32]) << 8 | Int(body[33])
            return (try? SocketAddress(ipAddress: groups.joined(separator: ":"), port: port)).map { .header($0, total) } ?? .invalid("bad PROXY v2 IPv6 address")
        default:  // UNSPEC or UNIX: nothing usable; the socket's address stands.
            return .header(nil, total)
        }
    }
}

/// `X-Forwarded-For` from a trusted HTTP proxy: the address nearest to us that no trusted
/// proxy holds (the rightmost untrusted entry); nil when the header says nothing usable.
func forwardedFor(_ values: [String], trusted: TrustedProxies) -> SocketAddress? {
    let entries = values.flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters() }
    for entry in entries.reversed() {
        guard let address = try? SocketAddress(ipAddress: entry, port: 0) else { return nil }
        if !trusted.contains(address) { return address }
    }
    return nil
}

extension Substring {
    fileprivate func trimmingCharacters() -> String {
        var text = self
        while let first = text.first, first == " " || first == "\t" { text.removeFirst() }
        while let last = text.last, last == " " || last == "\t" { text.removeLast() }
        return String(text)
    }
}
