#!/usr/bin/env python3
"""A webhook receiver for Herald's tests: a real HTTP server, independent of Herald's code.

It verifies every request's Herald-Signature with Python's own hmac (t=<unix seconds>,
v1=<hex HMAC-SHA256 of "<t>.<raw body>" under the secret>), and prints one line per request
to standard output, flushed at once:

    REQUEST <status it answered> <signature ok: 1 or 0> <raw body>

It answers with the statuses of --script (comma-separated, one per request, in order; then
200 for every request after), so a test can make it fail and recover. "drop" closes the
connection without an answer. The first line it prints is "LISTENING <port>"; each connection
it accepts prints "CONNECTION" (so a test can see connections kept alive).

    receiver.py --secret S [--port 0] [--script 500,500,drop]
"""
import argparse
import hashlib
import hmac
import http.server
import sys
import threading


def signature_ok(secret, header, body):
    """Whether `header` (t=...,v1=...) signs `body` under `secret`: three lines, as Docs/webhooks.md shows."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    expected = hmac.new(secret.encode(), fields.get("t", "").encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--secret", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--script", default="")
    options = parser.parse_args()
    script = [item for item in options.script.split(",") if item]
    lock = threading.Lock()

    def say(line):
        # One write of the whole line, under the lock: print() writes the text and its newline
        # separately, so another thread's line could land between them, and a request's line
        # would end in "CONNECTION" (its JSON then unreadable, its events seemingly lost).
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            say("CONNECTION")

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            ok = signature_ok(options.secret, self.headers.get("Herald-Signature", ""), body)
            with lock:
                answer = script.pop(0) if script else "200"
            if answer == "drop":
                say(f"REQUEST 0 {int(ok)} {body.decode()}")
                self.close_connection = True
                self.connection.close()
                return
            say(f"REQUEST {answer} {int(ok)} {body.decode()}")
            reply = b"{}"
            self.send_response(int(answer))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", options.port), Handler)
    say(f"LISTENING {server.server_address[1]}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
