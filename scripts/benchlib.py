"""Shared parts of the Python benchmark scripts: ports, /proc CPU, Redis and Herald processes,
and a thread of devices that ACK every PUSH. (The Swift herald-bench will replace them.)"""
import http.client, os, select, socket, struct, subprocess, threading, time

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close(); return port

def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def redis_stat(port, name):
    out = subprocess.check_output(["redis-cli", "-p", str(port), "INFO", "stats"], text=True)
    return int(next(l.split(":")[1] for l in out.splitlines() if l.startswith(name + ":")))

def herald_binary():
    return subprocess.check_output(["swift", "build", "-c", "release", "--show-bin-path"], text=True).strip() + "/herald"

def start_redis(workdir, port, *extra, prefix=()):
    """Starts a redis-server without persistence (after the `prefix` command, such as
    valgrind, if given)."""
    return subprocess.Popen([*prefix, "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir,
                             "--save", "", "--appendonly", "no", "--logfile", os.path.join(workdir, "redis.log"), *extra])

def start_herald(binary, http_port, prefix=(), ready_seconds=20, **variables):
    """Starts `herald serve` (after the `prefix` command, such as valgrind, if given) with
    HERALD_<name>=value for each keyword and waits for /readyz."""
    env = dict(os.environ, HERALD_HTTP_ADDR=f"127.0.0.1:{http_port}", HERALD_LOG_LEVEL="error",
               HERALD_MAX_PENDING="1000000", HERALD_MAX_FRAME_RATE="1000000")
    env.update({f"HERALD_{k.upper()}": str(v) for k, v in variables.items()})
    process = subprocess.Popen([*prefix, binary, "serve"], env=env)
    for _ in range(ready_seconds * 20):
        try:
            c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=1); c.request("GET", "/readyz")
            if c.getresponse().status == 200: return process
        except OSError: pass
        time.sleep(0.05)
    raise SystemExit("herald did not become ready")

def metric(http_port, name):
    c = http.client.HTTPConnection("127.0.0.1", http_port); c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    return next((int(float(l.split()[1])) for l in text.splitlines() if l.startswith(name + " ")), 0)

def frame(kind, body):
    return struct.pack(">IB", len(body) + 1, kind) + body

def string(value):
    data = value.encode(); return struct.pack(">H", len(data)) + data

def hello(client_id, heartbeat=600):
    """A HELLO frame (protocol.md §1): version 1, the client id, no token, the heartbeat."""
    return frame(1, bytes([1]) + string(client_id) + string("") + struct.pack(">H", heartbeat))

class Devices(threading.Thread):
    """Devices dev<first>..dev<first+count-1> in one thread: HELLO, then ACK every PUSH.
    `on_push(message_id, payload, now)` is called for each PUSH, if given."""
    def __init__(self, port, count, first=0, on_push=None):
        super().__init__(daemon=True)
        self.received = 0
        self.on_push = on_push
        self.socks = []
        for i in range(first, first + count):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(hello(f"dev{i}"))
            self.socks.append(s)
        self.buffers = {s.fileno(): b"" for s in self.socks}
        self.by_fd = {s.fileno(): s for s in self.socks}
        self.stop = False

    def run(self):
        poller = select.poll()
        for s in self.socks:
            poller.register(s.fileno(), select.POLLIN)
        while not self.stop:
            for fd, _ in poller.poll(200):
                data = self.by_fd[fd].recv(262144)
                if not data:
                    continue
                now = time.monotonic()
                buf = self.buffers[fd] + data
                acks = []
                while len(buf) >= 4:
                    (length,) = struct.unpack(">I", buf[:4])
                    if len(buf) < 4 + length:
                        break
                    body = buf[4:4 + length]; buf = buf[4 + length:]
                    if body[0] == 5:
                        (id_len,) = struct.unpack(">H", body[1:3])
                        acks.append(frame(6, body[1:3 + id_len]))
                        self.received += 1
                        if self.on_push: self.on_push(body[3:3 + id_len].decode(), body[3 + id_len:], now)
                self.buffers[fd] = buf
                if acks:
                    self.by_fd[fd].sendall(b"".join(acks))

    def close(self):
        self.stop = True
        self.join()
        for s in self.socks: s.close()
