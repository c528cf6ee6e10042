/* The client side of TLS, for connections we open to an upstream: an OpenSSL client wrapped
 * around an existing bufferevent (libevent's bufferevent_openssl does the TLS), with the
 * certificate checked against the system's CA bundle or a given file and the host name, and
 * SNI sent. It knows nothing of SMTP; the relay connection decides when to start it. */
#ifndef LUASMTPD_TLS_CLIENT_H
#define LUASMTPD_TLS_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

struct bufferevent;

struct tls_client_options {
    bool verify;      /* check the chain and the name; without it any certificate is taken */
    const char *ca;   /* a CA bundle (PEM file); NULL for the system's */
    const char *name; /* the name the certificate must carry and SNI gives; an IP literal is
                         checked as an address and sent no SNI (RFC 6066 3) */
};

/* A bufferevent that speaks TLS over `under` and owns it (freeing it frees `under`); the
 * handshake starts at once and ends in BEV_EVENT_CONNECTED, or BEV_EVENT_ERROR (see
 * tls_client_failure). Whatever `under` had read and nobody took is dropped first (their
 * count in *dropped): it came in plaintext, before the handshake, so anyone on the path may
 * have written it, and inside TLS it must never be read as the server's. NULL with a reason
 * in `err` when the CA bundle cannot be loaded or memory ran out; `under` is then still the
 * caller's. */
struct bufferevent *tls_client_wrap(struct bufferevent *under, const struct tls_client_options *o,
                                    size_t *dropped, char *err, size_t errlen);

/* Why the handshake on `bev` (from tls_client_wrap) failed, for a message: "certificate verify
 * failed: ..." when the check refused the certificate, else OpenSSL's reason. Returns out. */
const char *tls_client_failure(struct bufferevent *bev, bool verify, char *out, size_t outlen);

#endif
