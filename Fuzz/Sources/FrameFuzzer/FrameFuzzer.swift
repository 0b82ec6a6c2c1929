import NIOCore
import PushProtocol

/// libFuzzer's entry point: `input` is fed to the device decoder and to the relay decoder as
/// one stream, as if it arrived on a socket. Any decoded frame must survive a round trip
/// through the encoder; a decoding error must be one of the wire errors (400, 413).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let input = ByteBuffer(bytes: UnsafeRawBufferPointer(start: start, count: count))
    var device = input
    let deviceDecoder = FrameDecoder(maxFrame: 4096)
    do {
        while let frame = try deviceDecoder.decode(&device) {
            var encoded = ByteBuffer()
            encoded.writeFrame(frame)
            let again = try deviceDecoder.decode(&encoded)
            precondition(again == frame && encoded.readableBytes == 0, "device frame round trip: \(frame) -> \(String(describing: again))")
        }
    } catch {
        precondition([.badRequest, .frameTooLarge].contains(error.code), "unexpected device error \(error)")
    }
    var relay = input
    let relayDecoder = RelayFrameDecoder(maxFrame: 4096)
    do {
        while let frame = try relayDecoder.decode(&relay) {
            var encoded = ByteBuffer()
            encoded.writeRelayFrame(frame)
            let again = try relayDecoder.decode(&encoded)
            precondition(again == frame && encoded.readableBytes == 0, "relay frame round trip: \(frame) -> \(String(describing: again))")
        }
    } catch {
        precondition([.badRequest, .frameTooLarge].contains(error.code), "unexpected relay error \(error)")
    }
    return 0
}

// SwiftPM links an executable's entry point as `<module>_main` (aliased to `main`), and
// `-parse-as-library` leaves none: hand control to libFuzzer's driver from there.
@_silgen_name("LLVMFuzzerRunDriver")
private func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafeRawPointer, Int) -> CInt
) -> CInt

@_cdecl("FrameFuzzer_main")
public func frameFuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var arguments = argv
    return runFuzzerDriver(&count, &arguments) { start, size in fuzz(start, size) }
}
