/* The sans-IO core on its own: bytes and time in, events and bytes out. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../herald.h"

static int failures;
#define CHECK(condition)                                                              \
    do {                                                                              \
        if (!(condition)) {                                                           \
            fprintf(stderr, "%s:%d: %s: failed: %s\n", __FILE__, __LINE__, __func__, #condition); \
            failures++;                                                               \
        }                                                                             \
    } while (0)

static herald_client c;
static herald_event ev;

static size_t frame(uint8_t *out, uint8_t type, const void *body, size_t n) {
    out[0] = (uint8_t)((n + 1) >> 24);
    out[1] = (uint8_t)((n + 1) >> 16);
    out[2] = (uint8_t)((n + 1) >> 8);
    out[3] = (uint8_t)(n + 1);
    out[4] = type;
    memcpy(out + 5, body, n);
    return n + 5;
}

static size_t push(uint8_t *out, const char *id, const char *payload) {
    uint8_t body[200];
    size_t n = strlen(id), p = strlen(payload);
    body[0] = 0;
    body[1] = (uint8_t)n;
    memcpy(body + 2, id, n);
    memcpy(body + 2 + n, payload, p);
    return frame(out, 5, body, 2 + n + p);
}

static const uint8_t welcome_30[] = {0, 0, 0, 7, 2, 0, 30, 0, 2, 'n', '1'};

/* Feeds all of data, handling (and acking) pushes; returns the last event type seen. */
static herald_event_type feed(const uint8_t *data, size_t n, uint64_t now, int ack) {
    herald_event_type last = HERALD_EVENT_NONE;
    size_t at = 0;
    while (at < n) {
        size_t used = herald_receive(&c, data + at, n - at, now, &ev);
        at += used;
        if (ev.type != HERALD_EVENT_NONE) last = ev.type;
        if (ev.type == HERALD_EVENT_PUSH && ack) herald_ack(&c, &ev);
        if (ev.type == HERALD_EVENT_DISCONNECT) break;
        if (used == 0 && ev.type == HERALD_EVENT_NONE) break;
    }
    return last;
}

static void output(uint8_t *out, size_t *n) {
    const uint8_t *data;
    *n = herald_output(&c, &data);
    memcpy(out, data, *n);
    herald_sent(&c, *n);
}

static void connect_client(const char *id, uint32_t seed) {
    herald_config config;
    memset(&config, 0, sizeof config);
    config.client_id = id;
    config.token = "tok";
    config.heartbeat_s = 30;
    config.seed = seed;
    CHECK(herald_init(&c, &config) == 0);
    herald_start(&c, 1000);
}

static void test_hello_and_welcome(void) {
    uint8_t out[600];
    size_t n;
    static const uint8_t hello[] = {0, 0, 0, 14, 1, 1, 0, 3, 'd', 'e', 'v', 0, 3, 't', 'o', 'k', 0, 30};
    connect_client("dev", 1);
    output(out, &n);
    CHECK(n == sizeof hello && memcmp(out, hello, n) == 0);
    CHECK(feed(welcome_30, sizeof welcome_30, 1010, 1) == HERALD_EVENT_CONNECTED);
    CHECK(ev.heartbeat_s == 30 && ev.node_id_len == 2 && memcmp(ev.node_id, "n1", 2) == 0);
    CHECK(c.state == HERALD_CONNECTED);
}

static void test_invalid_configuration(void) {
    herald_config config;
    char long_token[600];
    memset(&config, 0, sizeof config);
    config.client_id = "bad id";
    CHECK(herald_init(&c, &config) == -1);
    config.client_id = "";
    CHECK(herald_init(&c, &config) == -1);
    memset(long_token, 'a', sizeof long_token - 1);
    long_token[sizeof long_token - 1] = '\0';
    config.client_id = "ok";
    config.token = long_token;
    CHECK(herald_init(&c, &config) == -1); /* the HELLO would not fit HERALD_TX_CAPACITY */
}

static void test_push_is_acked_only_when_the_application_says(void) {
    uint8_t in[300], out[600];
    size_t n = push(in, "m1", "hello"), m;
    connect_client("dev", 1);
    output(out, &m);
    feed(welcome_30, sizeof welcome_30, 1010, 1);
    CHECK(feed(in, n, 1020, 0) == HERALD_EVENT_PUSH);
    CHECK(ev.msg_id_len == 2 && memcmp(ev.payload, "hello", 5) == 0 && ev.payload_len == 5);
    output(out, &m);
    CHECK(m == 0); /* nothing acked yet */
    {
        herald_event probe;
        CHECK(herald_receive(&c, in, n, 1021, &probe) == 0); /* and nothing more is read until it is */
    }
    herald_ack(&c, &ev);
    {
        static const uint8_t ack[] = {0, 0, 0, 5, 6, 0, 2, 'm', '1'};
        output(out, &m);
        CHECK(m == sizeof ack && memcmp(out, ack, m) == 0);
    }
}

static void test_duplicates_are_acked_not_handed_over_again_across_reconnects(void) {
    uint8_t in[300], out[600];
    size_t n = push(in, "m1", "x"), m;
    connect_client("dev", 1);
    feed(welcome_30, sizeof welcome_30, 1010, 1);
    CHECK(feed(in, n, 1020, 1) == HERALD_EVENT_PUSH);
    herald_closed(&c, 1030, HERALD_REASON_IO, &ev);
    CHECK(ev.type == HERALD_EVENT_DISCONNECT && ev.reconnect);
    herald_start(&c, 2000);
    output(out, &m);
    feed(welcome_30, sizeof welcome_30, 2010, 1);
    CHECK(feed(in, n, 2020, 1) == HERALD_EVENT_NONE); /* not handed over */
    output(out, &m);
    CHECK(m == 9 && out[4] == 6); /* but acknowledged */
}

static void test_one_byte_at_a_time(void) {
    uint8_t in[300];
    size_t n = push(in, "m2", "drip"), i;
    int pushes = 0;
    connect_client("dev", 1);
    for (i = 0; i < sizeof welcome_30; i++) feed(welcome_30 + i, 1, 1010, 1);
    CHECK(c.state == HERALD_CONNECTED);
    for (i = 0; i < n; i++) pushes += feed(in + i, 1, 1020, 1) == HERALD_EVENT_PUSH;
    CHECK(pushes == 1);
}

static void test_ping_pong_and_silence(void) {
    uint8_t out[600];
    size_t m;
    static const uint8_t ping[] = {0, 0, 0, 1, 3};
    connect_client("dev", 1);
    output(out, &m);
    feed(welcome_30, sizeof welcome_30, 1000, 1);
    herald_tick(&c, 15999, &ev);
    output(out, &m);
    CHECK(m == 0);
    CHECK(herald_next_tick_ms(&c, 15999) == 1);
    herald_tick(&c, 16000, &ev); /* half a heartbeat */
    output(out, &m);
    CHECK(m == 5 && out[4] == 3);
    feed(ping, sizeof ping, 20000, 1); /* a server PING is answered */
    output(out, &m);
    CHECK(m == 5 && out[4] == 4);
    herald_tick(&c, 79999, &ev);
    CHECK(ev.type == HERALD_EVENT_NONE);
    herald_tick(&c, 80000, &ev); /* two heartbeats after the last bytes */
    CHECK(ev.type == HERALD_EVENT_DISCONNECT && ev.reason == HERALD_REASON_SILENT && ev.reconnect);
}

static void test_no_welcome_in_time(void) {
    connect_client("dev", 1);
    herald_tick(&c, 10999, &ev);
    CHECK(ev.type == HERALD_EVENT_NONE);
    herald_tick(&c, 11000, &ev);
    CHECK(ev.type == HERALD_EVENT_DISCONNECT && ev.reason == HERALD_REASON_NO_WELCOME);
}

static void test_bad_frames_are_protocol_errors(void) {
    static const uint8_t zero[] = {0, 0, 0, 0};
    static const uint8_t unknown[] = {0, 0, 0, 1, 0x42};
    static const uint8_t hello[] = {0, 0, 0, 1, 1};
    static const uint8_t short_push[] = {0, 0, 0, 3, 5, 0, 9};
    static const uint8_t empty_id[] = {0, 0, 0, 4, 5, 0, 0, 'x'};
    static const uint8_t control_id[] = {0, 0, 0, 4, 5, 0, 1, 7};
    static const uint8_t long_ping[] = {0, 0, 0, 2, 3, 0};
    static const uint8_t second_welcome[] = {0, 0, 0, 5, 2, 0, 30, 0, 0};
    uint8_t oversized[4];
    const uint8_t *bad[] = {zero, unknown, hello, short_push, empty_id, control_id, long_ping, second_welcome, oversized};
    size_t sizes[] = {sizeof zero, sizeof unknown, sizeof hello, sizeof short_push, sizeof empty_id, sizeof control_id, sizeof long_ping,
                      sizeof second_welcome, sizeof oversized};
    size_t i;
    oversized[0] = (uint8_t)((HERALD_MAX_FRAME + 1) >> 24);
    oversized[1] = (uint8_t)((HERALD_MAX_FRAME + 1) >> 16);
    oversized[2] = (uint8_t)((HERALD_MAX_FRAME + 1) >> 8);
    oversized[3] = (uint8_t)(HERALD_MAX_FRAME + 1);
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        connect_client("dev", 1);
        feed(welcome_30, sizeof welcome_30, 1010, 1);
        CHECK(feed(bad[i], sizes[i], 1020, 1) == HERALD_EVENT_DISCONNECT);
        if (ev.reason != HERALD_REASON_PROTOCOL) fprintf(stderr, "case %zu: reason %d\n", i, (int)ev.reason);
        CHECK(ev.reason == HERALD_REASON_PROTOCOL && ev.reconnect);
    }
    /* A frame before WELCOME other than ERROR. */
    connect_client("dev", 1);
    CHECK(feed((const uint8_t *)"\0\0\0\1\3", 5, 1010, 1) == HERALD_EVENT_DISCONNECT && ev.reason == HERALD_REASON_PROTOCOL);
}

static void test_errors_goaway_and_the_backoff(void) {
    static const uint8_t error_401[] = {0, 0, 0, 9, 7, 1, 0x91, 0, 4, 'n', 'o', 'p', 'e'};
    static const uint8_t error_503[] = {0, 0, 0, 5, 7, 1, 0xf7, 0, 0};
    static const uint8_t goaway[] = {0, 0, 0, 7, 8, 0, 0, 0x0b, 0xb8, 0, 0};
    uint32_t ceilings[] = {500, 1000, 2000, 4000, 8000, 16000, 30000, 30000};
    size_t i;
    connect_client("dev", 1);
    CHECK(feed(error_401, sizeof error_401, 1010, 1) == HERALD_EVENT_DISCONNECT);
    CHECK(ev.reason == HERALD_REASON_SERVER_ERROR && ev.error_code == 401 && ev.fatal && !ev.reconnect && strcmp(ev.text, "nope") == 0);
    connect_client("dev", 7);
    feed(welcome_30, sizeof welcome_30, 1010, 1);
    CHECK(feed(goaway, sizeof goaway, 1020, 1) == HERALD_EVENT_DISCONNECT);
    CHECK(ev.reason == HERALD_REASON_GOAWAY && ev.retry_in_ms == 3000 && ev.reconnect && herald_server_index(&c) == 1);
    /* Failures in a row: each delay is below its ceiling, which doubles up to the maximum. */
    for (i = 0; i < sizeof ceilings / sizeof ceilings[0]; i++) {
        herald_start(&c, 2000);
        feed(error_503, sizeof error_503, 2010, 1);
        CHECK(ev.type == HERALD_EVENT_DISCONNECT && !ev.fatal && ev.retry_in_ms < ceilings[i]);
    }
    /* A connection that lived stable_after (60 s) starts the count again. */
    herald_start(&c, 100000);
    feed(welcome_30, sizeof welcome_30, 100000, 1);
    herald_closed(&c, 160000, HERALD_REASON_IO, &ev);
    CHECK(ev.connected_ms == 60000 && ev.retry_in_ms < 500);
}

static void test_the_output_never_overflows(void) {
    uint8_t in[300];
    size_t n, i;
    char id[8];
    connect_client("dev", 1);
    feed(welcome_30, sizeof welcome_30, 1010, 1);
    /* The transport takes nothing: the core stops reading once an ACK might not fit. */
    for (i = 0; i < 100; i++) {
        sprintf(id, "m%zu", i);
        n = push(in, id, "x");
        if (herald_receive(&c, in, n, 1020, &ev) == 0) break;
        if (ev.type == HERALD_EVENT_PUSH) herald_ack(&c, &ev);
    }
    CHECK(i < 100);
    CHECK(c.tx_len <= HERALD_TX_CAPACITY);
}

int main(void) {
    test_hello_and_welcome();
    test_invalid_configuration();
    test_push_is_acked_only_when_the_application_says();
    test_duplicates_are_acked_not_handed_over_again_across_reconnects();
    test_one_byte_at_a_time();
    test_ping_pong_and_silence();
    test_no_welcome_in_time();
    test_bad_frames_are_protocol_errors();
    test_errors_goaway_and_the_backoff();
    test_the_output_never_overflows();
    printf("test_core: %s (%d failures); sizeof(herald_client) = %zu bytes\n", failures ? "FAILED" : "ok", failures, sizeof(herald_client));
    return failures ? 1 : 0;
}
