#!/usr/bin/env python3
"""A device nobody on the Herald team wrote: Python's ssl and the `websockets` package (PyPI),
speaking protocol.md's device protocol over ws:// or wss://. The Swift tests run it and read
the one JSON object it prints.

  ws_device.py deliver URL HTTP_PORT CLIENT_ID [CA_FILE]  HELLO, push itself a message over the
                                                          HTTP API, receive and ACK it
  ws_device.py text URL [CA_FILE]                         send a text message: close code
  ws_device.py oversize URL MAX_FRAME [CA_FILE]           a frame of max_frame + 1: close code
  ws_device.py fragments URL MAX_FRAME [CA_FILE]          a HELLO in fragments, then fragments past max_frame
  ws_device.py pingflood URL [CA_FILE]                    pings without pause: close code
"""
import asyncio, json, os, ssl, struct, sys, urllib.request

import websockets


def s(text):
    data = text.encode()
    return struct.pack(">H", len(data)) + data


def frame(kind, body=b""):
    return struct.pack(">IB", len(body) + 1, kind) + body


def hello(client_id, token=""):
    return frame(1, bytes([1]) + s(client_id) + s(token) + struct.pack(">H", 0))


def parse(message):
    length, kind = struct.unpack(">IB", message[:5])
    assert length + 4 == len(message), "one frame per message"
    return kind, message[5:]


def context(ca):
    return ssl.create_default_context(cafile=ca) if ca else None


async def close_code(ws):
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


async def deliver(url, http_port, client_id, ca=None):
    # WS_SOURCE: the local address to connect from; WS_FORWARDED_FOR: an X-Forwarded-For to send.
    options = {}
    if os.environ.get("WS_SOURCE"):
        options["local_addr"] = (os.environ["WS_SOURCE"], 0)
    if os.environ.get("WS_FORWARDED_FOR"):
        options["additional_headers"] = {"X-Forwarded-For": os.environ["WS_FORWARDED_FOR"]}
    async with websockets.connect(url, ssl=context(ca), **options) as ws:
        await ws.send(hello(client_id))
        kind, body = parse(await asyncio.wait_for(ws.recv(), 10))
        assert kind == 2, f"expected WELCOME, got {kind}"
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v1/clients/{client_id}", timeout=10) as response:
            address = json.load(response).get("address")
        request = urllib.request.Request(
            f"http://127.0.0.1:{http_port}/v1/push", method="POST",
            data=json.dumps({"client_id": client_id, "data": "over " + url.split(":")[0]}).encode())
        with urllib.request.urlopen(request, timeout=10) as response:
            pushed = json.load(response)["id"]
        kind, body = parse(await asyncio.wait_for(ws.recv(), 10))
        assert kind == 5, f"expected PUSH, got {kind}"
        (id_length,) = struct.unpack(">H", body[:2])
        message_id = body[2:2 + id_length].decode()
        payload = body[2 + id_length:].decode()
        await ws.send(frame(6, s(message_id)))
        await ws.send(frame(3))
        kind, _ = parse(await asyncio.wait_for(ws.recv(), 10))  # PONG: the ACK was read before it
        return {"pushed": pushed, "received": message_id, "payload": payload, "pong": kind == 4, "address": address}


async def text(url, ca=None):
    async with websockets.connect(url, ssl=context(ca)) as ws:
        await ws.send("hello as text")
        return {"close_code": await close_code(ws)}


async def oversize(url, max_frame, ca=None):
    async with websockets.connect(url, ssl=context(ca), max_size=None) as ws:
        await ws.send(struct.pack(">IB", max_frame + 1, 5) + b"x" * max_frame)
        return {"close_code": await close_code(ws)}


async def fragments(url, max_frame, ca=None):
    async with websockets.connect(url, ssl=context(ca), max_size=None) as ws:
        message = hello("fragmented")
        await ws.send([message[:3], message[3:9], message[9:]])  # one message in three fragments
        kind, _ = parse(await asyncio.wait_for(ws.recv(), 10))
        welcomed = kind == 2
        chunk = b"y" * 4096
        def pieces():
            for _ in range(max_frame // 4096 + 4):
                yield chunk
        try:
            await ws.send(pieces())
        except websockets.ConnectionClosed:
            pass
        return {"welcomed": welcomed, "close_code": await close_code(ws)}


async def pingflood(url, ca=None):
    async with websockets.connect(url, ssl=context(ca), ping_interval=None) as ws:
        await ws.send(hello("flooder"))
        try:
            for index in range(2000):
                await ws.ping(str(index).encode())
        except websockets.ConnectionClosed:
            pass
        return {"close_code": await close_code(ws)}


def main():
    command, url, *rest = sys.argv[1:]
    if command == "deliver":
        result = deliver(url, int(rest[0]), rest[1], *rest[2:])
    elif command == "text":
        result = text(url, *rest)
    elif command == "oversize":
        result = oversize(url, int(rest[0]), *rest[1:])
    elif command == "fragments":
        result = fragments(url, int(rest[0]), *rest[1:])
    elif command == "pingflood":
        result = pingflood(url, *rest)
    else:
        sys.exit(f"unknown command {command}")
    print(json.dumps(asyncio.run(result)))


if __name__ == "__main__":
    main()
