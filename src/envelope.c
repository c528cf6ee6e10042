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

int
envelope_add_rcpt(struct envelope *e, const char *address, const struct strv *params)
{
    size_t len = 1;
    for (size_t i = 0; i < params->n; i++)
        len += strlen(params->items[i]) + 1;
    char *joined = malloc(len);
    if (joined == NULL)
        return -1;
    joined[0] = '\0';
    for (size_t i = 0; i < params->n; i++) {
        if (i > 0)
            strcat(joined, " ");
        strcat(joined, params->items[i]);
    }
    int rc = strv_push(&e->rcpts, address) == 0 && strv_push(&e->rcpt_params, joined) == 0 ? 0 : -1;
    free(joined);
    for (size_t i = 0; rc == 0 && i < params->n; i++)
        rc = strv_push(&e->rcpt_options, params->items[i]);
    return rc;
}

void
envelope_reset(struct envelope *e)
{
    free(e->mailfrom);
    strv_clear(&e->rcpts);
    strv_clear(&e->mail_options);
    strv_clear(&e->rcpt_options);
    strv_clear(&e->rcpt_params);
    memset(e, 0, sizeof(*e));
}
