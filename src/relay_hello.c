/* The opening of a relay connection (see relay_hello.h): which line follows which reply, from
 * the greeting to a connection ready for MAIL. Base64 is OpenSSL's (EVP_EncodeBlock). Buffers
 * that held a credential are wiped before they are let go. */
#include "luasmtpd/relay_hello.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

enum {
    HELLO_GREETING,
    HELLO_EHLO,
    HELLO_HELO, /* EHLO was refused: an old server (RFC 5321 4.1.4) */
    HELLO_STARTTLS,
    HELLO_HANDSHAKE,
    HELLO_AUTH, /* the last AUTH line is out: 235 or a refusal */
    HELLO_AUTH_USER,
    HELLO_AUTH_PASSWORD,
    HELLO_DONE,
};

static void
relay_hello_wipe(struct buf *b)
{
    if (b->data != NULL)
        memset(b->data, 0, b->cap);
    b->len = 0;
}

static char *
relay_hello_dup(const char *s)
{
    return s ? strdup(s) : NULL;
}

int
relay_hello_init(struct relay_hello *h, const struct relay_security *sec, const char *helo,
                 const char *peer, bool lmtp)
{
    memset(h, 0, sizeof(*h));
    h->state = HELLO_GREETING;
    h->lmtp = lmtp;
    h->tls = sec->tls;
    h->tls_active = sec->tls == RELAY_TLS_IMPLICIT;
    h->auth_plaintext = sec->auth_plaintext;
    h->verify = sec->verify;
    h->cafile = relay_hello_dup(sec->cafile);
    h->servername = relay_hello_dup(sec->servername);
    h->helo = relay_hello_dup(helo);
    h->peer = relay_hello_dup(peer);
    h->user = relay_hello_dup(sec->user);
    h->password = relay_hello_dup(sec->password);
    if (!h->helo || !h->peer || (sec->user && !h->user) || (sec->password && !h->password) ||
        (sec->cafile && !h->cafile) || (sec->servername && !h->servername)) {
        relay_hello_free(h);
        return -1;
    }
    return 0;
}

static enum relay_hello_step
relay_hello_fail(struct relay_hello *h, enum relay_failure kind, int code, const char *fmt,
                 const char *arg)
{
    h->state = HELLO_DONE;
    h->kind = kind;
    h->code = code;
    relay_hello_wipe(&h->out);
    h->secret = false;
    buf_printf(&h->out, fmt, arg);
    return RELAY_HELLO_FAIL;
}

/* A reply that ends the opening: the server's own 4xx/5xx with its code, anything else (a 3xx
 * where a 2xx was due) as a protocol error. */
static enum relay_hello_step
relay_hello_refused(struct relay_hello *h, const struct relay_reply *reply, const char *what)
{
    enum relay_failure kind = relay_reply_kind(reply);
    if (kind == RELAY_TEMPFAIL || kind == RELAY_PERMFAIL)
        return relay_hello_fail(h, kind, reply->code, "%s", reply->text);
    h->state = HELLO_DONE;
    h->kind = RELAY_PROTOCOL;
    h->code = 0;
    relay_hello_wipe(&h->out);
    h->secret = false;
    char sample[101];
    buf_printf(&h->out, "%s answered %s with %d %s", h->peer, what, reply->code,
               relay_reply_excerpt(sample, reply->text, strlen(reply->text)));
    return RELAY_HELLO_FAIL;
}

static enum relay_hello_step
relay_hello_send(struct relay_hello *h, int state, const char *fmt, const char *arg)
{
    h->state = state;
    relay_hello_wipe(&h->out);
    h->secret = false;
    if (buf_printf(&h->out, fmt, arg) == -1)
        return relay_hello_fail(h, RELAY_PROTOCOL, 0, "%s", "out of memory");
    return RELAY_HELLO_SEND;
}

/* Sends "PREFIX base64(bytes)\r\n" as a secret line. */
static enum relay_hello_step
relay_hello_send_b64(struct relay_hello *h, int state, const char *prefix, const char *bytes,
                     size_t n)
{
    h->state = state;
    relay_hello_wipe(&h->out);
    size_t prefix_len = strlen(prefix);
    if (buf_reserve(&h->out, prefix_len + 4 * ((n + 2) / 3) + 3) == -1)
        return relay_hello_fail(h, RELAY_PROTOCOL, 0, "%s", "out of memory");
    memcpy(h->out.data, prefix, prefix_len);
    int len = EVP_EncodeBlock((unsigned char *)h->out.data + prefix_len,
                              (const unsigned char *)bytes, (int)n);
    h->out.len = prefix_len + (size_t)len;
    memcpy(h->out.data + h->out.len, "\r\n", 3);
    h->out.len += 2;
    h->secret = true;
    return RELAY_HELLO_SEND;
}

/* AUTH PLAIN with the initial response (RFC 4616: authzid empty, NUL, user, NUL, password). */
static enum relay_hello_step
relay_hello_auth_plain(struct relay_hello *h)
{
    size_t ulen = strlen(h->user), plen = strlen(h->password);
    struct buf cred = {0};
    enum relay_hello_step step;
    if (buf_reserve(&cred, ulen + plen + 2) == -1)
        return relay_hello_fail(h, RELAY_PROTOCOL, 0, "%s", "out of memory");
    cred.data[0] = '\0';
    memcpy(cred.data + 1, h->user, ulen);
    cred.data[1 + ulen] = '\0';
    memcpy(cred.data + 2 + ulen, h->password, plen);
    step = relay_hello_send_b64(h, HELLO_AUTH, "AUTH PLAIN ", cred.data, ulen + plen + 2);
    relay_hello_wipe(&cred);
    buf_free(&cred);
    return step;
}

/* The EHLO (or HELO) reply was good, in h->ext: STARTTLS when due, then AUTH when asked for,
 * else ready. */
static enum relay_hello_step
relay_hello_next(struct relay_hello *h)
{
    if (!h->tls_active && h->state != HELLO_STARTTLS &&
        (h->tls == RELAY_TLS_TRY || h->tls == RELAY_TLS_REQUIRE)) {
        if (h->ext & RELAY_EXT_STARTTLS)
            return relay_hello_send(h, HELLO_STARTTLS, "%s", "STARTTLS\r\n");
        if (h->tls == RELAY_TLS_REQUIRE)
            return relay_hello_fail(h, RELAY_TLS_FAILED, 0,
                                    "%s does not offer STARTTLS, and TLS is required", h->peer);
    }
    if (h->user == NULL) {
        h->state = HELLO_DONE;
        return RELAY_HELLO_READY;
    }
    if (!h->tls_active && !h->auth_plaintext)
        return relay_hello_fail(h, RELAY_AUTH_FAILED, 0,
                                "not sending a password to %s without TLS (auth_plaintext "
                                "allows it)",
                                h->peer);
    if (h->ext & RELAY_EXT_AUTH_PLAIN)
        return relay_hello_auth_plain(h);
    if (h->ext & RELAY_EXT_AUTH_LOGIN)
        return relay_hello_send(h, HELLO_AUTH_USER, "%s", "AUTH LOGIN\r\n");
    return relay_hello_fail(h, RELAY_AUTH_FAILED, 0, "%s offers no AUTH PLAIN or LOGIN", h->peer);
}

enum relay_hello_step
relay_hello_reply(struct relay_hello *h, const struct relay_reply *reply)
{
    int cls = reply->code / 100;
    switch (h->state) {
    case HELLO_GREETING:
        if (cls != 2)
            return relay_hello_refused(h, reply, "the connection");
        return relay_hello_send(h, HELLO_EHLO, h->lmtp ? "LHLO %s\r\n" : "EHLO %s\r\n", h->helo);
    case HELLO_EHLO:
        /* Not after STARTTLS: a server that offered it knows EHLO. */
        if (cls == 5 && !h->lmtp && !(h->tls_active && h->tls != RELAY_TLS_IMPLICIT))
            return relay_hello_send(h, HELLO_HELO, "HELO %s\r\n", h->helo);
        if (cls != 2)
            return relay_hello_refused(h, reply, "EHLO");
        h->ext = relay_reply_extensions(reply->text, &h->size_limit);
        return relay_hello_next(h);
    case HELLO_HELO:
        if (cls != 2)
            return relay_hello_refused(h, reply, "HELO");
        h->ext = 0;
        return relay_hello_next(h);
    case HELLO_STARTTLS:
        if (cls == 2) {
            h->state = HELLO_HANDSHAKE;
            return RELAY_HELLO_STARTTLS;
        }
        if (h->tls == RELAY_TLS_REQUIRE || (cls != 4 && cls != 5))
            return relay_hello_refused(h, reply, "STARTTLS");
        return relay_hello_next(h); /* "try": on in plaintext, as RFC 3207 4.1 allows */
    case HELLO_AUTH_USER:
    case HELLO_AUTH_PASSWORD:
        if (reply->code != 334)
            return relay_hello_refused(h, reply, "AUTH");
        if (h->state == HELLO_AUTH_USER)
            return relay_hello_send_b64(h, HELLO_AUTH_PASSWORD, "", h->user, strlen(h->user));
        return relay_hello_send_b64(h, HELLO_AUTH, "", h->password, strlen(h->password));
    case HELLO_AUTH:
        if (cls != 2)
            return relay_hello_refused(h, reply, "AUTH");
        h->state = HELLO_DONE;
        return RELAY_HELLO_READY;
    default:
        return relay_hello_fail(h, RELAY_PROTOCOL, 0, "%s sent a reply nobody asked for", h->peer);
    }
}

enum relay_hello_step
relay_hello_secured(struct relay_hello *h)
{
    h->tls_active = true;
    h->ext = 0; /* RFC 3207 4.2: forget what was offered in plaintext */
    h->size_limit = 0;
    return relay_hello_send(h, HELLO_EHLO, h->lmtp ? "LHLO %s\r\n" : "EHLO %s\r\n", h->helo);
}

const char *
relay_hello_waiting_for(const struct relay_hello *h)
{
    switch (h->state) {
    case HELLO_GREETING:
        return "greeting";
    case HELLO_EHLO:
        return h->lmtp ? "LHLO reply" : "EHLO reply";
    case HELLO_HELO:
        return "HELO reply";
    case HELLO_STARTTLS:
        return "STARTTLS reply";
    case HELLO_HANDSHAKE:
        return "TLS handshake";
    default:
        return "AUTH reply";
    }
}

void
relay_hello_free(struct relay_hello *h)
{
    if (h->password != NULL) {
        memset(h->password, 0, strlen(h->password));
        free(h->password);
    }
    relay_hello_wipe(&h->out);
    buf_free(&h->out);
    free(h->user);
    free(h->cafile);
    free(h->servername);
    free(h->helo);
    free(h->peer);
    h->password = h->user = h->cafile = h->servername = h->helo = h->peer = NULL;
}
