/* libFuzzer target: any bytes from a server, cut anywhere, with time passing, never crash the
 * core, never overflow its output, and every event it reports is well formed. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../herald.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static herald_client c;
    herald_config config;
    herald_event ev;
    uint64_t now = 1000;
    size_t at = 0;
    memset(&config, 0, sizeof config);
    config.client_id = "fuzz";
    config.token = "t";
    config.seed = 1;
    if (herald_init(&c, &config) != 0) abort();
    herald_start(&c, now);
    while (at < size) {
        /* The first byte of each step: how many bytes arrive (1-64) and whether time passes. */
        uint8_t step = data[at++];
        size_t chunk = (size_t)(step & 63) + 1, used;
        const uint8_t *out;
        if (chunk > size - at) chunk = size - at;
        if (step & 64) {
            now += (uint64_t)(step & 63) * 1000u;
            herald_tick(&c, now, &ev);
        }
        used = herald_receive(&c, data + at, chunk, now, &ev);
        if (used > chunk) abort();
        at += used ? used : chunk;
        if (ev.type == HERALD_EVENT_PUSH) {
            if (ev.msg_id_len < 1 || ev.msg_id_len > HERALD_MAX_MSG_ID || ev.payload_len > HERALD_MAX_FRAME) abort();
            if (step & 128) herald_ack(&c, &ev);
            else herald_closed(&c, now, HERALD_REASON_APPLICATION, &ev);
        }
        if (ev.type == HERALD_EVENT_DISCONNECT) {
            if (ev.text == NULL || strlen(ev.text) >= sizeof c.text) abort();
            herald_start(&c, now);
        }
        if (herald_output(&c, &out) > HERALD_TX_CAPACITY) abort();
        if (step & 32) herald_sent(&c, herald_output(&c, &out));
    }
    return 0;
}
