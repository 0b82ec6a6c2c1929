#!/usr/bin/env python3
"""Redis CPU per pushed-and-acknowledged message for candidate store layouts (Docs/store.md).

Starts its own redis-server (no persistence) and, for each layout, stores M messages for D
devices (100-byte payloads) and acknowledges each one, as Herald's store would: singles
(one append per message) or batches (one append of B messages across devices), each ack a
separate call, P calls in flight on one connection (Herald pipelines a loop's calls on one
connection). Reports Redis's own CPU (INFO cpu: used_cpu_user + used_cpu_sys deltas) per
message for append, ack and both.

    scripts/redis-layouts.py --devices 10000 --messages 50000            # every layout
    scripts/redis-layouts.py --layouts current,lean --batch 100
    scripts/redis-layouts.py --layouts herald --callgrind      # instructions, not CPU time
    scripts/redis-layouts.py --layouts herald,herald-module --module herald.so   # Herald's Redis module
    scripts/redis-layouts.py --layouts herald-module+status --module herald.so --redis-config stream-node-max-entries=4

With --callgrind, each layout runs in a redis-server of its own under valgrind's callgrind,
once with M messages and once with 2M; the difference of their instruction counts over M is
what Redis executes per message (append and ACK, user space only: the kernel's work on the
sockets is not counted). Startup, setup and shutdown cancel out, and `--hz 1` keeps the
timers' share small, so the figure repeats from run to run where CPU times on a shared
machine do not: it judges a change to a script.

The `stream-seq+...` candidates add to the chosen layout what message status and webhook
events would cost (the receipts issue): a status record per message written at the append,
at the send and at the ACK (`+status-key`: a key per message id under its own tag;
`+status-hash`: a field in the device's hash, under the device's tag, plus an id -> device
key), or a `message.acked` event per ACK in a stream read by a consumer group (`+event`, its
reading and acknowledging counted in the `events` column).
"""
import argparse, os, re, socket, subprocess, sys, tempfile, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, start_redis

def encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)

class Connection:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            self.buf += self.sock.recv(1 << 20)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+",): return rest.decode()
        if kind == b"-": return RuntimeError(rest.decode())
        if kind == b":": return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0: return None
            while len(self.buf) < n + 2: self.buf += self.sock.recv(1 << 20)
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise RuntimeError(f"bad reply {line!r}")

    def pipeline(self, commands, depth):
        """Sends `commands` (each a list of encoded requests forming one call) with at most
        `depth` calls in flight; returns the last reply of each call."""
        results, sent, done = [], 0, 0
        counts = [len(c) for c in commands]
        while done < len(commands):
            batch = []
            # Refill only once half the window came back, so that the calls reach Redis in
            # writes of depth/2 calls, as a client that flushes once per event-loop tick does.
            if sent - done <= depth // 2:
                while sent < len(commands) and sent - done < depth:
                    batch.extend(commands[sent]); sent += 1
            if batch: self.sock.sendall(b"".join(batch))
            for _ in range(counts[done]):
                last = self.reply()
            if isinstance(last, RuntimeError): raise last
            results.append(last); done += 1
        return results

    def call(self, *args):
        self.sock.sendall(encode(*args))
        r = self.reply()
        if isinstance(r, RuntimeError): raise r
        return r

def redis_cpu(conn):
    info = conn.call("INFO", "cpu").decode()
    fields = dict(l.split(":", 1) for l in info.splitlines() if ":" in l)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])

# The layout Herald used before this issue (Sources/RedisStore/RedisPushStore+Scripts.swift at
# b0ffeaf): seq counter, ids and expiry sorted sets, a payload hash; lazy expiry on every append.
DROP_EXPIRED = """
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
CURRENT_APPEND = DROP_EXPIRED + """
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
for d, ttl in pairs(ttls) do
  if redis.call('PTTL', KEYS[4*d-2]) < ttl then
    for k = 2, 4 do redis.call('PEXPIRE', KEYS[4*d-4+k], ttl) end
  end
end
return sequences
"""
CURRENT_ACK = """
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

# The candidates' common start: the deadline by Redis's clock (a 503 never stores), the cap.
PROLOGUE = """
local clock = redis.call('TIME')
if tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) > tonumber(ARGV[1]) then
  return redis.error_reply('LATE')
end
local cap, devices = tonumber(ARGV[2]), tonumber(ARGV[3])
"""

# Candidate: one stream per device. XADD with Redis's own id (its position, so the sequence),
# fields expiry and payload; the cap from XLEN; the key's TTL only ever extended (PEXPIRE GT);
# the deadline from TIME. An ack is a plain XDEL of the entry id the node delivered.
STREAM_APPEND = PROLOGUE + """
for d = 1, devices do
  if redis.call('XLEN', KEYS[d]) + tonumber(ARGV[3+d]) > cap then return redis.error_reply('FULL ' .. d) end
end
local ids = {}
local i = 4 + devices
while i <= #ARGV do
  local d = tonumber(ARGV[i])
  ids[#ids + 1] = redis.call('XADD', KEYS[d], '*', 'i', ARGV[i+1], 'e', ARGV[i+2], 'p', ARGV[i+3])
  redis.call('PEXPIRE', KEYS[d], ARGV[i+4], 'GT')
  i = i + 5
end
return ids
"""

# Candidate: a stream per device whose entry ids are the device's sequence (`<seq>-0`), taken
# from a counter that never expires (so a device's sequence never restarts), and a check that
# no queue of the previous schema is waiting (it would go first). The cap from XLEN, the key's
# TTL only ever extended (PEXPIRE GT). An ack is a plain XDEL of `<seq>-0`.
STREAM_SEQ_APPEND = PROLOGUE + """
for d = 1, devices do
  if redis.call('EXISTS', KEYS[3*d]) == 1 then return redis.error_reply('OLD') end
  if redis.call('XLEN', KEYS[3*d-1]) + tonumber(ARGV[3+d]) > cap then return redis.error_reply('FULL ' .. d) end
end
local first = {}
for d = 1, devices do first[d] = redis.call('INCRBY', KEYS[3*d-2], tonumber(ARGV[3+d])) - tonumber(ARGV[3+d]) end
local sequences = {}
local i = 4 + devices
while i <= #ARGV do
  local d = tonumber(ARGV[i])
  first[d] = first[d] + 1
  redis.call('XADD', KEYS[3*d-1], first[d] .. '-0', 'i', ARGV[i+1], 'e', ARGV[i+2], 'p', ARGV[i+3])
  redis.call('PEXPIRE', KEYS[3*d-1], ARGV[i+4], 'GT')
  sequences[#sequences + 1] = first[d]
  i = i + 5
end
return sequences
"""

# Candidate: a list of ids for order and a hash id -> "sequence expiry payload"; the hash's
# '#' field is the sequence counter. An ack is a plain HDEL; the list keeps the acked id until
# an append finds it at the head (at most two popped per append).
LIST_APPEND = PROLOGUE + """
for d = 1, devices do
  if redis.call('HLEN', KEYS[2*d]) - 1 + tonumber(ARGV[3+d]) > cap then return redis.error_reply('FULL ' .. d) end
end
local sequences = {}
local i = 4 + devices
while i <= #ARGV do
  local d = tonumber(ARGV[i])
  local list, hash = KEYS[2*d-1], KEYS[2*d]
  for _ = 1, 2 do
    local head = redis.call('LINDEX', list, 0)
    if head and redis.call('HEXISTS', hash, head) == 0 then redis.call('LPOP', list) else break end
  end
  local sequence = redis.call('HINCRBY', hash, '#', 1)
  redis.call('RPUSH', list, ARGV[i+1])
  redis.call('HSET', hash, ARGV[i+1], sequence .. ' ' .. ARGV[i+2] .. ' ' .. ARGV[i+3])
  redis.call('PEXPIRE', list, ARGV[i+4], 'GT')
  redis.call('PEXPIRE', hash, ARGV[i+4], 'GT')
  sequences[#sequences + 1] = sequence
  i = i + 5
end
return sequences
"""

# Candidate: a sorted set id -> sequence and a hash id -> "expiry payload" with the '#' field as
# the counter; an ack is MULTI ZREM + HDEL.
ZSET_APPEND = PROLOGUE + """
for d = 1, devices do
  if redis.call('ZCARD', KEYS[2*d-1]) + tonumber(ARGV[3+d]) > cap then return redis.error_reply('FULL ' .. d) end
end
local sequences = {}
local i = 4 + devices
while i <= #ARGV do
  local d = tonumber(ARGV[i])
  local sequence = redis.call('HINCRBY', KEYS[2*d], '#', 1)
  redis.call('ZADD', KEYS[2*d-1], sequence, ARGV[i+1])
  redis.call('HSET', KEYS[2*d], ARGV[i+1], ARGV[i+2] .. ' ' .. ARGV[i+3])
  redis.call('PEXPIRE', KEYS[2*d-1], ARGV[i+4], 'GT')
  redis.call('PEXPIRE', KEYS[2*d], ARGV[i+4], 'GT')
  sequences[#sequences + 1] = sequence
  i = i + 5
end
return sequences
"""

def load(conn, script):
    return conn.call("SCRIPT", "LOAD", script).decode()

class Layout:
    """Builds the append call for a group of messages and the ack call for one message."""
    def __init__(self, name, conn, now, cap):
        self.name, self.conn, self.now, self.cap = name, conn, now, cap
        self.sha = {}

    def group(self, messages):
        devices, index, counts = [], {}, []
        for device, _, _ in messages:
            if device not in index:
                index[device] = len(devices) + 1; devices.append(device); counts.append(0)
            counts[index[device] - 1] += 1
        return devices, index, counts

class KeyedScript(Layout):
    """A candidate whose append script takes its keys per device and, per message, the
    device index, id, expiry, payload and the key TTL."""
    def append(self, messages, deadline):
        devices, index, counts = self.group(messages)
        keys = [k for d in devices for k in self.keys(d)]
        argv = [deadline, self.cap, len(devices), *counts]
        for device, mid, payload in messages: argv += [index[device], mid, self.now + 3600_000, payload, 3660_000]
        return [encode("EVALSHA", self.sha["append"], len(keys), *keys, *argv)]

class Current(Layout):
    def setup(self):
        self.sha["append"] = load(self.conn, CURRENT_APPEND); self.sha["ack"] = load(self.conn, CURRENT_ACK)
    def keys(self, d):
        t = f"herald:{{{d}}}"; return [f"{t}:seq", f"{t}:ids", f"{t}:exp", f"{t}:data"]
    def append(self, messages, deadline):
        devices, index, counts = self.group(messages)
        keys = [k for d in devices for k in self.keys(d)]
        argv = [self.now, self.cap, 60000, len(devices), deadline, *counts]
        for device, mid, payload in messages: argv += [index[device], mid, self.now + 3600_000, payload]
        return [encode("EVALSHA", self.sha["append"], len(keys), *keys, *argv)]
    def ack(self, device, mid, token):
        keys = self.keys(device)[1:]
        return [encode("EVALSHA", self.sha["ack"], 3, *keys, mid)]

class Stream(KeyedScript):
    def setup(self): self.sha["append"] = load(self.conn, STREAM_APPEND)
    def keys(self, d): return [f"herald:{{{d}}}:q"]
    def ack(self, device, mid, token):
        return [encode("XDEL", self.keys(device)[0], token)]

class StreamSeq(KeyedScript):
    def setup(self): self.sha["append"] = load(self.conn, STREAM_SEQ_APPEND)
    def keys(self, d): t = f"herald:{{{d}}}"; return [f"{t}:seq", f"{t}:q", f"{t}:ids"]
    def ack(self, device, mid, token):
        return [encode("XDEL", self.keys(device)[1], f"{token}-0")]

class ListHash(KeyedScript):
    def setup(self): self.sha["append"] = load(self.conn, LIST_APPEND)
    def keys(self, d): t = f"herald:{{{d}}}"; return [f"{t}:l", f"{t}:h"]
    def ack(self, device, mid, token):
        return [encode("HDEL", self.keys(device)[1], mid)]

class ZsetHash(KeyedScript):
    def setup(self): self.sha["append"] = load(self.conn, ZSET_APPEND)
    def keys(self, d): t = f"herald:{{{d}}}"; return [f"{t}:z", f"{t}:h"]
    def ack(self, device, mid, token):
        z, h = self.keys(device)
        return [encode("MULTI"), encode("ZREM", z, mid), encode("HDEL", h, mid), encode("EXEC")]

class Multi(Layout):
    """The floor the issue names: MULTI RPUSH + HSET EXEC, no cap, no deadline; ack HDEL."""
    def setup(self): pass
    def keys(self, d): t = f"herald:{{{d}}}"; return [f"{t}:l", f"{t}:h"]
    def append(self, messages, deadline):
        out = [encode("MULTI")]
        for device, mid, payload in messages:
            l, h = self.keys(device)
            out += [encode("RPUSH", l, mid), encode("HSET", h, mid, payload)]
        return out + [encode("EXEC")]
    def ack(self, device, mid, token):
        return [encode("HDEL", self.keys(device)[1], mid)]

def herald_append_script(cap):
    """The append script as the node runs it, read from its Swift source (so it cannot drift):
    `RedisPushStore.appendScript` with the functions it interpolates put in, and the settings
    the node writes in: `cap`, a minute of slack, no status."""
    source = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Sources", "RedisStore",
                               "RedisPushStore+Scripts.swift")).read()
    def block(name):
        return re.search(r"static let " + name + r'[^"]*"""\n(.*?)\n\s*"""', source, re.S).group(1)
    script = re.search(r'static func appendScript[^"]*"""\n(.*?)\n\s*"""', source, re.S).group(1)
    for name in ("migrateFunction", "dropExpiredFunction"): script = script.replace("\\(" + name + ")", block(name))
    for name, value in (("cap", cap), ("slackMillis", 60_000), ("retentionMillis", 0), ("keep", "false")):
        script = script.replace("\\(" + name + ")", str(value))
    if "\\(" in script: raise SystemExit("the append script interpolates something this tool does not know")
    return script

class Herald(Layout):
    """The schema Herald runs (counter + stream with `<sequence>-0` ids), by its own append
    script, with the KEYS and ARGV the node sends (no status, no expiry events)."""
    script = "herald"
    def setup(self):
        self.sha["append"] = load(self.conn, herald_append_script(self.cap) if self.script == "herald" else "return 1")
    def keys(self, d): t = f"herald:{{{d}}}"; return [f"{t}:n", f"{t}:q"]
    def arguments(self, messages, deadline):
        """The script's KEYS and ARGV for `messages`, each a request of its own."""
        devices, index, counts = self.group(messages)
        keys = [k for d in devices for k in self.keys(d)]
        argv = [deadline // 1000, deadline % 1000, self.now, len(devices), *counts] + [3660_000] * len(devices)
        for device, mid, payload in messages: argv += [1, index[device], mid, self.now + 3600_000, payload]
        return keys, argv
    def append(self, messages, deadline):
        keys, argv = self.arguments(messages, deadline)
        return [encode("EVALSHA", self.sha["append"], len(keys), *keys, *argv)]
    def ack(self, device, mid, token):
        return [encode("XDEL", self.keys(device)[1], f"{token}-0")]

class HeraldModule(Herald):
    """The same appends through Herald's Redis module (`HERALD.APPEND`, RedisModule/herald.c),
    with the settings the script has written in: needs --module."""
    def setup(self):
        if not self.conn.call("COMMAND", "INFO", "herald.append")[0]:
            raise SystemExit("herald-module: this redis-server has no HERALD.APPEND (give --module herald.so)")
    def append(self, messages, deadline):
        keys, argv = self.arguments(messages, deadline)
        return [encode("HERALD.APPEND", 1, self.cap, 60_000, 0, 0, len(keys), *keys, *argv)]

class HeraldModuleStatus(HeraldModule):
    """Herald's module with message status on (the default: a status key a message, written at
    the append, and at the ACK its send and its ACK, `HSETNX`, with `PEXPIRE` to the retention,
    then the `XDEL`: the node's four ACK commands, in one write)."""
    def status(self, d, mid): return f"herald:{{{d}}}:r:{mid}"
    def append(self, messages, deadline):
        devices, index, counts = self.group(messages)
        keys = [k for d in devices for k in self.keys(d)]
        argv = [deadline // 1000, deadline % 1000, self.now, len(devices), *counts] + [3660_000] * len(devices) + devices
        for device, mid, payload in messages:
            keys.append(self.status(device, mid))
            argv += [1, index[device], mid, self.now + 3600_000, payload, len(keys)]
        return [encode("HERALD.APPEND", 1, self.cap, 60_000, RETENTION_MS, 0, len(keys), *keys, *argv)]
    def ack(self, device, mid, token):
        key = self.status(device, mid)
        return [encode("HSETNX", key, "s", self.now), encode("HSETNX", key, "k", self.now),
                encode("PEXPIRE", key, RETENTION_MS), *super().ack(device, mid, token)]

class HeraldModuleStatusAck(HeraldModuleStatus):
    """The same with the ACK through the module too (`HERALD.ACK`: the four commands' writes in
    one command), as a node does where Redis has it."""
    def ack(self, device, mid, token):
        q = self.keys(device)[1]
        return [encode("HERALD.ACK", 1, self.now, RETENTION_MS, 2, q, self.status(device, mid), token, 2, self.now)]

class HeraldEmptyScript(Herald):
    """Herald's call, KEYS and ARGV with a script that does nothing (`return 1`): what calling
    a script and handing it its arguments cost. Its ACKs delete nothing."""
    script = "empty"
    def tokens(self, reply, count): return [0] * count

class HeraldMulti(Herald):
    """Herald's four commands per message (INCRBY, XLEN, XADD, PEXPIRE) in a MULTI, no Lua:
    what the script's Lua costs beyond its commands. Not a store: no deadline, no refusal at
    the cap, and the entry id is Redis's (`*`), not the counter's."""
    def setup(self): pass
    def append(self, messages, deadline):
        out = [encode("MULTI")]
        for device, mid, payload in messages:
            n, q = self.keys(device)
            out += [encode("INCRBY", n, 1), encode("XLEN", q), encode("XADD", q, "*", "i", mid, "e", self.now + 3600_000, "p", payload),
                    encode("PEXPIRE", q, 3660_000)]
        return out + [encode("EXEC")]
    def tokens(self, reply, count): return [r.decode() for r in reply[2::4]]
    def ack(self, device, mid, token):
        return [encode("XDEL", self.keys(device)[1], token)]

RETENTION_MS = 86_400_000   # HERALD_RECEIPT_RETENTION_S's default, 24 h

class StatusKey(StreamSeq):
    """The chosen layout plus a status key per message id, under the id's own tag (so not in
    the device's slot: a separate call): written at the append, the send and the ACK."""
    def append(self, messages, deadline):
        # The script's reply (the sequences the ACKs need) must come last.
        out = [encode("SET", f"herald:{{{mid}}}:s", f"{device} stored {self.now}", "PX", RETENTION_MS) for device, mid, _ in messages]
        return out + super().append(messages, deadline)
    def ack(self, device, mid, token):
        return [encode("SET", f"herald:{{{mid}}}:s", f"{device} sent {self.now}", "KEEPTTL"),
                *super().ack(device, mid, token),
                encode("SET", f"herald:{{{mid}}}:s", f"{device} acked {self.now}", "PX", RETENTION_MS)]

class StatusHash(StreamSeq):
    """The chosen layout plus the status as a field of the device's hash `r` (in its slot, so
    the ACK's delete and status are one MULTI), and an id -> device key to find it by id."""
    def append(self, messages, deadline):
        out = []
        for device, mid, _ in messages:
            out += [encode("HSET", f"herald:{{{device}}}:r", mid, f"stored {self.now}"),
                    encode("SET", f"herald:{{{mid}}}:c", device, "PX", RETENTION_MS)]
        return out + super().append(messages, deadline)
    def ack(self, device, mid, token):
        r = f"herald:{{{device}}}:r"
        return [encode("HSET", r, mid, f"sent {self.now}"),
                encode("MULTI"), *super().ack(device, mid, token), encode("HSET", r, mid, f"acked {self.now}"),
                encode("PEXPIRE", r, RETENTION_MS), encode("EXEC")]

class AckEvent(StreamSeq):
    """The chosen layout plus a `message.acked` event per ACK, in one of 16 event streams
    (a single Redis: one MULTI with the delete), read by a consumer group in batches of 100
    and acknowledged and deleted once sent."""
    SHARDS = 16
    def setup(self):
        super().setup()
        for n in range(self.SHARDS):
            self.conn.call("XGROUP", "CREATE", self.stream(n), "senders", "$", "MKSTREAM")
    def stream(self, n): return f"herald:{{events{n}}}"
    def ack(self, device, mid, token):
        stream = self.stream(hash(device) % self.SHARDS)
        return [encode("MULTI"),
                encode("XADD", stream, "*", "t", "message.acked", "m", mid, "c", device, "at", self.now),
                *super().ack(device, mid, token), encode("EXEC")]
    def drain(self):
        """Reads every event as a sender would, 100 at a time per stream, then XACK + XDEL."""
        read = 0
        for n in range(self.SHARDS):
            while True:
                reply = self.conn.call("XREADGROUP", "GROUP", "senders", "s1", "COUNT", 100, "STREAMS", self.stream(n), ">")
                entries = reply[0][1] if reply else []
                if not entries: break
                ids = [e[0] for e in entries]
                self.conn.pipeline([[encode("XACK", self.stream(n), "senders", *ids)], [encode("XDEL", self.stream(n), *ids)]], 2)
                read += len(ids)
        return read

LAYOUTS = {"current": Current, "stream": Stream, "stream-seq": StreamSeq, "list-hash": ListHash, "zset-hash": ZsetHash, "multi": Multi,
           "stream-seq+status-key": StatusKey, "stream-seq+status-hash": StatusHash, "stream-seq+event": AckEvent,
           "herald": Herald, "herald-module": HeraldModule, "herald-module+status": HeraldModuleStatus, "herald-module+status+ack": HeraldModuleStatusAck, "herald-empty-script": HeraldEmptyScript, "herald-commands-in-multi": HeraldMulti}

def tokens(reply, count):
    """The per-message tokens an append returned (stream entry ids), or None for each."""
    if isinstance(reply, list) and len(reply) == count:
        return [r.decode() if isinstance(r, bytes) else r for r in reply]
    return [None] * count

def run(port, name, args):
    conn = Connection(port)
    conn.call("FLUSHALL")
    layout = LAYOUTS[name](name, conn, int(time.time() * 1000), 1_000_000)
    layout.setup()
    used = lambda: int(dict(l.split(":", 1) for l in conn.call("INFO", "memory").decode().splitlines() if ":" in l)["used_memory"])
    empty = used()
    payload = b"x" * args.payload_bytes
    messages = [(f"dev{i % args.devices}", f"{i:016x}-{i:08x}", payload) for i in range(args.messages)]
    deadline = int(time.time() * 1000) + 3600_000
    groups = [messages[i:i + args.batch] for i in range(0, len(messages), args.batch)]
    calls = [layout.append(g, deadline) for g in groups]
    before = redis_cpu(conn)
    replies = conn.pipeline(calls, args.depth)
    appended = redis_cpu(conn)
    toks = [t for g, r in zip(groups, replies) for t in getattr(layout, "tokens", tokens)(r, len(g))]
    acks = [layout.ack(d, mid, tok) for (d, mid, _), tok in zip(messages, toks)]
    conn.pipeline(acks, args.depth)
    acked = redis_cpu(conn)
    if isinstance(layout, (Stream, StreamSeq)) and None in toks:
        raise SystemExit(f"{name}: an append's reply had no stream entry ids for the ACKs")
    if hasattr(layout, "drain"):
        read = layout.drain()
        if read != args.messages: raise SystemExit(f"{name}: {read} events read, {args.messages} expected")
    drained = redis_cpu(conn)
    left = conn.call("DBSIZE")
    us = lambda s: s / args.messages * 1e6
    return us(appended - before), us(acked - appended), us(drained - acked), left, used() - empty

def instructions(name, args, messages):
    """Instructions of a redis-server's whole life under callgrind, running `name` once with
    `messages` messages."""
    workdir = tempfile.mkdtemp(prefix="herald-layouts-")
    out, port = os.path.join(workdir, "callgrind.out"), free_port()
    redis = start_redis(workdir, port, "--hz", "1", *module_arguments(args), prefix=["valgrind", "-q", "--tool=callgrind", f"--callgrind-out-file={out}"])
    try:
        for _ in range(600):
            try: Connection(port).call("PING"); break
            except OSError: time.sleep(0.1)
        run(port, name, argparse.Namespace(**{**vars(args), "messages": messages}))
    finally:
        redis.terminate(); redis.wait(timeout=300)
    with open(out) as f:
        return int(re.search(r"^(?:summary|totals): (\d+)", f.read(), re.MULTILINE).group(1))

def module_arguments(args):
    """redis-server's arguments that load Herald's module, with --module, and set each --redis-config."""
    settings = [a for setting in args.redis_config for a in ("--" + setting.split("=", 1)[0], setting.split("=", 1)[1])]
    return (["--loadmodule", os.path.abspath(args.module)] if args.module else []) + settings

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=10000)
    parser.add_argument("--messages", type=int, default=50000)
    parser.add_argument("--batch", type=int, default=1, help="messages per append call (across devices)")
    parser.add_argument("--depth", type=int, default=16, help="calls in flight on the connection")
    parser.add_argument("--payload-bytes", type=int, default=100)
    parser.add_argument("--layouts", default=",".join(name for name in LAYOUTS if not name.startswith("herald-module")))
    parser.add_argument("--rounds", type=int, default=3, help="runs per layout; the median is shown")
    parser.add_argument("--module", help="Herald's Redis module (herald.so, from RedisModule/herald.c) for every redis-server to load; the herald-module layout needs it")
    parser.add_argument("--redis-config", action="append", default=[], metavar="NAME=VALUE",
                        help="a redis-server setting for every redis-server, e.g. stream-node-max-entries=16")
    parser.add_argument("--callgrind", action="store_true", help="count Redis's instructions per message instead of its CPU time")
    args = parser.parse_args()
    if args.callgrind:
        print(f"{args.messages} messages to {args.devices} devices, {args.payload_bytes}-byte payloads, {args.batch} per append; "
              f"redis-server instructions per message, append and ACK (callgrind, {args.messages} and {2 * args.messages} messages)")
        for name in args.layouts.split(","):
            single, double = instructions(name, args, args.messages), instructions(name, args, 2 * args.messages)
            print(f"{name:<26} {(double - single) / args.messages:>10,.0f}")
        return
    workdir = tempfile.mkdtemp(prefix="herald-layouts-")
    port = free_port()
    redis = start_redis(workdir, port, *module_arguments(args))
    try:
        for _ in range(100):
            try: Connection(port).call("PING"); break
            except OSError: time.sleep(0.05)
        print(f"{args.messages} messages to {args.devices} devices, {args.payload_bytes}-byte payloads, "
              f"{args.batch} per append, {args.depth} calls in flight; Redis CPU per message (median of {args.rounds})")
        print(f"{'layout':<22} {'append µs':>10} {'ack µs':>8} {'events µs':>10} {'total µs':>9}  keys left, memory left per message")
        for name in args.layouts.split(","):
            results = sorted((run(port, name, args) for _ in range(args.rounds)), key=lambda r: r[0] + r[1] + r[2])
            a, k, e, left, memory = results[len(results) // 2]
            print(f"{name:<22} {a:>10.2f} {k:>8.2f} {e:>10.2f} {a + k + e:>9.2f}  {left}, {memory / args.messages:.0f} B")
    finally:
        redis.terminate(); redis.wait()

if __name__ == "__main__":
    main()
