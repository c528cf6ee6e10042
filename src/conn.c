/* The connection primitives the command table and the session's I/O share (see conn.h):
 * replies and the error count, state entry, close after flush, the transaction's start and
 * end. It reads no input and frees no session: session.c does both. */
#include "luasmtpd/conn.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "luasmtpd/config.h"
#include "luasmtpd/log.h"
#include "luasmtpd/lua_runtime.h"
#include "luasmtpd/smtp_reply.h"

/* Replies collect in s->out and go to the socket in one write when the pump has done what the
 * client sent (conn_flush): pipelined commands get their replies in one segment, and most
 * replies never need the loop to wait for the socket to be writable. */
void
conn_send(struct session *s, enum conn_reply_class class, const char *bytes, size_t n)
{
    log_debug("session %lu: > %.*s", s->id, (int)(n > 2 ? n - 2 : n), bytes);
    /* Postfix's hard error limit counts every 4xx/5xx answer to a command, except "too many
     * recipients" (452 4.5.3): that one asks the client to send the recipient again in another
     * transaction, which it can only do on this connection if the refusals do not close it.
     * Past --max-recipients of them they count too (Postfix's recipient overshoot limit). */
    bool counted = (bytes[0] == '4' || bytes[0] == '5') && class == CONN_REPLY_COMMAND &&
                   memcmp(bytes, "421", 3) != 0;
    bool too_many = n >= 9 && memcmp(bytes, "452", 3) == 0 && memcmp(bytes + 4, "4.5.3", 5) == 0;
    if (too_many && s->overshoot < s->g->cfg->max_recipients) {
        s->overshoot++;
        counted = false;
    }
    if (counted)
        s->errors++;
    evbuffer_add(s->out, bytes, n);
}

void
conn_reply(struct session *s, const char *fmt, ...)
{
    char line[SMTP_REPLY_LINE_MAX + 64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line) - 2, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof(line) - 3)
        n = (int)sizeof(line) - 3;
    line[n++] = '\r';
    line[n++] = '\n';
    conn_send(s, CONN_REPLY_COMMAND, line, (size_t)n);
}

/* A write the socket refuses (reset, EPIPE) means the client is gone: s->write_failed stops the
 * pump from starting more work for nobody; the bufferevent's own write then fails too, and
 * session_on_event frees the session. */
void
conn_flush(struct session *s)
{
    if (evbuffer_get_length(s->out) == 0)
        return;
    struct evbuffer *pending = bufferevent_get_output(s->bev);
    /* Straight to the socket only in plaintext: over TLS the bufferevent must encrypt. */
    if (!s->in_tls && evbuffer_get_length(pending) == 0 &&
        evbuffer_write(s->out, bufferevent_getfd(s->bev)) == -1 && errno != EAGAIN &&
        errno != EWOULDBLOCK && errno != EINTR)
        s->write_failed = true;
    /* What the socket did not take now, the bufferevent sends when it can. */
    if (evbuffer_get_length(s->out) > 0)
        bufferevent_write_buffer(s->bev, s->out);
}

void
conn_enter(struct session *s, enum session_state state)
{
    enum session_state was = s->state;
    s->state = state;
    if (conn_client_owes_us(s))
        event_base_gettimeofday_cached(s->g->base, &s->last_activity);
    else if (state == SESSION_CLOSING)
        bufferevent_disable(s->bev, EV_READ);
    if (state == SESSION_COMMAND) {
        s->command_since = s->last_activity;
        /* After a DATA the timer may be set for --data-timeout, later than this wait's end. */
        if (was == SESSION_DATA || was == SESSION_HANDLER) {
            struct timeval limit = {.tv_sec = s->g->cfg->timeout};
            evtimer_add(s->timer, &limit);
        }
    }
    if (state == SESSION_DATA) {
        /* The timer was set for the command timeout; DATA has its own, and its rate is
         * checked every few seconds. */
        const struct config *cfg = s->g->cfg;
        struct timeval next = {.tv_sec = cfg->data_timeout};
        if (cfg->min_data_rate > 0 && next.tv_sec > 5)
            next.tv_sec = 5;
        /* A BDAT transfer is measured from its first chunk, not each one. */
        if (s->tx.bdat.chunks <= 1)
            tx_rate_start(&s->tx, &s->last_activity);
        evtimer_add(s->timer, &next);
    }
}

/* Sends nothing more after what is queued; the write callback frees the session once it is
 * flushed. The trigger is deferred so the session outlives the pump that asked for this. */
void
conn_close_after_flush(struct session *s)
{
    conn_enter(s, SESSION_CLOSING);
    conn_flush(s);
    bufferevent_trigger(s->bev, EV_WRITE, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
}

/* A command that went to a hook starts the wait when the hook answers, in conn_enter. */
void
conn_await_command(struct session *s)
{
    if (s->state == SESSION_COMMAND)
        event_base_gettimeofday_cached(s->g->base, &s->command_since);
}

void
conn_greet(struct session *s)
{
    s->greeted = true;
    conn_reply(s, "220 %s luasmtpd %s %s", s->g->hostname, LUASMTPD_VERSION,
               s->g->cfg->lmtp ? "LMTP" : "ESMTP");
    conn_await_command(s);
}

static bool
conn_in_transaction(const struct session *s)
{
    return s->tx.env.has_sender || s->state == SESSION_DATA || s->state == SESSION_HANDLER ||
           s->state == SESSION_HOOK;
}

void
conn_shut_down_if_idle(struct session *s)
{
    if (s->g->draining && s->state == SESSION_COMMAND && !conn_in_transaction(s)) {
        conn_reply(s, "421 4.3.2 %s Service shutting down, closing connection", s->g->hostname);
        conn_close_after_flush(s);
    }
}

/* Too many errors end the connection (RFC 5321 4.2.4 lets a server close a connection that
 * only produces errors; Postfix calls it smtpd_hard_error_limit). */
void
conn_after_command(struct session *s)
{
    if (s->state == SESSION_COMMAND && s->errors >= s->g->cfg->max_errors) {
        log_info("session %lu: %u errors, closing", s->id, s->errors);
        conn_reply(s, "421 4.7.0 %s Error: too many errors, closing connection", s->g->hostname);
        conn_close_after_flush(s);
    }
    conn_shut_down_if_idle(s);
}

void
conn_begin_transaction(struct session *s)
{
    tx_begin(&s->tx, &s->g->txn_ids);
    lrt_session_begin_transaction(s->ls, s->tx.id);
}

void
conn_end_transaction(struct session *s)
{
    tx_reset(&s->tx);
    lrt_session_end_transaction(s->ls);
}

/* One rule for every new greeting (RFC 5321 4.1.4: EHLO resets as RSET does; RFC 3207 4.2:
 * after STARTTLS nothing said before counts): the transaction goes, and the session carries
 * the new name, or none until the client greets again. */
void
conn_set_greeting(struct session *s, const char *name, bool esmtp)
{
    conn_end_transaction(s);
    free(s->helo);
    s->helo = name != NULL ? strdup(name) : NULL;
    s->esmtp = name != NULL && esmtp;
    lrt_session_set_helo(s->ls, s->helo, s->esmtp);
}
