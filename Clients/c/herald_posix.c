/* A POSIX socket loop around the herald.h core (herald_posix.h). */
#define _POSIX_C_SOURCE 200809L
#include "herald_posix.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

/* A non-blocking TCP connection to host:port within timeout_ms; the fd, or -1. */
static int tcp_connect(const char *host, const char *port, int timeout_ms, char *error, size_t error_size) {
    struct addrinfo hints, *found = NULL, *at;
    int fd = -1, status;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if ((status = getaddrinfo(host, port, &hints, &found)) != 0) {
        snprintf(error, error_size, "cannot resolve %s: %s", host, gai_strerror(status));
        return -1;
    }
    snprintf(error, error_size, "cannot connect to %s:%s", host, port);
    for (at = found; at; at = at->ai_next) {
        struct pollfd p;
        int one = 1, failure = 0;
        socklen_t size = sizeof failure;
        fd = socket(at->ai_family, at->ai_socktype, at->ai_protocol);
        if (fd < 0) continue;
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        if (connect(fd, at->ai_addr, at->ai_addrlen) == 0 ||
            (errno == EINPROGRESS && (p.fd = fd, p.events = POLLOUT, poll(&p, 1, timeout_ms) == 1) &&
             getsockopt(fd, SOL_SOCKET, SO_ERROR, &failure, &size) == 0 && failure == 0)) {
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            break;
        }
        snprintf(error, error_size, "cannot connect to %s:%s: %s", host, port, strerror(failure ? failure : errno));
        close(fd);
        fd = -1;
    }
    freeaddrinfo(found);
    return fd;
}

/* --- plain TCP --- */

static int tcp_open(void *context, const char *host, const char *port, int timeout_ms, char *error, size_t error_size) {
    herald_tcp *tcp = context;
    tcp->fd = tcp_connect(host, port, timeout_ms, error, error_size);
    return tcp->fd < 0 ? -1 : 0;
}

static long tcp_send(void *context, const uint8_t *data, size_t length) {
    ssize_t n = send(((herald_tcp *)context)->fd, data, length, MSG_NOSIGNAL);
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? HERALD_WOULD_BLOCK : -1;
    return (long)n;
}

static long tcp_recv(void *context, uint8_t *data, size_t length) {
    ssize_t n = recv(((herald_tcp *)context)->fd, data, length, 0);
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? HERALD_WOULD_BLOCK : -1;
    return (long)n;
}

static int tcp_fd(void *context) { return ((herald_tcp *)context)->fd; }

static size_t tcp_pending(void *context) {
    (void)context;
    return 0;
}

static void tcp_close(void *context) {
    herald_tcp *tcp = context;
    if (tcp->fd >= 0) close(tcp->fd);
    tcp->fd = -1;
}

void herald_tcp_transport(herald_tcp *tcp, herald_transport *transport) {
    tcp->fd = -1;
    transport->context = tcp;
    transport->open = tcp_open;
    transport->send = tcp_send;
    transport->recv = tcp_recv;
    transport->fd = tcp_fd;
    transport->pending = tcp_pending;
    transport->close = tcp_close;
}

/* --- mbedTLS --- */

#ifdef HERALD_WITH_MBEDTLS
#include <mbedtls/error.h>

static int tls_open(void *context, const char *host, const char *port, int timeout_ms, char *error, size_t error_size) {
    herald_mbedtls *tls = context;
    uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
    int status, fd = tcp_connect(host, port, timeout_ms, error, error_size);
    if (fd < 0) return -1;
    mbedtls_net_init(&tls->net);
    tls->net.fd = fd;
    mbedtls_ssl_init(&tls->ssl);
    tls->open = 1;
    if ((status = mbedtls_ssl_setup(&tls->ssl, &tls->config)) != 0 ||
        (status = mbedtls_ssl_set_hostname(&tls->ssl, tls->server_name ? tls->server_name : host)) != 0) {
        snprintf(error, error_size, "TLS setup failed (-0x%04x)", (unsigned)-status);
        return -1;
    }
    mbedtls_ssl_set_bio(&tls->ssl, &tls->net, mbedtls_net_send, mbedtls_net_recv, NULL);
    while ((status = mbedtls_ssl_handshake(&tls->ssl)) != 0) {
        struct pollfd p;
        uint64_t now = now_ms();
        if ((status != MBEDTLS_ERR_SSL_WANT_READ && status != MBEDTLS_ERR_SSL_WANT_WRITE) || now >= deadline) {
            char text[100];
            mbedtls_strerror(status, text, sizeof text);
            snprintf(error, error_size, "TLS handshake failed: %s", now >= deadline ? "timed out" : text);
            return -1;
        }
        p.fd = fd;
        p.events = status == MBEDTLS_ERR_SSL_WANT_READ ? POLLIN : POLLOUT;
        poll(&p, 1, (int)(deadline - now));
    }
    return 0;
}

static long tls_send(void *context, const uint8_t *data, size_t length) {
    int n = mbedtls_ssl_write(&((herald_mbedtls *)context)->ssl, data, length);
    if (n == MBEDTLS_ERR_SSL_WANT_READ || n == MBEDTLS_ERR_SSL_WANT_WRITE) return HERALD_WOULD_BLOCK;
    return n < 0 ? -1 : n;
}

static long tls_recv(void *context, uint8_t *data, size_t length) {
    int n = mbedtls_ssl_read(&((herald_mbedtls *)context)->ssl, data, length);
    if (n == MBEDTLS_ERR_SSL_WANT_READ || n == MBEDTLS_ERR_SSL_WANT_WRITE) return HERALD_WOULD_BLOCK;
    if (n == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) return 0;
    return n < 0 ? -1 : n;
}

static int tls_fd(void *context) { return ((herald_mbedtls *)context)->net.fd; }

static size_t tls_pending(void *context) { return mbedtls_ssl_get_bytes_avail(&((herald_mbedtls *)context)->ssl); }

static void tls_close(void *context) {
    herald_mbedtls *tls = context;
    if (!tls->open) return;
    mbedtls_ssl_close_notify(&tls->ssl);
    mbedtls_ssl_free(&tls->ssl);
    mbedtls_net_free(&tls->net);
    tls->open = 0;
}

int herald_mbedtls_transport(herald_mbedtls *tls, const char *ca_file, const char *server_name, herald_transport *transport) {
    memset(tls, 0, sizeof *tls);
    tls->server_name = server_name;
    mbedtls_ssl_config_init(&tls->config);
    mbedtls_x509_crt_init(&tls->ca);
    mbedtls_entropy_init(&tls->entropy);
    mbedtls_ctr_drbg_init(&tls->drbg);
    if (mbedtls_ctr_drbg_seed(&tls->drbg, mbedtls_entropy_func, &tls->entropy, (const unsigned char *)"herald", 6) != 0 ||
        mbedtls_x509_crt_parse_file(&tls->ca, ca_file) != 0 ||
        mbedtls_ssl_config_defaults(&tls->config, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT) != 0)
        return -1;
    mbedtls_ssl_conf_authmode(&tls->config, MBEDTLS_SSL_VERIFY_REQUIRED);
    mbedtls_ssl_conf_ca_chain(&tls->config, &tls->ca, NULL);
    mbedtls_ssl_conf_rng(&tls->config, mbedtls_ctr_drbg_random, &tls->drbg);
    transport->context = tls;
    transport->open = tls_open;
    transport->send = tls_send;
    transport->recv = tls_recv;
    transport->fd = tls_fd;
    transport->pending = tls_pending;
    transport->close = tls_close;
    return 0;
}

void herald_mbedtls_free(herald_mbedtls *tls) {
    tls_close(tls);
    mbedtls_x509_crt_free(&tls->ca);
    mbedtls_ssl_config_free(&tls->config);
    mbedtls_ctr_drbg_free(&tls->drbg);
    mbedtls_entropy_free(&tls->entropy);
}
#endif

/* --- the loop --- */

/* Sends what the core has queued, as far as the transport takes it; -1 on failure. */
static int flush(herald_client *client, herald_transport *transport) {
    const uint8_t *data;
    size_t length;
    while ((length = herald_output(client, &data)) > 0) {
        long n = transport->send(transport->context, data, length);
        if (n == HERALD_WOULD_BLOCK) return 0;
        if (n <= 0) return -1;
        herald_sent(client, (size_t)n);
    }
    return 0;
}

/* Waits until `ms` have passed or *stop is set. */
static void pause_ms(uint32_t ms, volatile int *stop) {
    uint64_t until = now_ms() + ms;
    while (!*stop && now_ms() < until) {
        uint64_t left = until - now_ms();
        struct timespec t;
        if (left > 100) left = 100;
        t.tv_sec = 0;
        t.tv_nsec = (long)left * 1000000L;
        nanosleep(&t, NULL);
    }
}

int herald_posix_run(herald_client *client, const herald_posix_loop *loop) {
    herald_transport *transport = loop->transport;
    herald_event event;
    uint8_t buffer[512];
    while (!*loop->stop) {
        const char *server = loop->servers[herald_server_index(client) % loop->server_count];
        char host[256], port[16], error[160];
        const char *colon = strrchr(server, ':');
        size_t at = 0, got = 0;
        int stalled = 0; /* the core took nothing: its output is full, wait until the socket drains */
        if (!colon || (size_t)(colon - server) >= sizeof host || strlen(colon + 1) >= sizeof port) return -1;
        memcpy(host, server, (size_t)(colon - server));
        host[colon - server] = '\0';
        strcpy(port, colon + 1);
        event.type = HERALD_EVENT_NONE;
        herald_start(client, now_ms());
        if (transport->open(transport->context, host, port, (int)client->config.connect_timeout_ms, error, sizeof error) != 0) {
            transport->close(transport->context);
            herald_closed(client, now_ms(), HERALD_REASON_IO, &event);
            strncpy(client->text, error, sizeof client->text - 1);
        }
        while (client->state == HERALD_HELLO_SENT || client->state == HERALD_CONNECTED) {
            struct pollfd p;
            event.type = HERALD_EVENT_NONE;
            if (*loop->stop) {
                (void)flush(client, transport); /* the ACKs already queued go out */
                herald_closed(client, now_ms(), HERALD_REASON_APPLICATION, &event);
                break;
            }
            if (flush(client, transport) != 0) {
                herald_closed(client, now_ms(), HERALD_REASON_IO, &event);
                break;
            }
            if (stalled || (at == got && transport->pending(transport->context) == 0)) {
                const uint8_t *unused;
                p.fd = transport->fd(transport->context);
                p.events = (stalled ? 0 : POLLIN) | (herald_output(client, &unused) ? POLLOUT : 0);
                p.revents = 0;
                {
                    uint32_t wait = herald_next_tick_ms(client, now_ms());
                    poll(&p, 1, wait > 100 ? 100 : (int)wait); /* at most 100 ms: *stop is looked at */
                }
                herald_tick(client, now_ms(), &event);
                if (event.type != HERALD_EVENT_NONE) break;
                if (stalled) {
                    stalled = 0;
                    continue; /* flush at the top, then offer the bytes again */
                }
                if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) continue;
            }
            if (at == got) {
                long n = transport->recv(transport->context, buffer, sizeof buffer);
                if (n == HERALD_WOULD_BLOCK) continue;
                if (n <= 0) {
                    herald_closed(client, now_ms(), HERALD_REASON_IO, &event);
                    break;
                }
                at = 0;
                got = (size_t)n;
            }
            {
                size_t used = herald_receive(client, buffer + at, got - at, now_ms(), &event);
                at += used;
                stalled = used == 0 && event.type == HERALD_EVENT_NONE;
            }
            if (event.type == HERALD_EVENT_PUSH) {
                if (loop->on_push(loop->user, &event) == 0) {
                    herald_ack(client, &event);
                } else {
                    herald_closed(client, now_ms(), HERALD_REASON_APPLICATION, &event);
                    strncpy(client->text, "the push handler failed", sizeof client->text - 1);
                    break;
                }
            } else if (event.type == HERALD_EVENT_CONNECTED && loop->on_event) {
                loop->on_event(loop->user, &event);
            } else if (event.type == HERALD_EVENT_DISCONNECT) {
                break;
            }
        }
        if (event.type == HERALD_EVENT_DISCONNECT) {
            transport->close(transport->context);
            if (loop->on_event) loop->on_event(loop->user, &event);
            if (!event.reconnect) return 1;
            pause_ms(event.retry_in_ms, loop->stop);
        } else {
            transport->close(transport->context);
        }
    }
    return 0;
}
