import NIOCore
import NIOHTTPTypes

/// Closes an HTTP connection whose request does not arrive whole within `timeout` of its head.
///
/// Hummingbird's idle timeout already closes a connection whose request head trickles in (it
/// counts HTTP parts, not bytes), but every body part restarts it: a body sent a byte at a
/// time could hold a connection and a request task for hours (a slowloris on the body).
/// A request that arrives whole within one socket read (nearly every API call) costs no timer:
/// the deadline is scheduled only when a read ends with a request still incomplete, for
/// `timeout` after that request's head arrived.
final class RequestDeadlineHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart

    private let timeout: TimeAmount
    /// When the head of the request now arriving came; nil between requests.
    private var headAt: NIODeadline?
    private var deadline: Scheduled<Void>?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            cancel()
            headAt = context.eventLoop.now
        case .end:
            cancel()
            headAt = nil
        case .body:
            break
        }
        context.fireChannelRead(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if let headAt, deadline == nil {
            let channel = context.channel
            deadline = context.eventLoop.scheduleTask(deadline: headAt + timeout) { channel.close(promise: nil) }
        }
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        cancel()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        cancel()
    }

    private func cancel() {
        deadline?.cancel()
        deadline = nil
    }
}
