#!/usr/bin/env python3
"""Pushed-and-acknowledged messages through Herald with the Redis store: throughput and CPU.

Starts its own redis-server and `herald serve` (release build) with HERALD_REDIS_URL,
connects D devices that acknowledge every PUSH, pushes M messages with /v1/push/batch
(batches of B, a few concurrent senders), waits until every message was delivered and
acknowledged, and reports: accepted pushes/s, end-to-end msgs/s, CPU-seconds per 10,000
pushed-and-acked messages for herald and for redis-server (from /proc), and Redis commands
per message (INFO stats).

    scripts/redis-store-bench.py --devices 100 --messages 50000 --batch 100
"""
import argparse, http.client, json, os, select, shutil, signal, socket, struct, subprocess, sys, tempfile, threading, time

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close(); return port

def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def redis_stat(port, name):
    out = subprocess.check_output(["redis-cli", "-p", str(port), "INFO", "stats"], text=True)
    return int(next(l.split(":")[1] for l in out.splitlines() if l.startswith(name + ":")))

def redis_commands(port):
    return redis_stat(port, "total_commands_processed")

def redis_reads(port):
    # Read events Redis processed: each is one batch of commands received, i.e. one round trip.
    return redis_stat(port, "total_reads_processed")

def frame(kind, body):
    return struct.pack(">IB", len(body) + 1, kind) + body

def string(value):
    data = value.encode(); return struct.pack(">H", len(data)) + data

class Devices(threading.Thread):
    """All devices in one thread: HELLO, then ACK every PUSH."""
    def __init__(self, port, count):
        super().__init__(daemon=True)
        self.received = 0
        self.socks = []
        for i in range(count):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(frame(1, bytes([1]) + string(f"dev{i}") + string("") + struct.pack(">H", 600)))
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
                self.buffers[fd] = buf
                if acks:
                    self.by_fd[fd].sendall(b"".join(acks))

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--messages", type=int, default=50000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--senders", type=int, default=4)
    args = parser.parse_args()
    binary = subprocess.check_output(["swift", "build", "-c", "release", "--show-bin-path"], text=True).strip() + "/herald"
    workdir = tempfile.mkdtemp(prefix="herald-bench-")
    redis_port, tcp_port, http_port = free_port(), free_port(), free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", workdir,
                              "--save", "", "--appendonly", "no", "--logfile", os.path.join(workdir, "redis.log")])
    herald = None
    try:
        time.sleep(0.5)
        env = dict(os.environ, HERALD_REDIS_URL=f"redis://127.0.0.1:{redis_port}", HERALD_TCP_ADDR=f"127.0.0.1:{tcp_port}",
                   HERALD_HTTP_ADDR=f"127.0.0.1:{http_port}", HERALD_RELAY_ADDR="127.0.0.1:0", HERALD_MAX_PENDING="1000000", HERALD_LOG_LEVEL="error",
                   HERALD_MAX_FRAME_RATE="1000000")
        herald = subprocess.Popen([binary, "serve"], env=env)
        for _ in range(200):
            try:
                c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=1); c.request("GET", "/readyz")
                if c.getresponse().status == 200: break
            except OSError: pass
            time.sleep(0.05)
        devices = Devices(tcp_port, args.devices)
        devices.start()
        time.sleep(1)
        cpu_h, cpu_r, commands = cpu_seconds(herald.pid), cpu_seconds(redis.pid), redis_commands(redis_port)
        reads = redis_reads(redis_port)
        payload = "x" * 64
        per_sender = args.messages // args.senders
        accepted = [0] * args.senders
        def sender(index):
            conn = http.client.HTTPConnection("127.0.0.1", http_port)
            sent = 0
            while sent < per_sender:
                n = min(args.batch, per_sender - sent)
                body = json.dumps({"messages": [{"client_id": f"dev{(index * per_sender + sent + k) % args.devices}", "data": payload} for k in range(n)]})
                conn.request("POST", "/v1/push/batch", body, {"Content-Type": "application/json"})
                response = conn.getresponse(); response.read()
                if response.status != 202: sys.exit(f"batch answered {response.status}")
                sent += n; accepted[index] += n
        start = time.time()
        threads = [threading.Thread(target=sender, args=(i,)) for i in range(args.senders)]
        for t in threads: t.start()
        for t in threads: t.join()
        accept_time = time.time() - start
        total = sum(accepted)
        deadline = time.time() + 120
        while devices.received < total and time.time() < deadline: time.sleep(0.05)
        # Every ACK processed: nothing pending any more.
        while time.time() < deadline:
            c = http.client.HTTPConnection("127.0.0.1", http_port); c.request("GET", f"/metrics")
            text = c.getresponse().read().decode()
            acked = next((int(float(l.split()[1])) for l in text.splitlines() if l.startswith("herald_pushes_acked_total ")), 0)
            if acked >= total: break
            time.sleep(0.05)
        end_time = time.time() - start
        d_h, d_r = cpu_seconds(herald.pid) - cpu_h, cpu_seconds(redis.pid) - cpu_r
        d_commands = redis_commands(redis_port) - commands
        d_reads = redis_reads(redis_port) - reads
        devices.stop = True
        devices.join()
        for s in devices.socks: s.close()
        result = {
            "messages": total, "devices": args.devices, "batch": args.batch, "delivered": devices.received, "acked": acked,
            "accepted_per_s": round(total / accept_time), "end_to_end_per_s": round(total / end_time),
            "herald_cpu_s_per_10k": round(d_h / total * 10000, 3), "redis_cpu_s_per_10k": round(d_r / total * 10000, 3),
            "us_per_message_total": round((d_h + d_r) / total * 1e6, 1), "redis_commands_per_message": round(d_commands / total, 2),
            "redis_round_trips_per_message": round(d_reads / total, 3),
        }
        print(json.dumps(result, indent=1))
    finally:
        if herald: herald.send_signal(signal.SIGTERM); herald.wait(timeout=30)
        redis.kill(); redis.wait()
        shutil.rmtree(workdir, ignore_errors=True)

if __name__ == "__main__":
    main()
