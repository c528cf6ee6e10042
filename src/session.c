/* One SMTP connection over a bufferevent: framing, DATA streaming, timeouts, the caps, and
 * the handler's call. Commands are framed by lines with a length cap while buffering and
 * carried out by the command table (commands.c); DATA is decoded as it arrives; the message
 * goes to the handler through the runtime's C interface, and no command is read while a hook or
 * the handler decides. A client's half-close ends only its input: what it sent before is
 * answered; only a connection that is gone (reset, failed write) cancels work in flight.
 * Only conn_enter() changes s->state; only event callbacks (and session_make_room, from the accept)
 * free a session, never session_pump(), so nothing below the pump ever touches a freed one. */
#include "luasmtpd/session.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "luasmtpd/auth.h"
#include "luasmtpd/bdat.h"
#include "luasmtpd/commands.h"
#include "luasmtpd/config.h"
#include "luasmtpd/conn.h"
#include "luasmtpd/data_budget.h"
#include "luasmtpd/lmtp.h"
#include "luasmtpd/msg_answer.h"
#include "luasmtpd/log.h"
#include "luasmtpd/lua_runtime.h"
#include "luasmtpd/networks.h"
#include "luasmtpd/peer_count.h"
#include "luasmtpd/proven_clients.h"
#include "luasmtpd/smtp_reply.h"
#include "luasmtpd/tls.h"

/* Past this much unsent output we stop reading commands until the client reads its replies:
 * a pipelining client that never reads cannot make us buffer without bound. */
#define OUTPUT_PAUSE (64 * 1024)
/* Input buffered while a handler decides, or a command is dispatched, is capped here. */
#define INPUT_HIGH_WATERMARK (256 * 1024)
#define MAX_SINGLE_READ (256 * 1024)
/* DATA is decoded this much at a time, so the room made for the worst case stays small. */
#define DATA_SLICE (16 * 1024)

static void session_pump(struct session *s);
static void session_on_read(struct bufferevent *bev, void *arg);
static void session_on_write(struct bufferevent *bev, void *arg);
static void session_on_event(struct bufferevent *bev, short what, void *arg);
static void session_switch_tls_when_flushed(struct session *s);

/* Only a session that has waited this long on its client may lose its slot to a newcomer
 * (session_make_room): long enough that a client between two commands, or pausing in a DATA, is
 * never taken for idle; short enough that a flood of idle connections cannot keep the server
 * full. */
#define MAKE_ROOM_MIN_WAIT_SEC 5
/* A newcomer from a proven client (one that had a message accepted within PROVEN_TTL_SEC) may
 * take the slot of an unproven session that waited only this long: under a flood of
 * connections that never send mail, the clients that do still get in. A second is far more
 * than a client takes between two commands, and an idle attacker's wait soon passes it. */
#define MAKE_ROOM_PROVEN_WAIT_SEC 1
#define PROVEN_CLIENTS 10000
#define PROVEN_TTL_SEC 3600
#define CLOSING_TIMEOUT_SEC 30

static void
session_free(struct session *s)
{
    struct session_group *g = s->g;
    if (s->call != NULL)
        lrt_call_cancel(s->call);
    if (s->in_tls)
        tls_close_notify(s->bev);
    bufferevent_free(s->bev);
    evbuffer_free(s->out);
    event_free(s->timer);
    tx_reset(&s->tx);
    free(s->helo);
    commands_release(s);
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

/* Reads one command line. Returns false when no complete line is buffered yet. */
static bool
session_read_command(struct session *s, struct evbuffer *in)
{
    size_t eol_len = 0;
    size_t cap = auth_line_cap(s); /* <= AUTH_LINE_MAX */
    struct evbuffer_ptr eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
    if (eol.pos < 0) {
        /* No line end yet: past the limit, what we have is thrown away as it comes. */
        size_t avail = evbuffer_get_length(in);
        if (avail > cap) {
            evbuffer_drain(in, avail);
            s->discarding = true;
        }
        return false;
    }
    size_t len = (size_t)eol.pos;
    if (s->discarding || len > cap) {
        evbuffer_drain(in, len + eol_len);
        s->discarding = false;
        commands_overlong(s);
        conn_await_command(s);
        return true;
    }
    char line[AUTH_LINE_MAX + 1];
    evbuffer_remove(in, line, len);
    evbuffer_drain(in, eol_len);
    commands_dispatch(s, line, len);
    conn_await_command(s);
    return true;
}

static void
session_on_handler_done(void *arg, enum lrt_outcome outcome, const char *text, size_t len)
{
    struct session *s = arg;
    s->call = NULL;
    struct lmtp_answer a = {0};
    msg_answer_handler(s, outcome, text, len, &a);
    log_info("session %lu: message %lu from <%s> for %zu recipient(s), %zu bytes, id %s: %s "
             "(generation %u)",
             s->id, ++s->messages, s->tx.env.mailfrom ? s->tx.env.mailfrom : "", s->tx.env.rcpts.n,
             s->tx.decoder.size, s->tx.id, a.codes, lrt_session_generation(s->ls));
    /* A client that sends many messages may RSET or NOOP between each: --max-junk counts
     * the junk since the last message accepted. */
    if (a.accepted > 0) {
        s->junk = 0;
        if (s->g->proven == NULL)
            s->g->proven = proven_clients_new(PROVEN_CLIENTS, PROVEN_TTL_SEC);
        struct timeval now;
        event_base_gettimeofday_cached(s->g->base, &now);
        proven_clients_record(s->g->proven, s->peer_addr, now.tv_sec);
        s->proven = true;
    }
    conn_send(s, CONN_REPLY_MESSAGE, a.wire.data, a.wire.len);
    lmtp_answer_free(&a);
    conn_end_transaction(s);
    conn_enter(s, SESSION_COMMAND);
    conn_shut_down_if_idle(s);
    session_pump(s);
}

static void
session_finish_data(struct session *s)
{
    if (s->tx.decoder.overflow || s->tx.decoder.failed) {
        msg_answer_refuse(s, s->tx.decoder.overflow ? "552 5.3.4 Error: Too much mail data"
                                                    : "451 4.3.0 Error: out of memory");
        log_info("session %lu: message from <%s> refused: %zu bytes%s, id %s", s->id,
                 s->tx.env.mailfrom, s->tx.decoder.size,
                 s->tx.decoder.overflow ? " over the size limit" : "", s->tx.id);
        conn_end_transaction(s);
        conn_enter(s, SESSION_COMMAND);
        return;
    }
    /* The replies so far go out first: a client known to be gone gets no handler run (a relay
     * whose answer nobody would hear, so a retry would make a second copy). */
    conn_flush(s);
    if (s->write_failed) {
        log_info("session %lu: client left before its message was handled: message from <%s> "
                 "discarded, %zu bytes, id %s",
                 s->id, s->tx.env.mailfrom ? s->tx.env.mailfrom : "", s->tx.decoder.size, s->tx.id);
        conn_end_transaction(s);
        conn_enter(s, SESSION_COMMAND);
        return;
    }
    conn_enter(s, SESSION_HANDLER);
    /* From here the message is the Lua string process_message gets (our buffer goes once it is
     * copied): its length stays counted until the handler returns, memory we hold meanwhile. */
    tx_hold(&s->tx, s->tx.message.len);
    struct lrt_message msg = {
        .env = &s->tx.env, .data = &s->tx.message, .id = s->tx.id, .replies = &s->tx.replies};
    /* session_on_handler_done may run before this returns; it leaves s->call NULL then. */
    struct lrt_call *call = lrt_process_message(s->ls, &msg, session_on_handler_done, s);
    if (call != NULL)
        s->call = call;
}

/* Feeds buffered DATA bytes (or a BDAT chunk's) to the decoder. Returns false when it needs
 * more input. */
static bool
session_read_data(struct session *s, struct evbuffer *in)
{
    struct evbuffer_iovec vec[16];
    while (!tx_piece_read(&s->tx)) {
        /* Not a peek count of 0: an empty buffer may still hold an empty chain. */
        if (evbuffer_get_length(in) == 0)
            return false;
        int n = evbuffer_peek(in, -1, NULL, vec, 16);
        if (n <= 0)
            return false;
        if (n > 16)
            n = 16;
        size_t used = 0;
        for (int i = 0; i < n && !tx_piece_read(&s->tx); i++) {
            const char *p = vec[i].iov_base;
            for (size_t off = 0; off < vec[i].iov_len && !tx_piece_read(&s->tx);) {
                size_t piece =
                    vec[i].iov_len - off < DATA_SLICE ? vec[i].iov_len - off : DATA_SLICE;
                if (!data_budget_make_room(s, in, piece))
                    return true;
                size_t took = tx_feed(&s->tx, p + off, piece);
                off += took;
                used += took;
            }
        }
        evbuffer_drain(in, used);
    }
    if (bdat_chunk_done(s, in))
        session_finish_data(s);
    return true;
}

/* The client half-closed and everything it sent before has been answered (RFC 5321 3.8: a
 * server that sees the connection end closes it). An unfinished line is no command; an
 * unfinished message is no message: it never reaches the handler. */
static void
session_end_of_input(struct session *s, struct evbuffer *in)
{
    size_t left = evbuffer_get_length(in);
    if (s->state == SESSION_DATA) {
        log_info("session %lu: client left during DATA: message from <%s> discarded after %zu "
                 "bytes, id %s",
                 s->id, s->tx.env.mailfrom ? s->tx.env.mailfrom : "", s->tx.decoder.size, s->tx.id);
        conn_end_transaction(s);
    } else if (left > 0 || s->discarding) {
        log_info("session %lu: client left with an unterminated command line (%zu bytes)", s->id,
                 left);
    } else {
        log_debug("session %lu: end of input", s->id);
    }
    evbuffer_drain(in, left);
    conn_close_after_flush(s);
}

/* A new bufferevent's settings, plain or TLS. */
static void
session_setup_bev(struct session *s)
{
    bufferevent_setcb(s->bev, session_on_read, session_on_write, session_on_event, s);
    bufferevent_setwatermark(s->bev, EV_READ, 0, INPUT_HIGH_WATERMARK);
    bufferevent_set_max_single_read(s->bev, MAX_SINGLE_READ);
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

/* STARTTLS's 220 is on the socket: from the next byte the connection speaks TLS. What the
 * client sent after STARTTLS in plaintext goes with the old bufferevent, unread: a command
 * injected there must never run inside TLS (CVE-2011-0411). */
static void
session_switch_tls_when_flushed(struct session *s)
{
    if (!s->tls_switch || s->in_tls || evbuffer_get_length(bufferevent_get_output(s->bev)) > 0)
        return;
    size_t stale = evbuffer_get_length(bufferevent_get_input(s->bev));
    if (stale > 0)
        log_info("session %lu: %zu bytes sent after STARTTLS, before the TLS handshake, discarded",
                 s->id, stale);
    struct bufferevent *bev = tls_server_accept(s->g->tls, TLS_STARTTLS, s->g->base, s->fd);
    if (bev == NULL) {
        log_error("session %lu: out of memory starting TLS, closing", s->id);
        conn_enter(s, SESSION_CLOSING);
        bufferevent_trigger(s->bev, EV_WRITE,
                            BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
        return;
    }
    /* The socket passes to the new one: the old must not close it. Freeing it is safe inside
     * its own callbacks: libevent defers its end until they return. */
    bufferevent_setfd(s->bev, -1);
    bufferevent_free(s->bev);
    s->bev = bev;
    s->in_tls = true;
    session_setup_bev(s);
}

/* The handshake is done. After STARTTLS the session starts over (RFC 3207 4.2): the HELO/EHLO
 * name and any transaction are forgotten, and a new EHLO is taken. On the implicit-TLS
 * listener this is where the connection opens. */
static void
session_tls_ready(struct session *s)
{
    struct tls_info info;
    tls_describe(s->bev, &info);
    log_info("session %lu: TLS %s, %s (%d bits)%s%s", s->id, info.version, info.cipher, info.bits,
             info.subject[0] ? ", client certificate " : "", info.subject);
    lrt_session_set_tls(s->ls, info.version, info.cipher, info.bits,
                        info.subject[0] ? info.subject : NULL);
    conn_enter(s, SESSION_COMMAND);
    if (!s->tls_switch) {
        commands_connect(s);
        return;
    }
    s->tls_switch = false;
    conn_set_greeting(s, NULL, false);
    auth_forget(s);
    conn_await_command(s);
    conn_shut_down_if_idle(s);
    session_pump(s);
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
         * only what the socket did not take holds us back; session_on_write resumes when it has. */
        if (evbuffer_get_length(out) + evbuffer_get_length(s->out) > OUTPUT_PAUSE) {
            conn_flush(s);
            if (evbuffer_get_length(out) > 0)
                break;
        }
        bool progressed =
            s->state == SESSION_DATA ? session_read_data(s, in) : session_read_command(s, in);
        if (!progressed) {
            if (s->read_eof && !s->write_failed)
                session_end_of_input(s, in);
            break;
        }
        conn_after_command(s);
    }
    s->pumping = false;
    conn_flush(s);
    session_switch_tls_when_flushed(s);
}

static void
session_on_read(struct bufferevent *bev, void *arg)
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
        conn_reply(s, "554 5.5.0 %s Error: talked before the greeting", s->g->hostname);
        conn_close_after_flush(s);
        return;
    }
    session_pump(s);
}

/* The DATA's rate, looked at when the timer fires (tx_too_slow). */
static bool
session_data_too_slow(struct session *s, const struct timeval *now)
{
    unsigned rate = s->g->cfg->min_data_rate;
    return s->state == SESSION_DATA && rate != 0 && tx_too_slow(&s->tx, now, rate);
}

/* One timer per session, re-armed only when it fires: a read costs no timer update. It also
 * sends a delayed greeting. */
static void
session_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct session *s = arg;
    const struct config *cfg = s->g->cfg;
    struct timeval now, idle, left;
    struct timeval limit = {.tv_sec = s->state == SESSION_DATA ? cfg->data_timeout : cfg->timeout};
    event_base_gettimeofday_cached(s->g->base, &now);
    if (!s->greeted && s->state == SESSION_COMMAND) {
        conn_greet(s);
        conn_flush(s);
        s->last_activity = now;
    }
    /* A command line must be whole within the timeout of its prompt: its bytes do not extend
     * it. In DATA the timeout is between two pieces. */
    evutil_timersub(&now, s->state == SESSION_COMMAND ? &s->command_since : &s->last_activity,
                    &idle);
    if (s->state == SESSION_HANDSHAKE && evutil_timercmp(&idle, &limit, >=)) {
        /* No reply can reach a client that is halfway into TLS. */
        log_info("session %lu: TLS handshake timed out after %u s, closing", s->id, cfg->timeout);
        session_free(s);
        return;
    }
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
    } else if (!conn_client_owes_us(s)) {
        s->last_activity = now;
        idle.tv_sec = idle.tv_usec = 0;
    } else if (evutil_timercmp(&idle, &limit, >=) || session_data_too_slow(s, &now)) {
        log_info("session %lu: %s, closing", s->id,
                 evutil_timercmp(&idle, &limit, >=) ? "timeout" : "data rate too low");
        /* A DATA's memory goes now, not once the 421 is flushed (a client that does not read
         * would hold it until then), as at the DATA budget. */
        if (s->state == SESSION_DATA) {
            conn_end_transaction(s);
            struct evbuffer *in = bufferevent_get_input(s->bev);
            evbuffer_drain(in, evbuffer_get_length(in));
        }
        conn_reply(s, "421 4.4.2 %s Error: timeout exceeded", s->g->hostname);
        conn_close_after_flush(s);
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
session_on_write(struct bufferevent *bev, void *arg)
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
        conn_flush(s);
        if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
            session_free(s);
        return;
    }
    if (s->state == SESSION_HANDSHAKE) {
        session_switch_tls_when_flushed(s);
        return;
    }
    session_pump(s);
}

/* Over TLS libevent reports a reset as an end of input: it takes the failed read for a dirty
 * shutdown (allowed, as most clients close without close_notify). The kernel still tells the
 * two apart: after a FIN the socket waits in CLOSE_WAIT, after a reset it is CLOSED. A reset
 * must cancel what waits, as it does in plaintext, or a relay goes on for nobody. */
static bool
session_peer_reset(const struct session *s)
{
    struct tcp_info info;
    socklen_t len = sizeof(info);
    return getsockopt(s->fd, IPPROTO_TCP, TCP_INFO, &info, &len) == 0 &&
           info.tcpi_state == TCP_CLOSE;
}

static void
session_on_event(struct bufferevent *bev, short what, void *arg)
{
    struct session *s = arg;
    if (what & BEV_EVENT_CONNECTED) {
        /* A connection refused at the caps before its handshake ended is CLOSING: its 421
         * goes out over TLS, and it ends as any other. */
        if (s->state == SESSION_HANDSHAKE)
            session_tls_ready(s);
        return;
    }
    if (s->state == SESSION_HANDSHAKE && s->in_tls) {
        char why[256];
        tls_failure(bev, why, sizeof(why));
        log_info("session %lu: TLS handshake with %s failed: %s", s->id, s->peer_addr, why);
        session_free(s);
        return;
    }
    if ((what & BEV_EVENT_EOF) && s->in_tls && session_peer_reset(s))
        what |= BEV_EVENT_ERROR;
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
        (s->state == SESSION_COMMAND && s->tx.id[0] != '\0'))
        log_info("session %lu: client left during %s%s%s", s->id,
                 s->state == SESSION_DATA      ? "DATA"
                 : s->state == SESSION_HANDLER ? "the handler"
                 : s->state == SESSION_HOOK    ? "a hook"
                                               : "the transaction",
                 s->tx.id[0] ? ", id " : "", s->tx.id);
    session_free(s);
}

/* How s ranks as a session to close for a newcomer; false when it may not be closed: while
 * we owe it something (a hook, the handler or an upstream working, a greeting not yet sent,
 * its last reply being flushed), or before it has waited min_wait seconds. A session
 * waiting for a command line, or for a TLS handshake the client does not finish, ranks above
 * any DATA (it sends nothing at all), longest wait first; among DATA, the one that sent least
 * per second since it began: a big upload streaming fast is the last to go, a drip the first. */
static bool
session_room_rank(const struct session *s, const struct timeval *now, long min_wait, bool *idle,
                  double *rank)
{
    struct timeval waited;
    if (s->state == SESSION_COMMAND && s->greeted)
        evutil_timersub(now, &s->command_since, &waited);
    else if (s->state == SESSION_HANDSHAKE)
        evutil_timersub(now, &s->last_activity, &waited);
    else if (s->state == SESSION_DATA)
        evutil_timersub(now, &s->tx.data_started, &waited);
    else
        return false;
    if (waited.tv_sec < min_wait)
        return false;
    double seconds = (double)waited.tv_sec + (double)waited.tv_usec / 1e6;
    *idle = s->state != SESSION_DATA;
    *rank = *idle ? seconds : seconds / ((double)s->tx.decoder.size + 1.0);
    return true;
}

/* A newcomer to a full server gets the slot of the session that has waited longest on its
 * client (session_room_rank): as nginx closes idle keep-alive connections when it runs out, a
 * slot held by a client that sends nothing is worth less than one that came to talk. Nothing is
 * lost: no 2xx was given for what the closed one had in flight, and a 421 tells it to come
 * back. A newcomer from a proven client needs a shorter wait of the unproven sessions
 * (MAKE_ROOM_PROVEN_WAIT_SEC). O(n) over the sessions, only when the server is full. Returns
 * whether a session was closed. */
static bool
session_make_room(struct session_group *g, const struct session *newcomer)
{
    struct timeval now;
    struct session *victim = NULL;
    bool victim_idle = false;
    double victim_rank = 0;
    event_base_gettimeofday_cached(g->base, &now);
    for (struct session *s = g->head; s != NULL; s = s->next) {
        bool idle;
        double rank;
        long min_wait =
            newcomer->proven && !s->proven ? MAKE_ROOM_PROVEN_WAIT_SEC : MAKE_ROOM_MIN_WAIT_SEC;
        if (s == newcomer || !session_room_rank(s, &now, min_wait, &idle, &rank))
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
    bool handshake = victim->state == SESSION_HANDSHAKE;
    evutil_timersub(&now,
                    handshake     ? &victim->last_activity
                    : victim_idle ? &victim->command_since
                                  : &victim->tx.data_started,
                    &waited);
    /* A discarded message is told each time, as a client leaving during DATA is (its id may
     * be asked about); idle sessions closed by the thousand are counted. */
    char more[96];
    if (!victim_idle)
        log_info("session %lu: closed to make room for a new connection: in DATA for %ld s, "
                 "message from <%s> discarded after %zu bytes, id %s",
                 victim->id, (long)waited.tv_sec,
                 victim->tx.env.mailfrom ? victim->tx.env.mailfrom : "", victim->tx.decoder.size,
                 victim->tx.id);
    else if (log_burst_pass(&g->evictions, &now, "idle ones closed", more, sizeof(more)))
        log_info("session %lu: closed to make room for a new connection: waited %ld s %s%s",
                 victim->id, (long)waited.tv_sec,
                 handshake ? "in the TLS handshake" : "for a command", more);
    /* Its message and input go now, not once the 421 is flushed, as at the DATA budget. */
    conn_end_transaction(victim);
    struct evbuffer *in = bufferevent_get_input(victim->bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    conn_reply(victim, "421 4.3.2 %s Too busy, closing idle connection; try again later",
               g->hostname);
    /* Freed now, not once its 421 is flushed: a victim that does not read would otherwise
     * keep its descriptor while the newcomer takes another, and the count passes the cap.
     * Safe here: this runs from the accept, with none of the victim's callbacks running, and
     * it owes nothing (no call). The 421 is a courtesy; what the socket takes now is sent. */
    conn_flush(victim);
    session_free(victim);
    return true;
}

/* Refusals at the caps, logged as log_burst_pass does; s NULL: a connection was taken, so a
 * flood that ended is told with a line of its own once its interval is over. */
static void
session_log_refusal(struct session_group *g, const struct session *s, const char *why)
{
    char more[96];
    struct timeval now, since;
    event_base_gettimeofday_cached(g->base, &now);
    if (s == NULL) {
        evutil_timersub(&now, &g->refusals.logged, &since);
        if (since.tv_sec < LOG_BURST_INTERVAL_SEC)
            return;
        log_warn("refused %u more connections in the last %ld s", g->refusals.unlogged,
                 (long)since.tv_sec);
        g->refusals.unlogged = 0;
        g->refusals.logged = now;
        return;
    }
    if (log_burst_pass(&g->refusals, &now, "refused", more, sizeof(more)))
        log_warn("session %lu: refused %s: %s%s", s->id, s->peer_addr, why, more);
}

void
session_start(struct session_group *g, int fd, const struct sockaddr *addr, int addrlen,
              bool implicit_tls)
{
    struct session *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        close(fd);
        return;
    }
    s->fd = fd;
    s->in_tls = implicit_tls;
    s->bev = implicit_tls ? tls_server_accept(g->tls, TLS_IMPLICIT, g->base, fd)
                          : bufferevent_socket_new(g->base, fd, BEV_OPT_CLOSE_ON_FREE);
    s->out = evbuffer_new();
    s->timer = evtimer_new(g->base, session_on_timer, s);
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
    tx_init(&s->tx, &g->data_in_use);
    s->pump = session_pump;
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

    conn_enter(s, SESSION_COMMAND);
    struct timeval limit = {.tv_sec = g->cfg->timeout};
    evtimer_add(s->timer, &limit);
    session_setup_bev(s);
    log_debug("session %lu: connection from %s port %d", s->id, s->peer_addr, s->peer_port);
    /* The caps are checked before any Lua runs, so a flood costs no script time. */
    if (g->per_client == NULL)
        g->per_client = peer_count_new();
    unsigned from_client = g->per_client ? peer_count_add(g->per_client, s->peer_addr) : 0;
    s->counted = from_client > 0;
    struct timeval now;
    event_base_gettimeofday_cached(g->base, &now);
    s->proven = proven_clients_contains(g->proven, s->peer_addr, now.tv_sec);
    /* The per-client cap first: a client over its share takes no one else's slot. Trusted
     * networks have none (Postfix's $mynetworks): a local rig or benchmark opens many. */
    s->trusted = networks_contains(&g->cfg->trusted, s->peer_addr);
    bool per_client = !s->trusted && from_client > g->cfg->max_per_client;
    bool total = !per_client && g->count > g->cfg->max_connections && !session_make_room(g, s);
    if (!total && !per_client && g->refusals.unlogged > 0)
        session_log_refusal(g, NULL, NULL);
    if (total || per_client) {
        session_log_refusal(
            g, s, total ? "too many connections" : "too many connections from this client");
        conn_reply(s, "421 4.7.0 %s Error: too many connections%s, try again later", g->hostname,
                   total ? "" : " from your address");
        conn_close_after_flush(s);
        return;
    }
    s->ls = lrt_session_new(g->rt, s->id, s->peer_addr, s->peer_port, s->trusted);
    if (s->ls == NULL) {
        conn_reply(s, "421 4.3.0 %s Error: out of memory, closing connection", g->hostname);
        conn_close_after_flush(s);
        return;
    }
    /* On the implicit-TLS listener the connection opens once the handshake is done. */
    if (implicit_tls)
        conn_enter(s, SESSION_HANDSHAKE);
    else
        commands_connect(s);
}

void
session_group_drain(struct session_group *g)
{
    g->draining = true;
    for (struct session *s = g->head, *next; s != NULL; s = next) {
        next = s->next;
        /* Halfway into TLS a session owes nothing, as an idle one, and no 421 can reach it:
         * it goes now rather than hold the shutdown for its whole grace period. */
        if (s->state == SESSION_HANDSHAKE) {
            log_info("session %lu: closed by shutdown in the TLS handshake", s->id);
            session_free(s);
            continue;
        }
        conn_shut_down_if_idle(s);
    }
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
