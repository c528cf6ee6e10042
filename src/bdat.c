/* BDAT (RFC 3030 CHUNKING) for a session (see bdat.h). A chunk's bytes follow its command
 * without waiting for an answer, so every BDAT whose size can be read has its bytes read, even
 * one that is refused: they are dropped and the refusal comes after them (RFC 3030 2), and what
 * follows them is the next command. No I/O here beyond the session's replies. */
#include "luasmtpd/bdat.h"

#include <event2/event.h>
#include <inttypes.h>
#include <string.h>

#include "luasmtpd/config.h"
#include "luasmtpd/conn.h"
#include "luasmtpd/data_budget.h"
#include "luasmtpd/log.h"

#define BDAT_USAGE "501 5.5.4 Syntax: BDAT chunk-size [LAST]"

/* A refused chunk: read and dropped in the DATA state, as a chunk that is taken (the same
 * timeouts bound it), then `reply` (whole wire lines) is sent. */
static void
bdat_refuse(struct session *s, uint64_t size, const char *reply)
{
    tx_begin_discard(&s->tx, size, reply);
    conn_enter(s, SESSION_DATA);
}

bool
bdat_check(struct session *s, char *arg)
{
    struct smtp_bdat_command cmd;
    enum smtp_bdat_parse parsed = smtp_bdat_parse(arg, &cmd);
    if (parsed == SMTP_BDAT_BAD_SIZE) {
        /* Where the chunk ends is unknown: taking the bytes after this line as commands would
         * let a message's text give commands in the client's name (as SMTP smuggling does),
         * so the session ends here, its transaction with it. */
        log_info("session %lu: BDAT without a chunk size (\"%.40s\"), closing", s->id, arg);
        conn_end_transaction(s);
        conn_reply_const(s, BDAT_USAGE);
        conn_reply(s,
                   "421 4.5.0 %s Error: the data after a bad BDAT cannot be read, closing "
                   "connection",
                   s->g->hostname);
        conn_close_after_flush(s);
        return false;
    }
    const char *refusal = NULL;
    if (s->helo == NULL) {
        refusal = "503 5.5.1 Error: send HELO first\r\n";
    } else if (s->tx.env.rcpts.n == 0) {
        refusal = "503 5.5.1 Error: need RCPT command\r\n";
    } else if (parsed == SMTP_BDAT_BAD_MARKER) {
        /* The chunk still ends where its size says; the message it belonged to does not
         * survive a chunk that could not be taken. */
        conn_end_transaction(s);
        refusal = BDAT_USAGE "\r\n";
    }
    if (refusal != NULL) {
        bdat_refuse(s, cmd.size, refusal);
        return false;
    }
    s->tx.bdat.command = cmd;
    return true;
}

/* A transfer that fell below --min-data-rate since its first chunk ends before the next one,
 * as a slow DATA does: small chunks, each quick, must not add up to a drip that holds the
 * connection for ever. */
static bool
bdat_too_slow(struct session *s)
{
    unsigned rate = s->g->cfg->min_data_rate;
    struct timeval now;
    event_base_gettimeofday_cached(s->g->base, &now);
    if (rate == 0 || !tx_too_slow(&s->tx, &now, rate))
        return false;
    log_info("session %lu: data rate too low across BDAT chunks, closing", s->id);
    conn_end_transaction(s);
    conn_reply(s, "421 4.4.2 %s Error: timeout exceeded", s->g->hostname);
    conn_close_after_flush(s);
    return true;
}

void
bdat_proceed(struct session *s, const char *reply, size_t len)
{
    (void)reply;
    (void)len;
    struct transaction *tx = &s->tx;
    struct smtp_bdat_command cmd = tx->bdat.command;
    if (tx_chunked(tx) && bdat_too_slow(s))
        return;
    if (!tx_chunked(tx)) {
        /* The first chunk: the message buffer is charged to the DATA budget as at DATA. A
         * client sends no more chunks after a 4xx (RFC 3030 2), so the transaction ends. */
        if (!data_budget_begin(s)) {
            conn_end_transaction(s);
            bdat_refuse(s, cmd.size, "452 4.3.1 Insufficient system storage\r\n");
            return;
        }
        /* RFC 3030 2: no dot-stuffing, and no terminator inside the data. */
        tx->decoder.chunked = true;
    }
    /* Past the size limit nothing more is stored (the next feed frees what was); the bytes
     * are read and dropped, and the chunk is answered 552. */
    if (!smtp_bdat_begin(&tx->bdat, &cmd, tx->decoder.limit))
        tx->decoder.overflow = true;
    conn_enter(s, SESSION_DATA);
}

bool
bdat_chunk_done(struct session *s, struct evbuffer *in)
{
    struct transaction *tx = &s->tx;
    if (!tx->bdat.in_chunk)
        return true;
    struct smtp_bdat chunk = smtp_bdat_end(&tx->bdat);
    if (chunk.discard) {
        conn_send(s, CONN_REPLY_COMMAND, chunk.reply, strlen(chunk.reply));
        conn_enter(s, SESSION_COMMAND);
        return false;
    }
    /* Over the limit (or out of memory), the message ends with this chunk's answer, not at
     * LAST: the client sends no more chunks after a 5xx (RFC 3030 2), and any it pipelined
     * find no transaction and are dropped with a 503. */
    if (tx->decoder.overflow || tx->decoder.failed)
        return true;
    if (chunk.command.last) {
        if (!data_budget_make_room(s, in, 0))
            return false;
        smtp_data_end(&tx->decoder, &tx->message);
        return true;
    }
    conn_reply(s, "250 2.0.0 %" PRIu64 " octets received", chunk.command.size);
    conn_enter(s, SESSION_COMMAND);
    return false;
}

bool
bdat_refused(struct session *s, const char *verb)
{
    if (!tx_chunked(&s->tx))
        return false;
    /* RFC 3030 2: DATA and BDAT are not mixed in one transaction; the client must RSET. */
    conn_reply(s, "503 5.5.1 Error: %s after BDAT", verb);
    return true;
}
