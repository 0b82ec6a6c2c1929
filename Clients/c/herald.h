/*
 * Herald device client core: the device protocol (version 1) as a sans-IO state machine.
 *
 * C99, no heap, no I/O, no clock of its own: the caller feeds received bytes and the time in
 * milliseconds, and gets back events and the bytes to send. Every buffer is inside
 * `herald_client` and sized at compile time (define the HERALD_* sizes below before including
 * this header, the same in every file, to change them). herald_posix.c is a socket loop on
 * top of it (the example and the test driver).
 *
 *   herald_init(&c, &config);
 *   on connect:   herald_start(&c, now)            -> HELLO queued
 *   on bytes:     n = herald_receive(&c, p, len, now, &ev)   (loop: it takes one frame at a time)
 *   every tick:   herald_tick(&c, now, &ev)       -> PINGs, silence, the WELCOME deadline
 *   to send:      len = herald_output(&c, &p); write; herald_sent(&c, written)
 *   PUSH event:   handle it, then herald_ack(&c, &ev) (nothing acked means redelivery)
 *   on EOF/error: herald_closed(&c, now, HERALD_REASON_IO, &ev)
 *   DISCONNECT:   close the transport; if ev.reconnect, wait ev.retry_in_ms and connect to
 *                 server number herald_server_index(&c) of your list
 */
#ifndef HERALD_H
#define HERALD_H

#include <stddef.h>
#include <stdint.h>

/* The largest frame accepted from the server (the server's own default is 65536). */
#ifndef HERALD_MAX_FRAME
#define HERALD_MAX_FRAME 4096
#endif
/* Outgoing bytes held until the transport takes them (HELLO, ACKs, PING, PONG). */
#ifndef HERALD_TX_CAPACITY
#define HERALD_TX_CAPACITY 512
#endif
/* Message ids remembered to suppress duplicates across reconnects. */
#ifndef HERALD_DEDUP_IDS
#define HERALD_DEDUP_IDS 16
#endif

#define HERALD_MAX_CLIENT_ID 128
#define HERALD_MAX_MSG_ID 64

typedef enum {
    HERALD_EVENT_NONE = 0,
    HERALD_EVENT_CONNECTED,  /* WELCOME: heartbeat_s, node_id */
    HERALD_EVENT_PUSH,       /* msg_id, payload: valid until the next herald_receive call */
    HERALD_EVENT_DISCONNECT  /* reason (and error_code, goaway), reconnect, retry_in_ms */
} herald_event_type;

typedef enum {
    HERALD_REASON_NONE = 0,
    HERALD_REASON_SERVER_ERROR, /* the server sent ERROR error_code (text in `text`) */
    HERALD_REASON_GOAWAY,       /* the server is draining; retry_in_ms is its reconnect_after_ms */
    HERALD_REASON_SILENT,       /* nothing from the server for two heartbeats */
    HERALD_REASON_PROTOCOL,     /* a malformed or oversized frame (what, in `text`) */
    HERALD_REASON_NO_WELCOME,   /* no WELCOME within connect_timeout_ms */
    HERALD_REASON_IO,           /* the transport ended or failed (herald_closed) */
    HERALD_REASON_APPLICATION   /* the application closed it, or its handler failed */
} herald_reason;

typedef struct {
    herald_event_type type;
    /* CONNECTED */
    uint16_t heartbeat_s;
    const char *node_id;
    size_t node_id_len;
    /* PUSH */
    const char *msg_id;
    size_t msg_id_len;
    const uint8_t *payload;
    size_t payload_len;
    /* DISCONNECT */
    herald_reason reason;
    uint16_t error_code;    /* with HERALD_REASON_SERVER_ERROR */
    const char *text;       /* the server's reason, or what was wrong; NUL-terminated */
    int fatal;              /* ERROR 401 or 409: the client does not reconnect by itself */
    int reconnect;          /* whether to connect again (to herald_server_index) */
    uint32_t retry_in_ms;   /* after how long */
    uint32_t connected_ms;  /* how long the connection was up after WELCOME (0: never) */
} herald_event;

typedef struct {
    const char *client_id;        /* 1 to 128 bytes of [A-Za-z0-9._:@-] */
    const char *token;            /* "" when the server needs none */
    uint16_t heartbeat_s;         /* asked for; 0: the server's default */
    uint32_t connect_timeout_ms;  /* from herald_start to WELCOME; 0: 10000 */
    uint32_t backoff_base_ms;     /* 0: 500 */
    uint32_t backoff_max_ms;      /* 0: 30000 */
    uint32_t stable_after_ms;     /* a connection this long resets the backoff; 0: 60000 */
    int reconnect_after_fatal;    /* reconnect even after ERROR 401 or 409 */
    uint32_t seed;                /* for the backoff's jitter: give each device its own */
} herald_config;

typedef enum { HERALD_IDLE = 0, HERALD_HELLO_SENT, HERALD_CONNECTED, HERALD_DISCONNECTED } herald_state;

typedef struct {
    herald_config config;
    herald_state state;
    uint64_t started_ms, connected_ms, last_received_ms, last_ping_ms;
    uint16_t heartbeat_s;
    uint32_t frame_length; /* of the frame being read; 0 while its length is */
    size_t rx_len;
    uint8_t rx[HERALD_MAX_FRAME > 4 ? HERALD_MAX_FRAME : 4];
    size_t tx_len;
    uint8_t tx[HERALD_TX_CAPACITY];
    char seen[HERALD_DEDUP_IDS][HERALD_MAX_MSG_ID];
    uint8_t seen_len[HERALD_DEDUP_IDS];
    unsigned seen_next;
    unsigned attempt;
    unsigned server_index;
    uint32_t random;
    int push_unacked; /* a PUSH event is out and not acknowledged yet */
    char text[96];
} herald_client;

/* Returns 0, or -1 when the configuration is invalid (a bad client id, a HELLO that cannot fit). */
int herald_init(herald_client *c, const herald_config *config);
/* The transport is connected: queues HELLO and starts the WELCOME deadline. */
void herald_start(herald_client *c, uint64_t now_ms);
/* Consumes bytes up to the end of one frame; returns how many (0 while an event or the
 * output must be handled first: call herald_output/herald_sent, herald_ack, then again). */
size_t herald_receive(herald_client *c, const uint8_t *data, size_t len, uint64_t now_ms, herald_event *event);
/* Timers: PING every half heartbeat, silence, the WELCOME deadline. */
void herald_tick(herald_client *c, uint64_t now_ms, herald_event *event);
/* Acknowledges the PUSH of `event` (after the application handled it). */
void herald_ack(herald_client *c, const herald_event *event);
/* The transport ended (reason HERALD_REASON_IO) or the application ends it (APPLICATION). */
void herald_closed(herald_client *c, uint64_t now_ms, herald_reason reason, herald_event *event);
/* Bytes waiting to be sent, and how many the transport took. */
size_t herald_output(const herald_client *c, const uint8_t **data);
void herald_sent(herald_client *c, size_t count);
/* Which server to connect to next (count modulo the length of your list). */
unsigned herald_server_index(const herald_client *c);
/* Milliseconds until herald_tick has something to do (for poll's timeout). */
uint32_t herald_next_tick_ms(const herald_client *c, uint64_t now_ms);

#endif
