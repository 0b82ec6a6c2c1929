import struct
import unittest

from herald_client import frames
from herald_client.frames import Decoder, GoAway, ProtocolError, Push, Welcome


def frame(kind: int, body: bytes = b"") -> bytes:
    return struct.pack(">IB", len(body) + 1, kind) + body


def s(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">H", len(data)) + data


class FrameTests(unittest.TestCase):
    def test_hello_is_encoded_as_protocol_md_says(self) -> None:
        self.assertEqual(
            frames.hello("dev-1", "tok", 30),
            frame(frames.HELLO, b"\x01" + s("dev-1") + s("tok") + b"\x00\x1e"),
        )
        self.assertEqual(frames.ack("m1"), frame(frames.ACK, s("m1")))
        self.assertEqual(frames.ping(), b"\x00\x00\x00\x01\x03")

    def test_a_bad_client_id_is_refused_before_sending(self) -> None:
        for bad in ["", "a b", "x" * 129, "é"]:
            with self.assertRaises(ValueError):
                frames.hello(bad, "", 0)

    def test_frames_split_anywhere_decode_the_same(self) -> None:
        stream = frame(frames.WELCOME, b"\x00\x1e" + s("node-a")) + frame(frames.PUSH, s("m1") + b"payload") + frame(
            frames.GOAWAY, b"\x00\x00\x03\xe8" + s("draining")
        )
        expected = [Welcome(30, "node-a"), Push("m1", b"payload"), GoAway(1000, "draining")]
        for cut in range(len(stream)):
            decoder = Decoder()
            self.assertEqual(decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]), expected)
        decoder = Decoder()
        self.assertEqual([f for byte in stream for f in decoder.feed(bytes([byte]))], expected)

    def test_oversized_frame_is_refused_from_its_length_alone(self) -> None:
        decoder = Decoder(max_frame=100)
        with self.assertRaises(ProtocolError):
            decoder.feed(struct.pack(">I", 101))
        self.assertEqual(Decoder(max_frame=100).feed(frame(frames.PUSH, s("m") + b"x" * 96)), [Push("m", b"x" * 96)])

    def test_malformed_frames_are_protocol_errors(self) -> None:
        for bad in [
            b"\x00\x00\x00\x00",  # length 0
            frame(0x7F),  # unknown type
            frame(frames.HELLO, b"\x01"),  # a client's frame
            frame(frames.WELCOME, b"\x00"),  # too short
            frame(frames.PUSH, b"\x00\x09ab"),  # string past the end
            frame(frames.PUSH, s("")),  # empty msg_id
            frame(frames.ERROR, b"\x01\x91" + s("x") + b"extra"),  # bytes left over
            frame(frames.WELCOME, b"\x00\x1e\x00\x02\xff\xfe"),  # not UTF-8
        ]:
            with self.assertRaises(ProtocolError, msg=bad.hex()):
                Decoder().feed(bad)


if __name__ == "__main__":
    unittest.main()
