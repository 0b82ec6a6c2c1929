#!/usr/bin/env python3
"""What the pieces of a Lua script cost Redis: the figures behind the append script's shape
(Docs/store.md, "The append script's own cost").

Starts its own redis-server and runs `redis-benchmark` on small scripts that each add one kind
of work to the append's five commands (TIME, INCRBY, XLEN, XADD, PEXPIRE): 12 tables, 4 numbers
turned into strings with `..`, 4 local functions defined, 9 `tonumber` calls. Reports Redis's
own CPU (INFO cpu, user + system) per call, the median of `--rounds` runs of each.

    scripts/redis-lua-costs.py [--calls 200000] [--pipeline 2] [--clients 8] [--rounds 3]
"""
import argparse, os, statistics, subprocess, sys, tempfile, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, start_redis

FIVE = ("redis.call('TIME'); local last = redis.call('INCRBY', KEYS[1], 1); redis.call('XLEN', KEYS[2]); "
        "redis.call('XADD', KEYS[2], last, 'i', ARGV[1], 'e', ARGV[2], 'p', ARGV[3]); "
        "redis.call('PEXPIRE', KEYS[2], 3600000); ")
SCRIPTS = {
    "empty script": "return 1",
    "the five commands": FIVE + "return last",
    "+ 12 tables": FIVE + "local t = {}; for i = 1, 12 do t[i] = {}; t[i][1] = i end; return last",
    "+ 4 numbers made strings (..)": FIVE + "local t = {}; for i = 1, 4 do t[i] = (last + i) .. '-0' end; return last",
    "+ 4 local functions defined": "local function a() return 1 end local function b() return 2 end "
                                  "local function c() return 3 end local function e() return 4 end " + FIVE + "return last",
    "+ 9 tonumber": FIVE + "local x = 0; for i = 4, 12 do x = x + tonumber(ARGV[i]) end; return last",
}

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--pipeline", type=int, default=2, help="calls per write of each client")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="herald-lua-")
    port = free_port()
    redis = start_redis(workdir, port)
    cli = ["redis-cli", "-p", str(port)]
    try:
        for _ in range(100):
            if subprocess.run(cli + ["PING"], capture_output=True, text=True).stdout.strip() == "PONG": break
            time.sleep(0.05)
        def cpu():
            info = subprocess.check_output(cli + ["INFO", "cpu"], text=True)
            values = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
            return float(values["used_cpu_sys"]) + float(values["used_cpu_user"])
        now = int(time.time() * 1000)
        # The counter is one key, so every stream's ids rise whatever key __rand_int__ picks.
        arguments = ["id-__rand_int__", str(now + 3_600_000), "x" * 64] + [str(now + k) for k in range(9)]
        results = {name: [] for name in SCRIPTS}
        for _ in range(args.rounds):
            for name, body in SCRIPTS.items():
                subprocess.run(cli + ["FLUSHALL"], capture_output=True, check=True)
                sha = subprocess.check_output(cli + ["SCRIPT", "LOAD", body], text=True).strip()
                before = cpu()
                subprocess.run(["redis-benchmark", "-p", str(port), "-P", str(args.pipeline), "-c", str(args.clients),
                                "-n", str(args.calls), "-r", "10000", "-q", "EVALSHA", sha, "2", "herald:{c}:n",
                                "herald:{__rand_int__}:q", *arguments], capture_output=True, check=True)
                results[name].append((cpu() - before) / args.calls * 1e6)
        errors = subprocess.check_output(cli + ["INFO", "errorstats"], text=True).strip().splitlines()[1:]
        if errors: sys.exit(f"the scripts failed: {errors}")
        print(f"Redis CPU per EVALSHA, {args.clients} clients x {args.pipeline} pipelined, median of {args.rounds}:")
        for name, values in results.items():
            print(f"  {name:32s} {statistics.median(values):6.2f} us")
    finally:
        redis.terminate(); redis.wait()

if __name__ == "__main__":
    main()
