"""An asyncio client for Herald's device protocol (protocol.md §1), standard library only."""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import random
import ssl as _ssl
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Awaitable, Callable, List, Optional, Sequence, Tuple, Union

from . import frames
from .frames import Error, GoAway, Ping, Pong, ProtocolError, Push, Welcome

log = logging.getLogger("herald_client")

#: ERROR codes after which the client does not reconnect unless asked (see ``Client``).
FATAL_CODES = frozenset({401, 409})

PushHandler = Callable[[Push], Union[None, Awaitable[None]]]
Address = Union[str, Tuple[str, int]]


class State(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    WAITING = "waiting"  # between connections (backoff, or GOAWAY's delay)
    CLOSED = "closed"


@dataclass(frozen=True)
class Disconnect:
    """Why a connection ended. ``error`` is the server's ERROR when it sent one; ``goaway``
    its GOAWAY when it was draining; ``reason`` says it in words in every case."""

    server: str
    reason: str
    error: Optional[Error] = None
    goaway: Optional[GoAway] = None
    connected_s: float = 0.0  # how long it was connected (0: it never got a WELCOME)

    @property
    def fatal(self) -> bool:
        """An ERROR 401 (authentication failed) or 409 (replaced by a newer connection)."""
        return self.error is not None and self.error.code in FATAL_CODES


def _address(server: Address) -> Tuple[str, int]:
    if isinstance(server, tuple):
        return server[0], int(server[1])
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"server {server!r} is not host:port")
    return host.strip("[]"), int(port)


class Client:
    """One device's connection to one of several Herald servers, kept up until ``close()``.

    - ``on_push`` gets every PUSH (a plain function or a coroutine function). The message is
      acknowledged only after it returns; if it raises, the connection is dropped without the
      ACK, and the server sends the message again on the next connection (at-least-once: a
      crash before the ACK means redelivery, never loss).
    - A ``msg_id`` handled already (within the last ``dedup_window`` ids, across reconnects)
      is acknowledged again but not handed to ``on_push`` a second time.
    - After a connection ends, the next server in the list is tried after a full-jitter
      exponential backoff (``random() * min(backoff_max, backoff_base * 2**attempt)``); the
      attempt count starts again after a connection that lived ``stable_after`` seconds.
      After GOAWAY the client waits the server's ``reconnect_after_ms`` instead.
    - After ERROR 401 or 409 the client stops (``run()`` returns that disconnect) unless
      ``reconnect_after_fatal`` is set; call ``run()`` again to start over.
    - PING every half heartbeat (the WELCOME's value); a server silent for two heartbeats
      is dropped. Frames above ``max_frame`` or malformed ones drop the connection.
    """

    def __init__(
        self,
        servers: Union[Address, Sequence[Address]],
        client_id: str,
        token: str = "",
        on_push: Optional[PushHandler] = None,
        *,
        heartbeat_s: int = 0,
        ssl: Union[None, bool, _ssl.SSLContext] = None,
        server_hostname: Optional[str] = None,
        max_frame: int = frames.DEFAULT_MAX_FRAME,
        connect_timeout: float = 10.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        stable_after: float = 60.0,
        dedup_window: int = 4096,
        reconnect_after_fatal: bool = False,
        on_connect: Optional[Callable[[Welcome], None]] = None,
        on_disconnect: Optional[Callable[[Disconnect], None]] = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if isinstance(servers, (str, tuple)):
            servers = [servers]
        self.servers: List[Tuple[str, int]] = [_address(s) for s in servers]
        if not self.servers:
            raise ValueError("at least one server is needed")
        self._hello = frames.hello(client_id, token, heartbeat_s)
        self.client_id = client_id
        self.on_push = on_push
        self.ssl = _ssl.create_default_context() if ssl is True else (ssl or None)
        self.server_hostname = server_hostname
        self.max_frame = max_frame
        self.connect_timeout = connect_timeout
        self.backoff_base, self.backoff_max, self.stable_after = backoff_base, backoff_max, stable_after
        self.dedup_window = dedup_window
        self.reconnect_after_fatal = reconnect_after_fatal
        self.on_connect, self.on_disconnect = on_connect, on_disconnect
        self._jitter = jitter
        self._seen: "OrderedDict[str, None]" = OrderedDict()
        # Made in run(), on the loop that runs the client (Python 3.9 binds an Event to a loop).
        self._closing: Optional[asyncio.Event] = None
        self.state = State.IDLE
        self.node_id: Optional[str] = None
        self.heartbeat_s: Optional[int] = None
        self.last_disconnect: Optional[Disconnect] = None
        self._server_index = 0

    async def run(self) -> Optional[Disconnect]:
        """Connects and stays connected until ``close()`` (returns the last disconnect) or a
        fatal ERROR without ``reconnect_after_fatal`` (returns it)."""
        self._closing = closing = asyncio.Event()
        attempt = 0
        try:
            while not closing.is_set():
                host, port = self.servers[self._server_index % len(self.servers)]
                self.state = State.CONNECTING
                disconnect = await self._session(host, port)
                self.last_disconnect = disconnect
                self.node_id = self.heartbeat_s = None
                log.info("herald: disconnected from %s: %s", disconnect.server, disconnect.reason)
                if self.on_disconnect is not None:
                    self.on_disconnect(disconnect)
                if closing.is_set():
                    break
                if disconnect.fatal and not self.reconnect_after_fatal:
                    return disconnect
                if disconnect.connected_s >= self.stable_after:
                    attempt = 0
                if disconnect.goaway is not None:
                    delay = disconnect.goaway.reconnect_after_ms / 1000
                else:
                    delay = self._jitter() * min(self.backoff_max, self.backoff_base * 2**attempt)
                    attempt += 1
                self._server_index += 1
                self.state = State.WAITING
                try:
                    await asyncio.wait_for(closing.wait(), timeout=delay)
                except asyncio.TimeoutError:
                    pass
            return self.last_disconnect
        finally:
            self.state = State.CLOSED

    async def close(self) -> None:
        """Ends the connection and the reconnecting; ``run()`` returns."""
        if self._closing is not None:
            self._closing.set()

    async def _session(self, host: str, port: int) -> Disconnect:
        assert self._closing is not None
        stop = self._closing
        server = f"{host}:{port}"
        connected_at: Optional[float] = None
        pinger: Optional["asyncio.Task[None]"] = None
        writer: Optional[asyncio.StreamWriter] = None
        closing = asyncio.ensure_future(stop.wait())

        def ended(reason: str, error: Optional[Error] = None, goaway: Optional[GoAway] = None) -> Disconnect:
            lived = time.monotonic() - connected_at if connected_at is not None else 0.0
            return Disconnect(server, reason, error, goaway, lived)

        async def receive(reader: asyncio.StreamReader, timeout: float) -> bytes:
            read = asyncio.ensure_future(reader.read(65536))
            done, _ = await asyncio.wait({read, closing}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if read not in done:
                read.cancel()
                raise asyncio.TimeoutError
            return read.result()

        try:
            reader, stream = await asyncio.wait_for(
                asyncio.open_connection(
                    host, port, ssl=self.ssl, server_hostname=(self.server_hostname or host) if self.ssl else None
                ),
                self.connect_timeout,
            )
            writer = stream
            stream.write(self._hello)
            await stream.drain()
            decoder = frames.Decoder(self.max_frame)
            pending: List[frames.Frame] = []
            deadline = time.monotonic() + self.connect_timeout
            while not pending:
                if stop.is_set():
                    return ended("closed by the application")
                data = await receive(reader, max(0.0, deadline - time.monotonic()))
                if not data:
                    return ended("the server closed the connection before WELCOME")
                pending = decoder.feed(data)
            first = pending.pop(0)
            if isinstance(first, Error):
                return ended(f"ERROR {first.code}: {first.reason}", error=first)
            if not isinstance(first, Welcome):
                raise ProtocolError(f"expected WELCOME, got {type(first).__name__}")
            connected_at = time.monotonic()
            self.state, self.node_id, self.heartbeat_s = State.CONNECTED, first.node_id, first.heartbeat_s
            if self.on_connect is not None:
                self.on_connect(first)
            heartbeat = max(first.heartbeat_s, 1)
            pinger = asyncio.ensure_future(self._ping(stream, heartbeat / 2))
            while True:
                for frame in pending:
                    if isinstance(frame, Ping):
                        stream.write(frames.pong())
                    elif isinstance(frame, Push):
                        failure = await self._deliver(frame, stream)
                        if failure is not None:
                            return ended(failure)
                    elif isinstance(frame, Error):
                        return ended(f"ERROR {frame.code}: {frame.reason}", error=frame)
                    elif isinstance(frame, GoAway):
                        return ended(f"GOAWAY: {frame.reason}", goaway=frame)
                    elif isinstance(frame, Welcome):
                        raise ProtocolError("a second WELCOME")
                    # PONG: any frame counts as life, nothing more to do.
                await stream.drain()
                if stop.is_set():
                    return ended("closed by the application")
                try:
                    data = await receive(reader, 2 * heartbeat)
                except asyncio.TimeoutError:
                    if stop.is_set():
                        return ended("closed by the application")
                    return ended(f"the server was silent for {2 * heartbeat} s")
                if not data:
                    return ended("the server closed the connection")
                pending = decoder.feed(data)
        except ProtocolError as error:
            return ended(f"protocol error: {error}")
        except asyncio.TimeoutError:
            return ended("no WELCOME in time" if connected_at is None else "timed out")
        except (OSError, EOFError, _ssl.SSLError) as error:
            return ended(f"connection failed: {error}")
        finally:
            closing.cancel()
            if pinger is not None:
                pinger.cancel()
            if writer is not None:
                writer.close()
                try:
                    await writer.wait_closed()
                except (OSError, _ssl.SSLError):
                    pass

    async def _deliver(self, push: Push, writer: asyncio.StreamWriter) -> Optional[str]:
        """Hands ``push`` to the application unless already handled, then ACKs it. Returns why
        the connection must end (the handler raised), or None."""
        if push.msg_id not in self._seen:
            if self.on_push is not None:
                try:
                    result = self.on_push(push)
                    if inspect.isawaitable(result):
                        await result
                except Exception as error:  # the application's; it decides redelivery
                    log.warning("herald: the push handler raised for %s: %r; not acknowledged", push.msg_id, error)
                    return f"the push handler raised: {error!r}"
            self._seen[push.msg_id] = None
            if len(self._seen) > self.dedup_window:
                self._seen.popitem(last=False)
        writer.write(frames.ack(push.msg_id))
        return None

    @staticmethod
    async def _ping(writer: asyncio.StreamWriter, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            writer.write(frames.ping())
