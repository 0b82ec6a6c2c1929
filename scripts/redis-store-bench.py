#!/usr/bin/env python3
"""Pushed-and-acknowledged messages through Herald with the Redis store: throughput and CPU.

Starts its own redis-server and `herald serve` (release build) with HERALD_REDIS_URL,
connects D devices that acknowledge every PUSH, pushes M messages with /v1/push/batch
(batches of B, a few concurrent senders), waits until every message was delivered and
acknowledged, and reports: accepted pushes/s, end-to-end msgs/s, CPU-seconds per 10,000
pushed-and-acked messages for herald and for redis-server (from /proc), and Redis commands
per message (INFO stats).

    scripts/redis-store-bench.py --devices 100 --messages 50000 --batch 100
    scripts/redis-store-bench.py ... --replica [--wait-replicas 1]   # with a replica; WAIT before each 202
    scripts/redis-store-bench.py ... --redis-module herald.so --node-env HERALD_RECEIPT_RETENTION_S=0
"""
import argparse, http.client, json, os, shutil, signal, subprocess, sys, tempfile, threading, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Devices, cpu_seconds, free_port, herald_binary, metric, redis_stat, start_herald, start_redis

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--messages", type=int, default=50000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--replica", action="store_true", help="start a replica of the Redis (its CPU is counted too)")
    parser.add_argument("--wait-replicas", type=int, default=0, help="HERALD_REDIS_WAIT_REPLICAS")
    parser.add_argument("--redis-module", help="a built RedisModule/herald.c (herald.so) for redis-server to load")
    parser.add_argument("--redis-config", action="append", default=[], metavar="NAME=VALUE",
                        help="a redis-server setting (repeatable), e.g. stream-node-max-entries=4")
    parser.add_argument("--node-env", action="append", default=[], metavar="HERALD_X=V", help="a setting for the node (repeatable)")
    args = parser.parse_args()
    binary = herald_binary()
    workdir = tempfile.mkdtemp(prefix="herald-bench-")
    redis_port, tcp_port, http_port = free_port(), free_port(), free_port()
    settings = [a for setting in args.redis_config for a in ("--" + setting.split("=", 1)[0], setting.split("=", 1)[1])]
    redis = start_redis(workdir, redis_port, *(["--loadmodule", os.path.abspath(args.redis_module)] if args.redis_module else []), *settings)
    replica = None
    herald = None
    try:
        time.sleep(0.5)
        if args.replica:
            replica_dir = os.path.join(workdir, "replica"); os.makedirs(replica_dir)
            replica = start_redis(replica_dir, free_port(), "--replicaof", "127.0.0.1", str(redis_port), *settings)
            for _ in range(100):
                if subprocess.run(["redis-cli", "-p", str(redis_port), "WAIT", "1", "100"], capture_output=True, text=True).stdout.strip() == "1": break
                time.sleep(0.1)
        herald = start_herald(binary, http_port, redis_url=f"redis://127.0.0.1:{redis_port}", tcp_addr=f"127.0.0.1:{tcp_port}",
                              relay_addr="127.0.0.1:0", redis_wait_replicas=args.wait_replicas,
                              **{k.removeprefix("HERALD_").lower(): v for k, v in (e.split("=", 1) for e in args.node_env)})
        devices = Devices(tcp_port, args.devices)
        devices.start()
        time.sleep(1)
        cpu_h, cpu_r, commands = cpu_seconds(herald.pid), cpu_seconds(redis.pid), redis_stat(redis_port, "total_commands_processed")
        cpu_replica = cpu_seconds(replica.pid) if replica else 0
        reads = redis_stat(redis_port, "total_reads_processed")
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
            acked = metric(http_port, "herald_pushes_acked_total")
            if acked >= total: break
            time.sleep(0.05)
        end_time = time.time() - start
        d_h, d_r = cpu_seconds(herald.pid) - cpu_h, cpu_seconds(redis.pid) - cpu_r
        d_replica = (cpu_seconds(replica.pid) - cpu_replica) if replica else 0
        d_commands = redis_stat(redis_port, "total_commands_processed") - commands
        d_reads = redis_stat(redis_port, "total_reads_processed") - reads
        devices.close()
        result = {
            "messages": total, "devices": args.devices, "batch": args.batch, "delivered": devices.received, "acked": acked,
            "accepted_per_s": round(total / accept_time), "end_to_end_per_s": round(total / end_time),
            "herald_cpu_s_per_10k": round(d_h / total * 10000, 3), "redis_cpu_s_per_10k": round(d_r / total * 10000, 3),
            "us_per_message_total": round((d_h + d_r) / total * 1e6, 1),
            "replica": args.replica, "wait_replicas": args.wait_replicas,
            "replica_cpu_s_per_10k": round(d_replica / total * 10000, 3), "redis_commands_per_message": round(d_commands / total, 2),
            "redis_round_trips_per_message": round(d_reads / total, 3),
        }
        print(json.dumps(result, indent=1))
    finally:
        if herald: herald.send_signal(signal.SIGTERM); herald.wait(timeout=30)
        if replica: replica.kill(); replica.wait()
        redis.kill(); redis.wait()
        shutil.rmtree(workdir, ignore_errors=True)

if __name__ == "__main__":
    main()
