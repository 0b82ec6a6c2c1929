/*
 * A POSIX socket loop around the herald.h core: the example and the test driver. The bytes go
 * through a transport hook (herald_transport), so the platform's TLS plugs in: plain TCP here,
 * and mbedTLS (what ESP-IDF ships) when built with HERALD_WITH_MBEDTLS.
 */
#ifndef HERALD_POSIX_H
#define HERALD_POSIX_H

#include "herald.h"

#define HERALD_WOULD_BLOCK (-2)

/* How bytes reach the server. Every call returns at once (the loop polls `fd`). */
typedef struct herald_transport {
    void *context;
    /* Connects (blocking, at most timeout_ms, TLS handshake included); 0, or -1 with `error` set. */
    int (*open)(void *context, const char *host, const char *port, int timeout_ms, char *error, size_t error_size);
    /* Bytes written or read; 0 from recv is the end; -1 a failure; HERALD_WOULD_BLOCK. */
    long (*send)(void *context, const uint8_t *data, size_t length);
    long (*recv)(void *context, uint8_t *data, size_t length);
    int (*fd)(void *context);
    /* Bytes already received and decrypted, waiting inside the transport (poll cannot see them). */
    size_t (*pending)(void *context);
    void (*close)(void *context);
} herald_transport;

typedef struct {
    int fd;
} herald_tcp;

void herald_tcp_transport(herald_tcp *tcp, herald_transport *transport);

#ifdef HERALD_WITH_MBEDTLS
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

typedef struct {
    mbedtls_net_context net;
    mbedtls_ssl_context ssl;
    mbedtls_ssl_config config;
    mbedtls_x509_crt ca;
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    const char *server_name; /* checked against the certificate; NULL: the host connected to */
    int open;
} herald_mbedtls;

/* TLS trusting the CA certificates in `ca_file` (PEM); 0, or -1 when they cannot be read. */
int herald_mbedtls_transport(herald_mbedtls *tls, const char *ca_file, const char *server_name, herald_transport *transport);
void herald_mbedtls_free(herald_mbedtls *tls);
#endif

typedef struct {
    const char *const *servers; /* "host:port" each */
    size_t server_count;
    herald_transport *transport;
    /* A PUSH: return 0 once it is handled (then it is acknowledged); anything else drops the
     * connection without the ACK, and the server sends it again on the next one. */
    int (*on_push)(void *user, const herald_event *push);
    /* CONNECTED and DISCONNECT events (may be NULL). */
    void (*on_event)(void *user, const herald_event *event);
    void *user;
    volatile int *stop; /* set it (a signal handler may) to end the loop */
} herald_posix_loop;

/* Runs until *stop, or a disconnect that must not be retried (ERROR 401 or 409): returns 0
 * after a stop, 1 after a fatal disconnect. */
int herald_posix_run(herald_client *client, const herald_posix_loop *loop);

#endif
