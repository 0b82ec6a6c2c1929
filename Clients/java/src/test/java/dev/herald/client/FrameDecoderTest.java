package dev.herald.client;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

class FrameDecoderTest {
    static byte[] frame(int type, byte[] body) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        int length = body.length + 1;
        out.write(length >>> 24);
        out.write(length >>> 16);
        out.write(length >>> 8);
        out.write(length);
        out.write(type);
        out.write(body, 0, body.length);
        return out.toByteArray();
    }

    static byte[] str(String text) {
        byte[] bytes = text.getBytes(StandardCharsets.UTF_8);
        byte[] out = new byte[bytes.length + 2];
        out[0] = (byte) (bytes.length >>> 8);
        out[1] = (byte) bytes.length;
        System.arraycopy(bytes, 0, out, 2, bytes.length);
        return out;
    }

    static byte[] concat(byte[]... parts) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        for (byte[] part : parts) out.write(part, 0, part.length);
        return out.toByteArray();
    }

    /** A stream that hands out one byte per read, as a slow network would. */
    static InputStream dripping(byte[] bytes) {
        return new ByteArrayInputStream(bytes) {
            @Override public synchronized int read(byte[] b, int off, int len) { return super.read(b, off, Math.min(len, 1)); }
        };
    }

    @Test void helloIsEncodedAsProtocolMdSays() {
        assertArrayEquals(frame(Frames.HELLO, concat(new byte[] {1}, str("dev-1"), str("tok"), new byte[] {0, 30})), Frames.hello("dev-1", "tok", 30));
        assertArrayEquals(frame(Frames.ACK, str("m1")), Frames.ack("m1"));
        assertArrayEquals(new byte[] {0, 0, 0, 1, 3}, Frames.ping());
        for (String bad : new String[] {"", "a b", "x".repeat(129), "é"}) {
            assertThrows(IllegalArgumentException.class, () -> Frames.hello(bad, "", 0));
        }
    }

    @Test void framesDecodeWholeOrOneByteAtATime() throws IOException {
        byte[] stream = concat(
                frame(Frames.WELCOME, concat(new byte[] {0, 30}, str("node-a"))),
                frame(Frames.PUSH, concat(str("m1"), "payload".getBytes(StandardCharsets.UTF_8))),
                frame(Frames.GOAWAY, concat(new byte[] {0, 0, 3, (byte) 0xe8}, str("draining"))));
        for (InputStream in : new InputStream[] {new ByteArrayInputStream(stream), dripping(stream)}) {
            FrameDecoder decoder = new FrameDecoder(Frames.DEFAULT_MAX_FRAME);
            List<Frame> frames = new ArrayList<>();
            for (Frame f; (f = decoder.read(in)) != null; ) frames.add(f);
            assertEquals(List.of(new Frame.Welcome(30, "node-a"), new Frame.Push("m1", "payload".getBytes(StandardCharsets.UTF_8)),
                    new Frame.GoAway(1000, "draining")), frames);
        }
    }

    @Test void anOversizedFrameIsRefusedFromItsLengthAlone() throws IOException {
        // Only the 4 length bytes exist: the decoder must refuse without waiting for a body.
        assertThrows(ProtocolException.class, () -> new FrameDecoder(100).read(new ByteArrayInputStream(new byte[] {0, 0, 0, 101})));
        byte[] exact = frame(Frames.PUSH, concat(str("m"), new byte[96]));
        assertEquals(new Frame.Push("m", new byte[96]), new FrameDecoder(100).read(new ByteArrayInputStream(exact)));
    }

    @Test void malformedFramesAreProtocolErrors() {
        byte[][] bad = {
            {0, 0, 0, 0}, // length 0
            frame(0x7f, new byte[0]), // unknown type
            frame(Frames.HELLO, new byte[] {1}), // a client's frame
            frame(Frames.WELCOME, new byte[] {0}), // too short
            frame(Frames.PUSH, new byte[] {0, 9, 'a', 'b'}), // string past the end
            frame(Frames.PUSH, str("")), // empty msg_id
            frame(Frames.ERROR, concat(new byte[] {1, (byte) 0x91}, str("x"), new byte[] {1})), // bytes left over
            frame(Frames.WELCOME, new byte[] {0, 30, 0, 2, (byte) 0xff, (byte) 0xfe}), // not UTF-8
            {0, 0, 0, 5, 2}, // the stream ends inside the frame
        };
        for (byte[] b : bad) {
            assertThrows(ProtocolException.class, () -> new FrameDecoder(Frames.DEFAULT_MAX_FRAME).read(new ByteArrayInputStream(b)));
        }
    }

    @Test void theEndOfTheStreamBetweenFramesIsNotAnError() throws IOException {
        assertNull(new FrameDecoder(100).read(new ByteArrayInputStream(new byte[0])));
    }
}
