package dev.herald.client;

import java.io.IOException;

/** The server sent something the protocol does not allow; the connection is dropped. */
public final class ProtocolException extends IOException {
    private static final long serialVersionUID = 1L;

    public ProtocolException(String message) { super(message); }
}
