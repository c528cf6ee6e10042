/* One whole relay transaction on a relay connection: MAIL (with SIZE, BODY=8BITMIME and
 * SMTPUTF8 as the message and the server call for), RCPT per recipient collecting refusals,
 * DATA only when someone was accepted, QUIT. Results per recipient. No Lua here.
 *
 * It never sends what the server did not offer: a message that needs SMTPUTF8 (an address
 * beyond ASCII, or a client that asked for SMTPUTF8 and 8-bit header fields) to a server
 * without it fails with 553 5.6.7, 8-bit data to a server without 8BITMIME with 554 5.6.3
 * (RFC 3463: no conversion is defined we could do), both before MAIL, as permanent failures:
 * retrying cannot make the server offer what it lacks. DSN's parameters (RFC 3461) go only to
 * a server offering DSN, and are left out for one that does not. */
#ifndef LUASMTPD_RELAY_H
#define LUASMTPD_RELAY_H

#include "luasmtpd/dsn.h"
#include "luasmtpd/relay_conn.h"

struct relay;

struct relay_request {
    struct relay_conn_options conn;
    const char *mailfrom; /* "" for the null sender */
    const char *const *rcpts;
    size_t n_rcpts;
    const char *data; /* kept alive by the caller until done or cancel */
    size_t len;
    bool smtputf8; /* the client's transaction used SMTPUTF8 */
    /* RET and ENVID, and per recipient (n_rcpts of them) NOTIFY and ORCPT; NULL for none.
     * Copied. */
    const struct dsn_mail *dsn;
    const struct dsn_rcpt *rcpt_dsn;
};

struct relay_result {
    /* RELAY_OK when the per-recipient replies are the result: the data was accepted for
     * someone (SMTP: the final reply was 2xx), every recipient was refused, or (LMTP) every
     * final reply came back. Anything else failed the whole transaction: `reply` says why,
     * with the server's code for TEMPFAIL/PERMFAIL and 0 for the fatal kinds (see
     * relay_failure_is_fatal; RELAY_UNKNOWN when the answer after the message was lost). */
    enum relay_failure kind;
    struct relay_reply reply; /* what failed the whole transaction, or the final reply */
    size_t n_rcpts;
    /* Per recipient: the refusal (code >= 400) or the acceptance. For LMTP the final reply
     * after the data, recipient by recipient. */
    struct relay_reply *rcpt_replies;
};

typedef void (*relay_done_fn)(void *arg, const struct relay_result *result);

/* Starts the transaction; `done` is called once, later, from the event loop. NULL when out of
 * memory, or (errno EINVAL) when an address or the HELO name holds a CR, LF or NUL. */
struct relay *relay_start(struct event_base *base, struct evdns_base *dns,
                          const struct relay_request *req, relay_done_fn done, void *arg);
/* `done` will not be called. */
void relay_cancel(struct relay *relay);

#endif
