package dev.herald.client;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/** A real {@code herald serve} on ports of its own (in-memory store), ended by its PID. */
final class Herald implements AutoCloseable {
    static final Path ROOT = Paths.get(System.getProperty("herald.root", "../..")).toAbsolutePath().normalize();
    static final Path BINARY = Paths.get(System.getProperty("herald.binary", ROOT.resolve(".build/debug/herald").toString()));
    static final Duration TIMEOUT = Duration.ofSeconds(20);
    private static final Pattern PORT = Pattern.compile("127\\.0\\.0\\.1:(\\d+)");

    final Process process;
    private final List<String> log = new ArrayList<>();
    final int devicePort;
    final int httpPort;
    final int tlsPort;

    Herald(Map<String, String> environment) throws Exception {
        if (!Files.isExecutable(BINARY)) throw new IllegalStateException(BINARY + " is missing: run `swift build` first");
        ProcessBuilder builder = new ProcessBuilder(BINARY.toString(), "serve");
        builder.environment().clear();
        builder.environment().put("PATH", "/usr/bin:/bin");
        builder.environment().put("HERALD_TCP_ADDR", "127.0.0.1:0");
        builder.environment().put("HERALD_HTTP_ADDR", "127.0.0.1:0");
        builder.environment().putAll(environment);
        builder.redirectOutput(ProcessBuilder.Redirect.DISCARD);
        process = builder.start();
        Thread reader = new Thread(() -> {
            try (BufferedReader lines = new BufferedReader(new InputStreamReader(process.getErrorStream(), StandardCharsets.UTF_8))) {
                for (String line; (line = lines.readLine()) != null; ) {
                    synchronized (log) { log.add(line); }
                }
            } catch (IOException e) {
                // the process ended
            }
        });
        reader.setDaemon(true);
        reader.start();
        devicePort = port("transport=tcp", "device listener bound");
        httpPort = port("", "HTTP API bound");
        tlsPort = environment.containsKey("HERALD_TLS_CERT") ? port("transport=tls", "device listener bound") : -1;
    }

    Herald() throws Exception { this(Map.of()); }

    String address() { return "127.0.0.1:" + devicePort; }

    private int port(String marker, String what) throws Exception {
        long deadline = System.nanoTime() + TIMEOUT.toNanos();
        while (System.nanoTime() < deadline) {
            synchronized (log) {
                for (String line : log) {
                    Matcher matcher = PORT.matcher(line);
                    if (line.contains(what) && line.contains(marker) && matcher.find()) return Integer.parseInt(matcher.group(1));
                }
            }
            if (!process.isAlive()) throw new IllegalStateException("herald exited: " + log);
            Thread.sleep(20);
        }
        throw new IllegalStateException("herald never logged " + what);
    }

    String push(String clientId, String data) throws Exception {
        String body = http("POST", "/v1/push", "{\"client_id\": \"" + clientId + "\", \"data\": \"" + data + "\"}");
        Matcher id = Pattern.compile("\"id\"\\s*:\\s*\"([^\"]+)\"").matcher(body);
        if (!id.find()) throw new IllegalStateException("no id in " + body);
        return id.group(1);
    }

    int pending(String clientId) throws Exception {
        Matcher pending = Pattern.compile("\"pending\"\\s*:\\s*(\\d+)").matcher(http("GET", "/v1/clients/" + clientId, null));
        if (!pending.find()) throw new IllegalStateException("no pending count");
        return Integer.parseInt(pending.group(1));
    }

    private String http(String method, String path, String body) throws Exception {
        HttpRequest.Builder request = HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + httpPort + path)).timeout(TIMEOUT)
                .header("Content-Type", "application/json");
        request.method(method, body == null ? HttpRequest.BodyPublishers.noBody() : HttpRequest.BodyPublishers.ofString(body));
        HttpResponse<String> response = HttpClient.newHttpClient().send(request.build(), HttpResponse.BodyHandlers.ofString());
        if (response.statusCode() >= 300) throw new IllegalStateException(method + " " + path + ": " + response.statusCode() + " " + response.body());
        return response.body();
    }

    /** SIGTERM: the node drains (GOAWAY). */
    void terminate() { process.destroy(); }

    @Override public void close() {
        process.destroyForcibly();
        try {
            process.waitFor(TIMEOUT.toMillis(), TimeUnit.MILLISECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /** Waits, bounded, for {@code condition} (checked every 20 ms). */
    static void eventually(String what, BooleanSupplier condition) throws InterruptedException {
        long deadline = System.nanoTime() + TIMEOUT.toNanos();
        while (!condition.getAsBoolean()) {
            if (System.nanoTime() > deadline) throw new AssertionError("timed out waiting for " + what);
            Thread.sleep(20);
        }
    }
}
