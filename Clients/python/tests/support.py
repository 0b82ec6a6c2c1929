"""Test support: a real `herald serve` child on loopback ports, a scripted peer, HTTP calls."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from typing import Awaitable, Callable, Dict, List, Optional

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
BINARY = os.environ.get("HERALD_BINARY", os.path.join(ROOT, ".build", "debug", "herald"))
TIMEOUT = 20.0


class Herald:
    """`herald serve` on ports of its own (in-memory store), ended by its PID."""

    def __init__(self, **environment: str) -> None:
        if not os.access(BINARY, os.X_OK):
            raise RuntimeError(f"{BINARY} is missing: run `swift build` first (or set HERALD_BINARY)")
        env = {"PATH": "/usr/bin:/bin", "HERALD_TCP_ADDR": "127.0.0.1:0", "HERALD_HTTP_ADDR": "127.0.0.1:0", "HERALD_LOG_LEVEL": "info"}
        env.update(environment)
        self.process = subprocess.Popen([BINARY, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.log: List[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.device_port = self._port("transport=tcp", "device listener bound")
        self.http_port = self._port("", "HTTP API bound")
        self.tls_port = self._port("transport=tls", "device listener bound") if "HERALD_TLS_CERT" in environment else None

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._lock:
                self.log.append(line.decode(errors="replace"))

    def _port(self, marker: str, what: str) -> int:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            with self._lock:
                for line in self.log:
                    found = re.search(r"127\.0\.0\.1:(\d+)", line)
                    if what in line and marker in line and found:
                        return int(found.group(1))
            if self.process.poll() is not None:
                raise RuntimeError("herald exited: " + "".join(self.log))
            time.sleep(0.02)
        raise RuntimeError(f"herald never logged {what}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.device_port}"

    def push(self, client_id: str, data: str) -> str:
        return str(self.http("POST", "/v1/push", {"client_id": client_id, "data": data})["id"])

    def pending(self, client_id: str) -> int:
        return int(self.http("GET", f"/v1/clients/{client_id}")["pending"])

    def http(self, method: str, path: str, body: Optional[Dict[str, object]] = None) -> Dict[str, object]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return dict(json.loads(response.read() or b"{}"))

    def terminate(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        if self.process.stderr is not None:
            self.process.stderr.close()


def hs256(secret: str, subject: str) -> str:
    """An HS256 JWT whose `sub` is `subject`, signed with `secret`."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps({"sub": subject}).encode())
    signature = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64(signature)


async def eventually(what: str, condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Waits, bounded, for `condition` (checked every 20 ms)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class ScriptedPeer:
    """A TCP server on loopback that plays a script per connection: what a correct Herald
    never sends (a duplicate after an ACK, silence, an oversized frame), which the client must
    survive. Each connection's handler gets the reader and the writer."""

    def __init__(self, script: Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> None:
        self.script = script
        self.connections = 0
        self.received: List[bytes] = []

    async def __aenter__(self) -> "ScriptedPeer":
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.script(self.connections, reader, writer)
            finally:
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"
