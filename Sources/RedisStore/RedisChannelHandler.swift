import Actors
import NIOCore

/// The Redis connection of one event loop: commands are encoded into one buffer per loop tick
/// (so concurrent requests share round trips: automatic pipelining) and replies are matched
/// to requests in order. Every request has a timeout; one that expires means the connection
/// can no longer be trusted to match replies, so it fails every request and closes.
///
/// Replies come in request order, so only the oldest request's deadline can pass first: one
/// timer serves them all, armed for the oldest and, when it fires early (that request was
/// answered), re-armed for the oldest then. A command costs no timer operation of its own.
final class RedisChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private struct Pending {
        /// nil: nobody waits for the reply (a detached command); it is read and dropped.
        var promise: EventLoopPromise<RESPValue>?
        var deadline: NIODeadline
    }

    private let parser = RESPParser()
    private let commandTimeout: TimeAmount
    private var pending = CircularBuffer<Pending>()
    private var outgoing: ByteBuffer?
    private var context: ChannelHandlerContext?
    private var flushScheduled = false
    private var timer: Scheduled<Void>?

    init(commandTimeout: TimeAmount) {
        self.commandTimeout = commandTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        failAll("connection closed")
        self.context = nil
    }

    /// Queues a command; on this handler's event loop only.
    func send(_ arguments: [RedisArgument], promise: EventLoopPromise<RESPValue>?) {
        guard let context, context.channel.isActive else {
            promise?.fail(StoreError(.unavailable, "redis connection is down"))
            return
        }
        if outgoing == nil { outgoing = context.channel.allocator.buffer(capacity: 256) }
        outgoing!.writeRedisCommand(arguments)
        pending.append(Pending(promise: promise, deadline: .now() + commandTimeout))
        armTimer(context: context)
        if !flushScheduled {
            flushScheduled = true
            let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
            context.eventLoop.execute { handler.value.flushOutgoing() }
        }
    }

    /// A request that outlives its timeout means the connection can no longer be trusted to
    /// match replies: closing it fails every request (channelInactive), which then answer 503.
    private func armTimer(context: ChannelHandlerContext) {
        guard timer == nil, let oldest = pending.first else { return }
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: oldest.deadline) { handler.value.timerFired() }
    }

    private func timerFired() {
        timer = nil
        guard let context, let oldest = pending.first else { return }
        if oldest.deadline <= .now() {
            context.close(promise: nil)
        } else {
            armTimer(context: context)
        }
    }

    private func flushOutgoing() {
        flushScheduled = false
        guard let context, let buffer = outgoing else { return }
        outgoing = nil
        context.writeAndFlush(NIOAny(buffer), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let replies: [RESPValue]
        do {
            replies = try parser.parse(unwrapInboundIn(data))
        } catch {
            failAll("redis sent a malformed reply")
            context.close(promise: nil)
            return
        }
        for reply in replies {
            guard let request = pending.popFirst() else {
                // A reply nobody asked for: the stream is out of step.
                failAll("unexpected reply from redis")
                context.close(promise: nil)
                return
            }
            if case .error(let message) = reply, message.hasPrefix("READONLY") {
                // A master demoted to replica by a failover: this connection is useless for writes.
                // Closing it makes the client reconnect and ask the sentinels for the new master.
                request.promise?.fail(StoreError(.unavailable, "redis is a read-only replica now (failover)"))
                failAll("redis is a read-only replica now (failover)")
                context.close(promise: nil)
                return
            }
            request.promise?.succeed(reply)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll("connection closed")
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        failAll("connection error: \(error)")
        context.close(promise: nil)
    }

    private func failAll(_ reason: String) {
        outgoing = nil
        timer?.cancel()
        timer = nil
        while let request = pending.popFirst() {
            request.promise?.fail(StoreError(.unavailable, reason))
        }
    }
}
