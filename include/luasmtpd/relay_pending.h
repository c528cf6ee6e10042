/* What a relay connection owes an answer to: a command line or a message, whom to tell, and
 * how far it got, in the order sent. Plain data, no I/O: the connection (relay_conn.c) sends
 * them and matches replies to them. */
#ifndef LUASMTPD_RELAY_PENDING_H
#define LUASMTPD_RELAY_PENDING_H

#include <stdbool.h>
#include <stddef.h>

#include "luasmtpd/relay_reply.h"

enum relay_pending_kind {
    RELAY_PENDING_COMMAND,
    RELAY_PENDING_DATA, /* DATA sent or to send; a 3xx starts the body */
    RELAY_PENDING_BODY, /* body sent or being sent; `nreplies` final replies to come */
};

struct relay_pending {
    struct relay_pending *next;
    enum relay_pending_kind kind;
    enum relay_expect expect;
    char *line; /* with CRLF */
    size_t line_len;
    bool sent;
    bool dot_sent; /* the end of the message left our buffers: the server may have it all */
    const char *data;
    size_t len;
    unsigned nreplies;
    relay_reply_fn done;
    void *arg;
};

/* A command line (given without CRLF). NULL with errno EINVAL when the line holds a CR, LF or
 * NUL, ENOMEM when out of memory. */
struct relay_pending *relay_pending_command(const char *line, size_t len, enum relay_expect expect,
                                            relay_reply_fn done, void *arg);
/* DATA, then `data` (kept alive by the caller) and `nreplies` final replies (0 counts as 1).
 * NULL (ENOMEM) when out of memory. */
struct relay_pending *relay_pending_data(const char *data, size_t len, unsigned nreplies,
                                         relay_reply_fn done, void *arg);
void relay_pending_free(struct relay_pending *p);
/* The length of the command's verb ("MAIL", "RCPT", "DATA"...; at most 16), for messages. */
int relay_pending_verb_length(const struct relay_pending *p);

struct relay_pending_queue {
    struct relay_pending *head, *tail;
};

void relay_pending_push(struct relay_pending_queue *q, struct relay_pending *p);
/* Takes the head off the queue (it must have one) and returns it; the caller frees it. */
struct relay_pending *relay_pending_pop(struct relay_pending_queue *q);
/* Frees every entry; their callbacks do not run. */
void relay_pending_clear(struct relay_pending_queue *q);

#endif
