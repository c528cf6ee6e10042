/* The DATA memory budget (see data_budget.h): whether a declared size, a new DATA or the next
 * piece of one fits, and the transfer's end when it does not. It never reads input beyond
 * dropping it, and holds nothing itself: the bytes are the transaction's. */
#include "luasmtpd/data_budget.h"

#include <event2/buffer.h>
#include <event2/event.h>

#include "luasmtpd/config.h"
#include "luasmtpd/conn.h"
#include "luasmtpd/log.h"

/* DATA grows its buffer by at least this much, and a SIZE= hint buys at most DATA_FIRST_MAX. */
#define DATA_GROWTH_MIN (64 * 1024)
#define DATA_FIRST_MAX (256 * 1024)

/* 0: no limit. */
static size_t
data_budget_total(const struct session_group *g)
{
    return config_data_budget(g->cfg);
}

/* A tenth of the budget is kept for proven clients (s->proven): a flood of transfers from
 * clients that never delivered cannot keep the server's correspondents out. */
static bool
data_budget_room(const struct session *s, size_t more)
{
    const struct session_group *g = s->g;
    size_t budget = data_budget_total(g);
    if (budget != 0 && !s->proven)
        budget -= budget / 10;
    return budget == 0 || (g->data_in_use <= budget && more <= budget - g->data_in_use);
}

/* Budget refusals are logged as log_burst_pass allows; fills `more`. */
static bool
data_budget_log_pass(struct session_group *g, char *more, size_t size)
{
    struct timeval now;
    event_base_gettimeofday_cached(g->base, &now);
    return log_burst_pass(&g->budget, &now, "budget refusals", more, size);
}

enum data_budget_fit
data_budget_fit(struct session *s, size_t size)
{
    struct session_group *g = s->g;
    size_t budget = data_budget_total(g);
    if (budget == 0 || size == 0 || data_budget_room(s, size))
        return DATA_BUDGET_FITS;
    if (size > budget)
        return DATA_BUDGET_NEVER;
    char more[96];
    if (data_budget_log_pass(g, more, sizeof(more)))
        log_warn("session %lu: MAIL with SIZE=%zu refused (452): DATA memory budget: %zu of %zu "
                 "bytes in use%s",
                 s->id, size, g->data_in_use, budget, more);
    return DATA_BUDGET_FULL;
}

bool
data_budget_begin(struct session *s)
{
    struct session_group *g = s->g;
    struct transaction *tx = &s->tx;
    size_t limit = g->cfg->size_limit;
    tx_begin_data(tx, limit);
    /* SIZE= tells us roughly how much is coming: one allocation instead of many. */
    size_t hint = tx->env.size_hint;
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
    if (!data_budget_room(s, needed)) {
        char more[96];
        if (data_budget_log_pass(g, more, sizeof(more)))
            log_warn("session %lu: DATA refused (452): DATA memory budget: %zu of %zu bytes in "
                     "use, %zu more needed, id %s%s",
                     s->id, g->data_in_use, data_budget_total(g), needed, tx->id, more);
        return false;
    }
    /* A failure here is not one yet: the decoder's own growth tries again, and fails with 451. */
    if (buf_set_capacity(&tx->message, want) == 0)
        tx_hold(tx, tx->message.cap);
    return true;
}

/* The transfer would take the group past its DATA budget: it ends now, with its memory, so the
 * transfers that fit can finish; the client may try again later (4xx). Nothing reaches the
 * handler. */
static void
data_budget_over(struct session *s, struct evbuffer *in, size_t more)
{
    struct session_group *g = s->g;
    const struct transaction *tx = &s->tx;
    char unlogged[96];
    if (data_budget_log_pass(g, unlogged, sizeof(unlogged)))
        log_warn("session %lu: DATA memory budget: %zu of %zu bytes in use, the message from "
                 "<%s> needs %zu more after %zu bytes: ended with 421, %zu bytes freed, %zu in "
                 "use now, id %s%s",
                 s->id, g->data_in_use, data_budget_total(g),
                 tx->env.mailfrom ? tx->env.mailfrom : "", more, tx->decoder.size, tx->held,
                 g->data_in_use - tx->held, tx->id, unlogged);
    conn_end_transaction(s);
    evbuffer_drain(in, evbuffer_get_length(in));
    conn_reply(s, "421 4.3.1 %s Insufficient system storage, closing connection", g->hostname);
    conn_close_after_flush(s);
}

/* The budget is about RSS, so it counts the buffer's capacity (what malloc was asked for), not
 * the bytes stored; buf's doubling would leave up to half of a big buffer counted but unused,
 * so DATA grows it by a quarter at a time (at least DATA_GROWTH_MIN): each byte is still copied
 * a bounded number of times (5 on average at worst; glibc moves big blocks with mremap, without
 * copying). Near the budget it grows only by what the piece needs. The room is charged to the
 * budget before it is allocated. */
bool
data_budget_make_room(struct session *s, struct evbuffer *in, size_t piece)
{
    struct transaction *tx = &s->tx;
    struct buf *m = &tx->message;
    size_t limit = tx->decoder.limit;
    if (tx->decoder.overflow || tx->decoder.failed || tx->bdat.discard)
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
    if (!data_budget_room(s, cap - tx->held)) {
        cap = need; /* near the budget: only what this piece may store */
        if (!data_budget_room(s, cap - tx->held)) {
            data_budget_over(s, in, cap - tx->held);
            return false;
        }
    }
    if (buf_set_capacity(m, cap) == -1) {
        /* As when the decoder runs out itself: the rest is dropped and the answer is 451. */
        tx->decoder.failed = true;
        buf_free(m);
    }
    tx_hold(tx, m->cap);
    return true;
}
