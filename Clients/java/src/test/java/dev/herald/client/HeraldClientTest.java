package dev.herald.client;

import static dev.herald.client.FrameDecoderTest.concat;
import static dev.herald.client.FrameDecoderTest.frame;
import static dev.herald.client.FrameDecoderTest.str;
import static dev.herald.client.Herald.eventually;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.DataInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** The client against a real {@code herald serve}, and against scripted peers on real sockets for
 * what a correct server never sends. Every wait is bounded. */
@Timeout(60)
class HeraldClientTest {
    static String hs256(String secret, String subject) throws Exception {
        Base64.Encoder b64 = Base64.getUrlEncoder().withoutPadding();
        String signing = b64.encodeToString("{\"alg\":\"HS256\",\"typ\":\"JWT\"}".getBytes(StandardCharsets.UTF_8)) + "."
                + b64.encodeToString(("{\"sub\":\"" + subject + "\"}").getBytes(StandardCharsets.UTF_8));
        Mac mac = Mac.getInstance("HmacSHA256");
        mac.init(new SecretKeySpec(secret.getBytes(StandardCharsets.UTF_8), "HmacSHA256"));
        return signing + "." + b64.encodeToString(mac.doFinal(signing.getBytes(StandardCharsets.UTF_8)));
    }

    static final class Events implements HeraldClient.Listener {
        final List<Disconnect> disconnects = Collections.synchronizedList(new ArrayList<>());
        volatile Disconnect closed;
        @Override public void onDisconnected(Disconnect disconnect) { disconnects.add(disconnect); }
        @Override public void onClosed(Disconnect last) { closed = last; }
    }

    @Test void aPushIsHandedOverAndAcknowledgedOnlyAfterTheHandlerReturns() throws Exception {
        try (Herald server = new Herald()) {
            List<String> got = Collections.synchronizedList(new ArrayList<>());
            List<Integer> pendingWhileHandling = new ArrayList<>();
            try (HeraldClient client = new HeraldClient.Builder("dev-1").server(server.address()).heartbeatSeconds(7).onPush(push -> {
                pendingWhileHandling.add(server.pending("dev-1"));
                got.add(push.msgId + "=" + new String(push.payload(), StandardCharsets.UTF_8));
            }).build()) {
                client.start();
                eventually("connected", () -> client.state() == HeraldClient.State.CONNECTED);
                assertNotNull(client.nodeId());
                assertEquals(7, client.heartbeatSeconds(), "WELCOME's heartbeat (the one asked for, within the server's range)");
                String id = server.push("dev-1", "hello");
                eventually("the push", () -> got.size() == 1);
                assertEquals(List.of(id + "=hello"), got);
                assertEquals(List.of(1), pendingWhileHandling, "not acknowledged while the handler ran");
                eventually("the ACK deletes it", () -> pending(server, "dev-1") == 0);
            }
        }
    }

    static int pending(Herald server, String id) {
        try {
            return server.pending(id);
        } catch (Exception e) {
            throw new AssertionError(e);
        }
    }

    @Test void aHandlerThatThrowsMeansRedeliveryNeverLoss() throws Exception {
        try (Herald server = new Herald()) {
            List<String> calls = Collections.synchronizedList(new ArrayList<>());
            try (HeraldClient client = new HeraldClient.Builder("dev-2").server(server.address()).backoff(50, 50).onPush(push -> {
                calls.add(push.msgId);
                if (calls.size() == 1) throw new IllegalStateException("crashed before the ACK");
            }).build()) {
                client.start();
                eventually("connected", () -> client.state() == HeraldClient.State.CONNECTED);
                String id = server.push("dev-2", "once");
                eventually("delivered again on the next connection", () -> calls.size() == 2);
                assertEquals(List.of(id, id), calls);
                eventually("acknowledged", () -> pending(server, "dev-2") == 0);
                assertTrue(client.lastDisconnect().reason.contains("handler threw"));
            }
        }
    }

    @Test void goAwayMovesToTheNextServerAfterTheDelayItNames() throws Exception {
        try (Herald first = new Herald(Map.of("HERALD_DRAIN_TIMEOUT_S", "5")); Herald second = new Herald()) {
            List<String> got = Collections.synchronizedList(new ArrayList<>());
            Events events = new Events();
            try (HeraldClient client = new HeraldClient.Builder("dev-3").server(first.address()).server(second.address()).listener(events)
                    .onPush(push -> got.add(new String(push.payload(), StandardCharsets.UTF_8))).build()) {
                client.start();
                eventually("connected to the first", () -> client.state() == HeraldClient.State.CONNECTED);
                first.terminate();
                eventually("GOAWAY", () -> events.disconnects.size() == 1);
                Disconnect goAway = events.disconnects.get(0);
                assertNotNull(goAway.goAway);
                assertEquals(1000, goAway.goAway.reconnectAfterMillis);
                eventually("connected to the second", () -> client.state() == HeraldClient.State.CONNECTED);
                second.push("dev-3", "from-the-second");
                eventually("the push", () -> got.equals(List.of("from-the-second")));
            }
        }
    }

    @Test void error401StopsTheClientAndAValidTokenIsWelcomed() throws Exception {
        String secret = "a-secret-of-at-least-32-bytes-long!!";
        try (Herald server = new Herald(Map.of("HERALD_DEVICE_JWT_SECRET", secret))) {
            Events events = new Events();
            HeraldClient refused = new HeraldClient.Builder("dev-4").server(server.address()).backoff(10, 10)
                    .token(hs256("another-secret-of-32-bytes-or-more!!", "dev-4")).listener(events).build();
            refused.start();
            assertTrue(refused.awaitClosed(20, TimeUnit.SECONDS), "stops by itself");
            assertEquals(HeraldClient.State.CLOSED, refused.state());
            assertEquals(401, events.closed.error.code);
            assertTrue(events.closed.isFatal());
            assertEquals(1, events.disconnects.size(), "no reconnection");
            try (HeraldClient welcomed = new HeraldClient.Builder("dev-4").server(server.address()).token(hs256(secret, "dev-4")).build()) {
                welcomed.start();
                eventually("welcomed", () -> welcomed.state() == HeraldClient.State.CONNECTED);
            }
        }
    }

    @Test void error409ReplacedStopsTheOlderClient() throws Exception {
        try (Herald server = new Herald()) {
            Events events = new Events();
            try (HeraldClient older = new HeraldClient.Builder("dev-5").server(server.address()).listener(events).build();
                    HeraldClient newer = new HeraldClient.Builder("dev-5").server(server.address()).build()) {
                older.start();
                eventually("older connected", () -> older.state() == HeraldClient.State.CONNECTED);
                newer.start();
                assertTrue(older.awaitClosed(20, TimeUnit.SECONDS));
                assertEquals(409, events.closed.error.code);
                eventually("newer connected", () -> newer.state() == HeraldClient.State.CONNECTED);
            }
        }
    }

    @Test void tlsWithAGivenCaAndTheServersNameChecked() throws Exception {
        Path pki = Files.createTempDirectory("herald-java-pki-");
        Process make = new ProcessBuilder(Herald.ROOT.resolve("scripts/make-cert").toString(), pki.toString()).redirectErrorStream(true)
                .redirectOutput(ProcessBuilder.Redirect.DISCARD).start();
        assertTrue(make.waitFor(20, TimeUnit.SECONDS) && make.exitValue() == 0, "make-cert");
        try (Herald server = new Herald(Map.of("HERALD_TLS_ADDR", "127.0.0.1:0", "HERALD_TLS_CERT", pki + "/server.pem",
                "HERALD_TLS_KEY", pki + "/server.key", "HERALD_WSS_ADDR", "", "HERALD_HTTPS_ADDR", ""))) {
            List<String> got = Collections.synchronizedList(new ArrayList<>());
            try (HeraldClient client = new HeraldClient.Builder("dev-6").server("localhost:" + server.tlsPort)
                    .tls(HeraldClient.trusting(pki.resolve("ca.pem"))).onPush(push -> got.add(new String(push.payload(), StandardCharsets.UTF_8))).build()) {
                client.start();
                eventually("connected over TLS", () -> client.state() == HeraldClient.State.CONNECTED);
                server.push("dev-6", "secret");
                eventually("the push", () -> got.equals(List.of("secret")));
            }
            // The certificate names localhost and 127.0.0.1, not this name: refused though the chain is good.
            try (HeraldClient wrongName = new HeraldClient.Builder("dev-6").server("127.0.0.1:" + server.tlsPort).serverName("push.example.com")
                    .backoff(5000, 5000).tls(HeraldClient.trusting(pki.resolve("ca.pem"))).build()) {
                wrongName.start();
                eventually("a refused handshake", () -> wrongName.lastDisconnect() != null);
                assertTrue(wrongName.lastDisconnect().reason.contains("SSLHandshakeException"), wrongName.lastDisconnect().reason);
                assertEquals(0, wrongName.lastDisconnect().connectedMillis);
            }
        }
    }

    /** A one-port TCP server that runs {@code script} for each connection, in turn. */
    interface Script { void run(int connection, DataInputStream in, OutputStream out) throws IOException; }

    static ServerSocket peer(Script script) throws IOException {
        ServerSocket server = new ServerSocket(0, 50, java.net.InetAddress.getLoopbackAddress());
        Thread thread = new Thread(() -> {
            for (int connection = 1; ; connection++) {
                try (Socket socket = server.accept()) {
                    script.run(connection, new DataInputStream(socket.getInputStream()), socket.getOutputStream());
                } catch (IOException e) {
                    if (server.isClosed()) return;
                }
            }
        });
        thread.setDaemon(true);
        thread.start();
        return server;
    }

    static byte[] readFrame(DataInputStream in) throws IOException {
        byte[] frame = new byte[in.readInt()];
        in.readFully(frame);
        return frame;
    }

    static final byte[] WELCOME_1S = frame(Frames.WELCOME, concat(new byte[] {0, 1}, str("peer")));

    @Test void aDuplicateAcrossReconnectsIsAcknowledgedButHandedOverOnce() throws Exception {
        List<String> acks = Collections.synchronizedList(new ArrayList<>());
        try (ServerSocket server = peer((connection, in, out) -> {
            readFrame(in); // HELLO
            out.write(concat(WELCOME_1S, frame(Frames.PUSH, concat(str("m1"), new byte[] {'1'}))));
            if (connection == 2) out.write(frame(Frames.PUSH, concat(str("m2"), new byte[] {'2'})));
            int want = connection == 1 ? 1 : 3;
            while (acks.size() < want) {
                byte[] frame = readFrame(in);
                if (frame[0] == Frames.ACK) acks.add(new String(frame, 3, frame.length - 3, StandardCharsets.UTF_8));
            }
        })) {
            List<String> got = Collections.synchronizedList(new ArrayList<>());
            try (HeraldClient client = new HeraldClient.Builder("dev-8").server("127.0.0.1:" + server.getLocalPort()).backoff(10, 10)
                    .onPush(push -> got.add(push.msgId)).build()) {
                client.start();
                eventually("both connections acknowledged", () -> acks.size() == 3);
                assertEquals(List.of("m1", "m2"), got);
                assertEquals(List.of("m1", "m1", "m2"), acks);
            }
        }
    }

    @Test void pingsOnTimePongsAnsweredAndASilentServerDropped() throws Exception {
        List<Integer> received = Collections.synchronizedList(new ArrayList<>());
        try (ServerSocket server = peer((connection, in, out) -> {
            readFrame(in);
            out.write(concat(WELCOME_1S, frame(Frames.PING, new byte[0])));
            while (true) received.add((int) readFrame(in)[0]); // PINGs read, never answered; ends with the connection
        })) {
            Events events = new Events();
            try (HeraldClient client = new HeraldClient.Builder("dev-9").server("127.0.0.1:" + server.getLocalPort()).backoff(5000, 5000)
                    .listener(events).build()) {
                client.start();
                eventually("dropped", () -> events.disconnects.size() == 1);
                assertTrue(events.disconnects.get(0).reason.contains("silent for 2 s"), events.disconnects.get(0).reason);
                assertEquals(Frames.PONG, received.get(0), "the server's PING answered");
                assertTrue(received.contains(Frames.PING), "a PING within the two heartbeats");
            }
        }
    }

    @Test void anOversizedOrMalformedFrameIsAProtocolErrorNotACrash() throws Exception {
        for (byte[] bad : new byte[][] {{0, 1, 0, 1}, {0, 0, 0, 0}, frame(0x42, new byte[0])}) {
            try (ServerSocket server = peer((connection, in, out) -> {
                readFrame(in);
                out.write(concat(WELCOME_1S, bad));
                while (in.read() >= 0) { /* until the client leaves */ }
            })) {
                Events events = new Events();
                try (HeraldClient client = new HeraldClient.Builder("dev-10").server("127.0.0.1:" + server.getLocalPort()).backoff(5000, 5000)
                        .listener(events).build()) {
                    client.start();
                    eventually("dropped", () -> events.disconnects.size() == 1);
                    assertTrue(events.disconnects.get(0).reason.startsWith("protocol error"), events.disconnects.get(0).reason);
                }
            }
        }
    }

    @Test void backoffIsFullJitterExponentialAndMovesBetweenServers() throws Exception {
        List<Integer> connectionsA = Collections.synchronizedList(new ArrayList<>());
        List<Integer> connectionsB = Collections.synchronizedList(new ArrayList<>());
        try (ServerSocket a = peer((connection, in, out) -> connectionsA.add(connection));
                ServerSocket b = peer((connection, in, out) -> connectionsB.add(connection))) {
            Events events = new Events();
            try (HeraldClient client = new HeraldClient.Builder("dev-11").server("127.0.0.1:" + a.getLocalPort())
                    .server("127.0.0.1:" + b.getLocalPort()).backoff(10, 40).listener(events).build()) {
                client.start();
                eventually("five attempts", () -> events.disconnects.size() >= 5);
            }
            assertTrue(connectionsA.size() >= 2 && connectionsB.size() >= 2, "alternates between the servers");
        }
        List<Long> ceilings = new ArrayList<>();
        for (int attempt = 0; attempt < 5; attempt++) ceilings.add(HeraldClient.backoffMillis(attempt, 10, 40, 0.999999));
        assertEquals(List.of(9L, 19L, 39L, 39L, 39L), ceilings, "the ceiling doubles up to the maximum");
        assertEquals(0L, HeraldClient.backoffMillis(3, 10, 40, 0.0), "the draw goes down to zero");
    }
}
