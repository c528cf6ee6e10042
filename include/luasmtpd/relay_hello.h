/* The opening of a relay connection, as a state machine with no I/O: the greeting, EHLO (HELO
 * for an old server, LHLO for LMTP), STARTTLS and EHLO again inside TLS (RFC 3207 4.2), and
 * AUTH PLAIN or LOGIN (RFC 4954). Each reply in gives one step out: a line to send, "start
 * TLS now", ready, or the failure. The connection (relay_conn.c) does the I/O.
 *
 * What it promises: a password goes out only inside TLS unless the caller allowed plaintext,
 * and only base64-encoded in the lines it builds (flagged `secret`, so nobody logs them);
 * STARTTLS required and not offered, or refused, fails before anything of a transaction. */
#ifndef LUASMTPD_RELAY_HELLO_H
#define LUASMTPD_RELAY_HELLO_H

#include <stdbool.h>
#include <stddef.h>

#include "luasmtpd/buf.h"
#include "luasmtpd/relay_reply.h"

enum relay_tls_mode {
    RELAY_TLS_OFF,
    RELAY_TLS_TRY,      /* STARTTLS when offered, plaintext otherwise (RFC 7435) */
    RELAY_TLS_REQUIRE,  /* STARTTLS or fail */
    RELAY_TLS_IMPLICIT, /* TLS from the first byte (RFC 8314) */
};

/* What a relay connection asks for beyond plain SMTP. The strings are copied. */
struct relay_security {
    enum relay_tls_mode tls;
    bool verify;            /* check the upstream's certificate (chain and name) */
    const char *cafile;     /* the CA bundle to check against; NULL for the system's */
    const char *servername; /* the name to check and send as SNI; NULL for the host */
    const char *user;       /* AUTH as this user; NULL for no AUTH */
    const char *password;
    bool auth_plaintext; /* AUTH allowed on a connection without TLS */
};

enum relay_hello_step {
    RELAY_HELLO_SEND,     /* send out (a whole line, CRLF included) */
    RELAY_HELLO_STARTTLS, /* drop what was read after this reply, start the TLS handshake */
    RELAY_HELLO_READY,    /* open: the extensions are in ext */
    RELAY_HELLO_FAIL,     /* failed with kind and code (0 unless the server refused); why in out */
};

struct relay_hello {
    int state; /* relay_hello.c's */
    bool lmtp;
    bool tls_active;
    bool secret; /* out holds a credential */
    enum relay_tls_mode tls;
    bool auth_plaintext;
    bool verify;
    char *cafile, *servername; /* for the TLS client; NULL when not given */
    char *helo, *peer, *user, *password;
    unsigned ext; /* RELAY_EXT_* of the last EHLO reply */
    size_t size_limit;
    enum relay_failure kind;
    int code;
    struct buf out;
};

/* -1 when out of memory. `peer` names the server in messages. For RELAY_TLS_IMPLICIT the
 * caller runs the handshake before the greeting. */
int relay_hello_init(struct relay_hello *h, const struct relay_security *sec, const char *helo,
                     const char *peer, bool lmtp);
enum relay_hello_step relay_hello_reply(struct relay_hello *h, const struct relay_reply *reply);
/* The handshake after STARTTLS finished: EHLO again, extensions read anew. */
enum relay_hello_step relay_hello_secured(struct relay_hello *h);
/* What the opening waits for, for a timeout's message: "greeting", "EHLO reply", ... */
const char *relay_hello_waiting_for(const struct relay_hello *h);
/* Wipes the credentials. */
void relay_hello_free(struct relay_hello *h);

#endif
