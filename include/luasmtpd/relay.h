/* One whole relay transaction on a relay connection: MAIL (with SIZE, BODY=8BITMIME and
 * SMTPUTF8 as the message and the server call for), RCPT per recipient collecting refusals,
 * DATA only when someone was accepted, QUIT. Results per recipient. No Lua here. */
#ifndef LUASMTPD_RELAY_H
#define LUASMTPD_RELAY_H

#include "luasmtpd/relay_conn.h"

struct relay;

struct relay_request {
    struct relay_conn_options conn;
    const char *mailfrom;
    const char *const *rcpts;
    size_t n_rcpts;
    const char *data; /* kept alive by the caller until done or cancel */
    size_t len;
    bool smtputf8;    /* the client's transaction used SMTPUTF8 */
};

struct relay_result {
    enum relay_failure kind; /* RELAY_OK when the data was accepted for someone */
    struct relay_reply reply; /* what failed the whole transaction, or the final reply */
    size_t n_rcpts;
    /* Per recipient: the refusal (code >= 400) or the acceptance. For LMTP the final reply
     * after the data, recipient by recipient. */
    struct relay_reply *rcpt_replies;
};

typedef void (*relay_done_fn)(void *arg, const struct relay_result *result);

/* Starts the transaction; `done` is called once, later, from the event loop. */
struct relay *relay_start(struct event_base *base, struct evdns_base *dns,
                          const struct relay_request *req, relay_done_fn done, void *arg);
/* `done` will not be called. */
void relay_cancel(struct relay *relay);

#endif
