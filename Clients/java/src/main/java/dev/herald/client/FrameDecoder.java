package dev.herald.client;

import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;

/** Reads one frame at a time from a stream, never buffering more than {@code maxFrame} bytes. */
public final class FrameDecoder {
    private final int maxFrame;

    public FrameDecoder(int maxFrame) { this.maxFrame = maxFrame; }

    /**
     * The next frame, or null at the end of the stream between frames. A length of 0 or above
     * {@code maxFrame} is refused from the length alone, before any of the body is read.
     */
    public Frame read(InputStream in) throws IOException {
        byte[] header = new byte[4];
        int got = readFully(in, header);
        if (got == 0) return null;
        if (got < 4) throw new ProtocolException("the stream ended inside a frame's length");
        long length = ((header[0] & 0xFFL) << 24) | ((header[1] & 0xFF) << 16) | ((header[2] & 0xFF) << 8) | (header[3] & 0xFF);
        if (length == 0) throw new ProtocolException("frame of length 0");
        if (length > maxFrame) throw new ProtocolException("frame of " + length + " bytes, above max_frame " + maxFrame);
        byte[] frame = new byte[(int) length];
        if (readFully(in, frame) < frame.length) throw new ProtocolException("the stream ended inside a frame");
        return parse(frame[0] & 0xFF, ByteBuffer.wrap(frame, 1, frame.length - 1).slice());
    }

    /** One frame from its type and body. */
    public static Frame parse(int type, ByteBuffer body) throws ProtocolException {
        Frame frame;
        try {
            switch (type) {
                case Frames.WELCOME: frame = new Frame.Welcome(u16(body), string(body)); break;
                case Frames.PING: frame = new Frame.Ping(); break;
                case Frames.PONG: frame = new Frame.Pong(); break;
                case Frames.PUSH: {
                    String id = string(body);
                    if (id.isEmpty() || id.length() > 64) throw new ProtocolException("msg_id must be 1 to 64 bytes");
                    byte[] payload = new byte[body.remaining()];
                    body.get(payload);
                    frame = new Frame.Push(id, payload);
                    break;
                }
                case Frames.ERROR: frame = new Frame.Error(u16(body), string(body)); break;
                case Frames.GOAWAY: frame = new Frame.GoAway(body.getInt() & 0xFFFFFFFFL, string(body)); break;
                default: throw new ProtocolException(String.format("unknown or client-only frame type 0x%02x", type));
            }
        } catch (java.nio.BufferUnderflowException e) {
            throw new ProtocolException("frame body too short");
        }
        if (body.hasRemaining()) throw new ProtocolException("bytes left over after the frame's fields");
        return frame;
    }

    private static int u16(ByteBuffer body) { return body.getShort() & 0xFFFF; }

    private static String string(ByteBuffer body) throws ProtocolException {
        int length = u16(body);
        if (length > body.remaining()) throw new ProtocolException("string runs past the frame");
        ByteBuffer bytes = body.slice();
        bytes.limit(length);
        body.position(body.position() + length);
        try {
            return StandardCharsets.UTF_8.newDecoder().onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT).decode(bytes).toString();
        } catch (CharacterCodingException e) {
            throw new ProtocolException("string is not UTF-8");
        }
    }

    private static int readFully(InputStream in, byte[] into) throws IOException {
        int at = 0;
        while (at < into.length) {
            int n = in.read(into, at, into.length - at);
            if (n < 0) break;
            at += n;
        }
        return at;
    }
}
