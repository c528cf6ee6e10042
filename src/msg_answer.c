/* A message's answer after its final dot: the handler's nil, reply string or table of replies
 * by recipient, checked and put in wire form for SMTP or LMTP (lmtp.c), and the refusals of a
 * whole message. It sends only through conn_send; what follows the answer is the session's. */
#include "luasmtpd/msg_answer.h"

#include <string.h>

#include "luasmtpd/config.h"
#include "luasmtpd/conn.h"
#include "luasmtpd/log.h"

void
msg_answer_refuse(struct session *s, const char *reply)
{
    struct lmtp_answer a = {0};
    if (lmtp_answer_all(&a, s->g->cfg->lmtp, s->tx.env.rcpts.n, reply, strlen(reply)) == 0)
        conn_send(s, CONN_REPLY_MESSAGE, a.wire.data, a.wire.len);
    else
        conn_reply(s, "%s", reply); /* out of memory: one copy, at least */
    lmtp_answer_free(&a);
}

/* false: the handler gave no valid answer (logged). */
static bool
handler_answer(struct session *s, enum lrt_outcome outcome, const char *text, size_t len,
               struct lmtp_answer *a)
{
    bool lmtp = s->g->cfg->lmtp;
    if (outcome == LRT_TABLE) {
        int bad = lmtp_answer_each(a, lmtp, &s->tx.replies);
        if (bad > 0)
            log_error("session %lu: process_message returned an invalid reply for <%s>: %.80s",
                      s->id, s->tx.env.rcpts.items[bad - 1], s->tx.replies.items[bad - 1]);
        else if (bad == 0 && a->mixed)
            log_warn("session %lu: process_message took some recipients and refused others; "
                     "SMTP has one reply per message, so the client hears the refusal (refuse "
                     "at RCPT, or use --lmtp)",
                     s->id);
        return bad == 0;
    }
    if (outcome == LRT_DEFAULT) {
        text = LMTP_DEFAULT_REPLY;
        len = strlen(text);
    } else if (outcome != LRT_REPLY) {
        return false; /* LRT_FAILED, logged; LRT_ACCEPT is never process_message's */
    }
    if (lmtp_answer_all(a, lmtp, s->tx.env.rcpts.n, text, len) == 0)
        return true;
    log_error("session %lu: process_message returned an invalid reply: %.80s", s->id, text);
    return false;
}

void
msg_answer_handler(struct session *s, enum lrt_outcome outcome, const char *text, size_t len,
                   struct lmtp_answer *a)
{
    static const char failed[] = "451 4.3.0 Error: the message handler failed; try again later";
    if (handler_answer(s, outcome, text, len, a))
        return;
    lmtp_answer_free(a);
    lmtp_answer_all(a, s->g->cfg->lmtp, s->tx.env.rcpts.n, failed, sizeof(failed) - 1);
}
