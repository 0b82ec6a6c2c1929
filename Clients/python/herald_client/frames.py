"""The device protocol's frames (protocol.md §1): encoding, and a bounded incremental decoder.

Every integer is big-endian; a ``str`` is a u16 byte length and that many UTF-8 bytes. A frame
is ``u32 length`` (type + body, 1 ..= max_frame), ``u8 type``, then the body.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import List, Optional, Union

HELLO, WELCOME, PING, PONG, PUSH, ACK, ERROR, GOAWAY = range(1, 9)

#: The largest frame the server sends by default; a client may lower or raise its own bound.
DEFAULT_MAX_FRAME = 65536
PROTOCOL_VERSION = 1
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:@-]{1,128}\Z")


class ProtocolError(Exception):
    """The server sent something the protocol does not allow (the connection is dropped)."""


@dataclass(frozen=True)
class Welcome:
    heartbeat_s: int
    node_id: str


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Pong:
    pass


@dataclass(frozen=True)
class Push:
    """A message for this device: ``msg_id`` (unique, chosen by the server) and its payload."""

    msg_id: str
    payload: bytes


@dataclass(frozen=True)
class Error:
    """ERROR: the server closes the connection right after it."""

    code: int
    reason: str


@dataclass(frozen=True)
class GoAway:
    """GOAWAY: the server is draining; reconnect (elsewhere) after ``reconnect_after_ms``."""

    reconnect_after_ms: int
    reason: str


Frame = Union[Welcome, Ping, Pong, Push, Error, GoAway]


def _str(value: Union[str, bytes]) -> bytes:
    data = value.encode("utf-8") if isinstance(value, str) else value
    if len(data) > 0xFFFF:
        raise ValueError("a protocol string is at most 65535 bytes")
    return struct.pack(">H", len(data)) + data


def _frame(kind: int, body: bytes = b"") -> bytes:
    return struct.pack(">IB", len(body) + 1, kind) + body


def valid_client_id(client_id: str) -> bool:
    """Whether ``client_id`` is 1 to 128 bytes of ``[A-Za-z0-9._:@-]``."""
    return _CLIENT_ID.match(client_id.encode("utf-8")) is not None


def hello(client_id: str, token: str, heartbeat_s: int) -> bytes:
    if not valid_client_id(client_id):
        raise ValueError("client_id must be 1 to 128 bytes of [A-Za-z0-9._:@-]")
    if not 0 <= heartbeat_s <= 0xFFFF:
        raise ValueError("heartbeat_s must fit in 16 bits")
    return _frame(HELLO, bytes([PROTOCOL_VERSION]) + _str(client_id) + _str(token) + struct.pack(">H", heartbeat_s))


def ping() -> bytes:
    return _frame(PING)


def pong() -> bytes:
    return _frame(PONG)


def ack(msg_id: str) -> bytes:
    return _frame(ACK, _str(msg_id))


class _Reader:
    def __init__(self, body: bytes) -> None:
        self.body, self.at = body, 0

    def u16(self) -> int:
        if self.at + 2 > len(self.body):
            raise ProtocolError("frame body too short")
        (value,) = struct.unpack_from(">H", self.body, self.at)
        self.at += 2
        return int(value)

    def u32(self) -> int:
        if self.at + 4 > len(self.body):
            raise ProtocolError("frame body too short")
        (value,) = struct.unpack_from(">I", self.body, self.at)
        self.at += 4
        return int(value)

    def str(self) -> str:
        length = self.u16()
        if self.at + length > len(self.body):
            raise ProtocolError("string runs past the frame")
        data = self.body[self.at : self.at + length]
        self.at += length
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("string is not UTF-8") from None

    def rest(self) -> bytes:
        data = self.body[self.at :]
        self.at = len(self.body)
        return data

    def end(self) -> None:
        if self.at != len(self.body):
            raise ProtocolError("bytes left over after the frame's fields")


def parse(kind: int, body: bytes) -> Frame:
    """One frame from the server, by type; anything else is a ProtocolError."""
    reader = _Reader(body)
    frame: Frame
    if kind == WELCOME:
        frame = Welcome(reader.u16(), reader.str())
    elif kind == PING:
        frame = Ping()
    elif kind == PONG:
        frame = Pong()
    elif kind == PUSH:
        msg_id = reader.str()
        if not 1 <= len(msg_id) <= 64:
            raise ProtocolError("msg_id must be 1 to 64 bytes")
        frame = Push(msg_id, reader.rest())
    elif kind == ERROR:
        frame = Error(reader.u16(), reader.str())
    elif kind == GOAWAY:
        frame = GoAway(reader.u32(), reader.str())
    else:
        raise ProtocolError(f"unknown or client-only frame type {kind:#04x}")
    reader.end()
    return frame


class Decoder:
    """Turns received bytes into frames, never holding more than one frame of ``max_frame``."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._length: Optional[int] = None

    def feed(self, data: bytes) -> List[Frame]:
        """The frames completed by ``data``, in order. Raises ProtocolError on a length of 0
        or above ``max_frame`` (as soon as the 4 length bytes are in) and on a bad frame."""
        self._buffer += data
        frames: List[Frame] = []
        while True:
            if self._length is None:
                if len(self._buffer) < 4:
                    return frames
                (length,) = struct.unpack_from(">I", self._buffer, 0)
                if length == 0:
                    raise ProtocolError("frame of length 0")
                if length > self.max_frame:
                    raise ProtocolError(f"frame of {length} bytes, above max_frame {self.max_frame}")
                self._length = int(length)
                del self._buffer[:4]
            if len(self._buffer) < self._length:
                return frames
            kind = self._buffer[0]
            body = bytes(self._buffer[1 : self._length])
            del self._buffer[: self._length]
            self._length = None
            frames.append(parse(kind, body))
