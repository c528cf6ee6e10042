/* The server's TLS: its OpenSSL contexts (one for STARTTLS, one for the implicit-TLS listener),
 * loaded at start and reloaded on SIGHUP, and the bufferevents that speak TLS over an accepted
 * socket. It knows nothing of SMTP states; the relay's client contexts are tls_client.c's. */
#ifndef LUASMTPD_TLS_H
#define LUASMTPD_TLS_H

#include <stdbool.h>
#include <stdio.h>

struct bufferevent;
struct event_base;
struct tls_server;

enum tls_kind {
    TLS_STARTTLS, /* --tlscert/--tlskey: offered after EHLO (RFC 3207) */
    TLS_IMPLICIT, /* --smtpscert/--smtpskey: from the first byte (RFC 8314) */
};

/* Files by kind; a NULL cert leaves that kind off. */
struct tls_server_files {
    const char *cert[2];
    const char *key[2];
};

/* What a session learns of its TLS once the handshake is done. */
struct tls_info {
    char version[16];
    char cipher[64];
    int bits;
    char subject[256]; /* the client certificate's subject (unverified), "" when none was sent */
};

/* Loads every pair given. NULL: a pair could not be loaded, and `err` says which and why. */
struct tls_server *tls_server_new(const struct tls_server_files *files, FILE *err);
/* Loads the pairs again: new handshakes use the new ones, connections in TLS keep theirs. A
 * pair that does not load is logged and its old one stays. false when one failed. */
bool tls_server_reload(struct tls_server *t);
/* The same for the pairs whose files changed since they were last read (or tried): a pair
 * replaced one file at a time is tried, and logged as broken, once per change, and loads once
 * both files are in place. false when one failed. */
bool tls_server_refresh(struct tls_server *t);
bool tls_server_offers(const struct tls_server *t, enum tls_kind kind);
/* A bufferevent accepting TLS on `fd`, with the current context of `kind`; freeing it closes
 * `fd` and frees its SSL. NULL when out of memory (`fd` is left open). */
struct bufferevent *tls_server_accept(struct tls_server *t, enum tls_kind kind,
                                      struct event_base *base, int fd);
void tls_server_free(struct tls_server *t);

/* Says goodbye in TLS (close_notify, RFC 8446 6.1) before the socket closes, so the client
 * knows nothing was cut off; best effort, never waits. */
void tls_close_notify(struct bufferevent *bev);
/* After the handshake: version, cipher and the client's certificate. */
void tls_describe(struct bufferevent *bev, struct tls_info *info);
/* Why a TLS bufferevent failed, for the log line. */
void tls_failure(struct bufferevent *bev, char *text, size_t len);

#endif
