import NIOCore
import NIOHTTP1

/// The time limits of an HTTP/1.1 connection, for every request on it (the fast path's and the
/// router's alike), right after NIO's HTTP decoder:
/// - **idle**: with no request being read and no response owed, the connection is closed
///   `timeout` after its last activity (the accept, or the end of the last response). A request
///   head that trickles in counts as idle: the decoder passes a head on only once it is whole.
/// - **a request's whole**: a request not in whole within `timeout` of its head is closed (a
///   body sent a byte at a time, a slowloris on the body).
/// While responses are owed and no request is being read, nothing here runs: the store's own
/// deadline bounds the answer.
///
/// At most one scheduled task, which re-arms itself when it fires early: a request that
/// arrives in one read and is answered costs no timer operation at all.
final class HTTPTimeoutHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let timeout: TimeAmount
    /// Requests whose head was read and whose response has not ended.
    private var owed = 0
    /// When the head of the request being read arrived; nil between requests.
    private var headAt: NIODeadline?
    /// When the connection last became idle (no request owed).
    private var idleSince: NIODeadline?
    private var timer: Scheduled<Void>?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    /// When the connection is to be closed unless something happens first; nil while only
    /// answers are awaited.
    private var deadline: NIODeadline? {
        if let headAt { return headAt + timeout }
        if owed == 0, let idleSince { return idleSince + timeout }
        return nil
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { becameIdle(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        becameIdle(context: context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            owed += 1
            headAt = context.eventLoop.now
        case .end:
            headAt = nil
        case .body:
            break
        }
        context.fireChannelRead(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // A request still incomplete when a read ends needs its deadline armed.
        arm(context: context)
        context.fireChannelReadComplete()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data), owed > 0 {
            owed -= 1
            if owed == 0 { becameIdle(context: context) }
        }
        context.write(data, promise: promise)
    }

    func channelInactive(context: ChannelHandlerContext) {
        cancel()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        cancel()
    }

    private func becameIdle(context: ChannelHandlerContext) {
        idleSince = context.eventLoop.now
        arm(context: context)
    }

    /// Schedules the one task for the current deadline, unless one is pending (it re-arms
    /// itself when it fires before the deadline then in force).
    private func arm(context: ChannelHandlerContext) {
        guard timer == nil, let deadline else { return }
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let context = NIOLoopBound(context, eventLoop: context.eventLoop)
        timer = context.value.eventLoop.scheduleTask(deadline: deadline) {
            handler.value.fired(context: context.value)
        }
    }

    private func fired(context: ChannelHandlerContext) {
        timer = nil
        guard let deadline else { return }
        if context.eventLoop.now >= deadline {
            context.close(promise: nil)
        } else {
            arm(context: context)
        }
    }

    private func cancel() {
        timer?.cancel()
        timer = nil
    }
}
