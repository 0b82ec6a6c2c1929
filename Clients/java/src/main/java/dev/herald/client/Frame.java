package dev.herald.client;

import java.util.Arrays;
import java.util.Objects;

/** A frame from the server. */
public abstract class Frame {
    Frame() {}

    /** WELCOME: the heartbeat both sides now use, and the node's id. */
    public static final class Welcome extends Frame {
        public final int heartbeatSeconds;
        public final String nodeId;
        Welcome(int heartbeatSeconds, String nodeId) { this.heartbeatSeconds = heartbeatSeconds; this.nodeId = nodeId; }
        @Override public boolean equals(Object o) {
            return o instanceof Welcome && ((Welcome) o).heartbeatSeconds == heartbeatSeconds && ((Welcome) o).nodeId.equals(nodeId);
        }
        @Override public int hashCode() { return Objects.hash(heartbeatSeconds, nodeId); }
        @Override public String toString() { return "WELCOME(" + heartbeatSeconds + " s, " + nodeId + ")"; }
    }

    /** PING from the server: answered with PONG. */
    public static final class Ping extends Frame {
        Ping() {}
        @Override public boolean equals(Object o) { return o instanceof Ping; }
        @Override public int hashCode() { return 3; }
    }

    /** PONG: any frame counts as life. */
    public static final class Pong extends Frame {
        Pong() {}
        @Override public boolean equals(Object o) { return o instanceof Pong; }
        @Override public int hashCode() { return 4; }
    }

    /** PUSH: a message for this device, its id chosen by the server, and its payload. */
    public static final class Push extends Frame {
        public final String msgId;
        private final byte[] payload;
        Push(String msgId, byte[] payload) { this.msgId = msgId; this.payload = payload; }
        /** A copy of the payload bytes. */
        public byte[] payload() { return payload.clone(); }
        @Override public boolean equals(Object o) {
            return o instanceof Push && ((Push) o).msgId.equals(msgId) && Arrays.equals(((Push) o).payload, payload);
        }
        @Override public int hashCode() { return msgId.hashCode(); }
        @Override public String toString() { return "PUSH(" + msgId + ", " + payload.length + " bytes)"; }
    }

    /** ERROR: the server closes the connection right after it. */
    public static final class Error extends Frame {
        public final int code;
        public final String reason;
        Error(int code, String reason) { this.code = code; this.reason = reason; }
        @Override public boolean equals(Object o) { return o instanceof Error && ((Error) o).code == code && ((Error) o).reason.equals(reason); }
        @Override public int hashCode() { return code; }
        @Override public String toString() { return "ERROR " + code + ": " + reason; }
    }

    /** GOAWAY: the server is draining; reconnect (elsewhere) after the delay it names. */
    public static final class GoAway extends Frame {
        public final long reconnectAfterMillis;
        public final String reason;
        GoAway(long reconnectAfterMillis, String reason) { this.reconnectAfterMillis = reconnectAfterMillis; this.reason = reason; }
        @Override public boolean equals(Object o) {
            return o instanceof GoAway && ((GoAway) o).reconnectAfterMillis == reconnectAfterMillis && ((GoAway) o).reason.equals(reason);
        }
        @Override public int hashCode() { return Long.hashCode(reconnectAfterMillis); }
        @Override public String toString() { return "GOAWAY(" + reconnectAfterMillis + " ms, " + reason + ")"; }
    }
}
