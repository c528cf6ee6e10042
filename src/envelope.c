/* The envelope of one transaction; reset between transactions, never shared. */
#include "luasmtpd/envelope.h"

#include <stdlib.h>
#include <string.h>

int
strv_push(struct strv *v, const char *s)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 4;
        char **items = realloc(v->items, cap * sizeof(*items));
        if (items == NULL)
            return -1;
        v->items = items;
        v->cap = cap;
    }
    char *copy = strdup(s);
    if (copy == NULL)
        return -1;
    v->items[v->n++] = copy;
    return 0;
}

void
strv_clear(struct strv *v)
{
    for (size_t i = 0; i < v->n; i++)
        free(v->items[i]);
    free(v->items);
    memset(v, 0, sizeof(*v));
}

int
envelope_set_sender(struct envelope *e, const char *address)
{
    char *copy = strdup(address);
    if (copy == NULL)
        return -1;
    free(e->mailfrom);
    e->mailfrom = copy;
    e->has_sender = true;
    return 0;
}

void
envelope_reset(struct envelope *e)
{
    free(e->mailfrom);
    strv_clear(&e->rcpts);
    strv_clear(&e->mail_options);
    strv_clear(&e->rcpt_options);
    memset(e, 0, sizeof(*e));
}
