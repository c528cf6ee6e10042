/* One mail transaction's state (see transaction.h): its id, what it holds against the DATA
 * budget, and its transfer rate. It decides nothing about the budget itself (data_budget.c
 * does) and never replies. */
#include "luasmtpd/transaction.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void
tx_init(struct transaction *tx, size_t *in_use)
{
    tx->in_use = in_use;
}

/* Unique for the life of the server, across workers and their restarts: the time of this
 * process's first transaction (seconds, 8 hex digits) and its pid (6, as Linux pids stay below
 * 2^22) make a prefix no other process has (two processes share a pid only after the pid space
 * wrapped, never within a second), and a counter follows. The widths are fixed, so no two
 * prefix-and-counter pairs print alike. Upper-case hex: an RFC 5322 atom, as Received: wants
 * for its id, and short. */
void
tx_begin(struct transaction *tx, struct tx_ids *ids)
{
    if (ids->count == 0) {
        ids->epoch = (unsigned long)time(NULL);
        ids->pid = (unsigned long)getpid();
    }
    snprintf(tx->id, sizeof(tx->id), "%08lX%06lX%lX", ids->epoch, ids->pid, ++ids->count);
}

void
tx_reset(struct transaction *tx)
{
    tx->id[0] = '\0';
    envelope_reset(&tx->env);
    strv_clear(&tx->replies);
    buf_free(&tx->message);
    memset(&tx->bdat, 0, sizeof(tx->bdat));
    tx_hold(tx, 0);
}

void
tx_hold(struct transaction *tx, size_t bytes)
{
    *tx->in_use = *tx->in_use - tx->held + bytes;
    tx->held = bytes;
}

void
tx_begin_data(struct transaction *tx, size_t size_limit)
{
    smtp_data_init(&tx->decoder, size_limit);
    buf_free(&tx->message);
    tx_hold(tx, 0);
}

void
tx_rate_start(struct transaction *tx, const struct timeval *now)
{
    tx->rate[0] = (struct tx_rate_sample){.at = *now, .size = 0};
    tx->rate_n = tx->rate_next = 1;
    tx->data_started = *now;
}

void
tx_begin_discard(struct transaction *tx, uint64_t size, const char *reply)
{
    smtp_data_init(&tx->decoder, 0);
    smtp_bdat_begin_discard(&tx->bdat, size, reply);
}

size_t
tx_feed(struct transaction *tx, const char *p, size_t n)
{
    if (tx->bdat.in_chunk) {
        n = smtp_bdat_take(&tx->bdat, n);
        if (tx->bdat.discard) {
            tx->decoder.size += n; /* seen, never stored: the rate still sees it come */
            return n;
        }
    }
    size_t took = smtp_data_decode(&tx->decoder, p, n, &tx->message);
    if (tx->decoder.overflow && tx->message.data != NULL) {
        /* Over the size limit: the rest is read and dropped and the message refused at its
         * end, so its memory goes now. */
        buf_free(&tx->message);
        tx_hold(tx, 0);
    }
    return took;
}

static double
tx_seconds_since(const struct timeval *then, const struct timeval *now)
{
    return (double)(now->tv_sec - then->tv_sec) + (double)(now->tv_usec - then->tv_usec) / 1e6;
}

/* A slow drip must not hold a connection slot for ever, nor may a fast start buy a long drip:
 * from TX_RATE_GRACE_SEC into a DATA on, the bytes since the newest sample at least that old
 * must have come at `rate`. The window is thus the grace period plus at most one sample step,
 * and a drip after a burst is cut within about that long of its start. */
bool
tx_too_slow(struct transaction *tx, const struct timeval *now, unsigned rate)
{
    const struct tx_rate_sample *newest =
        &tx->rate[(tx->rate_next + TX_RATE_SAMPLES - 1) % TX_RATE_SAMPLES];
    /* The looks come every 5 s, but a short --data-timeout makes them closer: a minimum step
     * keeps the ring covering more than the window. */
    if (tx_seconds_since(&newest->at, now) >= TX_RATE_SAMPLE_SEC) {
        tx->rate[tx->rate_next] = (struct tx_rate_sample){.at = *now, .size = tx->decoder.size};
        tx->rate_next = (tx->rate_next + 1) % TX_RATE_SAMPLES;
        if (tx->rate_n < TX_RATE_SAMPLES)
            tx->rate_n++;
    }
    const struct tx_rate_sample *from = NULL;
    for (unsigned i = 0; i < tx->rate_n; i++) {
        const struct tx_rate_sample *r = &tx->rate[i];
        if (tx_seconds_since(&r->at, now) >= TX_RATE_GRACE_SEC &&
            (from == NULL || timercmp(&r->at, &from->at, >)))
            from = r;
    }
    return from != NULL &&
           (double)(tx->decoder.size - from->size) < tx_seconds_since(&from->at, now) * rate;
}
