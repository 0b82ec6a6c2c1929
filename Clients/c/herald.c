/* Herald device client core (herald.h): the protocol as a state machine, no heap, no I/O. */
#include "herald.h"

#include <string.h>

enum { HELLO = 1, WELCOME, PING, PONG, PUSH, ACK, ERROR, GOAWAY };

/* Room kept in the output before a frame is read: an ACK of the longest id, and a PONG. */
#define HERALD_TX_RESERVE (4 + 1 + 2 + HERALD_MAX_MSG_ID + 5)

#if HERALD_TX_CAPACITY < HERALD_TX_RESERVE + 5
#error "HERALD_TX_CAPACITY is too small for an ACK, a PONG and a PING"
#endif

static uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static uint16_t be16(const uint8_t *p) { return (uint16_t)(((unsigned)p[0] << 8) | p[1]); }

static int valid_client_id(const char *id) {
    size_t n = id ? strlen(id) : 0, i;
    if (n < 1 || n > HERALD_MAX_CLIENT_ID) return 0;
    for (i = 0; i < n; i++) {
        char ch = id[i];
        int ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' ||
                 ch == ':' || ch == '@' || ch == '-';
        if (!ok) return 0;
    }
    return 1;
}

/* Appends a frame of `type` whose body is the concatenation of `parts`; 0 when it does not fit. */
static int put(herald_client *c, uint8_t type, const uint8_t *const *parts, const size_t *lengths, size_t count) {
    size_t body = 0, i;
    uint8_t *p;
    for (i = 0; i < count; i++) body += lengths[i];
    if (c->tx_len + 5 + body > sizeof c->tx) return 0;
    p = c->tx + c->tx_len;
    p[0] = (uint8_t)((body + 1) >> 24);
    p[1] = (uint8_t)((body + 1) >> 16);
    p[2] = (uint8_t)((body + 1) >> 8);
    p[3] = (uint8_t)(body + 1);
    p[4] = type;
    p += 5;
    for (i = 0; i < count; i++) {
        if (lengths[i]) memcpy(p, parts[i], lengths[i]);
        p += lengths[i];
    }
    c->tx_len += 5 + body;
    return 1;
}

static int put_empty(herald_client *c, uint8_t type) { return put(c, type, NULL, NULL, 0); }

static int put_ack(herald_client *c, const char *id, size_t n) {
    uint8_t length[2];
    const uint8_t *parts[2];
    size_t lengths[2];
    length[0] = (uint8_t)(n >> 8);
    length[1] = (uint8_t)n;
    parts[0] = length;
    lengths[0] = 2;
    parts[1] = (const uint8_t *)id;
    lengths[1] = n;
    return put(c, ACK, parts, lengths, 2);
}

static uint32_t next_random(herald_client *c) {
    /* xorshift32: enough to spread reconnects; seeded per device by the application. */
    uint32_t x = c->random;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    c->random = x;
    return x;
}

static void set_text(herald_client *c, const uint8_t *text, size_t n) {
    if (n > sizeof c->text - 1) n = sizeof c->text - 1;
    if (n) memcpy(c->text, text, n);
    c->text[n] = '\0';
}

static void clear(herald_event *event) {
    memset(event, 0, sizeof *event);
    event->type = HERALD_EVENT_NONE;
}

/* Ends the connection with `reason`; fills the DISCONNECT event with what to do next. */
static void disconnect(herald_client *c, uint64_t now, herald_reason reason, uint16_t code, uint32_t goaway_ms, herald_event *event) {
    uint32_t lived = c->state == HERALD_CONNECTED ? (uint32_t)(now - c->connected_ms) : 0;
    clear(event);
    event->type = HERALD_EVENT_DISCONNECT;
    event->reason = reason;
    event->error_code = code;
    event->text = c->text;
    event->connected_ms = lived;
    event->fatal = reason == HERALD_REASON_SERVER_ERROR && (code == 401 || code == 409);
    event->reconnect = !event->fatal || c->config.reconnect_after_fatal;
    if (c->state == HERALD_CONNECTED && lived >= c->config.stable_after_ms) c->attempt = 0;
    if (reason == HERALD_REASON_GOAWAY) {
        event->retry_in_ms = goaway_ms;
    } else {
        uint32_t ceiling = c->config.backoff_max_ms;
        if (c->attempt < 31 && ((uint64_t)c->config.backoff_base_ms << c->attempt) < ceiling)
            ceiling = (uint32_t)((uint64_t)c->config.backoff_base_ms << c->attempt);
        event->retry_in_ms = (uint32_t)(((uint64_t)next_random(c) * ceiling) >> 32); /* full jitter: [0, ceiling) */
        if (c->attempt < 31) c->attempt++;
    }
    c->server_index++;
    c->state = HERALD_DISCONNECTED;
    c->tx_len = 0;
    c->rx_len = 0;
    c->frame_length = 0;
    c->push_unacked = 0;
}

static void protocol_error(herald_client *c, uint64_t now, const char *what, herald_event *event) {
    set_text(c, (const uint8_t *)what, strlen(what));
    disconnect(c, now, HERALD_REASON_PROTOCOL, 0, 0, event);
}

int herald_init(herald_client *c, const herald_config *config) {
    size_t token = config->token ? strlen(config->token) : 0;
    memset(c, 0, sizeof *c);
    if (!valid_client_id(config->client_id) || token > 0xFFFF) return -1;
    if (5 + 1 + 2 + strlen(config->client_id) + 2 + token + 2 > HERALD_TX_CAPACITY) return -1;
    c->config = *config;
    if (!c->config.token) c->config.token = "";
    if (!c->config.connect_timeout_ms) c->config.connect_timeout_ms = 10000;
    if (!c->config.backoff_base_ms) c->config.backoff_base_ms = 500;
    if (!c->config.backoff_max_ms) c->config.backoff_max_ms = 30000;
    if (!c->config.stable_after_ms) c->config.stable_after_ms = 60000;
    c->random = config->seed ? config->seed : 0x9e3779b9u;
    c->state = HERALD_IDLE;
    return 0;
}

void herald_start(herald_client *c, uint64_t now_ms) {
    uint8_t version = 1, id_length[2], token_length[2], heartbeat[2];
    size_t id = strlen(c->config.client_id), token = strlen(c->config.token);
    const uint8_t *parts[6];
    size_t lengths[6];
    id_length[0] = (uint8_t)(id >> 8);
    id_length[1] = (uint8_t)id;
    token_length[0] = (uint8_t)(token >> 8);
    token_length[1] = (uint8_t)token;
    heartbeat[0] = (uint8_t)(c->config.heartbeat_s >> 8);
    heartbeat[1] = (uint8_t)c->config.heartbeat_s;
    parts[0] = &version, lengths[0] = 1;
    parts[1] = id_length, lengths[1] = 2;
    parts[2] = (const uint8_t *)c->config.client_id, lengths[2] = id;
    parts[3] = token_length, lengths[3] = 2;
    parts[4] = (const uint8_t *)c->config.token, lengths[4] = token;
    parts[5] = heartbeat, lengths[5] = 2;
    c->tx_len = c->rx_len = 0;
    c->frame_length = 0;
    c->push_unacked = 0;
    c->heartbeat_s = 0;
    c->text[0] = '\0';
    (void)put(c, HELLO, parts, lengths, 6); /* fits: herald_init checked */
    c->state = HERALD_HELLO_SENT;
    c->started_ms = c->last_received_ms = now_ms;
}

/* A str field at *at within body[0..n): its bytes and length; 0 when it runs past the end. */
static int read_str(const uint8_t *body, size_t n, size_t *at, const uint8_t **text, size_t *length) {
    if (*at + 2 > n) return 0;
    *length = be16(body + *at);
    *at += 2;
    if (*at + *length > n) return 0;
    *text = body + *at;
    *at += *length;
    return 1;
}

static int seen(const herald_client *c, const uint8_t *id, size_t n) {
    unsigned i;
    for (i = 0; i < HERALD_DEDUP_IDS; i++)
        if (c->seen_len[i] == n && memcmp(c->seen[i], id, n) == 0) return 1;
    return 0;
}

/* Acts on the complete frame in rx[0..frame_length); what is wrong with it, or NULL. */
static const char *frame(herald_client *c, uint64_t now, herald_event *event) {
    const uint8_t *body = c->rx + 1, *text = NULL;
    size_t n = c->frame_length - 1, at = 0, length = 0, i;
    uint8_t type = c->rx[0];
    if (c->state == HERALD_HELLO_SENT && type != WELCOME && type != ERROR) return "a frame before WELCOME";
    switch (type) {
    case WELCOME:
        if (c->state != HERALD_HELLO_SENT) return "a second WELCOME";
        if (n < 2) return "WELCOME too short";
        at = 2;
        if (!read_str(body, n, &at, &text, &length) || at != n) return "malformed WELCOME";
        c->state = HERALD_CONNECTED;
        c->heartbeat_s = be16(body) ? be16(body) : 1;
        c->connected_ms = c->last_ping_ms = now;
        event->type = HERALD_EVENT_CONNECTED;
        event->heartbeat_s = be16(body);
        event->node_id = (const char *)text;
        event->node_id_len = length;
        return NULL;
    case PING:
        if (n != 0) return "malformed PING";
        (void)put_empty(c, PONG); /* room was kept before reading */
        return NULL;
    case PONG:
        if (n != 0) return "malformed PONG";
        return NULL;
    case PUSH:
        if (!read_str(body, n, &at, &text, &length) || length < 1 || length > HERALD_MAX_MSG_ID)
            return "malformed PUSH";
        for (i = 0; i < length; i++)
            if (text[i] < 0x20 || text[i] > 0x7e) return "PUSH msg_id not printable ASCII";
        if (seen(c, text, length)) {
            (void)put_ack(c, (const char *)text, length); /* handled before: acknowledge, do not hand over */
            return NULL;
        }
        event->type = HERALD_EVENT_PUSH;
        event->msg_id = (const char *)text;
        event->msg_id_len = length;
        event->payload = body + at;
        event->payload_len = n - at;
        c->push_unacked = 1;
        return NULL;
    case ERROR:
        if (n < 2) return "ERROR too short";
        at = 2;
        if (!read_str(body, n, &at, &text, &length) || at != n) return "malformed ERROR";
        set_text(c, text, length);
        disconnect(c, now, HERALD_REASON_SERVER_ERROR, be16(body), 0, event);
        return NULL;
    case GOAWAY:
        if (n < 4) return "GOAWAY too short";
        at = 4;
        if (!read_str(body, n, &at, &text, &length) || at != n) return "malformed GOAWAY";
        set_text(c, text, length);
        disconnect(c, now, HERALD_REASON_GOAWAY, 0, be32(body), event);
        return NULL;
    default:
        return "unknown or client-only frame type";
    }
}

size_t herald_receive(herald_client *c, const uint8_t *data, size_t len, uint64_t now_ms, herald_event *event) {
    size_t used = 0;
    clear(event);
    if (c->state != HERALD_HELLO_SENT && c->state != HERALD_CONNECTED) return len; /* not connected: dropped */
    if (c->push_unacked || sizeof c->tx - c->tx_len < HERALD_TX_RESERVE) return 0;
    if (len) c->last_received_ms = now_ms; /* any bytes count as life */
    while (used < len) {
        if (c->frame_length == 0) {
            c->rx[c->rx_len++] = data[used++];
            if (c->rx_len < 4) continue;
            c->frame_length = be32(c->rx);
            c->rx_len = 0;
            if (c->frame_length == 0) {
                protocol_error(c, now_ms, "frame of length 0", event);
                return used;
            }
            if (c->frame_length > sizeof c->rx) {
                protocol_error(c, now_ms, "frame above HERALD_MAX_FRAME", event);
                return used;
            }
        } else {
            size_t want = c->frame_length - c->rx_len, take = len - used < want ? len - used : want;
            memcpy(c->rx + c->rx_len, data + used, take);
            c->rx_len += take;
            used += take;
            if (c->rx_len == c->frame_length) {
                const char *wrong = frame(c, now_ms, event);
                if (wrong) protocol_error(c, now_ms, wrong, event);
                if (c->state == HERALD_DISCONNECTED) return used;
                c->rx_len = 0;
                c->frame_length = 0;
                return used; /* one frame per call: its event, and its data, stay valid */
            }
        }
    }
    return used;
}

void herald_ack(herald_client *c, const herald_event *event) {
    unsigned slot;
    if (event->type != HERALD_EVENT_PUSH || !c->push_unacked) return;
    slot = c->seen_next++ % HERALD_DEDUP_IDS;
    memcpy(c->seen[slot], event->msg_id, event->msg_id_len);
    c->seen_len[slot] = (uint8_t)event->msg_id_len;
    (void)put_ack(c, event->msg_id, event->msg_id_len); /* room was kept before reading */
    c->push_unacked = 0;
}

void herald_tick(herald_client *c, uint64_t now_ms, herald_event *event) {
    clear(event);
    if (c->state == HERALD_HELLO_SENT && now_ms - c->started_ms >= c->config.connect_timeout_ms) {
        set_text(c, (const uint8_t *)"no WELCOME in time", 18);
        disconnect(c, now_ms, HERALD_REASON_NO_WELCOME, 0, 0, event);
    } else if (c->state == HERALD_CONNECTED) {
        if (now_ms - c->last_received_ms >= 2000u * c->heartbeat_s) {
            set_text(c, (const uint8_t *)"the server was silent for two heartbeats", 40);
            disconnect(c, now_ms, HERALD_REASON_SILENT, 0, 0, event);
        } else if (now_ms - c->last_ping_ms >= 500u * c->heartbeat_s && put_empty(c, PING)) {
            c->last_ping_ms = now_ms;
        }
    }
}

void herald_closed(herald_client *c, uint64_t now_ms, herald_reason reason, herald_event *event) {
    clear(event);
    if (c->state == HERALD_DISCONNECTED || c->state == HERALD_IDLE) return;
    set_text(c, (const uint8_t *)(reason == HERALD_REASON_IO ? "the connection ended" : "closed by the application"),
             reason == HERALD_REASON_IO ? 20 : 25);
    disconnect(c, now_ms, reason, 0, 0, event);
}

size_t herald_output(const herald_client *c, const uint8_t **data) {
    *data = c->tx;
    return c->tx_len;
}

void herald_sent(herald_client *c, size_t count) {
    if (count > c->tx_len) count = c->tx_len;
    memmove(c->tx, c->tx + count, c->tx_len - count);
    c->tx_len -= count;
}

unsigned herald_server_index(const herald_client *c) { return c->server_index; }

uint32_t herald_next_tick_ms(const herald_client *c, uint64_t now_ms) {
    uint64_t due;
    if (c->state == HERALD_HELLO_SENT) {
        due = c->started_ms + c->config.connect_timeout_ms;
    } else if (c->state == HERALD_CONNECTED) {
        uint64_t silent = c->last_received_ms + 2000u * c->heartbeat_s, ping = c->last_ping_ms + 500u * c->heartbeat_s;
        due = silent < ping ? silent : ping;
    } else {
        return UINT32_MAX;
    }
    return due <= now_ms ? 0 : (uint32_t)(due - now_ms);
}
