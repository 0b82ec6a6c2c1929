extension RedisPushStore {
    /// Removes a queue's expired messages; shared by the scripts below. Lua's `unpack` takes at
    /// most a few thousand values, so ids go in chunks.
    private static let dropExpired = """
        local function drop_expired(ids, exp, data, now)
          local expired = redis.call('ZRANGEBYSCORE', exp, '-inf', now)
          for first = 1, #expired, 500 do
            local chunk = {}
            for i = first, math.min(first + 499, #expired) do chunk[#chunk + 1] = expired[i] end
            redis.call('ZREM', ids, unpack(chunk))
            redis.call('ZREM', exp, unpack(chunk))
            redis.call('HDEL', data, unpack(chunk))
          end
        end
        """

    /// KEYS: per device (1-based d) seq, ids, exp, data. ARGV: now, cap, slack, devices,
    /// deadline, count per device, then per message: device index, id, expiry, payload.
    /// Refuses to run past the deadline (LATE); checks every device's cap before writing
    /// anything: all or nothing.
    static let appendScript = RedisScript(
        dropExpired + """

            local now, cap, slack, devices = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
            local clock = redis.call('TIME')
            if tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) > tonumber(ARGV[5]) then
              return redis.error_reply('LATE')
            end
            for d = 1, devices do
              drop_expired(KEYS[4*d-2], KEYS[4*d-1], KEYS[4*d], now)
              if redis.call('ZCARD', KEYS[4*d-2]) + tonumber(ARGV[5+d]) > cap then
                return redis.error_reply('FULL ' .. d)
              end
            end
            local sequences, ttls = {}, {}
            local i = 6 + devices
            while i <= #ARGV do
              local d, id, expires = tonumber(ARGV[i]), ARGV[i+1], tonumber(ARGV[i+2])
              local sequence = redis.call('INCR', KEYS[4*d-3])
              redis.call('ZADD', KEYS[4*d-2], sequence, id)
              redis.call('ZADD', KEYS[4*d-1], expires, id)
              redis.call('HSET', KEYS[4*d], id, ARGV[i+3])
              ttls[d] = math.max(ttls[d] or 0, expires - now + slack)
              sequences[#sequences + 1] = sequence
              i = i + 4
            end
            -- The three queue keys always share one TTL: check one, extend all.
            for d, ttl in pairs(ttls) do
              if redis.call('PTTL', KEYS[4*d-2]) < ttl then
                for k = 2, 4 do redis.call('PEXPIRE', KEYS[4*d-4+k], ttl) end
              end
            end
            return sequences
            """
    )

    /// KEYS: ids, exp, data. ARGV: now, after, limit. Returns id, sequence, expiry, payload, ...
    static let pendingScript = RedisScript(
        dropExpired + """

            drop_expired(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]))
            local found = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], '+inf', 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
            local result = {}
            for i = 1, #found, 2 do
              local id = found[i]
              result[#result + 1] = id
              result[#result + 1] = found[i+1]
              result[#result + 1] = redis.call('ZSCORE', KEYS[2], id)
              result[#result + 1] = redis.call('HGET', KEYS[3], id)
            end
            return result
            """
    )

    /// KEYS: ids, exp, data. ARGV: message ids. The keys are this device's own, so a foreign or
    /// unknown id removes nothing; returns how many were there. Ids go in chunks (`unpack`).
    static let acknowledgeScript = RedisScript(
        """
        local removed = 0
        for first = 1, #ARGV, 500 do
          local chunk = {}
          for i = first, math.min(first + 499, #ARGV) do chunk[#chunk + 1] = ARGV[i] end
          removed = removed + redis.call('ZREM', KEYS[1], unpack(chunk))
          redis.call('ZREM', KEYS[2], unpack(chunk))
          redis.call('HDEL', KEYS[3], unpack(chunk))
        end
        return removed
        """
    )
}
