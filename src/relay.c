/* One relay transaction over a relay connection (see relay.h): MAIL, the RCPTs (pipelined
 * when offered), DATA only when someone was accepted, and the final reply or replies. Command
 * lines are built in growable buffers: an address is as long as the caller made it. */
#include "luasmtpd/relay.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "luasmtpd/buf.h"

struct relay {
    struct relay_conn *conn;
    relay_done_fn done;
    void *arg;
    char *mailfrom;
    char **rcpts;
    size_t n_rcpts;
    const char *data;
    size_t len;
    bool smtputf8;
    struct dsn_mail dsn;
    struct dsn_rcpt *rcpt_dsn; /* NULL, or n_rcpts of them */
    bool mail_failed;
    size_t rcpt_replies_seen;
    size_t accepted;
    size_t *accepted_at; /* the indexes of the accepted recipients, in RCPT order */
    size_t data_replies_seen;
    struct relay_result result;
};

static bool
relay_has_8bit(const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)data[i] & 0x80)
            return true;
    return false;
}

/* 8-bit bytes in the header section (up to the first empty line): internationalised header
 * fields, which need SMTPUTF8 (RFC 6532) where an 8-bit body needs only 8BITMIME. */
static bool
relay_header_has_8bit(const char *data, size_t len)
{
    const char *p = data, *end = data + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = nl ? nl : end;
        size_t n = (size_t)(line_end - p);
        if (n == 0 || (n == 1 && *p == '\r'))
            return false;
        if (relay_has_8bit(p, n))
            return true;
        p = nl ? nl + 1 : end;
    }
    return false;
}

/* RFC 6531 3.2: an address beyond ASCII, or header fields beyond ASCII in a transaction the
 * client marked SMTPUTF8, cannot go to a server without SMTPUTF8. A client that marked pure
 * ASCII mail SMTPUTF8 asked for nothing the server must have. */
static bool
relay_needs_smtputf8(const struct relay *r)
{
    if (relay_has_8bit(r->mailfrom, strlen(r->mailfrom)))
        return true;
    for (size_t i = 0; i < r->n_rcpts; i++)
        if (relay_has_8bit(r->rcpts[i], strlen(r->rcpts[i])))
            return true;
    return r->smtputf8 && relay_header_has_8bit(r->data, r->len);
}

static void
relay_set_reply(struct relay_reply *dst, int code, const char *text)
{
    free(dst->text);
    dst->code = code;
    dst->text = strdup(text ? text : "");
}

static void
relay_free(struct relay *r)
{
    relay_conn_close(r->conn);
    for (size_t i = 0; i < r->n_rcpts; i++) {
        free(r->rcpts[i]);
        free(r->result.rcpt_replies[i].text);
    }
    free(r->rcpts);
    free(r->accepted_at);
    free(r->result.rcpt_replies);
    free(r->result.reply.text);
    free(r->mailfrom);
    free(r->rcpt_dsn);
    free(r);
}

static void
relay_finish(struct relay *r, enum relay_failure kind)
{
    r->result.kind = kind;
    r->done(r->arg, &r->result);
    relay_free(r);
}

/* The whole transaction failed with `kind`; a fatal kind carries no code. */
static void
relay_fail_with(struct relay *r, enum relay_failure kind, const struct relay_reply *reply)
{
    relay_set_reply(&r->result.reply, relay_failure_is_fatal(kind) ? 0 : reply->code, reply->text);
    relay_finish(r, kind);
}

/* A lost connection (a fatal kind) ends the transaction whatever the reply was for; true when
 * it did, and `r` is gone. */
static bool
relay_lost(struct relay *r, enum relay_failure kind, const struct relay_reply *reply)
{
    if (!relay_failure_is_fatal(kind))
        return false;
    relay_fail_with(r, kind, reply);
    return true;
}

static void
relay_on_data_reply(void *arg, enum relay_failure kind, const struct relay_reply *reply)
{
    struct relay *r = arg;
    /* DATA refused, the message refused before its end, or the connection lost: the whole
     * transaction failed (RELAY_UNKNOWN when the end of the message had gone out). */
    if (relay_failure_is_fatal(kind) || !reply->end_of_data || !relay_conn_lmtp(r->conn)) {
        relay_fail_with(r, kind, reply);
        return;
    }
    /* LMTP (RFC 2033 4.2): one reply per accepted recipient, in RCPT order. */
    relay_set_reply(&r->result.rcpt_replies[r->accepted_at[r->data_replies_seen]], reply->code,
                    reply->text);
    if (kind == RELAY_OK || r->result.reply.code == 0)
        relay_set_reply(&r->result.reply, reply->code, reply->text);
    if (++r->data_replies_seen < r->accepted)
        return;
    relay_finish(r, RELAY_OK);
}

static void
relay_on_rcpt_reply(void *arg, enum relay_failure kind, const struct relay_reply *reply)
{
    struct relay *r = arg;
    if (relay_lost(r, kind, reply))
        return;
    size_t i = r->rcpt_replies_seen++;
    relay_set_reply(&r->result.rcpt_replies[i], reply->code, reply->text);
    if (kind == RELAY_OK)
        r->accepted_at[r->accepted++] = i;
    if (r->rcpt_replies_seen < r->n_rcpts)
        return;
    if (r->mail_failed) {
        relay_finish(r, relay_reply_kind(&r->result.reply));
        return;
    }
    if (r->accepted == 0) {
        /* Every recipient refused: the per-recipient answers are the result. */
        relay_set_reply(&r->result.reply, r->result.rcpt_replies[0].code,
                        r->result.rcpt_replies[0].text);
        relay_finish(r, RELAY_OK);
        return;
    }
    if (relay_conn_data(r->conn, r->data, r->len,
                        relay_conn_lmtp(r->conn) ? (unsigned)r->accepted : 1, relay_on_data_reply,
                        r) == -1) {
        relay_set_reply(&r->result.reply, 0, "out of memory");
        relay_finish(r, RELAY_PROTOCOL);
    }
}

static void
relay_on_mail_reply(void *arg, enum relay_failure kind, const struct relay_reply *reply)
{
    struct relay *r = arg;
    if (relay_lost(r, kind, reply))
        return;
    if (kind != RELAY_OK) {
        r->mail_failed = true; /* the RCPT replies still come; then this is the result */
        relay_set_reply(&r->result.reply, reply->code, reply->text);
    }
}

/* A permanent failure of our own making, before anything of the transaction is sent. */
static void
relay_refuse(struct relay *r, int code, const char *fmt, const char *peer)
{
    struct buf text = {0};
    buf_printf(&text, fmt, peer);
    relay_set_reply(&r->result.reply, code, text.data ? text.data : "");
    buf_free(&text);
    relay_finish(r, RELAY_PERMFAIL);
}

static void
relay_on_ready(void *arg, struct relay_conn *conn, enum relay_failure kind,
               const struct relay_reply *reply)
{
    struct relay *r = arg;
    if (kind != RELAY_OK) {
        r->conn = NULL; /* already gone */
        relay_set_reply(&r->result.reply, reply->code, reply->text);
        relay_finish(r, kind);
        return;
    }
    unsigned ext = relay_conn_extensions(conn);
    bool eight_bit = relay_has_8bit(r->data, r->len);
    bool utf8 = relay_needs_smtputf8(r);
    if (utf8 && !(ext & RELAY_EXT_SMTPUTF8)) {
        relay_refuse(r, 553, "5.6.7 SMTPUTF8 is required, but was not offered by %s",
                     relay_conn_peer(conn));
        return;
    }
    if (eight_bit && !(ext & RELAY_EXT_8BITMIME)) {
        relay_refuse(r, 554, "5.6.3 8-bit data, but 8BITMIME was not offered by %s",
                     relay_conn_peer(conn));
        return;
    }
    struct buf line = {0};
    int rc = buf_printf(&line, "MAIL FROM:<%s>", r->mailfrom);
    if (rc == 0 && (ext & RELAY_EXT_SIZE))
        rc = buf_printf(&line, " SIZE=%zu", r->len);
    if (rc == 0 && eight_bit)
        rc = buf_append_str(&line, " BODY=8BITMIME");
    if (rc == 0 && (ext & RELAY_EXT_SMTPUTF8) && (utf8 || r->smtputf8))
        rc = buf_append_str(&line, " SMTPUTF8");
    bool dsn = (ext & RELAY_EXT_DSN) != 0;
    if (rc == 0 && dsn)
        rc = dsn_mail_format(&r->dsn, &line);
    if (rc == 0)
        rc =
            relay_conn_command(conn, line.data, line.len, RELAY_EXPECT_2XX, relay_on_mail_reply, r);
    for (size_t i = 0; rc == 0 && i < r->n_rcpts; i++) {
        buf_reset(&line);
        rc = buf_printf(&line, "RCPT TO:<%s>", r->rcpts[i]);
        if (rc == 0 && dsn && r->rcpt_dsn != NULL)
            rc = dsn_rcpt_format(&r->rcpt_dsn[i], &line);
        if (rc == 0)
            rc = relay_conn_command(conn, line.data, line.len, RELAY_EXPECT_2XX,
                                    relay_on_rcpt_reply, r);
    }
    buf_free(&line);
    if (rc == -1) {
        /* Whatever was queued is abandoned with the connection: no callback will come. */
        relay_set_reply(&r->result.reply, 0,
                        errno == EINVAL ? "a line break in an address" : "out of memory");
        relay_finish(r, RELAY_PROTOCOL);
    }
}

/* A CR or LF in an address would end our command line early and smuggle another in. */
static bool
relay_has_line_break(const struct relay_request *req)
{
    if (strpbrk(req->mailfrom, "\r\n") != NULL)
        return true;
    for (size_t i = 0; i < req->n_rcpts; i++)
        if (strpbrk(req->rcpts[i], "\r\n") != NULL)
            return true;
    return false;
}

struct relay *
relay_start(struct event_base *base, struct evdns_base *dns, const struct relay_request *req,
            relay_done_fn done, void *arg)
{
    if (relay_has_line_break(req)) {
        errno = EINVAL;
        return NULL;
    }
    struct relay *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->done = done;
    r->arg = arg;
    r->data = req->data;
    r->len = req->len;
    r->smtputf8 = req->smtputf8;
    r->mailfrom = strdup(req->mailfrom);
    r->rcpts = calloc(req->n_rcpts ? req->n_rcpts : 1, sizeof(char *));
    r->accepted_at = calloc(req->n_rcpts ? req->n_rcpts : 1, sizeof(size_t));
    r->result.rcpt_replies = calloc(req->n_rcpts ? req->n_rcpts : 1, sizeof(struct relay_reply));
    r->result.n_rcpts = req->n_rcpts;
    if (req->dsn != NULL)
        r->dsn = *req->dsn;
    if (req->rcpt_dsn != NULL && req->n_rcpts > 0) {
        r->rcpt_dsn = malloc(req->n_rcpts * sizeof(*r->rcpt_dsn));
        if (r->rcpt_dsn != NULL)
            memcpy(r->rcpt_dsn, req->rcpt_dsn, req->n_rcpts * sizeof(*r->rcpt_dsn));
    }
    bool ok = r->mailfrom && r->rcpts && r->accepted_at && r->result.rcpt_replies &&
              req->n_rcpts > 0 && (req->rcpt_dsn == NULL || r->rcpt_dsn != NULL);
    for (size_t i = 0; ok && i < req->n_rcpts; i++) {
        r->rcpts[i] = strdup(req->rcpts[i]);
        ok = r->rcpts[i] != NULL;
        r->n_rcpts = i + 1;
    }
    if (ok)
        r->conn = relay_conn_open(base, dns, &req->conn, relay_on_ready, r);
    if (!ok || r->conn == NULL) {
        int saved = errno;
        relay_free(r);
        errno = saved;
        return NULL;
    }
    return r;
}

void
relay_cancel(struct relay *relay)
{
    relay_free(relay);
}
