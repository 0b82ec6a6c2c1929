import Logging
import NIOSSL
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The PEM files a node's TLS listeners are configured with.
public struct TLSFiles: Sendable, Hashable {
    /// The server certificate, followed by its intermediates (`HERALD_TLS_CERT`).
    public var certificate: String
    /// Its private key, ECDSA or RSA (`HERALD_TLS_KEY`).
    public var key: String
    /// With mutual TLS: the CA that device certificates must chain to (`HERALD_TLS_CLIENT_CA`).
    public var clientCA: String?

    /// Names the files.
    public init(certificate: String, key: String, clientCA: String? = nil) {
        self.certificate = certificate
        self.key = key
        self.clientCA = clientCA
    }
}

/// A certificate, key or CA file that cannot be used; `message` is one line naming the file.
public struct TLSFileError: Error, CustomStringConvertible {
    /// What is wrong, naming the file.
    public let message: String
    public var description: String { message }
}

/// The TLS server context that every new handshake uses, replaced whole by `reload()`.
///
/// A connection keeps the context it was accepted with, so a reload never touches an open
/// session; a file that cannot be used is refused and the old context stays. The context
/// carries the session ticket keys, which BoringSSL makes anew for each context: a device's
/// ticket resumes until the next reload.
public final class TLSCredentials: Sendable {
    /// The files read on every reload.
    public let files: TLSFiles
    private let current: Mutex<Loaded>

    /// What one successful read of the files gave.
    public struct Loaded: Sendable {
        /// The context new handshakes use.
        public let context: NIOSSLContext
        /// The server certificate's subject, for the log.
        public let subject: String
        /// When the server certificate expires (seconds since the epoch).
        public let notValidAfter: Int
        /// Certificates in the chain served.
        public let chainLength: Int
    }

    /// Reads the files; throws `TLSFileError` when one cannot be used.
    public init(files: TLSFiles) throws {
        self.files = files
        current = Mutex(try Self.load(files))
    }

    /// Whether devices must present a certificate (mutual TLS).
    public var isMutual: Bool { files.clientCA != nil }

    /// The context for a new handshake.
    public var context: NIOSSLContext { current.withLock { $0.context } }

    /// What is loaded now.
    public var loaded: Loaded { current.withLock { $0 } }

    /// Reads the files again and, if they can be used, makes them the ones new handshakes
    /// use. Throws `TLSFileError` (and changes nothing) when they cannot.
    @discardableResult
    public func reload() throws -> Loaded {
        let loaded = try Self.load(files)
        current.withLock { $0 = loaded }
        return loaded
    }

    /// TLS 1.2 at least, 1.3 preferred (the client's choice of the highest both speak);
    /// BoringSSL never renegotiates as a server.
    private static func load(_ files: TLSFiles) throws -> Loaded {
        let chain = try certificates(in: files.certificate, variable: "HERALD_TLS_CERT")
        try requireReadable(files.key, variable: "HERALD_TLS_KEY")
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: files.key, format: .pem)
        } catch {
            throw TLSFileError(message: "HERALD_TLS_KEY (\(files.key)) holds no PEM private key BoringSSL can read (ECDSA or RSA, unencrypted): \(error)")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key)
        )
        configuration.minimumTLSVersion = .tlsv12
        configuration.maximumTLSVersion = nil
        if let clientCA = files.clientCA {
            let roots = try certificates(in: clientCA, variable: "HERALD_TLS_CLIENT_CA")
            // The device's certificate must chain to this CA; its names are checked against
            // the HELLO's client id, not against a host name.
            configuration.certificateVerification = .noHostnameVerification
            configuration.trustRoots = .certificates(roots)
            configuration.sendCANameList = true
        }
        let context: NIOSSLContext
        do {
            context = try NIOSSLContext(configuration: configuration)
        } catch {
            throw TLSFileError(message: "HERALD_TLS_KEY (\(files.key)) does not match the certificate in HERALD_TLS_CERT (\(files.certificate)), or one of them is unusable: \(error)")
        }
        let leaf = chain[0]
        let subject = leaf.subjectName.map { "\($0.type == .commonName ? "CN" : "\($0.type)")=\($0.value)" }.joined(separator: ",")
        return Loaded(context: context, subject: subject, notValidAfter: Int(leaf.notValidAfter), chainLength: chain.count)
    }

    private static func certificates(in path: String, variable: String) throws -> [NIOSSLCertificate] {
        try requireReadable(path, variable: variable)
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(path)
        } catch {
            throw TLSFileError(message: "\(variable) (\(path)) holds no PEM certificate BoringSSL can read: \(error)")
        }
        guard !chain.isEmpty else {
            throw TLSFileError(message: "\(variable) (\(path)) holds no PEM certificate")
        }
        return chain
    }

    private static func requireReadable(_ path: String, variable: String) throws {
        guard access(path, R_OK) == 0 else {
            throw TLSFileError(message: "\(variable) (\(path)) cannot be read: \(String(cString: strerror(errno)))")
        }
    }
}

extension NIOSSLCertificate {
    /// The names a device certificate carries for mutual TLS: its DNS subject alternative
    /// names, then its subject common name (the last one, as BoringSSL reads it).
    public var deviceNames: [String] {
        var names: [String] = []
        for name in _subjectAlternativeNames() where name.nameType == .dnsName {
            names.append(name.contents.withUnsafeBufferPointer { String(decoding: $0, as: UTF8.self) })
        }
        if let commonName = subjectName.last(where: { $0.type == .commonName }) {
            names.append(commonName.value)
        }
        return names
    }
}
