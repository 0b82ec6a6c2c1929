#!/usr/bin/env python3
"""A device's end-to-end check of a running Herald, for the infrastructure tests.

Connects a device (HELLO, WELCOME), pushes a message through the HTTP API, checks the device
receives it as PUSH and ACKs it. With --stop COMMAND, then runs COMMAND (which should stop
Herald gracefully) and checks the device receives GOAWAY and COMMAND succeeds.

    scripts/device-check.py --device-port 9988 --http-port 8080 [--stop "systemctl stop herald"]
"""
import argparse, json, shlex, socket, struct, subprocess, sys, urllib.request

def frame(kind, body): return struct.pack(">IB", len(body) + 1, kind) + body
def string(value): data = value.encode(); return struct.pack(">H", len(data)) + data

def read_frame(sock):
    def exactly(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk: sys.exit("device-check: the server closed the connection")
            data += chunk
        return data
    (length,) = struct.unpack(">I", exactly(4))
    body = exactly(length)
    return body[0], body[1:]

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--client-id", default="infra-check-device")
    parser.add_argument("--stop", help="a command that stops Herald gracefully")
    args = parser.parse_args()
    sock = socket.create_connection(("127.0.0.1", args.device_port), timeout=20)
    sock.sendall(frame(1, bytes([1]) + string(args.client_id) + string("") + struct.pack(">H", 30)))
    kind, _ = read_frame(sock)
    if kind != 2: sys.exit(f"device-check: expected WELCOME, got frame type {kind}")
    request = urllib.request.Request(
        f"http://127.0.0.1:{args.http_port}/v1/push", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"client_id": args.client_id, "data": "end to end"}).encode())
    message_id = json.load(urllib.request.urlopen(request, timeout=10))["id"]
    kind, body = read_frame(sock)
    if kind != 5: sys.exit(f"device-check: expected PUSH, got frame type {kind}")
    (id_length,) = struct.unpack(">H", body[:2])
    if body[2:2 + id_length].decode() != message_id or body[2 + id_length:] != b"end to end":
        sys.exit(f"device-check: wrong PUSH {body!r}")
    sock.sendall(frame(6, string(message_id)))
    print("device-check: the device received the pushed message")
    if args.stop:
        stop = subprocess.Popen(shlex.split(args.stop), stdout=subprocess.DEVNULL)
        kind, _ = read_frame(sock)
        if kind != 8: sys.exit(f"device-check: expected GOAWAY on stop, got frame type {kind}")
        print("device-check: GOAWAY on stop")
        if stop.wait(timeout=90) != 0: sys.exit("device-check: the stop command failed")
    sock.close()

if __name__ == "__main__":
    main()
