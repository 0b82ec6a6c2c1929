package dev.herald.client;

import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.util.regex.Pattern;

/** The device protocol's frames (protocol.md §1): encoding of what a device sends. */
public final class Frames {
    public static final int HELLO = 1, WELCOME = 2, PING = 3, PONG = 4, PUSH = 5, ACK = 6, ERROR = 7, GOAWAY = 8;
    /** The server's default frame bound; the client refuses larger frames unless configured otherwise. */
    public static final int DEFAULT_MAX_FRAME = 65536;
    public static final int PROTOCOL_VERSION = 1;
    private static final Pattern CLIENT_ID = Pattern.compile("[A-Za-z0-9._:@-]{1,128}");

    private Frames() {}

    /** Whether {@code clientId} is 1 to 128 characters of {@code [A-Za-z0-9._:@-]}. */
    public static boolean isValidClientId(String clientId) {
        return clientId != null && CLIENT_ID.matcher(clientId).matches();
    }

    static byte[] hello(String clientId, String token, int heartbeatSeconds) {
        if (!isValidClientId(clientId)) throw new IllegalArgumentException("client id must be 1 to 128 characters of [A-Za-z0-9._:@-]");
        if (heartbeatSeconds < 0 || heartbeatSeconds > 0xFFFF) throw new IllegalArgumentException("heartbeat must fit in 16 bits");
        ByteArrayOutputStream body = new ByteArrayOutputStream();
        body.write(PROTOCOL_VERSION);
        string(body, clientId);
        string(body, token);
        body.write(heartbeatSeconds >>> 8);
        body.write(heartbeatSeconds);
        return frame(HELLO, body.toByteArray());
    }

    static byte[] ping() { return frame(PING, new byte[0]); }

    static byte[] pong() { return frame(PONG, new byte[0]); }

    static byte[] ack(String msgId) {
        ByteArrayOutputStream body = new ByteArrayOutputStream();
        string(body, msgId);
        return frame(ACK, body.toByteArray());
    }

    private static void string(ByteArrayOutputStream out, String text) {
        byte[] bytes = text.getBytes(StandardCharsets.UTF_8);
        if (bytes.length > 0xFFFF) throw new IllegalArgumentException("a protocol string is at most 65535 bytes");
        out.write(bytes.length >>> 8);
        out.write(bytes.length);
        out.write(bytes, 0, bytes.length);
    }

    private static byte[] frame(int type, byte[] body) {
        int length = body.length + 1;
        byte[] out = new byte[4 + length];
        out[0] = (byte) (length >>> 24);
        out[1] = (byte) (length >>> 16);
        out[2] = (byte) (length >>> 8);
        out[3] = (byte) length;
        out[4] = (byte) type;
        System.arraycopy(body, 0, out, 5, body.length);
        return out;
    }
}
