/*
 * herald-example: a device on the POSIX loop, printing what happens, one line each.
 *   herald-example [--tls CA_FILE] [--server-name NAME] [--token T] [--heartbeat S] [--count N]
 *                  CLIENT_ID HOST:PORT [HOST:PORT ...]
 * Exits 0 after N pushes (--count; 0: until SIGINT or SIGTERM), 3 after ERROR 401 or 409.
 */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "herald_posix.h"

static volatile int stop_flag;
static long count, received;

static void on_signal(int number) {
    (void)number;
    stop_flag = 1;
}

static int on_push(void *user, const herald_event *push) {
    (void)user;
    printf("PUSH %.*s %.*s\n", (int)push->msg_id_len, push->msg_id, (int)push->payload_len, (const char *)push->payload);
    fflush(stdout);
    if (count > 0 && ++received >= count) stop_flag = 1;
    return 0;
}

static void on_event(void *user, const herald_event *event) {
    (void)user;
    if (event->type == HERALD_EVENT_CONNECTED) {
        printf("CONNECTED %.*s %u\n", (int)event->node_id_len, event->node_id, event->heartbeat_s);
    } else if (event->type == HERALD_EVENT_DISCONNECT) {
        printf("DISCONNECT reason=%d code=%u fatal=%d reconnect=%d retry_ms=%lu text=%s\n", (int)event->reason, event->error_code,
               event->fatal, event->reconnect, (unsigned long)event->retry_in_ms, event->text);
    }
    fflush(stdout);
}

int main(int argc, char **argv) {
    static herald_client client; /* static: its buffers need not fit a small stack */
    herald_config config;
    herald_transport transport;
    herald_tcp tcp;
    herald_posix_loop loop;
    const char *ca_file = NULL, *server_name = NULL;
    int i = 1, status;
#ifdef HERALD_WITH_MBEDTLS
    herald_mbedtls tls;
#endif
    memset(&config, 0, sizeof config);
    config.token = "";
    config.seed = (uint32_t)getpid() * 2654435761u ^ (uint32_t)time(NULL); /* each device its own jitter */
    for (; i < argc && strncmp(argv[i], "--", 2) == 0 && i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--tls") == 0) ca_file = argv[i + 1];
        else if (strcmp(argv[i], "--server-name") == 0) server_name = argv[i + 1];
        else if (strcmp(argv[i], "--token") == 0) config.token = argv[i + 1];
        else if (strcmp(argv[i], "--heartbeat") == 0) config.heartbeat_s = (uint16_t)atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--count") == 0) count = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--backoff-ms") == 0) config.backoff_base_ms = config.backoff_max_ms = (uint32_t)atol(argv[i + 1]);
        else break;
    }
    if (argc - i < 2) {
        fprintf(stderr, "usage: %s [--tls CA_FILE] [--server-name NAME] [--token T] [--heartbeat S] [--count N] CLIENT_ID HOST:PORT...\n", argv[0]);
        return 2;
    }
    config.client_id = argv[i];
    if (herald_init(&client, &config) != 0) {
        fprintf(stderr, "invalid client id or token\n");
        return 2;
    }
    if (ca_file) {
#ifdef HERALD_WITH_MBEDTLS
        if (herald_mbedtls_transport(&tls, ca_file, server_name, &transport) != 0) {
            fprintf(stderr, "cannot read %s\n", ca_file);
            return 2;
        }
#else
        fprintf(stderr, "built without TLS (HERALD_WITH_MBEDTLS)\n");
        return 2;
#endif
    } else {
        herald_tcp_transport(&tcp, &transport);
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    loop.servers = (const char *const *)(argv + i + 1);
    loop.server_count = (size_t)(argc - i - 1);
    loop.transport = &transport;
    loop.on_push = on_push;
    loop.on_event = on_event;
    loop.user = NULL;
    loop.stop = &stop_flag;
    status = herald_posix_run(&client, &loop);
#ifdef HERALD_WITH_MBEDTLS
    if (ca_file) herald_mbedtls_free(&tls);
#endif
    (void)server_name;
    return status == 1 ? 3 : status < 0 ? 2 : 0;
}
