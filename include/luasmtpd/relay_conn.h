/* An asynchronous SMTP/LMTP client connection on libevent: resolves without blocking, connects
 * (trying each address), reads the greeting, says EHLO (HELO when refused; LHLO for LMTP), with
 * STARTTLS or implicit TLS and AUTH when asked for (relay_hello.h, tls_client.h), then
 * runs commands in order, pipelined when the server offers PIPELINING, and sends message bodies
 * with flow control. Every stage has a timeout. It knows nothing of Lua.
 *
 * What it promises its callers: a reply is handed on as a success only when it is of the class
 * the command calls for (2xx, 3xx for DATA's go-ahead); a reply of the wrong class, one nobody
 * asked for, a malformed one, a close or a timeout fails the connection, and every command
 * still waiting gets that failure with no reply code. Reply text is cleaned before anyone sees
 * it (see struct relay_reply), so it can be passed on as our own reply. */
#ifndef LUASMTPD_RELAY_CONN_H
#define LUASMTPD_RELAY_CONN_H

#include <stdbool.h>
#include <stddef.h>

#include "luasmtpd/relay_hello.h"
#include "luasmtpd/relay_reply.h"

struct event_base;
struct evdns_base;
struct relay_conn;

/* The timeouts, in seconds, per stage (RFC 5321 4.5.3.2). `timeout` bounds the connect, the
 * greeting, each command's reply and each step of sending a message (a write that makes no
 * progress); `data_timeout` bounds the wait for the reply after the end of the message (each
 * reply, for LMTP), which RFC 5321 4.5.3.2.6 sets at 10 minutes because the server may be
 * delivering meanwhile: cutting it short leaves a copy upstream and a retry makes a second. */
#define RELAY_DEFAULT_TIMEOUT 60.0
#define RELAY_DEFAULT_DATA_TIMEOUT 600.0
/* The wait for the 221 after QUIT at relay_conn_close (at most `timeout`). */
#define RELAY_QUIT_TIMEOUT 10.0

struct relay_conn_options {
    const char *host;
    unsigned short port;
    const char *helo;    /* the name we give in EHLO; a CR or LF in it is refused */
    double timeout;      /* seconds; 0 for RELAY_DEFAULT_TIMEOUT */
    double data_timeout; /* seconds; 0 for RELAY_DEFAULT_DATA_TIMEOUT */
    bool lmtp;
    struct relay_security sec; /* TLS and AUTH (zero: neither) */
};

/* `reply` is valid only during the call. When kind is not RELAY_OK for a ready callback, the
 * connection is already gone. A callback may call any relay_conn function, relay_conn_close
 * included. */
typedef void (*relay_ready_fn)(void *arg, struct relay_conn *conn, enum relay_failure kind,
                               const struct relay_reply *reply);

/* NULL when out of memory, or when opts->helo holds a CR or LF (errno EINVAL). */
struct relay_conn *relay_conn_open(struct event_base *base, struct evdns_base *dns,
                                   const struct relay_conn_options *opts, relay_ready_fn ready,
                                   void *arg);

/* Queues a command line (without CRLF); `done` gets its reply, in order, from the event loop.
 * Once the connection failed, every queued and later command gets the failure. -1 (errno
 * EINVAL) when the line holds a CR, LF or NUL, or ENOMEM: then nothing was queued and `done`
 * will not run. */
int relay_conn_command(struct relay_conn *conn, const char *line, size_t len,
                       enum relay_expect expect, relay_reply_fn done, void *arg);
/* Queues DATA; after a 3xx sends `data` (any line ends; they are sent as CRLF and
 * dot-stuffed), then waits for `nreplies` final replies (one for SMTP, one per accepted
 * recipient for LMTP), each given to `done` with end_of_data set. When DATA itself is
 * refused (4xx/5xx), `done` runs once with that refusal and end_of_data false. The caller
 * keeps `data` alive until the last reply or the close. -1 (ENOMEM): nothing queued. */
int relay_conn_data(struct relay_conn *conn, const char *data, size_t len, unsigned nreplies,
                    relay_reply_fn done, void *arg);
unsigned relay_conn_extensions(const struct relay_conn *conn);
size_t relay_conn_size_limit(const struct relay_conn *conn);
bool relay_conn_lmtp(const struct relay_conn *conn);
/* Whether the connection runs inside TLS (STARTTLS or implicit). */
bool relay_conn_tls(const struct relay_conn *conn);
/* "host:port" as given, for messages. */
const char *relay_conn_peer(const struct relay_conn *conn);
/* Lets the connection go; no callback runs after this and it returns at once. When the
 * connection is idle it says QUIT and waits in the background (at most RELAY_QUIT_TIMEOUT)
 * for the 221 before closing, so the server does not log a lost connection; when a command
 * or a message is half way, it closes at once, which tells the server to deliver nothing. */
void relay_conn_close(struct relay_conn *conn);

#endif
