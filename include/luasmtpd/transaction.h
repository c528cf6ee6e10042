/* One mail transaction, apart from the connection that carries it (a connection has many):
 * its id, envelope, DATA decoder, message buffer, the bytes it holds against the DATA budget
 * and its transfer rate. No I/O, no replies, no Lua: the session decides what to answer. */
#ifndef LUASMTPD_TRANSACTION_H
#define LUASMTPD_TRANSACTION_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/time.h>

#include "luasmtpd/buf.h"
#include "luasmtpd/envelope.h"
#include "luasmtpd/smtp_bdat.h"
#include "luasmtpd/smtp_data.h"

/* A transaction id: 8 + 6 hex digits of prefix and a counter of at most 16. */
#define TX_ID_MAX 32
/* Once a DATA has run this long, its last this many seconds must keep up the minimum rate. */
#define TX_RATE_GRACE_SEC 30
/* The byte count is sampled when the timer looks (every 5 s), at most one sample in this many
 * seconds, and kept in a ring that covers more than the window. */
#define TX_RATE_SAMPLE_SEC 4
#define TX_RATE_SAMPLES 10

/* What makes ids unique within the process (one per session group). */
struct tx_ids {
    unsigned long epoch; /* this process's first transaction time and pid, set then */
    unsigned long pid;
    unsigned long count;
};

struct transaction {
    char id[TX_ID_MAX]; /* "" between transactions */
    struct envelope env;
    /* process_message's table of replies: one per recipient, in RCPT order ("": not named). */
    struct strv replies;
    struct smtp_data_decoder decoder;
    struct smtp_bdat bdat; /* its BDAT chunks, or a refused chunk being dropped */
    struct buf message;
    /* The bytes this message holds against the DATA budget (only tx_hold writes it), and the
     * count of all transactions' held bytes that it keeps in step. */
    size_t held;
    size_t *in_use;
    /* The DATA's byte counts as the timer saw them, the oldest overwritten first. */
    struct tx_rate_sample {
        struct timeval at;
        size_t size;
    } rate[TX_RATE_SAMPLES];
    unsigned rate_n, rate_next;
    struct timeval data_started; /* when the DATA began: how long it held its slot */
};

/* `in_use` is the group's count this transaction's held bytes are part of. */
void tx_init(struct transaction *tx, size_t *in_use);
/* MAIL: the transaction gets its id. */
void tx_begin(struct transaction *tx, struct tx_ids *ids);
/* The transaction ends: envelope and message go, and their bytes leave the budget. */
void tx_reset(struct transaction *tx);
/* Only this changes tx->held, and the group's count with it. */
void tx_hold(struct transaction *tx, size_t bytes);
/* DATA: a fresh decoder and an empty message, which holds nothing yet. */
void tx_begin_data(struct transaction *tx, size_t size_limit);
/* The DATA's transfer starts now: its rate is measured from here. */
void tx_rate_start(struct transaction *tx, const struct timeval *now);
/* A refused BDAT chunk: its bytes are dropped as they come (counted for the rate), then
 * `reply` is due. */
void tx_begin_discard(struct transaction *tx, uint64_t size, const char *reply);
/* Decodes up to n bytes into the message; returns how many it took: inside a BDAT chunk, no
 * more than the chunk has left. */
size_t tx_feed(struct transaction *tx, const char *p, size_t n);

/* Whatever is being read is all in: the DATA to its final dot, or the BDAT chunk's bytes. */
static inline bool
tx_piece_read(const struct transaction *tx)
{
    return tx->bdat.in_chunk ? tx->bdat.left == 0 : smtp_data_done(&tx->decoder);
}

/* The message comes in BDAT chunks: one was taken (between two, the client owes the next). */
static inline bool
tx_chunked(const struct transaction *tx)
{
    return tx->bdat.chunks > 0;
}
/* Whether the DATA fell below `rate` bytes a second (see transaction.c); samples as it looks. */
bool tx_too_slow(struct transaction *tx, const struct timeval *now, unsigned rate);

#endif
