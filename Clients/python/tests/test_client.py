"""The client against a real `herald serve` (and, for what a correct server never does, a
scripted peer on a real socket). Every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import ssl
import struct
import subprocess
import tempfile
import unittest
from typing import List

from herald_client import Client, Disconnect, Push, State, SyncClient
from herald_client import frames

from support import ROOT, TIMEOUT, Herald, ScriptedPeer, eventually, hs256


def frame(kind: int, body: bytes = b"") -> bytes:
    return struct.pack(">IB", len(body) + 1, kind) + body


def string(text: str) -> bytes:
    return struct.pack(">H", len(text)) + text.encode()


WELCOME_1S = frame(frames.WELCOME, b"\x00\x01" + string("peer"))


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    return await reader.readexactly(length)


class Run:
    """A client running in a task, stopped (bounded) at the end of the test."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.task = asyncio.ensure_future(client.run())

    async def result(self) -> Disconnect:
        result = await asyncio.wait_for(self.task, TIMEOUT)
        assert result is not None
        return result

    async def stop(self) -> None:
        await self.client.close()
        await asyncio.wait_for(self.task, TIMEOUT)


class HeraldTests(unittest.IsolatedAsyncioTestCase):
    def herald(self, **environment: str) -> Herald:
        server = Herald(**environment)
        self.addCleanup(server.stop)
        return server

    async def test_a_push_is_handed_over_and_acknowledged_only_after_the_handler_returns(self) -> None:
        server = self.herald()
        got: List[Push] = []
        pending_while_handling: List[int] = []

        async def handle(push: Push) -> None:
            pending_while_handling.append(await asyncio.get_running_loop().run_in_executor(None, server.pending, "dev-1"))
            got.append(push)

        run = Run(Client(server.address, "dev-1", on_push=handle, heartbeat_s=7))
        await eventually("connected", lambda: run.client.state is State.CONNECTED)
        self.assertIsNotNone(run.client.node_id)
        self.assertEqual(run.client.heartbeat_s, 7, "WELCOME's heartbeat (the one asked for, within the server's range)")
        sent = server.push("dev-1", "hello")
        await eventually("the push", lambda: len(got) == 1)
        self.assertEqual((got[0].msg_id, got[0].payload), (sent, b"hello"))
        self.assertEqual(pending_while_handling, [1], "not acknowledged while the handler ran")
        await eventually("the ACK deletes it", lambda: server.pending("dev-1") == 0)
        await run.stop()
        self.assertEqual(run.client.state, State.CLOSED)

    async def test_a_handler_that_raises_means_redelivery_never_loss(self) -> None:
        server = self.herald()
        calls: List[str] = []

        def handle(push: Push) -> None:
            calls.append(push.msg_id)
            if len(calls) == 1:
                raise RuntimeError("crashed before the ACK")

        run = Run(Client(server.address, "dev-2", on_push=handle, backoff_base=0.05))
        await eventually("connected", lambda: run.client.state is State.CONNECTED)
        sent = server.push("dev-2", "once")
        await eventually("delivered again on the next connection", lambda: len(calls) == 2)
        self.assertEqual(calls, [sent, sent])
        await eventually("acknowledged", lambda: server.pending("dev-2") == 0)
        assert run.client.last_disconnect is not None
        self.assertIn("handler raised", run.client.last_disconnect.reason)
        await run.stop()

    async def test_goaway_moves_to_the_next_server_after_the_delay_it_names(self) -> None:
        first, second = self.herald(HERALD_DRAIN_TIMEOUT_S="5"), self.herald()
        got: List[bytes] = []
        disconnects: List[Disconnect] = []
        run = Run(Client([first.address, second.address], "dev-3", on_push=lambda p: got.append(p.payload), on_disconnect=disconnects.append))
        await eventually("connected to the first", lambda: run.client.state is State.CONNECTED)
        first.terminate()
        await eventually("GOAWAY", lambda: len(disconnects) == 1)
        assert disconnects[0].goaway is not None
        self.assertEqual(disconnects[0].goaway.reconnect_after_ms, 1000)
        self.assertFalse(disconnects[0].fatal)
        await eventually("connected to the second", lambda: run.client.state is State.CONNECTED)
        second.push("dev-3", "from the second")
        await eventually("the push", lambda: got == [b"from the second"])
        await run.stop()

    async def test_error_401_stops_the_client_and_a_valid_token_is_welcomed(self) -> None:
        server = self.herald(HERALD_DEVICE_JWT_SECRET="a-secret-of-at-least-32-bytes-long!!")
        refused = Client(server.address, "dev-4", token=hs256("another-secret-of-32-bytes-or-more!!", "dev-4"), backoff_base=0.01)
        result = await asyncio.wait_for(refused.run(), TIMEOUT)
        assert result is not None and result.error is not None
        self.assertEqual(result.error.code, 401)
        self.assertTrue(result.fatal)
        self.assertEqual(refused.state, State.CLOSED)
        welcomed = Run(Client(server.address, "dev-4", token=hs256("a-secret-of-at-least-32-bytes-long!!", "dev-4")))
        await eventually("welcomed", lambda: welcomed.client.state is State.CONNECTED)
        await welcomed.stop()

    async def test_error_409_replaced_stops_the_older_client(self) -> None:
        server = self.herald()
        older = Run(Client(server.address, "dev-5"))
        await eventually("older connected", lambda: older.client.state is State.CONNECTED)
        newer = Run(Client(server.address, "dev-5"))
        result = await older.result()
        assert result.error is not None
        self.assertEqual(result.error.code, 409)
        await eventually("newer connected", lambda: newer.client.state is State.CONNECTED)
        await newer.stop()

    async def test_tls_with_a_given_ca(self) -> None:
        pki = tempfile.mkdtemp(prefix="herald-py-pki-")
        subprocess.run([os.path.join(ROOT, "scripts", "make-cert"), pki], check=True, capture_output=True, timeout=TIMEOUT)
        server = self.herald(
            HERALD_TLS_ADDR="127.0.0.1:0", HERALD_TLS_CERT=f"{pki}/server.pem", HERALD_TLS_KEY=f"{pki}/server.key",
            HERALD_WSS_ADDR="", HERALD_HTTPS_ADDR="",
        )
        got: List[bytes] = []
        context = ssl.create_default_context(cafile=f"{pki}/ca.pem")
        run = Run(Client(f"localhost:{server.tls_port}", "dev-6", ssl=context, on_push=lambda p: got.append(p.payload)))
        await eventually("connected over TLS", lambda: run.client.state is State.CONNECTED)
        server.push("dev-6", "secret")
        await eventually("the push", lambda: got == [b"secret"])
        await run.stop()
        # Without the CA the handshake fails, and the client says why.
        untrusted = Run(Client(f"localhost:{server.tls_port}", "dev-6", ssl=True, backoff_base=5))
        await eventually("a failed handshake", lambda: untrusted.client.last_disconnect is not None)
        assert untrusted.client.last_disconnect is not None
        self.assertIn("CERTIFICATE_VERIFY_FAILED", untrusted.client.last_disconnect.reason)
        await untrusted.stop()

    async def test_the_synchronous_wrapper(self) -> None:
        server = self.herald()
        got: List[bytes] = []
        with SyncClient(server.address, "dev-7", on_push=lambda p: got.append(p.payload)) as client:
            await eventually("connected", lambda: client.client.state is State.CONNECTED)
            server.push("dev-7", "sync")
            await eventually("the push", lambda: got == [b"sync"])
        self.assertEqual(client.client.state, State.CLOSED)


class ScriptedPeerTests(unittest.IsolatedAsyncioTestCase):
    async def test_a_duplicate_across_reconnects_is_acknowledged_but_handed_over_once(self) -> None:
        acks: List[bytes] = []

        async def script(connection: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_frame(reader)  # HELLO
            writer.write(WELCOME_1S + frame(frames.PUSH, string("m1") + b"one"))
            if connection == 2:
                writer.write(frame(frames.PUSH, string("m2") + b"two"))
            while len(acks) < (1 if connection == 1 else 3):
                body = await read_frame(reader)
                if body[0] == frames.ACK:
                    acks.append(body[3:])

        async with ScriptedPeer(script) as peer:
            got: List[str] = []
            run = Run(Client(peer.address, "dev-8", on_push=lambda p: got.append(p.msg_id), backoff_base=0.01))
            await eventually("both connections acknowledged", lambda: len(acks) == 3)
            self.assertEqual(got, ["m1", "m2"])
            self.assertEqual(acks, [b"m1", b"m1", b"m2"])
            await run.stop()

    async def test_pings_on_time_pongs_answered_and_a_silent_server_dropped(self) -> None:
        received: List[int] = []

        async def script(connection: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_frame(reader)
            writer.write(WELCOME_1S + frame(frames.PING))
            try:
                while True:  # PINGs are read, never answered
                    received.append((await read_frame(reader))[0])
            except asyncio.IncompleteReadError:
                pass

        async with ScriptedPeer(script) as peer:
            disconnects: List[Disconnect] = []
            run = Run(Client(peer.address, "dev-9", on_disconnect=disconnects.append, backoff_base=5))
            await eventually("dropped", lambda: len(disconnects) == 1)
            self.assertIn("silent for 2 s", disconnects[0].reason)
            self.assertEqual(received[0], frames.PONG, "the server's PING answered")
            self.assertIn(frames.PING, received, "a PING within the two heartbeats")
            await run.stop()

    async def test_an_oversized_or_malformed_frame_is_a_protocol_error_not_a_crash(self) -> None:
        for bad in [struct.pack(">I", 65537), b"\x00\x00\x00\x00", frame(0x42)]:
            async def script(connection: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, bad: bytes = bad) -> None:
                await read_frame(reader)
                writer.write(WELCOME_1S + bad)
                await reader.read()

            async with ScriptedPeer(script) as peer:
                disconnects: List[Disconnect] = []
                run = Run(Client(peer.address, "dev-10", on_disconnect=disconnects.append, backoff_base=5))
                await eventually("dropped", lambda: len(disconnects) == 1)
                self.assertIn("protocol error", disconnects[0].reason)
                await run.stop()

    async def test_backoff_is_full_jitter_exponential_and_moves_between_servers(self) -> None:
        delays: List[float] = []
        seen: List[int] = []

        async def script(connection: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(connection)

        async with ScriptedPeer(script) as a, ScriptedPeer(script) as b:
            client = Client([a.address, b.address], "dev-11", backoff_base=0.01, backoff_max=0.04, jitter=lambda: 1.0)
            original = asyncio.wait_for

            async def recording_wait_for(awaitable, timeout):  # type: ignore[no-untyped-def]
                if timeout is not None and client.state is State.WAITING:
                    delays.append(timeout)
                return await original(awaitable, timeout)

            asyncio.wait_for = recording_wait_for  # type: ignore[assignment]
            try:
                run = Run(client)
                await eventually("five attempts", lambda: len(delays) >= 5)
                await run.stop()
            finally:
                asyncio.wait_for = original  # type: ignore[assignment]
            self.assertEqual(delays[:5], [0.01, 0.02, 0.04, 0.04, 0.04])
            self.assertGreaterEqual(a.connections, 2)
            self.assertGreaterEqual(b.connections, 2)


if __name__ == "__main__":
    unittest.main()
