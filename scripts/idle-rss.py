#!/usr/bin/env python3
"""Measures a Herald node's resident memory per idle device connection.

Starts `herald serve` (release build unless --binary is given), then opens N device
connections in steps from several client processes bound to 127.0.0.2, 127.0.0.3, ...
(one process holds at most ~19,900 sockets here). Each device sends HELLO and reads
WELCOME, then stays idle. After each step the server's VmRSS is read from /proc, and the
slope (KB per connection) is a least-squares fit over the steps.

    scripts/idle-rss.py --connections 10000 --steps 4
"""
import argparse, json, os, select, signal, socket, struct, subprocess, sys, time

def hello(client_id):
    cid, token = client_id.encode(), b""
    body = bytes([1, 1]) + struct.pack(">H", len(cid)) + cid + struct.pack(">H", 0) + struct.pack(">H", 600)
    return struct.pack(">I", len(body)) + body

def client_process(source, port, count, prefix, ready_fd, go_fd):
    """Opens `count` devices from `source`, reports, then holds them until stdin closes."""
    socks = []
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(hello(f"{prefix}-{i}"))
        socks.append(s)
    pending = {s.fileno(): s for s in socks}
    poller = select.poll()  # select() cannot watch descriptors above 1023
    for fd in pending:
        poller.register(fd, select.POLLIN)
    deadline = time.time() + 60
    while pending and time.time() < deadline:
        for fd, _ in poller.poll(1000):
            s = pending.get(fd)
            if s is None:
                continue
            poller.unregister(fd)
            data = s.recv(64)
            if len(data) >= 5 and data[4] == 2:
                del pending[fd]
            elif not data:
                sys.exit(f"{source}: connection closed before WELCOME")
    if pending:
        sys.exit(f"{source}: {len(pending)} devices got no WELCOME")
    os.write(ready_fd, b"1")
    os.read(go_fd, 1)  # hold until the parent says stop

def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--per-process", type=int, default=5000)
    parser.add_argument("--binary", default=None)
    parser.add_argument("--port", type=int, default=39988)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    binary = args.binary or subprocess.check_output(["swift", "build", "-c", "release", "--show-bin-path"], text=True).strip() + "/herald"
    env = dict(os.environ, HERALD_TCP_ADDR=f"127.0.0.1:{args.port}", HERALD_HTTP_ADDR="127.0.0.1:0", HERALD_LOG_LEVEL="error")
    server = subprocess.Popen([binary, "serve"], env=env)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", args.port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(1)
        points = [(0, rss_kb(server.pid))]
        step = args.connections // args.steps
        holders = []
        opened = 0
        for n in range(args.steps):
            left = step
            while left > 0:
                count = min(left, args.per_process)
                source = f"127.0.0.{2 + len(holders) % 200}"
                ready_r, ready_w = os.pipe()
                go_r, go_w = os.pipe()
                pid = os.fork()
                if pid == 0:
                    os.close(ready_r); os.close(go_w)
                    try:
                        client_process(source, args.port, count, f"d{len(holders)}", ready_w, go_r)
                    finally:
                        os._exit(0)
                os.close(ready_w); os.close(go_r)
                if os.read(ready_r, 1) != b"1":
                    raise SystemExit("a client process failed")
                holders.append((pid, go_w))
                left -= count
                opened += count
            time.sleep(2)
            points.append((opened, rss_kb(server.pid)))
        n = len(points)
        mean_x = sum(p[0] for p in points) / n
        mean_y = sum(p[1] for p in points) / n
        slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)
        result = {"points": [{"connections": x, "rss_kb": y} for x, y in points], "slope_kb_per_connection": round(slope, 3)}
        if args.json:
            print(json.dumps(result))
        else:
            for x, y in points:
                print(f"{x:>7} connections  RSS {y / 1024:8.1f} MiB")
            print(f"slope: {slope:.3f} KB per idle connection")
        for pid, go_w in holders:
            os.close(go_w)
            os.waitpid(pid, 0)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

if __name__ == "__main__":
    main()
