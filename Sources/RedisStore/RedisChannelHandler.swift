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

    private enum Waiter {
        /// Nobody waits for the reply (a detached command); it is read and dropped.
        case none
        /// One command's reply.
        case one(EventLoopPromise<RESPValue>)
        /// The replies of `count` commands sent together, answered at once: one promise for a
        /// pipeline instead of one each.
        case all(EventLoopPromise<[RESPValue]>, count: Int)

        func fail(_ error: any Error) {
            switch self {
            case .none: break
            case .one(let promise): promise.fail(error)
            case .all(let promise, _): promise.fail(error)
            }
        }
    }

    private struct Pending {
        var waiter: Waiter
        var deadline: NIODeadline
    }

    private let parser = RESPParser()
    private let commandTimeout: TimeAmount
    private var pending = CircularBuffer<Pending>()
    /// The replies so far of the oldest request when it is a pipeline (`.all`).
    private var collected: [RESPValue] = []
    private var outgoing: ByteBuffer?
    /// The size of the last write: the next tick's buffer starts that large (at most 64 KiB),
    /// so a tick of many commands does not grow it by doubling, copying each time.
    private var lastWriteSize = 256
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
        enqueue([arguments], waiter: promise.map { .one($0) } ?? .none)
    }

    /// Queues `commands`, adjacent, and answers all their replies together, in order; on this
    /// handler's event loop only.
    func send(_ commands: [[RedisArgument]], promise: EventLoopPromise<[RESPValue]>) {
        enqueue(commands, waiter: .all(promise, count: commands.count))
    }

    private func enqueue(_ commands: [[RedisArgument]], waiter: Waiter) {
        guard let context, context.channel.isActive else {
            waiter.fail(StoreError(.unavailable, "redis is not connected"))
            return
        }
        if outgoing == nil { outgoing = context.channel.allocator.buffer(capacity: lastWriteSize) }
        for arguments in commands { outgoing!.writeRedisCommand(arguments) }
        let deadline = NIODeadline.now() + commandTimeout
        if case .none = waiter {
            // Detached commands' replies are dropped one by one.
            for _ in commands { pending.append(Pending(waiter: .none, deadline: deadline)) }
        } else {
            pending.append(Pending(waiter: waiter, deadline: deadline))
        }
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
        lastWriteSize = min(max(buffer.readableBytes, 256), 65_536)
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
            guard let request = pending.first else {
                // A reply nobody asked for: the stream is out of step.
                failAll("unexpected reply from redis")
                context.close(promise: nil)
                return
            }
            if case .error(let message) = reply, message.hasPrefix("READONLY") {
                // A master demoted to replica by a failover: this connection is useless for writes.
                // Closing it makes the client reconnect and ask the sentinels for the new master.
                failAll("redis is a read-only replica now (failover)")
                context.close(promise: nil)
                return
            }
            switch request.waiter {
            case .none:
                pending.removeFirst()
            case .one(let promise):
                pending.removeFirst()
                promise.succeed(reply)
            case .all(let promise, let count):
                collected.append(reply)
                if collected.count == count {
                    pending.removeFirst()
                    let all = collected
                    collected = []
                    promise.succeed(all)
                }
            }
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
        collected = []
        while let request = pending.popFirst() {
            // Its bytes may be in Redis's socket already, and run there still.
            request.waiter.fail(StoreError(.unavailable, reason, mayHaveTakenEffect: true))
        }
    }
}
