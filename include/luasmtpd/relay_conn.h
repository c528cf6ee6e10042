/* An asynchronous SMTP/LMTP client connection on libevent: resolves without blocking, connects
 * (trying each address), reads the greeting, says EHLO (HELO when refused; LHLO for LMTP), then
 * runs commands in order, pipelined when the server offers PIPELINING, and sends message bodies
 * with flow control. Every stage has a timeout. It knows nothing of Lua. */
#ifndef LUASMTPD_RELAY_CONN_H
#define LUASMTPD_RELAY_CONN_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct evdns_base;
struct relay_conn;

enum relay_failure {
    RELAY_OK = 0,
    RELAY_CONNECT_FAILED, /* could not resolve or connect */
    RELAY_TIMED_OUT,
    RELAY_TEMPFAIL,       /* the server answered 4xx */
    RELAY_PERMFAIL,       /* the server answered 5xx */
    RELAY_PROTOCOL,       /* a malformed reply, or the connection closed */
};

const char *relay_failure_name(enum relay_failure kind);

/* A server reply. `text` holds the lines' texts joined by "\n", without their codes; 0 as
 * the code means there was no reply (see the failure kind). */
struct relay_reply {
    int code;
    char *text;
};

/* Sorts a reply (or no reply) into a failure kind: 2xx/3xx ok, 4xx, 5xx. */
enum relay_failure relay_reply_kind(const struct relay_reply *reply);

enum relay_ext {
    RELAY_EXT_PIPELINING = 1 << 0,
    RELAY_EXT_SIZE = 1 << 1,
    RELAY_EXT_8BITMIME = 1 << 2,
    RELAY_EXT_SMTPUTF8 = 1 << 3,
};

struct relay_conn_options {
    const char *host;
    unsigned short port;
    const char *helo;  /* the name we give in EHLO */
    double timeout;    /* seconds per stage */
    bool lmtp;
};

/* `reply` is valid only during the call. When kind is not RELAY_OK for a ready callback, the
 * connection is already gone. A callback may call any relay_conn function, relay_conn_close
 * included. */
typedef void (*relay_ready_fn)(void *arg, struct relay_conn *conn, enum relay_failure kind,
                               const struct relay_reply *reply);
typedef void (*relay_reply_fn)(void *arg, enum relay_failure kind, const struct relay_reply *reply);

struct relay_conn *relay_conn_open(struct event_base *base, struct evdns_base *dns,
                                   const struct relay_conn_options *opts, relay_ready_fn ready,
                                   void *arg);
/* Queues a command line (without CRLF); `done` gets its reply, in order. Once the connection
 * failed, every queued and later command gets the failure. */
void relay_conn_command(struct relay_conn *conn, const char *line, relay_reply_fn done, void *arg);
/* Queues DATA; after 354 sends `data` (any line ends; they are sent as CRLF and dot-stuffed),
 * then waits for `nreplies` final replies (one for SMTP, one per accepted recipient for LMTP),
 * each given to `done`. The caller keeps `data` alive until the last reply or the close. */
void relay_conn_data(struct relay_conn *conn, const char *data, size_t len, unsigned nreplies,
                     relay_reply_fn done, void *arg);
unsigned relay_conn_extensions(const struct relay_conn *conn);
size_t relay_conn_size_limit(const struct relay_conn *conn);
bool relay_conn_lmtp(const struct relay_conn *conn);
/* Sends QUIT when the connection is usable and closes it; no callback runs after this. */
void relay_conn_close(struct relay_conn *conn);

#endif
