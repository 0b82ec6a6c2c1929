import NIOCore
import PushProtocol

/// The device session's handler, last in the pipeline: turns bytes into frames for its
/// `Connection`. Whatever sits in front of it (TLS, WebSocket, a PROXY header) hands it the
/// device protocol's bytes and carries its writes, so the session never knows its transport.
///
/// It keeps received bytes only while a frame is incomplete (at most one frame of
/// `maxFrame` bytes plus one read), and drops the buffer as soon as it is empty, so an idle
/// connection holds no receive buffer.
public final class DeviceChannelHandler: ChannelInboundHandler {
    public typealias InboundIn = ByteBuffer

    private let decoder: FrameDecoder
    private let connection: Connection
    private var received: ByteBuffer?

    /// Creates the handler for `connection`'s channel.
    public init(connection: Connection, maxFrame: Int) {
        self.connection = connection
        self.decoder = FrameDecoder(maxFrame: maxFrame)
    }

    /// Added to a channel that is already active (after a TLS handshake or a WebSocket
    /// upgrade): the session begins now.
    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive {
            connection.assumeIsolated { $0.activated() }
        }
    }

    public func channelActive(context: ChannelHandlerContext) {
        connection.assumeIsolated { $0.activated() }
        context.fireChannelActive()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        received = nil
        connection.assumeIsolated { $0.deactivated() }
        context.fireChannelInactive()
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let incoming = unwrapInboundIn(data)
        guard connection.assumeIsolated({ $0.isReading }) else { return }
        if received == nil {
            received = incoming
        } else {
            received!.writeImmutableBuffer(incoming)
        }
        while received != nil {
            do {
                guard let frame = try decoder.decode(&received!) else { break }
                let reading = connection.assumeIsolated { connection in
                    connection.received(frame)
                    return connection.isReading
                }
                if !reading { received = nil }
            } catch {
                received = nil
                connection.assumeIsolated { $0.malformed(error) }
            }
        }
        if let buffer = received {
            if buffer.readableBytes == 0 {
                received = nil
            } else if buffer.readerIndex > 0 {
                received!.discardReadBytes()
            }
        }
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        connection.assumeIsolated { $0.writabilityChanged(writable) }
        context.fireChannelWritabilityChanged()
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A reset or a failed write ends the connection; its messages stay stored.
        context.close(promise: nil)
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            context.close(promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }
}
