/* One mail transaction's envelope as the session collects it and the handler receives it:
 * sender, recipients and their ESMTP parameters. Plain data, no I/O. */
#ifndef LUASMTPD_ENVELOPE_H
#define LUASMTPD_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>

struct strv {
    char **items;
    size_t n;
    size_t cap;
};

int strv_push(struct strv *v, const char *s);
void strv_clear(struct strv *v);

struct envelope {
    bool has_sender; /* MAIL was accepted */
    char *mailfrom;  /* "" for the null sender */
    struct strv rcpts;
    struct strv mail_options; /* upper-cased, as Python's mail_options */
    struct strv rcpt_options; /* the accepted RCPTs' parameters, in order */
    struct strv rcpt_params;  /* one per rcpts item: its RCPT's parameters joined by spaces */
    bool smtputf8;
    size_t size_hint; /* MAIL's SIZE=, 0 when not given */
};

int envelope_set_sender(struct envelope *e, const char *address);
/* A recipient and its RCPT's parameters ("KEYWORD=value" words). -1 when out of memory: the
 * envelope is then for envelope_reset only. */
int envelope_add_rcpt(struct envelope *e, const char *address, const struct strv *params);
void envelope_reset(struct envelope *e);

#endif
