package dev.herald.client;

/** Why a connection ended. */
public final class Disconnect {
    /** The server, {@code host:port}. */
    public final String server;
    /** The reason, in words, in every case. */
    public final String reason;
    /** The server's ERROR when it sent one, else null. */
    public final Frame.Error error;
    /** The server's GOAWAY when it was draining, else null. */
    public final Frame.GoAway goAway;
    /** How long the connection was up after WELCOME (0 when it never got one). */
    public final long connectedMillis;

    Disconnect(String server, String reason, Frame.Error error, Frame.GoAway goAway, long connectedMillis) {
        this.server = server;
        this.reason = reason;
        this.error = error;
        this.goAway = goAway;
        this.connectedMillis = connectedMillis;
    }

    /** An ERROR 401 (authentication failed) or 409 (replaced by a newer connection). */
    public boolean isFatal() { return error != null && (error.code == 401 || error.code == 409); }

    @Override public String toString() { return server + ": " + reason; }
}
