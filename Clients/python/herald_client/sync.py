"""A synchronous wrapper for scripts: the asyncio client on a thread of its own."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Optional

from .client import Client, Disconnect


class SyncClient:
    """``Client`` for code without an event loop. Takes ``Client``'s arguments; ``on_push``
    (a plain function) runs on the client's thread, and the message is acknowledged when it
    returns. ``start()`` connects in the background; ``wait()`` blocks until the client
    stops (a fatal ERROR) or the timeout passes; ``close()`` stops it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._client: Optional[Client] = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="herald-client", daemon=True)
        self.result: Optional[Disconnect] = None

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._client = Client(*self._args, **self._kwargs)
            self._ready.set()
            self.result = await self._client.run()

        try:
            asyncio.run(main())
        finally:
            self._ready.set()

    @property
    def client(self) -> Client:
        """The underlying client (read its ``state``, ``node_id``, ``last_disconnect``)."""
        self._ready.wait()
        assert self._client is not None
        return self._client

    def start(self) -> "SyncClient":
        self._thread.start()
        self._ready.wait()
        return self

    def wait(self, timeout: Optional[float] = None) -> Optional[Disconnect]:
        """Blocks until the client stops; returns its last disconnect (None on timeout)."""
        self._thread.join(timeout)
        return None if self._thread.is_alive() else self.result

    def close(self, timeout: Optional[float] = 10.0) -> None:
        if self._loop is not None and self._client is not None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._client.close(), self._loop)
        self._thread.join(timeout)

    def __enter__(self) -> "SyncClient":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
