/* The relay connection's queue of what waits for a reply (see relay_pending.h). */
#include "luasmtpd/relay_pending.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct relay_pending *
relay_pending_command(const char *line, size_t len, enum relay_expect expect, relay_reply_fn done,
                      void *arg)
{
    if (memchr(line, '\r', len) != NULL || memchr(line, '\n', len) != NULL ||
        memchr(line, '\0', len) != NULL) {
        errno = EINVAL; /* a second command smuggled into this one */
        return NULL;
    }
    struct relay_pending *p = calloc(1, sizeof(*p));
    char *copy = malloc(len + 3);
    if (p == NULL || copy == NULL) {
        free(p);
        free(copy);
        errno = ENOMEM;
        return NULL;
    }
    memcpy(copy, line, len);
    memcpy(copy + len, "\r\n", 3);
    p->kind = RELAY_PENDING_COMMAND;
    p->expect = expect;
    p->line = copy;
    p->line_len = len + 2;
    p->done = done;
    p->arg = arg;
    return p;
}

struct relay_pending *
relay_pending_data(const char *data, size_t len, unsigned nreplies, relay_reply_fn done, void *arg)
{
    struct relay_pending *p = calloc(1, sizeof(*p));
    if (p == NULL || (p->line = strdup("DATA\r\n")) == NULL) {
        free(p);
        errno = ENOMEM;
        return NULL;
    }
    p->kind = RELAY_PENDING_DATA;
    p->line_len = 6;
    p->data = data;
    p->len = len;
    p->nreplies = nreplies ? nreplies : 1;
    p->done = done;
    p->arg = arg;
    return p;
}

void
relay_pending_free(struct relay_pending *p)
{
    free(p->line);
    free(p);
}

int
relay_pending_verb_length(const struct relay_pending *p)
{
    size_t n = strcspn(p->line, " \r");
    return (int)(n > 16 ? 16 : n);
}

void
relay_pending_push(struct relay_pending_queue *q, struct relay_pending *p)
{
    if (q->tail)
        q->tail->next = p;
    else
        q->head = p;
    q->tail = p;
}

struct relay_pending *
relay_pending_pop(struct relay_pending_queue *q)
{
    struct relay_pending *p = q->head;
    q->head = p->next;
    if (q->head == NULL)
        q->tail = NULL;
    return p;
}

void
relay_pending_clear(struct relay_pending_queue *q)
{
    while (q->head != NULL)
        relay_pending_free(relay_pending_pop(q));
}
