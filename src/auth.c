/* AUTH PLAIN and LOGIN for the server (RFC 4954, RFC 4616): when AUTH is offered, the 334
 * exchange, base64 through OpenSSL's EVP, and the AUTH row's halves of the command table. It
 * hands the credentials to the table in s->cmd (mechanism; username, password) and never
 * logs or keeps the password: it is wiped once the hook has answered. No I/O but replies. */
#include "luasmtpd/auth.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "luasmtpd/config.h"
#include "luasmtpd/conn.h"
#include "luasmtpd/log.h"
#include "luasmtpd/lua_runtime.h"

bool
auth_offered(const struct session *s)
{
    return (s->in_tls || s->g->cfg->auth_plaintext) && s->ls != NULL &&
           lrt_session_has_hook(s->ls, LRT_HOOK_AUTH);
}

size_t
auth_line_cap(const struct session *s)
{
    return s->sasl != SESSION_SASL_NONE || auth_offered(s) ? AUTH_LINE_MAX : CONN_LINE_MAX;
}

size_t
auth_loggable(const char *line, size_t len)
{
    if (len < 5 || strncasecmp(line, "AUTH ", 5) != 0)
        return len;
    const char *end = memchr(line + 5, ' ', len - 5);
    return end != NULL ? (size_t)(end - line) : len;
}

/* The credentials go, wiped first so the password does not linger in freed memory. */
static void
auth_wipe(struct session *s)
{
    for (size_t i = 0; i < s->cmd.params.n; i++)
        explicit_bzero(s->cmd.params.items[i], strlen(s->cmd.params.items[i]));
    strv_clear(&s->cmd.params);
    s->sasl = SESSION_SASL_NONE;
}

void
auth_forget(struct session *s)
{
    auth_wipe(s);
    if (s->auth_user != NULL && s->ls != NULL)
        lrt_session_set_auth(s->ls, NULL);
    free(s->auth_user);
    s->auth_user = NULL;
}

static bool
is_b64_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
}

/* Strict base64 (RFC 4648 4: padded, no spaces or line breaks) into a NUL-terminated string
 * (malloc'd; its length in *n, as it may hold NULs). NULL: not base64, or out of memory.
 * EVP_DecodeBlock counts the padding as decoded zero bytes and would skip white space, so the
 * input is checked first and the real length is its count less the '='s. */
static char *
auth_b64_decode(const char *in, size_t len, size_t *n)
{
    size_t pad = 0;
    if (len % 4 != 0)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        if (in[i] == '=' && i + 2 >= len)
            pad++;
        else if (pad > 0 || !is_b64_char((unsigned char)in[i]))
            return NULL;
    }
    char *out = malloc(len / 4 * 3 + 1);
    if (out == NULL)
        return NULL;
    int got = EVP_DecodeBlock((unsigned char *)out, (const unsigned char *)in, (int)len);
    if (got < 0 || (size_t)got < pad) {
        free(out);
        return NULL;
    }
    *n = (size_t)got - pad;
    out[*n] = '\0';
    return out;
}

/* A 334 with `text` base64-encoded (RFC 4954 4); the next line answers it. */
static void
auth_challenge(struct session *s, enum session_sasl next, const char *text)
{
    unsigned char b64[32];
    EVP_EncodeBlock(b64, (const unsigned char *)text, (int)strlen(text));
    conn_reply(s, "334 %s", (const char *)b64);
    s->sasl = next;
}

/* A name the log and the script can take: no control bytes (nor a NUL: n is its length). */
static bool
is_clean(const char *text, size_t n)
{
    if (strlen(text) != n || n == 0)
        return false;
    for (; *text; text++)
        if ((unsigned char)*text < 0x20 || *text == 0x7f)
            return false;
    return true;
}

enum auth_parse { AUTH_PARSE_OK, AUTH_PARSE_BAD, AUTH_PARSE_OTHER_ID };

/* PLAIN's message: authzid NUL authcid NUL passwd (RFC 4616 2), authcid and passwd not empty.
 * We authorize no one as another: an authzid must be empty or the authcid itself. */
static enum auth_parse
auth_plain_split(struct session *s, const char *text, size_t n)
{
    const char *user = memchr(text, '\0', n);
    if (user == NULL)
        return AUTH_PARSE_BAD;
    user++;
    const char *pass = memchr(user, '\0', n - (size_t)(user - text));
    if (pass == NULL)
        return AUTH_PARSE_BAD;
    pass++;
    size_t pass_len = n - (size_t)(pass - text);
    if (!is_clean(user, (size_t)(pass - 1 - user)) || pass_len == 0 || strlen(pass) != pass_len)
        return AUTH_PARSE_BAD;
    if (*text != '\0' && strcmp(text, user) != 0)
        return AUTH_PARSE_OTHER_ID;
    if (strv_push(&s->cmd.params, user) != 0 || strv_push(&s->cmd.params, pass) != 0)
        return AUTH_PARSE_BAD;
    return AUTH_PARSE_OK;
}

/* One decoded answer to the step the exchange was at. true: the credentials are whole. */
static bool
auth_take(struct session *s, enum session_sasl step, const char *text, size_t n)
{
    enum auth_parse parsed = AUTH_PARSE_BAD;
    if (step == SESSION_SASL_PLAIN)
        parsed = auth_plain_split(s, text, n);
    else if (step == SESSION_SASL_LOGIN_USER ? is_clean(text, n) : n > 0 && strlen(text) == n)
        parsed = strv_push(&s->cmd.params, text) == 0 ? AUTH_PARSE_OK : AUTH_PARSE_BAD;
    if (parsed == AUTH_PARSE_OTHER_ID) {
        log_info("session %lu: AUTH PLAIN for another identity refused", s->id);
        conn_reply_const(s, "535 5.7.8 Authentication credentials invalid");
    } else if (parsed == AUTH_PARSE_BAD) {
        conn_reply_const(s, "501 5.5.2 Cannot decode response");
    } else if (step == SESSION_SASL_LOGIN_USER) {
        auth_challenge(s, SESSION_SASL_LOGIN_PASS, "Password:");
        return false;
    } else {
        return true;
    }
    auth_wipe(s);
    return false;
}

bool
auth_response(struct session *s, const char *line, size_t len)
{
    enum session_sasl step = s->sasl;
    s->sasl = SESSION_SASL_NONE;
    if (len == 1 && line[0] == '*') {
        auth_wipe(s);
        conn_reply_const(s, "501 5.7.0 Authentication cancelled");
        return false;
    }
    size_t n = 0;
    char *text = auth_b64_decode(line, len, &n);
    if (text == NULL) {
        auth_wipe(s);
        conn_reply_const(s, "501 5.5.2 Cannot decode response");
        return false;
    }
    bool whole = auth_take(s, step, text, n);
    explicit_bzero(text, n);
    free(text);
    return whole;
}

bool
auth_overlong(struct session *s)
{
    if (s->sasl == SESSION_SASL_NONE)
        return false;
    auth_wipe(s);
    conn_reply_const(s, "500 5.5.6 Authentication Exchange line is too long");
    return true;
}

/* The order of the refusals: what AUTH cannot be at all, then what this session lacks. */
static bool
auth_allowed(struct session *s)
{
    if (!lrt_session_has_hook(s->ls, LRT_HOOK_AUTH))
        conn_reply_const(s, "502 5.5.1 Error: AUTH not available");
    else if (s->helo == NULL || !s->esmtp)
        conn_reply_const(s, "503 5.5.1 Error: send EHLO first");
    else if (s->auth_user != NULL)
        conn_reply_const(s, "503 5.5.1 Error: already authenticated");
    else if (s->tx.env.has_sender)
        conn_reply_const(s, "503 5.5.1 Error: MAIL transaction in progress");
    else if (!s->in_tls && !s->g->cfg->auth_plaintext)
        conn_reply_const(s,
                         "538 5.7.11 Encryption required for requested authentication mechanism");
    else
        return true;
    return false;
}

bool
auth_check(struct session *s, char *arg)
{
    if (!auth_allowed(s))
        return false;
    char *response = strchr(arg, ' ');
    if (response != NULL)
        *response++ = '\0';
    enum session_sasl first = SESSION_SASL_NONE;
    if (strcasecmp(arg, "PLAIN") == 0)
        first = SESSION_SASL_PLAIN;
    else if (strcasecmp(arg, "LOGIN") == 0)
        first = SESSION_SASL_LOGIN_USER;
    if (*arg == '\0') {
        conn_reply_const(s, "501 5.5.4 Syntax: AUTH mechanism [initial-response]");
        return false;
    }
    if (first == SESSION_SASL_NONE) {
        conn_reply_const(s, "504 5.5.4 Error: unrecognized authentication type");
        return false;
    }
    auth_wipe(s);
    free(s->cmd.arg);
    s->cmd.arg = strdup(first == SESSION_SASL_PLAIN ? "PLAIN" : "LOGIN");
    if (s->cmd.arg == NULL) {
        conn_reply_const(s, "454 4.7.0 Temporary authentication failure");
        return false;
    }
    if (response == NULL) {
        auth_challenge(s, first, first == SESSION_SASL_PLAIN ? "" : "Username:");
        return false;
    }
    /* RFC 4954 4: "=" is an initial response of no bytes. */
    s->sasl = first;
    return auth_response(s, response, strcmp(response, "=") == 0 ? 0 : strlen(response));
}

/* The hook's reply when it gave one, else ours. */
static void
auth_answer(struct session *s, const char *reply, size_t len, const char *ours)
{
    if (reply != NULL)
        conn_send(s, CONN_REPLY_COMMAND, reply, len);
    else
        conn_reply(s, "%s", ours);
}

static const char *
auth_user_of(const struct session *s)
{
    return s->cmd.params.n > 0 ? s->cmd.params.items[0] : "";
}

void
auth_refused(struct session *s, const char *reply, size_t len)
{
    /* The user is logged (fail2ban and its kind read this line); the password never. */
    log_info("session %lu: AUTH %s as %.200s refused", s->id, s->cmd.arg, auth_user_of(s));
    auth_wipe(s);
    auth_answer(s, reply, len, "454 4.7.0 Temporary authentication failure");
}

void
auth_proceed(struct session *s, const char *reply, size_t len)
{
    /* Only 235 says success (RFC 4954 6): any other 2xx or a 3xx would leave the client
     * unsure whether it is in. */
    if (reply != NULL && strncmp(reply, "235", 3) != 0) {
        log_error("session %lu: authenticate returned a reply that is neither 235 nor a "
                  "refusal: %.80s",
                  s->id, reply);
        auth_refused(s, NULL, 0);
        return;
    }
    s->auth_user = strdup(auth_user_of(s));
    if (s->auth_user == NULL) {
        auth_refused(s, NULL, 0);
        return;
    }
    log_info("session %lu: AUTH %s as %.200s accepted", s->id, s->cmd.arg, s->auth_user);
    lrt_session_set_auth(s->ls, s->auth_user);
    auth_wipe(s);
    auth_answer(s, reply, len, "235 2.7.0 Authentication successful");
}

bool
auth_mail_allowed(struct session *s)
{
    if (!s->g->cfg->auth_required || s->auth_user != NULL)
        return true;
    conn_reply_const(s, "530 5.7.0 Authentication required");
    return false;
}
