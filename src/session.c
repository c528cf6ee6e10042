/* One SMTP connection over a bufferevent: framing, replies, DATA, timeouts, limits, and the
 * calls into the Lua runtime (hooks and the handler). Commands are framed by lines with a
 * length cap while buffering and answered in commands.c; DATA is decoded as it arrives; the
 * message goes to the handler through the runtime's C interface, and no command is read while
 * a hook or the handler decides. A client's half-close ends only its input: what it sent before
 * is answered; only a connection that is gone (reset, failed write) cancels work in flight.
 * Only session_enter() changes s->state; only event callbacks free a session, never
 * session_pump(), so nothing below the pump ever touches a freed session. */
#include "luasmtpd/session.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "luasmtpd/log.h"
#include "luasmtpd/peer_count.h"
#include "luasmtpd/proven_clients.h"
#include "luasmtpd/smtp_data.h"
#include "luasmtpd/smtp_parse.h"
#include "luasmtpd/smtp_reply.h"
#include "session_internal.h"

static void session_pump(struct session *s);
static void data_hold(struct session *s, size_t bytes);

/* Only a session that has waited this long on its client may lose its slot to a newcomer
 * (make_room): long enough that a client between two commands, or pausing in a DATA, is never
 * taken for idle; short enough that a flood of idle connections cannot keep the server full. */
#define MAKE_ROOM_MIN_WAIT_SEC 5
/* A newcomer from a proven client (one that had a message accepted within PROVEN_TTL_SEC) may
 * take the slot of an unproven session that waited only this long: under a flood of
 * connections that never send mail, the clients that do still get in. A second is far more
 * than a client takes between two commands, and an idle attacker's wait soon passes it. */
#define MAKE_ROOM_PROVEN_WAIT_SEC 1
#define PROVEN_CLIENTS 10000
#define PROVEN_TTL_SEC 3600
#define REFUSED_REPORT_SEC 10
#define CLOSING_TIMEOUT_SEC 30

/* Replies collect in s->out and go to the socket in one write when the pump has done what the
 * client sent (session_flush): pipelined commands get their replies in one segment, and most
 * replies never need the loop to wait for the socket to be writable. */
void
session_reply_bytes(struct session *s, const char *bytes, size_t n)
{
    log_debug("session %lu: > %.*s", s->id, (int)(n > 2 ? n - 2 : n), bytes);
    /* Postfix's hard error limit counts every 4xx/5xx answer to a command, except "too many
     * recipients" (452 4.5.3): that one asks the client to send the recipient again in another
     * transaction, which it can only do on this connection if the refusals do not close it.
     * Past --max-recipients of them they count too (Postfix's recipient overshoot limit). */
    bool counted = (bytes[0] == '4' || bytes[0] == '5') && !s->message_reply &&
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
session_reply(struct session *s, const char *fmt, ...)
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
    session_reply_bytes(s, line, (size_t)n);
}

/* A write the socket refuses (reset, EPIPE) means the client is gone: s->write_failed stops the
 * pump from starting more work for nobody; the bufferevent's own write then fails too, and
 * on_event frees the session. */
static void
session_flush(struct session *s)
{
    if (evbuffer_get_length(s->out) == 0)
        return;
    struct evbuffer *pending = bufferevent_get_output(s->bev);
    if (evbuffer_get_length(pending) == 0 &&
        evbuffer_write(s->out, bufferevent_getfd(s->bev)) == -1 && errno != EAGAIN &&
        errno != EWOULDBLOCK && errno != EINTR)
        s->write_failed = true;
    /* What the socket did not take now, the bufferevent sends when it can. */
    if (evbuffer_get_length(s->out) > 0)
        bufferevent_write_buffer(s->bev, s->out);
}

/* Only a client that owes us something can time out: while a hook or the handler decides,
 * its silence is expected. */
static double
seconds_since(const struct timeval *then, const struct timeval *now)
{
    return (double)(now->tv_sec - then->tv_sec) + (double)(now->tv_usec - then->tv_usec) / 1e6;
}

/* A slow drip must not hold a connection slot for ever, nor may a fast start buy a long drip:
 * from DATA_RATE_GRACE_SEC into a DATA on, the bytes since the newest sample at least that old
 * must have come at --min-data-rate. The window is thus the grace period plus at most one
 * sample step, and a drip after a burst is cut within about that long of its start. */
static bool
data_too_slow(struct session *s, const struct timeval *now)
{
    unsigned rate = s->g->cfg->min_data_rate;
    if (s->state != SESSION_DATA || rate == 0)
        return false;
    const struct session_rate_sample *newest =
        &s->rate[(s->rate_next + DATA_RATE_SAMPLES - 1) % DATA_RATE_SAMPLES];
    /* The looks come every 5 s, but a short --data-timeout makes them closer: a minimum step
     * keeps the ring covering more than the window. */
    if (seconds_since(&newest->at, now) >= DATA_RATE_SAMPLE_SEC) {
        s->rate[s->rate_next] = (struct session_rate_sample){.at = *now, .size = s->decoder.size};
        s->rate_next = (s->rate_next + 1) % DATA_RATE_SAMPLES;
        if (s->rate_n < DATA_RATE_SAMPLES)
            s->rate_n++;
    }
    const struct session_rate_sample *from = NULL;
    for (unsigned i = 0; i < s->rate_n; i++) {
        const struct session_rate_sample *r = &s->rate[i];
        if (seconds_since(&r->at, now) >= DATA_RATE_GRACE_SEC &&
            (from == NULL || evutil_timercmp(&r->at, &from->at, >)))
            from = r;
    }
    return from != NULL &&
           (double)(s->decoder.size - from->size) < seconds_since(&from->at, now) * rate;
}

static bool
client_owes_us(const struct session *s)
{
    return s->state == SESSION_COMMAND || s->state == SESSION_DATA;
}

void
session_enter(struct session *s, enum session_state state)
{
    enum session_state was = s->state;
    s->state = state;
    if (client_owes_us(s))
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
        s->rate[0] = (struct session_rate_sample){.at = s->last_activity, .size = 0};
        s->rate_n = s->rate_next = 1;
        s->data_started = s->last_activity;
        evtimer_add(s->timer, &next);
    }
}

static void
session_free(struct session *s)
{
    struct session_group *g = s->g;
    if (s->call != NULL)
        lrt_call_cancel(s->call);
    bufferevent_free(s->bev);
    evbuffer_free(s->out);
    event_free(s->timer);
    envelope_reset(&s->env);
    buf_free(&s->message);
    data_hold(s, 0);
    free(s->helo);
    free(s->hook_arg);
    strv_clear(&s->hook_params);
    lrt_session_free(s->ls);
    if (s->counted)
        peer_count_remove(g->per_client, s->peer_addr);
    if (s->prev)
        s->prev->next = s->next;
    else
        g->head = s->next;
    if (s->next)
        s->next->prev = s->prev;
    log_debug("session %lu: closed", s->id);
    free(s);
    g->count--;
    if (g->draining && g->count == 0 && g->on_empty)
        g->on_empty(g->on_empty_arg);
}

/* Sends nothing more after what is queued; the write callback frees the session once it is
 * flushed. The trigger is deferred so the session outlives the pump that asked for this. */
void
session_close_after_flush(struct session *s)
{
    session_enter(s, SESSION_CLOSING);
    session_flush(s);
    bufferevent_trigger(s->bev, EV_WRITE, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
}

static bool
in_transaction(const struct session *s)
{
    return s->env.has_sender || s->state == SESSION_DATA || s->state == SESSION_HANDLER ||
           s->state == SESSION_HOOK;
}

static void
shut_down_if_idle(struct session *s)
{
    if (s->g->draining && s->state == SESSION_COMMAND && !in_transaction(s)) {
        session_reply(s, "421 4.3.2 %s Service shutting down, closing connection", s->g->hostname);
        session_close_after_flush(s);
    }
}

/* After each command: too many errors end the connection (RFC 5321 4.2.4 lets a server
 * close a connection that only produces errors; Postfix calls it smtpd_hard_error_limit). */
static void
enforce_error_limit(struct session *s)
{
    if (s->state == SESSION_COMMAND && s->errors >= s->g->cfg->max_errors) {
        log_info("session %lu: %u errors, closing", s->id, s->errors);
        session_reply(s, "421 4.7.0 %s Error: too many errors, closing connection", s->g->hostname);
        session_close_after_flush(s);
    }
}

/* Unique for the life of the server, across workers and their restarts: the time of this
 * process's first transaction (seconds, 8 hex digits) and its pid (6, as Linux pids stay below
 * 2^22) make a prefix no other process has (two processes share a pid only after the pid space
 * wrapped, never within a second), and a counter follows. The widths are fixed, so no two
 * prefix-and-counter pairs print alike. Upper-case hex: an RFC 5322 atom, as Received: wants
 * for its id, and short. */
void
session_begin_transaction(struct session *s)
{
    struct session_group *g = s->g;
    if (g->txn_count == 0) {
        g->txn_epoch = (unsigned long)time(NULL);
        g->txn_pid = (unsigned long)getpid();
    }
    snprintf(s->txn_id, sizeof(s->txn_id), "%08lX%06lX%lX", g->txn_epoch, g->txn_pid,
             ++g->txn_count);
    lrt_session_begin_transaction(s->ls, s->txn_id);
}

void
session_reset_transaction(struct session *s)
{
    s->txn_id[0] = '\0';
    envelope_reset(&s->env);
    buf_free(&s->message);
    data_hold(s, 0);
    lrt_session_end_transaction(s->ls);
}

static void hook_done(void *arg, enum lrt_outcome outcome, const char *text, size_t len);

/* Asks the script's hook about a command; hook_done carries the command on. */
void
session_ask_hook(struct session *s, enum lrt_hook hook, enum smtp_verb verb, const char *arg,
         const struct smtp_param *params, int n_params)
{
    s->hook_verb = verb;
    free(s->hook_arg);
    s->hook_arg = strdup(arg ? arg : "");
    strv_clear(&s->hook_params);
    for (int i = 0; i < n_params; i++) {
        char word[LINE_MAX_BYTES + 1];
        snprintf(word, sizeof(word), "%s%s%s", params[i].keyword, params[i].value ? "=" : "",
                 params[i].value ? params[i].value : "");
        strv_push(&s->hook_params, word);
    }
    enum session_state resume = s->state;
    session_enter(s, SESSION_HOOK);
    s->hook_resume = resume;
    struct lrt_call *call = lrt_call_hook(s->ls, hook, s->hook_arg, &s->hook_params, hook_done, s);
    if (call != NULL)
        s->call = call;
}

/* The reply to a command is queued: the wait for the next line starts now (a command that
 * went to a hook starts it when the hook answers, in session_enter). */
static void
await_command(struct session *s)
{
    if (s->state == SESSION_COMMAND)
        event_base_gettimeofday_cached(s->g->base, &s->command_since);
}

/* Reads one command line. Returns false when no complete line is buffered yet. */
static bool
read_command(struct session *s, struct evbuffer *in)
{
    size_t eol_len = 0;
    struct evbuffer_ptr eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
    if (eol.pos < 0) {
        /* No line end yet: past the limit, what we have is thrown away as it comes. */
        size_t avail = evbuffer_get_length(in);
        if (avail > LINE_MAX_BYTES) {
            evbuffer_drain(in, avail);
            s->discarding = true;
        }
        return false;
    }
    size_t len = (size_t)eol.pos;
    if (s->discarding || len > LINE_MAX_BYTES) {
        evbuffer_drain(in, len + eol_len);
        s->discarding = false;
        session_reply_const(s, "500 5.5.2 Error: line too long");
        await_command(s);
        return true;
    }
    char line[LINE_MAX_BYTES + 1];
    evbuffer_remove(in, line, len);
    evbuffer_drain(in, eol_len);
    commands_dispatch(s, line, len);
    await_command(s);
    return true;
}

static void
greet(struct session *s)
{
    s->greeted = true;
    session_reply(s, "220 %s luasmtpd %s ESMTP", s->g->hostname, LUASMTPD_VERSION);
    await_command(s);
}

/* The hook's answer: a 4xx/5xx reply refuses the command; nil (or a 2xx reply, sent in place
 * of ours for MAIL and RCPT) lets it go on. A failing hook refuses with 4xx. */
static void
hook_done(void *arg, enum lrt_outcome outcome, const char *text, size_t len)
{
    struct session *s = arg;
    s->call = NULL;
    session_enter(s, s->hook_resume);
    enum smtp_verb verb = s->hook_verb;
    struct buf wire = {0};
    int code = 0;
    if (outcome == LRT_REPLY) {
        code = smtp_reply_format(text, len, &wire);
        if (code == -1) {
            log_error("session %lu: a hook returned an invalid reply: %.80s", s->id, text);
            outcome = LRT_FAILED;
        }
    }
    if (outcome == LRT_FAILED) {
        buf_reset(&wire);
        if (verb == SMTP_VERB_UNKNOWN)
            buf_printf(&wire, "421 4.3.0 %s Error: the script failed; try again later\r\n",
                       s->g->hostname);
        else
            buf_append_str(&wire, "451 4.3.0 Error: the script failed; try again later\r\n");
        code = 451;
    }
    if (code >= 400) {
        session_reply_bytes(s, wire.data, wire.len);
        if (verb == SMTP_VERB_MAIL)
            session_reset_transaction(s);
        if (verb == SMTP_VERB_UNKNOWN)
            session_close_after_flush(s);
    } else if (verb == SMTP_VERB_UNKNOWN) {
        if (s->g->cfg->greet_delay_ms > 0) {
            /* on_timer greets once the delay is over, unless the client talks first. */
            struct timeval delay = {.tv_sec = s->g->cfg->greet_delay_ms / 1000,
                                    .tv_usec = (s->g->cfg->greet_delay_ms % 1000) * 1000};
            evtimer_add(s->timer, &delay);
        } else {
            greet(s);
        }
    } else if (verb == SMTP_VERB_HELO || verb == SMTP_VERB_EHLO) {
        commands_accept_helo(s, s->hook_arg, verb == SMTP_VERB_EHLO);
    } else {
        commands_accept_path(s, verb, code != 0 ? wire.data : NULL, wire.len);
    }
    buf_free(&wire);
    enforce_error_limit(s);
    shut_down_if_idle(s);
    session_pump(s);
}

static void
on_handler_done(void *arg, enum lrt_outcome outcome, const char *text, size_t len)
{
    struct session *s = arg;
    s->call = NULL;
    struct buf wire = {0};
    int code = 250;
    switch (outcome) {
    case LRT_DEFAULT:
        buf_append_str(&wire, "250 2.0.0 OK\r\n");
        break;
    case LRT_REPLY:
        code = smtp_reply_format(text, len, &wire);
        if (code != -1)
            break;
        log_error("session %lu: process_message returned an invalid reply: %.80s", s->id, text);
        /* fall through */
    case LRT_FAILED:
        code = 451;
        buf_reset(&wire);
        buf_append_str(&wire, "451 4.3.0 Error: the message handler failed; try again later\r\n");
        break;
    }
    log_info("session %lu: message %lu from <%s> for %zu recipient(s), %zu bytes, id %s: %d "
             "(generation %u)",
             s->id, ++s->messages, s->env.mailfrom ? s->env.mailfrom : "", s->env.rcpts.n,
             s->decoder.size, s->txn_id, code, lrt_session_generation(s->ls));
    /* A client that sends many messages may RSET or NOOP between each: --max-junk counts
     * the junk since the last message accepted. */
    if (code >= 200 && code < 300) {
        s->junk = 0;
        if (s->g->proven == NULL)
            s->g->proven = proven_clients_new(PROVEN_CLIENTS, PROVEN_TTL_SEC);
        struct timeval now;
        event_base_gettimeofday_cached(s->g->base, &now);
        proven_clients_record(s->g->proven, s->peer_addr, now.tv_sec);
        s->proven = true;
    }
    s->message_reply = true;
    session_reply_bytes(s, wire.data, wire.len);
    s->message_reply = false;
    buf_free(&wire);
    session_reset_transaction(s);
    session_enter(s, SESSION_COMMAND);
    shut_down_if_idle(s);
    session_pump(s);
}

/* DATA is decoded this much at a time, so the room made for the worst case stays small. */
#define DATA_SLICE (16 * 1024)
#define DATA_GROWTH_MIN (64 * 1024)
#define DATA_FIRST_MAX (256 * 1024)

/* The DATA memory budget: this process's share of --data-memory, for every byte its sessions
 * hold for a message from the DATA command until the message is freed (its transfer ended or
 * its handler returned). 0: no limit. */
static size_t
data_budget(const struct session_group *g)
{
    return config_data_budget(g->cfg);
}

/* A tenth of the budget is kept for proven clients (s->proven): a flood of transfers from
 * clients that never delivered cannot keep the server's correspondents out. */
static bool
data_room(const struct session *s, size_t more)
{
    const struct session_group *g = s->g;
    size_t budget = data_budget(g);
    if (budget != 0 && !s->proven)
        budget -= budget / 10;
    return budget == 0 || (g->data_in_use <= budget && more <= budget - g->data_in_use);
}

/* Of a kind of line a flood brings by the thousand a second, the first in each
 * REFUSED_REPORT_SEC is logged, saying how many were not since the one before. Returns false
 * for one not to log; else fills `more` with "" or " (and N more WHAT in the last T s)". */
static bool
log_burst_pass(struct session_group *g, struct log_burst *b, const char *what, char *more,
               size_t size)
{
    struct timeval now, since;
    event_base_gettimeofday_cached(g->base, &now);
    evutil_timersub(&now, &b->logged, &since);
    if (evutil_timerisset(&b->logged) && since.tv_sec < REFUSED_REPORT_SEC) {
        b->unlogged++;
        return false;
    }
    more[0] = '\0';
    if (b->unlogged > 0)
        snprintf(more, size, " (and %u more %s in the last %ld s)", b->unlogged, what,
                 (long)since.tv_sec);
    b->unlogged = 0;
    b->logged = now;
    return true;
}

/* Only this changes s->data_held, and the group's count with it. */
static void
data_hold(struct session *s, size_t bytes)
{
    s->g->data_in_use = s->g->data_in_use - s->data_held + bytes;
    s->data_held = bytes;
}

enum session_data_fit
session_data_fit(struct session *s, size_t size)
{
    struct session_group *g = s->g;
    size_t budget = data_budget(g);
    if (budget == 0 || size == 0 || data_room(s, size))
        return SESSION_DATA_FITS;
    if (size > budget)
        return SESSION_DATA_NEVER;
    char more[96];
    if (log_burst_pass(g, &g->budget, "budget refusals", more, sizeof(more)))
        log_warn("session %lu: MAIL with SIZE=%zu refused (452): DATA memory budget: %zu of %zu "
                 "bytes in use%s",
                 s->id, size, g->data_in_use, budget, more);
    return SESSION_DATA_FULL;
}

bool
session_data_begin(struct session *s)
{
    struct session_group *g = s->g;
    size_t limit = g->cfg->size_limit;
    smtp_data_init(&s->decoder, limit);
    buf_free(&s->message);
    data_hold(s, 0);
    /* SIZE= tells us roughly how much is coming: one allocation instead of many. */
    size_t hint = s->env.size_hint;
    if (limit && hint > limit)
        hint = limit;
    /* Without a hint, room for a typical message: growing from nothing costs several copies.
     * A hint buys at most DATA_FIRST_MAX before any byte came: SIZE= is the client's word, and
     * memory charged for bytes that never come would let a few silent clients hold the whole
     * budget. */
    size_t want = hint > 0 ? hint + hint / 16 : 8192;
    if (want > DATA_FIRST_MAX)
        want = DATA_FIRST_MAX;
    if (limit && want > limit)
        want = limit;
    /* A declared size that does not fit beside the DATA in flight is refused now, not once
     * the client has sent most of it (a check, not a reservation). */
    size_t needed = want > hint ? want : hint;
    if (!data_room(s, needed)) {
        char more[96];
        if (log_burst_pass(g, &g->budget, "budget refusals", more, sizeof(more)))
            log_warn("session %lu: DATA refused (452): DATA memory budget: %zu of %zu bytes in "
                     "use, %zu more needed, id %s%s",
                     s->id, g->data_in_use, data_budget(g), needed, s->txn_id, more);
        return false;
    }
    /* A failure here is not one yet: the decoder's own growth tries again, and fails with 451. */
    if (buf_set_capacity(&s->message, want) == 0)
        data_hold(s, s->message.cap);
    return true;
}

static void
finish_data(struct session *s)
{
    if (s->decoder.overflow || s->decoder.failed) {
        s->message_reply = true;
        if (s->decoder.overflow)
            session_reply_const(s, "552 5.3.4 Error: Too much mail data");
        else
            session_reply_const(s, "451 4.3.0 Error: out of memory");
        s->message_reply = false;
        log_info("session %lu: message from <%s> refused: %zu bytes%s, id %s", s->id,
                 s->env.mailfrom, s->decoder.size,
                 s->decoder.overflow ? " over the size limit" : "", s->txn_id);
        session_reset_transaction(s);
        session_enter(s, SESSION_COMMAND);
        return;
    }
    /* The replies so far go out first: a client known to be gone gets no handler run (a relay
     * whose answer nobody would hear, so a retry would make a second copy). */
    session_flush(s);
    if (s->write_failed) {
        log_info("session %lu: client left before its message was handled: message from <%s> "
                 "discarded, %zu bytes, id %s",
                 s->id, s->env.mailfrom ? s->env.mailfrom : "", s->decoder.size, s->txn_id);
        session_reset_transaction(s);
        session_enter(s, SESSION_COMMAND);
        return;
    }
    session_enter(s, SESSION_HANDLER);
    /* From here the message is the Lua string process_message gets (our buffer goes once it is
     * copied): its length stays counted until the handler returns, memory we hold meanwhile. */
    data_hold(s, s->message.len);
    struct lrt_message msg = {.env = &s->env, .data = &s->message, .id = s->txn_id};
    /* on_handler_done may run before this returns; it leaves s->call NULL then. */
    struct lrt_call *call = lrt_process_message(s->ls, &msg, on_handler_done, s);
    if (call != NULL)
        s->call = call;
}

/* The transfer would take the group past its DATA budget: it ends now, with its memory, so the
 * transfers that fit can finish; the client may try again later (4xx). Nothing reaches the
 * handler. */
static void
data_over_budget(struct session *s, struct evbuffer *in, size_t more)
{
    struct session_group *g = s->g;
    char unlogged[96];
    if (log_burst_pass(g, &g->budget, "budget refusals", unlogged, sizeof(unlogged)))
        log_warn("session %lu: DATA memory budget: %zu of %zu bytes in use, the message from "
                 "<%s> needs %zu more after %zu bytes: ended with 421, %zu bytes freed, %zu in "
                 "use now, id %s%s",
                 s->id, g->data_in_use, data_budget(g), s->env.mailfrom ? s->env.mailfrom : "",
                 more, s->decoder.size, s->data_held, g->data_in_use - s->data_held, s->txn_id,
                 unlogged);
    session_reset_transaction(s);
    evbuffer_drain(in, evbuffer_get_length(in));
    session_reply(s, "421 4.3.1 %s Insufficient system storage, closing connection", g->hostname);
    session_close_after_flush(s);
}

/* Makes room in the message for what the decoder may store from `piece` more bytes, charged to
 * the budget before it is allocated. The budget is about RSS, so it counts the buffer's
 * capacity (what malloc was asked for), not the bytes stored; buf's doubling would leave up to
 * half of a big buffer counted but unused, so DATA grows it by a quarter at a time (at least
 * DATA_GROWTH_MIN): each byte is still copied a bounded number of times (5 on average at
 * worst; glibc moves big blocks with mremap, without copying). Near the budget it grows only by
 * what the piece needs. false: the budget cannot hold it, and the transfer was ended. */
static bool
data_make_room(struct session *s, struct evbuffer *in, size_t piece)
{
    struct buf *m = &s->message;
    size_t limit = s->decoder.limit;
    if (s->decoder.overflow || s->decoder.failed)
        return true; /* nothing more is stored */
    size_t need = m->len + SMTP_DATA_DECODED_MAX(piece);
    if (limit != 0 && need > limit)
        need = limit; /* the decoder stores nothing past the limit */
    if (need <= m->cap)
        return true;
    size_t grown = m->cap + (m->cap / 4 > DATA_GROWTH_MIN ? m->cap / 4 : DATA_GROWTH_MIN);
    if (grown < need)
        grown = need;
    if (limit != 0 && grown > limit)
        grown = limit;
    size_t cap = grown;
    if (!data_room(s, cap - s->data_held)) {
        cap = need; /* near the budget: only what this piece may store */
        if (!data_room(s, cap - s->data_held)) {
            data_over_budget(s, in, cap - s->data_held);
            return false;
        }
    }
    if (buf_set_capacity(m, cap) == -1) {
        /* As when the decoder runs out itself: the rest is dropped and the answer is 451. */
        s->decoder.failed = true;
        buf_free(m);
    }
    data_hold(s, m->cap);
    return true;
}

/* Feeds buffered DATA bytes to the decoder. Returns false when it needs more input. */
static bool
read_data(struct session *s, struct evbuffer *in)
{
    struct evbuffer_iovec vec[16];
    while (!smtp_data_done(&s->decoder)) {
        /* Not a peek count of 0: an empty buffer may still hold an empty chain. */
        if (evbuffer_get_length(in) == 0)
            return false;
        int n = evbuffer_peek(in, -1, NULL, vec, 16);
        if (n <= 0)
            return false;
        if (n > 16)
            n = 16;
        size_t used = 0;
        for (int i = 0; i < n && !smtp_data_done(&s->decoder); i++) {
            const char *p = vec[i].iov_base;
            for (size_t off = 0; off < vec[i].iov_len && !smtp_data_done(&s->decoder);) {
                size_t piece =
                    vec[i].iov_len - off < DATA_SLICE ? vec[i].iov_len - off : DATA_SLICE;
                if (!data_make_room(s, in, piece))
                    return true;
                size_t took = smtp_data_decode(&s->decoder, p + off, piece, &s->message);
                off += took;
                used += took;
            }
        }
        if (s->decoder.overflow && s->message.data != NULL) {
            /* Over the size limit: the rest is read and dropped and the message refused at its
             * end, so its memory goes now. */
            buf_free(&s->message);
            data_hold(s, 0);
        }
        evbuffer_drain(in, used);
    }
    finish_data(s);
    return true;
}

/* The client half-closed and everything it sent before has been answered (RFC 5321 3.8: a
 * server that sees the connection end closes it). An unfinished line is no command; an
 * unfinished message is no message: it never reaches the handler. */
static void
end_of_input(struct session *s, struct evbuffer *in)
{
    size_t left = evbuffer_get_length(in);
    if (s->state == SESSION_DATA) {
        log_info("session %lu: client left during DATA: message from <%s> discarded after %zu "
                 "bytes, id %s",
                 s->id, s->env.mailfrom ? s->env.mailfrom : "", s->decoder.size, s->txn_id);
        session_reset_transaction(s);
    } else if (left > 0 || s->discarding) {
        log_info("session %lu: client left with an unterminated command line (%zu bytes)", s->id,
                 left);
    } else {
        log_debug("session %lu: end of input", s->id);
    }
    evbuffer_drain(in, left);
    session_close_after_flush(s);
}

static void
session_pump(struct session *s)
{
    if (s->pumping)
        return;
    s->pumping = true;
    struct evbuffer *in = bufferevent_get_input(s->bev);
    struct evbuffer *out = bufferevent_get_output(s->bev);
    while (!s->write_failed && (s->state == SESSION_COMMAND || s->state == SESSION_DATA)) {
        /* Replies of this pump wait in s->out: they count, or one read of small commands
         * with long replies would queue many times OUTPUT_PAUSE. Once they are handed on,
         * only what the socket did not take holds us back; on_write resumes when it has. */
        if (evbuffer_get_length(out) + evbuffer_get_length(s->out) > OUTPUT_PAUSE) {
            session_flush(s);
            if (evbuffer_get_length(out) > 0)
                break;
        }
        bool progressed = s->state == SESSION_DATA ? read_data(s, in) : read_command(s, in);
        if (!progressed) {
            if (s->read_eof && !s->write_failed)
                end_of_input(s, in);
            break;
        }
        enforce_error_limit(s);
        shut_down_if_idle(s);
    }
    s->pumping = false;
    session_flush(s);
}

static void
on_read(struct bufferevent *bev, void *arg)
{
    (void)bev;
    struct session *s = arg;
    event_base_gettimeofday_cached(s->g->base, &s->last_activity);
    if (!s->greeted && s->state != SESSION_CLOSING) {
        /* RFC 5321 3.1: the client waits for the greeting. Bots that do not are what
         * Postfix's postscreen catches with its pregreet test. */
        log_info("session %lu: %s talked before the greeting, refused", s->id, s->peer_addr);
        if (s->call != NULL) {
            lrt_call_cancel(s->call);
            s->call = NULL;
        }
        session_reply(s, "554 5.5.0 %s Error: talked before the greeting", s->g->hostname);
        session_close_after_flush(s);
        return;
    }
    session_pump(s);
}

/* One timer per session, re-armed only when it fires: a read costs no timer update. It also
 * sends a delayed greeting. */
static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct session *s = arg;
    const struct config *cfg = s->g->cfg;
    struct timeval now, idle, left;
    struct timeval limit = {.tv_sec = s->state == SESSION_DATA ? cfg->data_timeout : cfg->timeout};
    event_base_gettimeofday_cached(s->g->base, &now);
    if (!s->greeted && s->state == SESSION_COMMAND) {
        greet(s);
        session_flush(s);
        s->last_activity = now;
    }
    /* A command line must be whole within the timeout of its prompt: its bytes do not extend
     * it. In DATA the timeout is between two pieces. */
    evutil_timersub(&now, s->state == SESSION_COMMAND ? &s->command_since : &s->last_activity,
                    &idle);
    if (s->state == SESSION_CLOSING) {
        /* Only the last reply is left to send: a client that does not read it keeps its slot
         * CLOSING_TIMEOUT_SEC at most, not a whole --timeout. */
        if (limit.tv_sec > CLOSING_TIMEOUT_SEC)
            limit.tv_sec = CLOSING_TIMEOUT_SEC;
        if (evutil_timercmp(&idle, &limit, >=)) {
            log_info("session %lu: the client does not read its replies, dropped", s->id);
            session_free(s);
            return;
        }
    } else if (!client_owes_us(s)) {
        s->last_activity = now;
        idle.tv_sec = idle.tv_usec = 0;
    } else if (evutil_timercmp(&idle, &limit, >=) || data_too_slow(s, &now)) {
        log_info("session %lu: %s, closing", s->id,
                 evutil_timercmp(&idle, &limit, >=) ? "timeout" : "data rate too low");
        /* A DATA's memory goes now, not once the 421 is flushed (a client that does not read
         * would hold it until then), as at the DATA budget. */
        if (s->state == SESSION_DATA) {
            session_reset_transaction(s);
            struct evbuffer *in = bufferevent_get_input(s->bev);
            evbuffer_drain(in, evbuffer_get_length(in));
        }
        session_reply(s, "421 4.4.2 %s Error: timeout exceeded", s->g->hostname);
        session_close_after_flush(s);
        s->last_activity = now;
        idle.tv_sec = idle.tv_usec = 0;
    }
    evutil_timersub(&limit, &idle, &left);
    /* A DATA is looked at every few seconds, for its rate. */
    if (s->state == SESSION_DATA && cfg->min_data_rate > 0 && left.tv_sec >= 5) {
        left.tv_sec = 5;
        left.tv_usec = 0;
    }
    evtimer_add(s->timer, &left);
}

static void
on_write(struct bufferevent *bev, void *arg)
{
    struct session *s = arg;
    /* The client read all we sent: for one that half-closed, the only sign it is still there,
     * so a slow reader of a long pipeline is not timed out while it keeps reading. */
    event_base_gettimeofday_cached(s->g->base, &s->last_activity);
    /* Only complete commands make replies, so this is no way to stretch a line: the prompt
     * for the next one has only now reached a client that reads slowly. */
    if (s->state == SESSION_COMMAND)
        s->command_since = s->last_activity;
    if (s->state == SESSION_CLOSING) {
        session_flush(s);
        if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
            session_free(s);
        return;
    }
    session_pump(s);
}

static void
on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct session *s = arg;
    /* A FIN only says the client sends no more; it may still read (a pipelining client that
     * half-closes after QUIT does). Its commands are answered, a hook or the handler that waits
     * included, and the pump closes once they are. libevent stops reading by itself. */
    if ((what & BEV_EVENT_EOF) && !(what & (BEV_EVENT_ERROR | BEV_EVENT_WRITING))) {
        s->read_eof = true;
        if (s->state != SESSION_CLOSING)
            session_pump(s);
        return;
    }
    /* A reset or a failed write: nobody is left to answer, so what waits is cancelled. */
    if (what & BEV_EVENT_ERROR)
        log_debug("session %lu: connection error", s->id);
    if (s->state == SESSION_HANDLER || s->state == SESSION_DATA || s->state == SESSION_HOOK ||
        (s->state == SESSION_COMMAND && s->txn_id[0] != '\0'))
        log_info("session %lu: client left during %s%s%s", s->id,
                 s->state == SESSION_DATA      ? "DATA"
                 : s->state == SESSION_HANDLER ? "the handler"
                 : s->state == SESSION_HOOK    ? "a hook"
                                               : "the transaction",
                 s->txn_id[0] ? ", id " : "", s->txn_id);
    session_free(s);
}

/* How s ranks as a session to close for a newcomer; false when it may not be closed: while
 * we owe it something (a hook, the handler or an upstream working, a greeting not yet sent,
 * its last reply being flushed), or before it has waited min_wait seconds. A session
 * waiting for a command line ranks above any DATA (it sends nothing at all), longest wait
 * first; among DATA, the one that sent least per second since it began: a big upload
 * streaming fast is the last to go, a drip the first. */
static bool
room_rank(const struct session *s, const struct timeval *now, long min_wait, bool *idle,
          double *rank)
{
    struct timeval waited;
    if (s->state == SESSION_COMMAND && s->greeted)
        evutil_timersub(now, &s->command_since, &waited);
    else if (s->state == SESSION_DATA)
        evutil_timersub(now, &s->data_started, &waited);
    else
        return false;
    if (waited.tv_sec < min_wait)
        return false;
    double seconds = (double)waited.tv_sec + (double)waited.tv_usec / 1e6;
    *idle = s->state == SESSION_COMMAND;
    *rank = *idle ? seconds : seconds / ((double)s->decoder.size + 1.0);
    return true;
}

/* A newcomer to a full server gets the slot of the session that has waited longest on its
 * client (room_rank): as nginx closes idle keep-alive connections when it runs out, a slot
 * held by a client that sends nothing is worth less than one that came to talk. Nothing is
 * lost: no 2xx was given for what the closed one had in flight, and a 421 tells it to come
 * back. A newcomer from a proven client needs a shorter wait of the unproven sessions
 * (MAKE_ROOM_PROVEN_WAIT_SEC). O(n) over the sessions, only when the server is full. Returns
 * whether a session was closed. */
static bool
make_room(struct session_group *g, const struct session *newcomer)
{
    struct timeval now;
    struct session *victim = NULL;
    bool victim_idle = false;
    double victim_rank = 0;
    event_base_gettimeofday_cached(g->base, &now);
    for (struct session *s = g->head; s != NULL; s = s->next) {
        bool idle;
        double rank;
        long min_wait = newcomer->proven && !s->proven ? MAKE_ROOM_PROVEN_WAIT_SEC
                                                       : MAKE_ROOM_MIN_WAIT_SEC;
        if (s == newcomer || !room_rank(s, &now, min_wait, &idle, &rank))
            continue;
        /* The loop's clock is coarse (a few ms): of equal waits, the older connection goes. */
        if (victim == NULL || (idle && !victim_idle) ||
            (idle == victim_idle &&
             (rank > victim_rank || (rank == victim_rank && s->id < victim->id)))) {
            victim = s;
            victim_idle = idle;
            victim_rank = rank;
        }
    }
    if (victim == NULL)
        return false;
    struct timeval waited;
    evutil_timersub(&now, victim_idle ? &victim->command_since : &victim->data_started, &waited);
    /* A discarded message is told each time, as a client leaving during DATA is (its id may
     * be asked about); idle sessions closed by the thousand are counted. */
    char more[96];
    if (!victim_idle)
        log_info("session %lu: closed to make room for a new connection: in DATA for %ld s, "
                 "message from <%s> discarded after %zu bytes, id %s",
                 victim->id, (long)waited.tv_sec, victim->env.mailfrom ? victim->env.mailfrom : "",
                 victim->decoder.size, victim->txn_id);
    else if (log_burst_pass(g, &g->evictions, "idle ones closed", more, sizeof(more)))
        log_info("session %lu: closed to make room for a new connection: waited %ld s for a "
                 "command%s",
                 victim->id, (long)waited.tv_sec, more);
    /* Its message and input go now, not once the 421 is flushed, as at the DATA budget. */
    session_reset_transaction(victim);
    struct evbuffer *in = bufferevent_get_input(victim->bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    session_reply(victim, "421 4.3.2 %s Too busy, closing idle connection; try again later",
                  g->hostname);
    /* Freed now, not once its 421 is flushed: a victim that does not read would otherwise
     * keep its descriptor while the newcomer takes another, and the count passes the cap.
     * Safe here: this runs from the accept, with none of the victim's callbacks running, and
     * it owes nothing (no call). The 421 is a courtesy; what the socket takes now is sent. */
    session_flush(victim);
    session_free(victim);
    return true;
}

/* Refusals at the caps, logged as log_burst_pass does; s NULL: a connection was taken, so a
 * flood that ended is told with a line of its own once its interval is over. */
static void
log_refusal(struct session_group *g, const struct session *s, const char *why)
{
    char more[96];
    if (s == NULL) {
        struct timeval now, since;
        event_base_gettimeofday_cached(g->base, &now);
        evutil_timersub(&now, &g->refusals.logged, &since);
        if (since.tv_sec < REFUSED_REPORT_SEC)
            return;
        log_warn("refused %u more connections in the last %ld s", g->refusals.unlogged,
                 (long)since.tv_sec);
        g->refusals.unlogged = 0;
        g->refusals.logged = now;
        return;
    }
    if (log_burst_pass(g, &g->refusals, "refused", more, sizeof(more)))
        log_warn("session %lu: refused %s: %s%s", s->id, s->peer_addr, why, more);
}

void
session_start(struct session_group *g, int fd, const struct sockaddr *addr, int addrlen)
{
    struct session *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        close(fd);
        return;
    }
    s->bev = bufferevent_socket_new(g->base, fd, BEV_OPT_CLOSE_ON_FREE);
    s->out = evbuffer_new();
    s->timer = evtimer_new(g->base, on_timer, s);
    if (s->bev == NULL || s->out == NULL || s->timer == NULL) {
        if (s->bev != NULL)
            bufferevent_free(s->bev);
        else
            close(fd);
        if (s->out != NULL)
            evbuffer_free(s->out);
        if (s->timer != NULL)
            event_free(s->timer);
        free(s);
        return;
    }
    s->g = g;
    s->id = ++g->next_id;
    s->next = g->head;
    if (g->head)
        g->head->prev = s;
    g->head = s;
    g->count++;

    char port[NI_MAXSERV];
    if (getnameinfo(addr, (socklen_t)addrlen, s->peer_addr, sizeof(s->peer_addr), port,
                    sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        strcpy(s->peer_addr, "unknown");
        strcpy(port, "0");
    }
    s->peer_port = atoi(port);
    /* Replies are already batched per read; Nagle would only hold the last one back. */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    bufferevent_setcb(s->bev, on_read, on_write, on_event, s);
    bufferevent_setwatermark(s->bev, EV_READ, 0, INPUT_HIGH_WATERMARK);
    bufferevent_set_max_single_read(s->bev, MAX_SINGLE_READ);
    session_enter(s, SESSION_COMMAND);
    struct timeval limit = {.tv_sec = g->cfg->timeout};
    evtimer_add(s->timer, &limit);
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
    log_debug("session %lu: connection from %s port %d", s->id, s->peer_addr, s->peer_port);
    /* The caps are checked before any Lua runs, so a flood costs no script time. */
    if (g->per_client == NULL)
        g->per_client = peer_count_new();
    unsigned from_client = g->per_client ? peer_count_add(g->per_client, s->peer_addr) : 0;
    s->counted = from_client > 0;
    struct timeval now;
    event_base_gettimeofday_cached(g->base, &now);
    s->proven = proven_clients_contains(g->proven, s->peer_addr, now.tv_sec);
    /* The per-client cap first: a client over its share takes no one else's slot. */
    bool per_client = from_client > g->cfg->max_per_client;
    bool total = !per_client && g->count > g->cfg->max_connections && !make_room(g, s);
    if (!total && !per_client && g->refusals.unlogged > 0)
        log_refusal(g, NULL, NULL);
    if (total || per_client) {
        log_refusal(g, s, total ? "too many connections" : "too many connections from this client");
        session_reply(s, "421 4.7.0 %s Error: too many connections%s, try again later", g->hostname,
              total ? "" : " from your address");
        session_close_after_flush(s);
        return;
    }
    s->ls = lrt_session_new(g->rt, s->id, s->peer_addr, s->peer_port);
    if (s->ls == NULL) {
        session_reply(s, "421 4.3.0 %s Error: out of memory, closing connection", g->hostname);
        session_close_after_flush(s);
        return;
    }
    session_ask_hook(s, LRT_HOOK_CONNECT, SMTP_VERB_UNKNOWN, NULL, NULL, 0);
}

void
session_group_drain(struct session_group *g)
{
    g->draining = true;
    for (struct session *s = g->head; s != NULL; s = s->next)
        shut_down_if_idle(s);
}

void
session_group_free(struct session_group *g)
{
    session_group_close_all(g);
    peer_count_free(g->per_client);
    g->per_client = NULL;
    proven_clients_free(g->proven);
    g->proven = NULL;
}

void
session_group_close_all(struct session_group *g)
{
    while (g->head != NULL) {
        struct session *s = g->head;
        if (s->state == SESSION_HANDLER || s->state == SESSION_DATA || s->state == SESSION_HOOK)
            log_warn("session %lu: closed by shutdown during a transaction", s->id);
        session_free(s);
    }
}
