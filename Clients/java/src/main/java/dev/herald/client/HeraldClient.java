package dev.herald.client;

import java.io.BufferedInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.security.GeneralSecurityException;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.function.DoubleSupplier;
import java.util.logging.Level;
import java.util.logging.Logger;
import javax.net.SocketFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.SSLSocketFactory;
import javax.net.ssl.TrustManagerFactory;

/**
 * One device's connection to one of several Herald servers, kept up until {@link #close()}.
 *
 * <p>One reader thread connects, reads and hands every PUSH to the {@link PushHandler}, in order;
 * one scheduler thread sends the PINGs. A PUSH is acknowledged only after the handler returns;
 * if it throws, the connection is dropped without the ACK and the server sends the message
 * again on the next connection (a crash before the ACK means redelivery, never loss). A message
 * id handled already (within the last {@code dedupWindow} ids, across reconnects) is
 * acknowledged again but not handed over twice.
 *
 * <p>After a connection ends, the next server is tried after a full-jitter exponential backoff
 * (a random delay below {@code min(backoffMax, backoffBase * 2^n)}, {@code n} reset after a
 * connection that lived {@code stableAfter}); after GOAWAY, after the server's
 * {@code reconnect_after_ms} instead. After ERROR 401 or 409 the client stops
 * ({@link State#CLOSED}, {@link Listener#onClosed}) unless {@code reconnectAfterFatal} is set:
 * call {@link #start()} again to start over.
 */
public final class HeraldClient implements AutoCloseable {
    private static final Logger LOG = Logger.getLogger(HeraldClient.class.getName());

    /** What the client does, as {@link #state()} tells. */
    public enum State { IDLE, CONNECTING, CONNECTED, WAITING, CLOSED }

    /** Gets every PUSH; the message is acknowledged when this returns. */
    public interface PushHandler {
        void onPush(Frame.Push push) throws Exception;
    }

    /** Connection events, called on the reader thread. */
    public interface Listener {
        default void onConnected(Frame.Welcome welcome) {}
        default void onDisconnected(Disconnect disconnect) {}
        /** The client stopped: after {@link #close()}, or after a fatal ERROR. */
        default void onClosed(Disconnect last) {}
    }

    /** A server's address. */
    public static final class Server {
        public final String host;
        public final int port;
        public Server(String host, int port) { this.host = host; this.port = port; }
        /** {@code host:port}. */
        public static Server parse(String address) {
            int colon = address.lastIndexOf(':');
            if (colon <= 0) throw new IllegalArgumentException("server " + address + " is not host:port");
            return new Server(address.substring(0, colon).replace("[", "").replace("]", ""), Integer.parseInt(address.substring(colon + 1)));
        }
        @Override public String toString() { return host + ":" + port; }
    }

    /** The client's settings. */
    public static final class Builder {
        private final List<Server> servers = new ArrayList<>();
        private final String clientId;
        private String token = "";
        private PushHandler handler = push -> {};
        private Listener listener = new Listener() {};
        private int heartbeatSeconds;
        private SocketFactory socketFactory = SocketFactory.getDefault();
        private boolean tls;
        private String serverName;
        private int maxFrame = Frames.DEFAULT_MAX_FRAME;
        private long connectTimeoutMillis = 10_000, backoffBaseMillis = 500, backoffMaxMillis = 30_000, stableAfterMillis = 60_000;
        private int dedupWindow = 4096;
        private boolean reconnectAfterFatal;
        private DoubleSupplier jitter = () -> ThreadLocalRandom.current().nextDouble();

        public Builder(String clientId) {
            if (!Frames.isValidClientId(clientId)) throw new IllegalArgumentException("client id must be 1 to 128 characters of [A-Za-z0-9._:@-]");
            this.clientId = clientId;
        }
        /** A server, {@code host:port}; add several to move between them. */
        public Builder server(String address) { servers.add(Server.parse(address)); return this; }
        public Builder token(String token) { this.token = token; return this; }
        public Builder onPush(PushHandler handler) { this.handler = handler; return this; }
        public Builder listener(Listener listener) { this.listener = listener; return this; }
        /** The heartbeat to ask for; 0 (the default) takes the server's. */
        public Builder heartbeatSeconds(int seconds) { this.heartbeatSeconds = seconds; return this; }
        /** TLS with the platform's trust store. */
        public Builder tls() { return tls((SSLSocketFactory) SSLSocketFactory.getDefault()); }
        /** TLS with this factory (a given CA: {@link #trusting(Path)}; a client certificate for mutual TLS). */
        public Builder tls(SSLSocketFactory factory) { this.socketFactory = factory; this.tls = true; return this; }
        /** The name the server's certificate must carry, when it is not the host connected to. */
        public Builder serverName(String name) { this.serverName = name; return this; }
        public Builder maxFrame(int bytes) { this.maxFrame = bytes; return this; }
        public Builder connectTimeoutMillis(long millis) { this.connectTimeoutMillis = millis; return this; }
        public Builder backoff(long baseMillis, long maxMillis) { this.backoffBaseMillis = baseMillis; this.backoffMaxMillis = maxMillis; return this; }
        public Builder stableAfterMillis(long millis) { this.stableAfterMillis = millis; return this; }
        public Builder dedupWindow(int ids) { this.dedupWindow = ids; return this; }
        public Builder reconnectAfterFatal(boolean yes) { this.reconnectAfterFatal = yes; return this; }
        /** The source of the backoff's randomness, in [0, 1) (tests pin it). */
        public Builder jitter(DoubleSupplier jitter) { this.jitter = jitter; return this; }
        public HeraldClient build() {
            if (servers.isEmpty()) throw new IllegalStateException("at least one server is needed");
            return new HeraldClient(this);
        }
    }

    /** An SSL socket factory that trusts the CA certificates in a PEM file (and nothing else). */
    public static SSLSocketFactory trusting(Path caPem) throws IOException, GeneralSecurityException {
        KeyStore store = KeyStore.getInstance(KeyStore.getDefaultType());
        store.load(null, null);
        int index = 0;
        try (InputStream in = Files.newInputStream(caPem)) {
            for (Certificate certificate : CertificateFactory.getInstance("X.509").generateCertificates(in)) {
                store.setCertificateEntry("ca-" + index++, certificate);
            }
        }
        TrustManagerFactory trust = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        trust.init(store);
        SSLContext context = SSLContext.getInstance("TLS");
        context.init(null, trust.getTrustManagers(), null);
        return context.getSocketFactory();
    }

    private final Builder config;
    private final byte[] hello;
    private final Map<String, Boolean> seen;
    private final Object lock = new Object();
    private volatile State state = State.IDLE;
    private volatile String nodeId;
    private volatile int heartbeatSeconds;
    private volatile Disconnect lastDisconnect;
    private volatile boolean closing;
    private Thread reader;
    private Socket socket;
    private ScheduledExecutorService scheduler;
    private int serverIndex;

    private HeraldClient(Builder config) {
        this.config = config;
        this.hello = Frames.hello(config.clientId, config.token, config.heartbeatSeconds);
        int window = config.dedupWindow;
        this.seen = Collections.synchronizedMap(new LinkedHashMap<String, Boolean>(16, 0.75f, false) {
            private static final long serialVersionUID = 1L;
            @Override protected boolean removeEldestEntry(Map.Entry<String, Boolean> eldest) { return size() > window; }
        });
    }

    public State state() { return state; }
    /** The node this client is connected to, or null. */
    public String nodeId() { return nodeId; }
    /** The heartbeat the WELCOME set, or 0 when not connected. */
    public int heartbeatSeconds() { return heartbeatSeconds; }
    public Disconnect lastDisconnect() { return lastDisconnect; }

    /** Starts connecting, on the client's reader thread. */
    public void start() {
        synchronized (lock) {
            if (reader != null && reader.isAlive()) return;
            closing = false;
            scheduler = Executors.newSingleThreadScheduledExecutor(runnable -> {
                Thread thread = new Thread(runnable, "herald-ping-" + config.clientId);
                thread.setDaemon(true);
                return thread;
            });
            reader = new Thread(this::run, "herald-" + config.clientId);
            reader.setDaemon(true);
            reader.start();
        }
    }

    /** Stops the client and waits (bounded) for its thread to end. */
    @Override public void close() {
        Thread thread;
        synchronized (lock) {
            closing = true;
            closeSocket();
            thread = reader;
            if (thread != null) thread.interrupt();
        }
        if (thread != null && thread != Thread.currentThread()) {
            try {
                thread.join(10_000);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }

    /** Waits until the client has stopped; true if it did within the time. */
    public boolean awaitClosed(long timeout, TimeUnit unit) throws InterruptedException {
        Thread thread;
        synchronized (lock) { thread = reader; }
        if (thread == null) return true;
        thread.join(unit.toMillis(timeout));
        return !thread.isAlive();
    }

    private void run() {
        int attempt = 0;
        try {
            while (!closing) {
                Server server = config.servers.get(serverIndex % config.servers.size());
                state = State.CONNECTING;
                Disconnect disconnect = session(server);
                lastDisconnect = disconnect;
                nodeId = null;
                heartbeatSeconds = 0;
                LOG.log(Level.INFO, "herald: disconnected from {0}", disconnect);
                config.listener.onDisconnected(disconnect);
                if (closing) break;
                if (disconnect.isFatal() && !config.reconnectAfterFatal) break;
                if (disconnect.connectedMillis >= config.stableAfterMillis) attempt = 0;
                long delay;
                if (disconnect.goAway != null) {
                    delay = disconnect.goAway.reconnectAfterMillis;
                } else {
                    delay = backoffMillis(attempt++, config.backoffBaseMillis, config.backoffMaxMillis, config.jitter.getAsDouble());
                }
                serverIndex++;
                state = State.WAITING;
                try {
                    Thread.sleep(delay);
                } catch (InterruptedException e) {
                    if (closing) break;
                }
            }
        } finally {
            state = State.CLOSED;
            scheduler.shutdownNow();
            config.listener.onClosed(lastDisconnect);
        }
    }

    /** Full jitter: {@code draw} (in [0, 1)) times {@code min(max, base * 2^attempt)}. */
    static long backoffMillis(int attempt, long baseMillis, long maxMillis, double draw) {
        double ceiling = Math.min(maxMillis, baseMillis * Math.pow(2, Math.min(attempt, 30)));
        return (long) (draw * ceiling);
    }

    private Disconnect session(Server server) {
        long connectedAt = -1;
        ScheduledFuture<?> pinger = null;
        try {
            Socket s = new Socket(); // TLS is layered on it once connected (the connect timeout applies)
            synchronized (lock) {
                if (closing) { s.close(); return new Disconnect(server.toString(), "closed by the application", null, null, 0); }
                socket = s;
            }
            s.connect(new InetSocketAddress(server.host, server.port), (int) config.connectTimeoutMillis);
            if (config.tls) {
                String name = config.serverName != null ? config.serverName : server.host;
                SSLSocket tls = (SSLSocket) ((SSLSocketFactory) config.socketFactory).createSocket(s, name, server.port, true);
                SSLParameters parameters = tls.getSSLParameters();
                parameters.setEndpointIdentificationAlgorithm("HTTPS"); // check the server's name, not only its chain
                tls.setSSLParameters(parameters);
                synchronized (lock) { socket = tls; }
                s = tls;
                s.setSoTimeout((int) config.connectTimeoutMillis);
                tls.startHandshake();
            }
            s.setTcpNoDelay(true);
            s.setSoTimeout((int) config.connectTimeoutMillis);
            InputStream in = new BufferedInputStream(s.getInputStream());
            OutputStream out = s.getOutputStream();
            write(out, hello);
            FrameDecoder decoder = new FrameDecoder(config.maxFrame);
            Frame first = decoder.read(in);
            if (first == null) return ended(server, connectedAt, "the server closed the connection before WELCOME", null, null);
            if (first instanceof Frame.Error) {
                Frame.Error error = (Frame.Error) first;
                return ended(server, connectedAt, "ERROR " + error.code + ": " + error.reason, error, null);
            }
            if (!(first instanceof Frame.Welcome)) throw new ProtocolException("expected WELCOME, got " + first);
            Frame.Welcome welcome = (Frame.Welcome) first;
            connectedAt = System.nanoTime();
            int heartbeat = Math.max(welcome.heartbeatSeconds, 1);
            nodeId = welcome.nodeId;
            heartbeatSeconds = welcome.heartbeatSeconds;
            state = State.CONNECTED;
            config.listener.onConnected(welcome);
            s.setSoTimeout(2 * heartbeat * 1000);
            long every = heartbeat * 500L;
            pinger = scheduler.scheduleAtFixedRate(() -> {
                try {
                    write(out, Frames.ping());
                } catch (IOException e) {
                    // The reader sees the broken connection.
                }
            }, every, every, TimeUnit.MILLISECONDS);
            while (true) {
                Frame frame;
                try {
                    frame = decoder.read(in);
                } catch (SocketTimeoutException e) {
                    return ended(server, connectedAt, "the server was silent for " + 2 * heartbeat + " s", null, null);
                }
                if (frame == null) return ended(server, connectedAt, "the server closed the connection", null, null);
                if (frame instanceof Frame.Ping) {
                    write(out, Frames.pong());
                } else if (frame instanceof Frame.Push) {
                    String failure = deliver((Frame.Push) frame, out);
                    if (failure != null) return ended(server, connectedAt, failure, null, null);
                } else if (frame instanceof Frame.Error) {
                    Frame.Error error = (Frame.Error) frame;
                    return ended(server, connectedAt, "ERROR " + error.code + ": " + error.reason, error, null);
                } else if (frame instanceof Frame.GoAway) {
                    Frame.GoAway goAway = (Frame.GoAway) frame;
                    return ended(server, connectedAt, "GOAWAY: " + goAway.reason, null, goAway);
                } else if (frame instanceof Frame.Welcome) {
                    throw new ProtocolException("a second WELCOME");
                }
            }
        } catch (ProtocolException e) {
            return ended(server, connectedAt, "protocol error: " + e.getMessage(), null, null);
        } catch (SocketTimeoutException e) {
            return ended(server, connectedAt, "no WELCOME in time", null, null);
        } catch (IOException e) {
            return ended(server, connectedAt, closing ? "closed by the application" : "connection failed: " + e, null, null);
        } finally {
            if (pinger != null) pinger.cancel(false);
            synchronized (lock) { closeSocket(); }
        }
    }

    /** Hands {@code push} over unless handled already, then ACKs it; why to drop the connection, or null. */
    private String deliver(Frame.Push push, OutputStream out) throws IOException {
        if (!seen.containsKey(push.msgId)) {
            try {
                config.handler.onPush(push);
            } catch (Exception e) {
                LOG.log(Level.WARNING, "herald: the push handler threw for " + push.msgId + "; not acknowledged", e);
                return "the push handler threw: " + e;
            }
            seen.put(push.msgId, Boolean.TRUE);
        }
        write(out, Frames.ack(push.msgId));
        return null;
    }

    private Disconnect ended(Server server, long connectedAt, String reason, Frame.Error error, Frame.GoAway goAway) {
        long lived = connectedAt < 0 ? 0 : TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - connectedAt);
        return new Disconnect(server.toString(), reason, error, goAway, lived);
    }

    private static void write(OutputStream out, byte[] frame) throws IOException {
        synchronized (out) {
            out.write(frame);
            out.flush();
        }
    }

    private void closeSocket() {
        if (socket != null) {
            try {
                socket.close();
            } catch (IOException e) {
                // closing anyway
            }
            socket = null;
        }
    }
}
