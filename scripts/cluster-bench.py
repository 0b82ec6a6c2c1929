#!/usr/bin/env python3
"""Two Herald nodes on one Redis: delivery latency same-node vs cross-node, and relay throughput.

Starts its own redis-server and two `herald serve` (release build) nodes A and B, connects D
devices to B (one Python thread; they ACK every PUSH), then:
  1. latency: single /v1/push requests at a steady rate, first through B (same node as the
     devices), then through A (cross-node: A stores, reads the route, relays to B); latency is
     from just before the request is sent to the device's receipt, on one monotonic clock;
  2. throughput: M messages through A's /v1/push/batch to the devices on B, as fast as the
     senders go; delivered/s end to end, CPU per 10,000 messages of A, B and redis-server.

    scripts/cluster-bench.py --devices 100 --rate 500 --seconds 10 --messages 50000
"""
import argparse, http.client, json, os, shutil, signal, sys, tempfile, threading, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Devices, cpu_seconds, free_port, herald_binary, metric, start_herald, start_redis

def percentile(values, p):
    if not values: return None
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--rate", type=int, default=500, help="pushes per second in the latency phase")
    parser.add_argument("--seconds", type=float, default=10, help="length of each latency run")
    parser.add_argument("--messages", type=int, default=50000, help="messages in the throughput phase")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--senders", type=int, default=4)
    args = parser.parse_args()
    binary = herald_binary()
    workdir = tempfile.mkdtemp(prefix="herald-cluster-bench-")
    redis_port = free_port()
    redis = start_redis(workdir, redis_port)
    nodes = []
    try:
        time.sleep(0.5)
        ports = {}
        for name in ("a", "b"):
            ports[name] = (free_port(), free_port())
            nodes.append(start_herald(binary, ports[name][1], node_id=f"node-{name}", redis_url=f"redis://127.0.0.1:{redis_port}",
                                      tcp_addr=f"127.0.0.1:{ports[name][0]}", relay_addr="127.0.0.1:0",
                                      cluster_secret="benchmark secret of at least 32 bytes"))
        a_http, b_http = ports["a"][1], ports["b"][1]
        deadline = time.time() + 20
        while metric(a_http, "herald_relay_links_up_total") < 1 or metric(b_http, "herald_relay_links_up_total") < 1:
            if time.time() > deadline: raise SystemExit("relay links did not come up")
            time.sleep(0.1)
        latencies = {"same": [], "cross": []}
        lock = threading.Lock()
        def on_push(message_id, payload, now):
            path, sent = payload.decode().split(":")
            with lock: latencies[path].append(now - float(sent))
        devices = Devices(ports["b"][0], args.devices, on_push=on_push)
        devices.start()
        time.sleep(1)

        def steady(path, http_port):
            conn = http.client.HTTPConnection("127.0.0.1", http_port)
            total = int(args.rate * args.seconds)
            start = time.monotonic()
            for i in range(total):
                target = start + i / args.rate
                delay = target - time.monotonic()
                if delay > 0: time.sleep(delay)
                body = json.dumps({"client_id": f"dev{i % args.devices}", "data": f"{path}:{time.monotonic()!r}"})
                conn.request("POST", "/v1/push", body, {"Content-Type": "application/json"})
                response = conn.getresponse(); response.read()
                if response.status != 202: raise SystemExit(f"push answered {response.status}")
            achieved = total / (time.monotonic() - start)
            wait = time.time() + 30
            while len(latencies[path]) < total and time.time() < wait: time.sleep(0.05)
            return achieved

        achieved = {"same": steady("same", b_http), "cross": steady("cross", a_http)}

        # Throughput: batches through A for the devices on B.
        before = devices.received
        cpu = [cpu_seconds(p.pid) for p in nodes] + [cpu_seconds(redis.pid)]
        relayed_before = metric(a_http, "herald_relay_messages_sent_total")
        per_sender = args.messages // args.senders
        def sender(index):
            conn = http.client.HTTPConnection("127.0.0.1", a_http)
            sent = 0
            while sent < per_sender:
                n = min(args.batch, per_sender - sent)
                body = json.dumps({"messages": [{"client_id": f"dev{(index * per_sender + sent + k) % args.devices}", "data": "t:0"} for k in range(n)]})
                conn.request("POST", "/v1/push/batch", body, {"Content-Type": "application/json"})
                response = conn.getresponse(); response.read()
                if response.status != 202: raise SystemExit(f"batch answered {response.status}")
                sent += n
        latencies["t"] = []
        start = time.time()
        threads = [threading.Thread(target=sender, args=(i,)) for i in range(args.senders)]
        for t in threads: t.start()
        for t in threads: t.join()
        total = per_sender * args.senders
        deadline = time.time() + 120
        while devices.received - before < total and time.time() < deadline: time.sleep(0.02)
        elapsed = time.time() - start
        spent = [after - b for after, b in zip([cpu_seconds(p.pid) for p in nodes] + [cpu_seconds(redis.pid)], cpu)]
        relayed = metric(a_http, "herald_relay_messages_sent_total") - relayed_before
        devices.close()

        ms = lambda v: None if v is None else round(v * 1000, 2)
        result = {"devices": args.devices, "rate_per_s": args.rate, "seconds": args.seconds}
        for path in ("same", "cross"):
            values = latencies[path]
            result[path] = {"pushes": len(values), "achieved_rate_per_s": round(achieved[path]),
                            "p50_ms": ms(percentile(values, 0.5)), "p99_ms": ms(percentile(values, 0.99)),
                            "p999_ms": ms(percentile(values, 0.999)), "max_ms": ms(max(values) if values else None)}
        result["throughput"] = {
            "messages": total, "delivered": devices.received - before, "relayed": relayed,
            "end_to_end_per_s": round(total / elapsed),
            "node_a_cpu_s_per_10k": round(spent[0] / total * 1e4, 3), "node_b_cpu_s_per_10k": round(spent[1] / total * 1e4, 3),
            "redis_cpu_s_per_10k": round(spent[2] / total * 1e4, 3), "us_per_message_total": round(sum(spent) / total * 1e6, 1),
        }
        print(json.dumps(result, indent=1))
    finally:
        for process in nodes: process.send_signal(signal.SIGTERM)
        for process in nodes: process.wait(timeout=30)
        redis.kill(); redis.wait()
        shutil.rmtree(workdir, ignore_errors=True)

if __name__ == "__main__":
    main()
