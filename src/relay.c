/* One relay transaction over a relay connection (see relay.h): MAIL, the RCPTs (pipelined
 * when offered), DATA only when someone was accepted, and the final reply or replies. */
#include "luasmtpd/relay.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    bool mail_failed;
    size_t rcpt_replies_seen;
    size_t accepted;
    size_t data_replies_seen;
    struct relay_result result;
};

/* The message needs BODY=8BITMIME when a byte has the high bit set (RFC 6152). */
static bool
has_8bit(const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)data[i] & 0x80)
            return true;
    return false;
}

static void
set_reply(struct relay_reply *dst, int code, const char *text)
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
    free(r->result.rcpt_replies);
    free(r->result.reply.text);
    free(r->mailfrom);
    free(r);
}

static void
finish(struct relay *r, enum relay_failure kind)
{
    r->result.kind = kind;
    r->done(r->arg, &r->result);
    relay_free(r);
}

static void
on_data_reply(void *arg, enum relay_failure kind, const struct relay_reply *reply)
{
    struct relay *r = arg;
    if (!relay_conn_lmtp(r->conn)) {
        set_reply(&r->result.reply, reply->code, reply->text);
        finish(r, kind);
        return;
    }
    /* LMTP (RFC 2033 4.2): one reply per accepted recipient, in RCPT order. */
    size_t seen = 0;
    for (size_t i = 0; i < r->n_rcpts; i++) {
        if (r->result.rcpt_replies[i].code >= 400 || r->result.rcpt_replies[i].code == 0)
            continue;
        if (seen++ == r->data_replies_seen) {
            /* No reply at all (the connection died) counts as a temporary refusal. */
            set_reply(&r->result.rcpt_replies[i], reply->code ? reply->code : 451, reply->text);
            break;
        }
    }
    if (kind == RELAY_OK)
        set_reply(&r->result.reply, reply->code, reply->text);
    else if (r->result.reply.code == 0)
        set_reply(&r->result.reply, reply->code, reply->text);
    if (++r->data_replies_seen < r->accepted)
        return;
    bool delivered = false;
    for (size_t i = 0; i < r->n_rcpts; i++)
        if (r->result.rcpt_replies[i].code / 100 == 2)
            delivered = true;
    /* Per-recipient refusals are in rcpt_replies; a transport failure fails the whole. */
    finish(r, delivered || kind == RELAY_TEMPFAIL || kind == RELAY_PERMFAIL ? RELAY_OK : kind);
}

static void
on_rcpt_reply(void *arg, enum relay_failure kind, const struct relay_reply *reply)
{
    struct relay *r = arg;
    size_t i = r->rcpt_replies_seen++;
    set_reply(&r->result.rcpt_replies[i], reply->code, reply->text);
    if (kind == RELAY_OK)
        r->accepted++;
    if (r->rcpt_replies_seen < r->n_rcpts)
        return;
    if (reply->code == 0 && kind != RELAY_OK) {
        set_reply(&r->result.reply, 0, reply->text);
        finish(r, kind); /* the connection failed */
        return;
    }
    if (r->mail_failed) {
        finish(r, relay_reply_kind(&r->result.reply));
        return;
    }
    if (r->accepted == 0) {
        /* Every recipient refused: the per-recipient answers are the result. */
        set_reply(&r->result.reply, r->result.rcpt_replies[0].code,
                  r->result.rcpt_replies[0].text);
        finish(r, RELAY_OK);
        return;
    }
    relay_conn_data(r->conn, r->data, r->len, relay_conn_lmtp(r->conn) ? (unsigned)r->accepted : 1,
                    on_data_reply, r);
}

static void
on_mail_reply(void *arg, enum relay_failure kind, const struct relay_reply *reply)
{
    struct relay *r = arg;
    if (kind != RELAY_OK) {
        r->mail_failed = true;
        set_reply(&r->result.reply, reply->code, reply->text);
    }
}

static void
on_ready(void *arg, struct relay_conn *conn, enum relay_failure kind,
         const struct relay_reply *reply)
{
    struct relay *r = arg;
    if (kind != RELAY_OK) {
        r->conn = NULL; /* already gone */
        set_reply(&r->result.reply, reply->code, reply->text);
        finish(r, kind);
        return;
    }
    unsigned ext = relay_conn_extensions(conn);
    char line[1200];
    int n = snprintf(line, sizeof(line), "MAIL FROM:<%s>", r->mailfrom);
    if (ext & RELAY_EXT_SIZE)
        n += snprintf(line + n, sizeof(line) - (size_t)n, " SIZE=%zu", r->len);
    if ((ext & RELAY_EXT_8BITMIME) && has_8bit(r->data, r->len))
        n += snprintf(line + n, sizeof(line) - (size_t)n, " BODY=8BITMIME");
    if ((ext & RELAY_EXT_SMTPUTF8) && r->smtputf8)
        snprintf(line + n, sizeof(line) - (size_t)n, " SMTPUTF8");
    relay_conn_command(conn, line, on_mail_reply, r);
    for (size_t i = 0; i < r->n_rcpts; i++) {
        snprintf(line, sizeof(line), "RCPT TO:<%s>", r->rcpts[i]);
        relay_conn_command(conn, line, on_rcpt_reply, r);
    }
}

struct relay *
relay_start(struct event_base *base, struct evdns_base *dns, const struct relay_request *req,
            relay_done_fn done, void *arg)
{
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
    r->result.rcpt_replies = calloc(req->n_rcpts ? req->n_rcpts : 1, sizeof(struct relay_reply));
    r->result.n_rcpts = req->n_rcpts;
    bool ok = r->mailfrom && r->rcpts && r->result.rcpt_replies && req->n_rcpts > 0;
    for (size_t i = 0; ok && i < req->n_rcpts; i++) {
        r->rcpts[i] = strdup(req->rcpts[i]);
        ok = r->rcpts[i] != NULL;
        r->n_rcpts = i + 1;
    }
    if (ok)
        r->conn = relay_conn_open(base, dns, &req->conn, on_ready, r);
    if (!ok || r->conn == NULL) {
        relay_free(r);
        return NULL;
    }
    return r;
}

void
relay_cancel(struct relay *relay)
{
    relay_free(relay);
}
