/* The answer to a message after its final dot, over SMTP or LMTP (RFC 2033 4.2), from the
 * handler's one reply or its replies by recipient; and the greeting verbs each protocol refuses.
 * Pure: it checks and formats reply texts (smtp_reply.c does each one); sending is the
 * session's. */
#include "luasmtpd/lmtp.h"

#include <stdio.h>
#include <string.h>

#include "luasmtpd/smtp_reply.h"

static void
note_code(struct lmtp_answer *a, int code)
{
    size_t used = strlen(a->codes);
    if (used + sizeof(" ...") >= sizeof(a->codes)) {
        if (used < 4 || strcmp(a->codes + used - 4, " ...") != 0)
            snprintf(a->codes + used, sizeof(a->codes) - used, " ...");
        return;
    }
    snprintf(a->codes + used, sizeof(a->codes) - used, "%s%d", used ? " " : "", code);
}

int
lmtp_answer_all(struct lmtp_answer *a, bool lmtp, size_t n, const char *text, size_t len)
{
    size_t start = a->wire.len;
    int code = smtp_reply_format(text, len, &a->wire);
    if (code == -1)
        return -1;
    size_t one = a->wire.len - start;
    size_t copies = lmtp ? n : 1;
    for (size_t i = 1; i < copies; i++) {
        /* The copy is made from the buffer itself, which may move as it grows. */
        if (buf_reserve(&a->wire, one) == -1) {
            a->wire.len = start;
            return -1;
        }
        buf_append(&a->wire, a->wire.data + start, one);
    }
    for (size_t i = 0; i < copies; i++)
        note_code(a, code);
    if (code >= 200 && code < 300)
        a->accepted += n;
    return 0;
}

/* The reply the handler gave recipient i, or the default when it named none. */
static int
format_entry(const struct strv *replies, size_t i, struct buf *out)
{
    const char *text = replies->items[i];
    if (*text == '\0')
        text = LMTP_DEFAULT_REPLY;
    return smtp_reply_format(text, strlen(text), out);
}

int
lmtp_answer_each(struct lmtp_answer *a, bool lmtp, const struct strv *replies)
{
    size_t start = a->wire.len, codes_start = strlen(a->codes);
    struct buf scratch = {0};
    struct buf *out = lmtp ? &a->wire : &scratch;
    /* SMTP: the entry whose reply answers the message (the first of each class). */
    size_t first[6] = {0};
    bool seen[6] = {false};
    size_t accepted = 0;
    for (size_t i = 0; i < replies->n; i++) {
        buf_reset(&scratch);
        int code = format_entry(replies, i, out);
        if (code == -1) {
            buf_free(&scratch);
            a->wire.len = start;
            a->codes[codes_start] = '\0';
            return (int)i + 1;
        }
        int class = code / 100;
        /* A recipient left to the default is no 2xx of the handler's own to pass on. */
        if (!seen[class] && (class != 2 || *replies->items[i] != '\0')) {
            seen[class] = true;
            first[class] = i;
        }
        if (class == 2)
            accepted++;
        if (lmtp)
            note_code(a, code);
    }
    buf_free(&scratch);
    if (lmtp) {
        a->accepted += accepted;
        return 0;
    }
    int chosen = seen[5] ? 5 : seen[4] ? 4 : seen[2] ? 2 : 0;
    int code;
    if (chosen == 0)
        code = smtp_reply_format(LMTP_DEFAULT_REPLY, strlen(LMTP_DEFAULT_REPLY), &a->wire);
    else
        code = format_entry(replies, first[chosen], &a->wire);
    if (code == -1)
        return -1;
    note_code(a, code);
    a->mixed = chosen != 2 && chosen != 0 && accepted > 0;
    if (chosen == 2 || chosen == 0)
        a->accepted += replies->n;
    return 0;
}

void
lmtp_answer_free(struct lmtp_answer *a)
{
    buf_free(&a->wire);
    memset(a, 0, sizeof(*a));
}

bool
lmtp_foreign_verb(bool lmtp, enum smtp_verb verb)
{
    if (lmtp)
        return verb == SMTP_VERB_HELO || verb == SMTP_VERB_EHLO;
    return verb == SMTP_VERB_LHLO;
}
