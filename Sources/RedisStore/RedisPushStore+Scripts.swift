extension RedisPushStore {
    /// `migrate(counter, queue)`: moves a device's queue of the previous schema (keys `seq`,
    /// `ids`, `exp`, `data` under the same tag, so in the same slot) into the stream with their
    /// old sequences, deletes the old keys and returns the old counter (0 if none). Called only
    /// where the device's counter does not exist yet. The append script defines it only on that
    /// rare path: a Lua function is made anew on every run of the script that defines it.
    private static let migrateFunction = """
        local function migrate(counter, queue)
          local tag = string.sub(counter, 1, -3)
          local old = redis.call('GET', tag .. ':seq')
          if not old then return 0 end
          local ids = redis.call('ZRANGE', tag .. ':ids', 0, -1, 'WITHSCORES')
          for i = 1, #ids, 2 do
            local expires = redis.call('ZSCORE', tag .. ':exp', ids[i])
            local payload = redis.call('HGET', tag .. ':data', ids[i])
            if expires and payload then
              redis.call('XADD', queue, ids[i+1] .. '-0', 'i', ids[i], 'e', expires, 'p', payload)
            end
          end
          local ttl = redis.call('PTTL', tag .. ':ids')
          if ttl > 0 then redis.call('PEXPIRE', queue, ttl) end
          redis.call('DEL', tag .. ':seq', tag .. ':ids', tag .. ':exp', tag .. ':data')
          return tonumber(old)
        end

        """

    /// `drop_expired(queue, now)`: deletes the stream's expired entries (only on a full queue,
    /// never on the common append).
    private static let dropExpiredFunction = """
        local function drop_expired(queue, now)
          local start = '-'
          while true do
            local entries = redis.call('XRANGE', queue, start, '+', 'COUNT', 500)
            local expired = {}
            for _, entry in ipairs(entries) do
              if tonumber(entry[2][4]) <= now then expired[#expired + 1] = entry[1] end
            end
            if #expired > 0 then redis.call('XDEL', queue, unpack(expired)) end
            if #entries < 500 then return end
            start = '(' .. entries[#entries][1]
          end
        end

        """

    /// Shared by the reads: `migrate` (above); `migrate_unless_counted(counter, queue)`, which
    /// migrates and sets the counter when it does not exist; `entry_sequence(id)`, the sequence
    /// of a stream entry id `<sequence>-0`.
    private static let readHelpers =
        migrateFunction + """
            local function migrate_unless_counted(counter, queue)
              if redis.call('EXISTS', counter) == 0 then
                local old = migrate(counter, queue)
                if old > 0 then redis.call('SET', counter, old) end
              end
            end

            local function entry_sequence(id)
              return tonumber(string.sub(id, 1, string.find(id, '-', 1, true) - 1))
            end

            """

    /// The append script of a store's settings: its cap, the slack of a queue's TTL (ms), the
    /// retention of statuses (ms; 0: no status), and whether expired entries stay for the expiry
    /// sweep (which reports them; a full queue is then refused until it has run). They are
    /// written into the source, not passed: each argument costs Redis its parsing, a Lua string
    /// and a slot in `ARGV` on every call. One script per setting, loaded like any other.
    ///
    /// It appends the requests of a group (one request alone, or the requests one event loop
    /// gathered in a tick: `AppendGroups`), each all or nothing on its own.
    ///
    /// KEYS: per device (1-based d) its counter and its stream, then the status keys. ARGV:
    /// the deadline (whole seconds since the epoch, then the milliseconds past them), now,
    /// devices, then per device the count of messages the group brings it, then per device the
    /// TTL its stream needs for them (its latest expiry - now + slack, in ms), then (with a
    /// retention) per device its client id, then per request its message count k followed by k
    /// times: device index, id, expiry, payload and (with a retention) the index in KEYS of its
    /// status key (0: none).
    /// Refuses to run past the deadline (LATE, for the whole group). Returns one reply per
    /// request, in order: its sequence (a request of one message) or the sequences of its
    /// messages, or minus the index of the first device whose cap it would pass (nothing of
    /// that request is added, status included).
    ///
    /// It runs for every push, so it is written for Redis's CPU (Docs/store.md, "The append
    /// script's own cost"): few tables (each costs Redis about 0.13 µs), few arguments, no
    /// number turned into a string by Lua (an entry id is passed as the number, which `XADD`
    /// reads as `<n>-0`), an argument handed on as the string it came as, few numbers read from
    /// strings (each is a call of glibc's `strtod`; `tonumber` makes two, so it is not used:
    /// `s + 0` makes one, a count of 1 is recognised by comparing strings, and the deadline is
    /// compared as strings first), no function defined on the common path, and no arithmetic
    /// the node can do first.
    static func appendScript(cap: Int, slackMillis: Int64, retentionMillis: Int64, keep: Bool) -> RedisScript {
        RedisScript(
            """
            local cap, slack, retention, keep = \(cap), \(slackMillis), \(retentionMillis), \(keep)
            -- Late when Redis's clock has passed the deadline. Both seconds have ten digits (until
            -- the year 2286), so comparing the strings compares the numbers: the common case (the
            -- deadline's second still ahead) reads no number.
            local clock = redis.call('TIME')
            if clock[1] >= ARGV[1] and (clock[1] ~= ARGV[1] or clock[2] / 1000 > ARGV[2] + 0) then
              return redis.error_reply('LATE')
            end
            local devices = ARGV[4] == '1' and 1 or ARGV[4] + 0
            -- A message's fields: device index, id, expiry, payload and, with statuses, its status key.
            local fields = retention > 0 and 5 or 4
            local ttls = 4 + devices
            -- Each counter is raised once by all the group brings (last[d]); sequence[d] is the last
            -- one given out; what refused requests would have used is given back at the end, so
            -- sequences have no gap.
            local last, sequence, length, swept = {}, {}, {}, nil
            for d = 1, devices do
              -- Most groups bring a device one message. ARGV as it came: no number made a string.
              local wanted = ARGV[4+d] == '1' and 1 or ARGV[4+d] + 0
              local raised = redis.call('INCRBY', KEYS[2*d-1], ARGV[4+d])
              if raised == wanted then
                \(migrateFunction)
                local old = migrate(KEYS[2*d-1], KEYS[2*d])
                if old > 0 then raised = redis.call('INCRBY', KEYS[2*d-1], old) end
              end
              last[d], sequence[d] = raised, raised - wanted
              length[d] = redis.call('XLEN', KEYS[2*d])
            end
            local replies = {}
            local i = ttls + devices + 1
            if retention > 0 then i = i + devices end
            while i <= #ARGV do
              -- A request of one message (most) has its device's index read once (or not at all: 1).
              local k, only, full, need = 1, nil, nil, nil
              if ARGV[i] == '1' then
                only = ARGV[i+1] == '1' and 1 or ARGV[i+1] + 0
                if length[only] + 1 > cap then full, need = only, {[only] = 1} end
              else
                k, need = ARGV[i] + 0, {}
                for m = 0, k - 1 do
                  local d = ARGV[i + 1 + fields*m] + 0
                  need[d] = (need[d] or 0) + 1
                end
                for d, count in pairs(need) do
                  if length[d] + count > cap and (full == nil or d < full) then full = d end
                end
              end
              if full and not keep then
                -- A queue would pass its cap: its expired entries are deleted (once a group, unless
                -- the expiry sweep reports them), and it is counted again.
                \(dropExpiredFunction)
                swept, full = swept or {}, nil
                for d, count in pairs(need) do
                  if length[d] + count > cap and not swept[d] then
                    drop_expired(KEYS[2*d], ARGV[3] + 0)
                    swept[d] = true
                    length[d] = redis.call('XLEN', KEYS[2*d])
                  end
                  if length[d] + count > cap and (full == nil or d < full) then full = d end
                end
              end
              if full then
                replies[#replies + 1] = -full
              else
                local sequences = nil
                if k > 1 then sequences = {} end
                for m = 0, k - 1 do
                  local at = i + 1 + fields*m
                  local d = only or ARGV[at] + 0
                  local s = sequence[d] + 1
                  sequence[d], length[d] = s, length[d] + 1
                  redis.call('XADD', KEYS[2*d], s, 'i', ARGV[at+1], 'e', ARGV[at+2], 'p', ARGV[at+3])
                  if retention > 0 and ARGV[at+4] ~= '0' then
                    local status = ARGV[at+4] + 0
                    redis.call('HSET', KEYS[status], 'c', ARGV[ttls + devices + d], 'q', s, 'a', ARGV[3], 'e', ARGV[at+2])
                    redis.call('PEXPIRE', KEYS[status], ARGV[at+2] - ARGV[3] + retention + slack)
                  end
                  if sequences then sequences[m + 1] = s else sequences = s end
                end
                replies[#replies + 1] = sequences
              end
              i = i + 1 + fields*k
            end
            for d = 1, devices do
              local unused = last[d] - sequence[d]
              if unused > 0 then redis.call('DECRBY', KEYS[2*d-1], unused) end
              -- The device's count read again from ARGV, not kept in a fourth table per run.
              local added = (ARGV[4+d] == '1' and 1 or ARGV[4+d] + 0) - unused
              -- The stream lives until its last message has expired, plus the slack. GT never
              -- shortens it, but treats a key without a TTL as never expiring, so a stream that
              -- holds only this group's entries (perhaps new) gets its TTL set outright.
              if added > 0 then
                if length[d] == added then
                  redis.call('PEXPIRE', KEYS[2*d], ARGV[ttls+d])
                else
                  redis.call('PEXPIRE', KEYS[2*d], ARGV[ttls+d], 'GT')
                end
              end
            end
            return replies
            """
        )
    }

    /// KEYS: counter, stream. ARGV: now, after, limit, keep. Returns id, sequence, expiry,
    /// payload, ... of up to `limit` unexpired messages after `after`; deletes the expired ones
    /// it meets, unless keep is 1 (the expiry sweep reports and deletes them).
    static let pendingScript = RedisScript(
        readHelpers + """
            migrate_unless_counted(KEYS[1], KEYS[2])
            local now, limit = tonumber(ARGV[1]), tonumber(ARGV[3])
            local start = '(' .. ARGV[2] .. '-0'
            local result, expired, found = {}, {}, 0
            while found < limit do
              local want = limit - found
              local entries = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', want)
              for _, entry in ipairs(entries) do
                local fields = entry[2]
                if tonumber(fields[4]) <= now then
                  expired[#expired + 1] = entry[1]
                else
                  result[#result + 1] = fields[2]
                  result[#result + 1] = entry_sequence(entry[1])
                  result[#result + 1] = fields[4]
                  result[#result + 1] = fields[6]
                  found = found + 1
                end
              end
              if #entries < want then break end
              start = '(' .. entries[#entries][1]
            end
            if ARGV[4] ~= '1' then
              for first = 1, #expired, 500 do
                redis.call('XDEL', KEYS[2], unpack(expired, first, math.min(first + 499, #expired)))
              end
            end
            return result
            """
    )

    /// KEYS: stream. ARGV: message ids. Removes the device's entries with those ids, found by
    /// reading its whole queue: for ACKs of ids the connection did not send (rare), and for ACKs
    /// and take-backs of messages written in an older store generation, since an ACK with its
    /// sequence is a plain XDEL. Returns how many were removed.
    static let acknowledgeByIDScript = RedisScript(
        """
        local wanted = {}
        for _, id in ipairs(ARGV) do wanted[id] = true end
        local start, removed = '-', 0
        while true do
          local entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 500)
          local matched = {}
          for _, entry in ipairs(entries) do
            if wanted[entry[2][2]] then matched[#matched + 1] = entry[1]; wanted[entry[2][2]] = nil end
          end
          if #matched > 0 then removed = removed + redis.call('XDEL', KEYS[1], unpack(matched)) end
          if #entries < 500 then return removed end
          start = '(' .. entries[#entries][1]
        end
        """
    )

    /// Shared by the scripts that change a message's status: `acked(index, sent)` marks the
    /// status key `KEYS[index]` acknowledged at `now` (and sent at `sent`, or at `now` for '0',
    /// if no send was recorded) and keeps it for `retention` ms from now; it changes nothing for
    /// index 0, a status already acked, or one gone (forgotten: it is never made again without
    /// its other fields).
    private static let statusHelpers = """
        local function acked(index, sent, now, retention)
          if index > 0 and redis.call('EXISTS', KEYS[index]) == 1 and redis.call('HSETNX', KEYS[index], 'k', now) == 1 then
            redis.call('HSETNX', KEYS[index], 's', sent ~= '0' and sent or now)
            redis.call('PEXPIRE', KEYS[index], retention)
          end
        end

        """

    /// An ACK with message status kept. KEYS: the stream, then status keys. ARGV: now,
    /// retention, k, then k times: the entry id of a message the connection sent, the index of
    /// its status key in KEYS (0: none) and the time of its send not recorded yet (0: none),
    /// then the same three for each message to find by id: its id, its status key's index, its
    /// send time. Deletes the entries, marks the status of each one deleted acked, and returns
    /// how many were deleted.
    static let acknowledgeWithStatusScript = RedisScript(
        statusHelpers + """
            local now, retention, k = ARGV[1], ARGV[2], tonumber(ARGV[3])
            local removed = 0
            for j = 0, k - 1 do
              if redis.call('XDEL', KEYS[1], ARGV[4 + 3*j]) == 1 then
                removed = removed + 1
                acked(tonumber(ARGV[5 + 3*j]), ARGV[6 + 3*j], now, retention)
              end
            end
            local wanted, count = {}, 0
            for j = 4 + 3*k, #ARGV, 3 do
              wanted[ARGV[j]] = j
              count = count + 1
            end
            if count == 0 then return removed end
            local start = '-'
            while true do
              local entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 500)
              for _, entry in ipairs(entries) do
                local j = wanted[entry[2][2]]
                if j then
                  wanted[entry[2][2]] = nil
                  removed = removed + redis.call('XDEL', KEYS[1], entry[1])
                  acked(tonumber(ARGV[j + 1]), ARGV[j + 2], now, retention)
                end
              end
              if #entries < 500 then return removed end
              start = '(' .. entries[#entries][1]
            end
            """
    )

    /// KEYS: stream. ARGV: now, limit. For the expiry sweep: the earliest expiry among the
    /// unexpired messages (-1: none; now, when more expired ones remain than `limit`), then the
    /// entry id, message id and expiry of up to `limit` expired ones. Deletes nothing.
    static let expiredScript = RedisScript(
        """
        local now, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
        local result, earliest, start = {-1}, nil, '-'
        while true do
          local entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 500)
          for _, entry in ipairs(entries) do
            local expires = tonumber(entry[2][4])
            if expires > now then
              if earliest == nil or expires < earliest then earliest = expires end
            elseif #result < 1 + 3 * limit then
              result[#result + 1] = entry[1]
              result[#result + 1] = entry[2][2]
              result[#result + 1] = entry[2][4]
            else
              earliest = now
            end
          end
          if #entries < 500 then break end
          start = '(' .. entries[#entries][1]
        end
        if earliest then result[1] = earliest end
        return result
        """
    )

    /// KEYS: counter, stream. ARGV: now. How many unexpired messages the stream holds.
    static let pendingCountScript = RedisScript(
        readHelpers + """
            migrate_unless_counted(KEYS[1], KEYS[2])
            local now, start, count = tonumber(ARGV[1]), '-', 0
            while true do
              local entries = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', 500)
              for _, entry in ipairs(entries) do
                if tonumber(entry[2][4]) > now then count = count + 1 end
              end
              if #entries < 500 then return count end
              start = '(' .. entries[#entries][1]
            end
            """
    )
}
