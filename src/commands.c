/* The SMTP commands of a session (RFC 5321 4.1 with Python smtpd's replies and RFC 3463
 * enhanced codes), as one table of rows {check, hook, proceed}: check answers what is wrong
 * with the command and records what the rest needs, the script's hook (if any) decides, and
 * proceed carries the command on. This file runs the table, so the command being carried out
 * (s->cmd) is its own. AUTH's halves and its 334 exchange are auth.c's; the answers to a
 * 334 come here first, as every line does. No I/O here beyond the session's replies. */
#include "luasmtpd/commands.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "luasmtpd/auth.h"
#include "luasmtpd/bdat.h"
#include "luasmtpd/config.h"
#include "luasmtpd/conn.h"
#include "luasmtpd/data_budget.h"
#include "luasmtpd/dsn.h"
#include "luasmtpd/help.h"
#include "luasmtpd/lmtp.h"
#include "luasmtpd/log.h"
#include "luasmtpd/lua_runtime.h"
#include "luasmtpd/smtp_reply.h"
#include "luasmtpd/tls.h"

/* A row's hook when the script is not asked. */
#define NO_HOOK (-1)
/* Room for client input quoted in a reply (escaped by smtp_reply_quote), so that with the
 * rest of the line it stays within RFC 5321's 512 bytes. */
#define QUOTED_MAX (SMTP_REPLY_LINE_MAX - 48)

struct command {
    /* false: it answered (an error) and the command ends here. NULL: nothing to check. */
    bool (*check)(struct session *s, char *arg);
    int hook; /* an enum lrt_hook, or NO_HOOK */
    /* `reply`: the hook's 2xx (or 3xx) in wire form, to send in place of ours; or NULL. */
    void (*proceed)(struct session *s, const char *reply, size_t len);
    /* The hook refused (reply: its 4xx/5xx in wire form) or failed (reply NULL). NULL: the
     * refusal is sent and the command ends (commands_refused). */
    void (*refused)(struct session *s, const char *reply, size_t len);
    /* Set where the hook must say yes (true): its nil or false is refused with this. */
    const char *denied;
};

/* The verbs whose lines may be longer, told before the line is parsed. */
static enum smtp_verb
long_verb(const char *line, size_t len)
{
    bool mail = len >= 4 && strncasecmp(line, "MAIL", 4) == 0 && (len == 4 || line[4] == ' ');
    bool auth = len >= 4 && strncasecmp(line, "AUTH", 4) == 0 && (len == 4 || line[4] == ' ');
    bool rcpt = len >= 4 && strncasecmp(line, "RCPT", 4) == 0 && (len == 4 || line[4] == ' ');
    enum smtp_verb verb = mail ? SMTP_VERB_MAIL : auth ? SMTP_VERB_AUTH : SMTP_VERB_UNKNOWN;
    return rcpt ? SMTP_VERB_RCPT : verb;
}

/* Python's smtpd allows MAIL more than other commands after EHLO, for SIZE and SMTPUTF8, and
 * RFC 3461 MAIL and RCPT for DSN's parameters; AUTH's initial response may take RFC 4954's
 * 12,288 bytes. */
static size_t
line_limit(const struct session *s, enum smtp_verb verb)
{
    if (verb == SMTP_VERB_AUTH)
        return AUTH_LINE_MAX;
    size_t limit = SMTP_COMMAND_LINE_LIMIT;
    if (s->esmtp && verb == SMTP_VERB_MAIL) {
        limit += SMTP_SIZE_EXTRA + SMTP_DSN_MAIL_EXTRA; /* we always advertise SIZE and DSN */
        if (s->g->cfg->smtputf8)
            limit += SMTP_SMTPUTF8_EXTRA;
    }
    if (s->esmtp && verb == SMTP_VERB_RCPT)
        limit += SMTP_DSN_RCPT_EXTRA;
    return limit;
}

/* Records what proceed and the hook need, in memory that outlives the command line. false
 * (answered 451): out of memory, and the command ends; a NULL s->cmd.arg would reach the hook,
 * the envelope or HELP/VRFY's answer. */
static bool
commands_keep(struct session *s, const char *arg, const struct smtp_param *params, int n_params)
{
    free(s->cmd.arg);
    s->cmd.arg = strdup(arg);
    strv_clear(&s->cmd.params);
    bool ok = s->cmd.arg != NULL;
    for (int i = 0; ok && i < n_params; i++) {
        char word[CONN_LINE_MAX + 1];
        snprintf(word, sizeof(word), "%s%s%s", params[i].keyword, params[i].value ? "=" : "",
                 params[i].value ? params[i].value : "");
        ok = strv_push(&s->cmd.params, word) == 0;
    }
    if (!ok)
        conn_reply_const(s, "451 4.3.0 Error: out of memory");
    return ok;
}

void
commands_overlong(struct session *s)
{
    if (!auth_overlong(s))
        conn_reply_const(s, "500 5.5.2 Error: line too long");
}

void
commands_release(struct session *s)
{
    auth_forget(s); /* first: it wipes the password in s->cmd.params */
    free(s->cmd.arg);
    s->cmd.arg = NULL;
    strv_clear(&s->cmd.params);
}

static void
commands_refused(struct session *s, const char *reply, size_t len)
{
    if (reply != NULL)
        conn_send(s, CONN_REPLY_COMMAND, reply, len);
    else
        conn_reply_const(s, "451 4.3.0 Error: the script failed; try again later");
}

/* The greeting: on_connect's refusal ends the connection. */
static void
greeting_proceed(struct session *s, const char *reply, size_t len)
{
    (void)reply;
    (void)len;
    unsigned delay_ms = s->g->cfg->greet_delay_ms;
    if (delay_ms > 0) {
        /* session_on_timer greets once the delay is over, unless the client talks first. */
        struct timeval delay = {.tv_sec = delay_ms / 1000, .tv_usec = (delay_ms % 1000) * 1000};
        evtimer_add(s->timer, &delay);
    } else {
        conn_greet(s);
    }
}

static void
greeting_refused(struct session *s, const char *reply, size_t len)
{
    if (reply != NULL)
        conn_send(s, CONN_REPLY_COMMAND, reply, len);
    else
        conn_reply(s, "421 4.3.0 %s Error: the script failed; try again later", s->g->hostname);
    conn_close_after_flush(s);
}

static bool
greeting_check(struct session *s, char *arg, const char *verb)
{
    if (*arg == '\0') {
        conn_reply(s, "501 5.5.4 Syntax: %s hostname", verb);
        return false;
    }
    /* A second greeting is taken (RFC 5321 4.1.4), where Python's smtpd answers 503; until
     * it is accepted the session stays as it was, the old name and transaction included. */
    return commands_keep(s, arg, NULL, 0);
}

static bool
helo_check(struct session *s, char *arg)
{
    return greeting_check(s, arg, "HELO");
}

static bool
ehlo_check(struct session *s, char *arg)
{
    /* LHLO is EHLO under another name (RFC 2033 4.1); an LMTP listener takes no EHLO. */
    return greeting_check(s, arg, s->g->cfg->lmtp ? "LHLO" : "EHLO");
}

/* HELO/EHLO accepted (after on_helo): record the name, answer with our capabilities. */
static void
greeting_accept(struct session *s, bool extended)
{
    conn_set_greeting(s, s->cmd.arg, extended);
    if (!extended) {
        conn_reply(s, "250 %s", s->g->hostname);
        return;
    }
    const struct config *cfg = s->g->cfg;
    struct buf b = {0};
    buf_printf(&b, "250-%s\r\n", s->g->hostname);
    if (cfg->size_limit)
        buf_printf(&b, "250-SIZE %zu\r\n", cfg->size_limit);
    else
        buf_append_str(&b, "250-SIZE\r\n");
    buf_append_str(&b, "250-8BITMIME\r\n250-DSN\r\n250-CHUNKING\r\n");
    if (cfg->smtputf8)
        buf_append_str(&b, "250-SMTPUTF8\r\n");
    /* Extensions that depend on the connection's security. */
    if (auth_offered(s))
        buf_append_str(&b, "250-AUTH PLAIN LOGIN\r\n");
    if (!s->in_tls && tls_server_offers(s->g->tls, TLS_STARTTLS))
        buf_append_str(&b, "250-STARTTLS\r\n");
    buf_append_str(&b, "250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 HELP\r\n");
    conn_send(s, CONN_REPLY_COMMAND, b.data, b.len);
    buf_free(&b);
}

static void
helo_proceed(struct session *s, const char *reply, size_t len)
{
    (void)reply;
    (void)len;
    greeting_accept(s, false);
}

static void
ehlo_proceed(struct session *s, const char *reply, size_t len)
{
    (void)reply;
    (void)len;
    greeting_accept(s, true);
}

static void
ok_proceed(struct session *s, const char *reply, size_t len)
{
    (void)reply;
    (void)len;
    conn_reply_const(s, "250 2.0.0 OK");
}

static void
quit_proceed(struct session *s, const char *reply, size_t len)
{
    (void)reply;
    (void)len;
    conn_reply_const(s, "221 2.0.0 Bye");
    conn_close_after_flush(s);
}

static bool
rset_check(struct session *s, char *arg)
{
    if (*arg)
        conn_reply_const(s, "501 5.5.4 Syntax: RSET");
    return *arg == '\0';
}

static void
rset_proceed(struct session *s, const char *reply, size_t len)
{
    conn_end_transaction(s);
    ok_proceed(s, reply, len);
}

/* HELP and VRFY answer from their argument. */
static bool
keep_check(struct session *s, char *arg)
{
    return commands_keep(s, arg, NULL, 0);
}

static void
help_proceed(struct session *s, const char *reply, size_t len)
{
    (void)reply;
    (void)len;
    help_answer(s, s->cmd.arg);
}

static bool
vrfy_check(struct session *s, char *arg)
{
    if (*arg == '\0') {
        conn_reply_const(s, "501 5.5.4 Syntax: VRFY <address>");
        return false;
    }
    return keep_check(s, arg);
}

static void
vrfy_proceed(struct session *s, const char *reply, size_t len)
{
    (void)reply;
    (void)len;
    struct smtp_path path;
    /* The parse writes into its input; the reply quotes the argument as it came. */
    char copy[CONN_LINE_MAX + 1];
    snprintf(copy, sizeof(copy), "%s", s->cmd.arg);
    if (!smtp_parse_path(copy, &path) || path.null_path) {
        char quoted[QUOTED_MAX];
        smtp_reply_quote(s->cmd.arg, strlen(s->cmd.arg), quoted, sizeof(quoted));
        conn_reply(s, "502 5.5.1 Could not VRFY %s", quoted);
        return;
    }
    conn_reply_const(s, "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery");
}

static bool
starttls_check(struct session *s, char *arg)
{
    if (*arg) {
        conn_reply_const(s, "501 5.5.4 Syntax: STARTTLS");
        return false;
    }
    if (s->in_tls) {
        conn_reply_const(s, "503 5.5.1 Error: TLS already active");
        return false;
    }
    if (!tls_server_offers(s->g->tls, TLS_STARTTLS)) {
        conn_reply_const(s, "502 5.5.1 Error: STARTTLS not available");
        return false;
    }
    /* As Postfix: the reset after the handshake would silently drop the envelope. */
    if (s->tx.env.has_sender) {
        conn_reply_const(s, "503 5.5.1 Error: MAIL transaction in progress");
        return false;
    }
    return true;
}

/* session.c switches to TLS once the 220 is on the socket; no command is read meanwhile. */
static void
starttls_proceed(struct session *s, const char *reply, size_t len)
{
    (void)reply;
    (void)len;
    conn_reply_const(s, "220 2.0.0 Ready to start TLS");
    s->tls_switch = true;
    conn_enter(s, SESSION_HANDSHAKE);
}

static void
expn_proceed(struct session *s, const char *reply, size_t len)
{
    (void)reply;
    (void)len;
    conn_reply_const(s, "502 5.5.1 EXPN not implemented");
}

static bool
all_digits(const char *v)
{
    if (v == NULL || *v == '\0')
        return false;
    for (; *v; v++)
        if (*v < '0' || *v > '9')
            return false;
    return true;
}

/* RFC 3461's parameters of MAIL or RCPT, then the 555 for any neither they nor `known` are;
 * false when one was refused. */
static bool
dsn_params(struct session *s, const struct smtp_param *params, int n, bool mail, bool *known)
{
    const char *refusal = dsn_check_params(params, n, mail, known);
    if (refusal != NULL)
        conn_reply(s, "%s", refusal);
    return refusal == NULL;
}

static void
syntax_error(struct session *s, const char *usage)
{
    conn_reply(s, "501 5.5.4 Syntax: %s%s", usage, s->esmtp ? " [SP <mail-parameters>]" : "");
}

/* Checks MAIL's parameters in Python smtpd's order (BODY, SMTPUTF8, SIZE, then DSN's and
 * anything left) and records them. Returns false when a reply was sent. */
static bool
mail_params(struct session *s, struct smtp_param *params, int n, const char *usage)
{
    const struct config *cfg = s->g->cfg;
    bool known[SMTP_PARAMS_MAX] = {false};
    for (int i = 0; i < n; i++) {
        if (strcmp(params[i].keyword, "BODY") != 0)
            continue;
        known[i] = true;
        if (params[i].value == NULL ||
            (strcmp(params[i].value, "7BIT") != 0 && strcmp(params[i].value, "8BITMIME") != 0)) {
            conn_reply_const(s, "501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME");
            return false;
        }
    }
    for (int i = 0; cfg->smtputf8 && i < n; i++) {
        if (strcmp(params[i].keyword, "SMTPUTF8") != 0)
            continue;
        known[i] = true;
        if (params[i].value != NULL) {
            conn_reply_const(s, "501 5.5.4 Error: SMTPUTF8 takes no arguments");
            return false;
        }
        s->tx.env.smtputf8 = true;
    }
    for (int i = 0; i < n; i++) {
        if (strcmp(params[i].keyword, "SIZE") != 0)
            continue;
        known[i] = true;
        if (!all_digits(params[i].value)) {
            syntax_error(s, usage);
            return false;
        }
        unsigned long long size = strtoull(params[i].value, NULL, 10);
        /* RFC 1870 6.1: a size the DATA memory budget can never hold is refused for good, as
         * one over --size is; one that does not fit beside the DATA in flight, for now. */
        enum data_budget_fit fit = cfg->size_limit && size > cfg->size_limit
                                       ? DATA_BUDGET_NEVER
                                       : data_budget_fit(s, (size_t)size);
        if (fit == DATA_BUDGET_NEVER) {
            conn_reply_const(s, "552 5.3.4 Error: message size exceeds fixed maximum message size");
            return false;
        }
        if (fit == DATA_BUDGET_FULL) {
            conn_reply_const(s, "452 4.3.1 Insufficient system storage");
            return false;
        }
        s->tx.env.size_hint = (size_t)size;
    }
    return dsn_params(s, params, n, true, known);
}

/* The path of MAIL FROM: or RCPT TO:, checked as Python's smtpd does: parameters only after
 * EHLO. false: the syntax error was answered. */
static bool
path_argument(struct session *s, char *arg, const char *keyword, const char *usage,
              struct smtp_path *path)
{
    char *rest = smtp_strip_keyword(arg, keyword);
    if (rest == NULL || !smtp_parse_path(rest, path) || (!s->esmtp && *path->params)) {
        syntax_error(s, usage);
        return false;
    }
    return true;
}

static int
params_argument(struct session *s, struct smtp_path *path, const char *usage,
                struct smtp_param *params)
{
    int n = smtp_parse_params(path->params, params, SMTP_PARAMS_MAX);
    if (n < 0)
        syntax_error(s, usage);
    return n;
}

static bool
mail_check(struct session *s, char *arg)
{
    static const char usage[] = "MAIL FROM: <address>";
    if (s->helo == NULL) {
        conn_reply_const(s, "503 5.5.1 Error: send HELO first");
        return false;
    }
    if (!auth_mail_allowed(s))
        return false;
    struct smtp_path path;
    if (!path_argument(s, arg, "FROM:", usage, &path))
        return false;
    if (s->tx.env.has_sender) {
        conn_reply_const(s, "503 5.5.1 Error: nested MAIL command");
        return false;
    }
    if (s->g->cfg->max_messages != 0 && s->messages >= s->g->cfg->max_messages && !s->trusted) {
        conn_reply(s, "421 4.7.0 %s Error: too many messages in this connection, closing",
                   s->g->hostname);
        conn_close_after_flush(s);
        return false;
    }
    struct smtp_param params[SMTP_PARAMS_MAX];
    int n = params_argument(s, &path, usage, params);
    if (n < 0)
        return false;
    if (!mail_params(s, params, n, usage)) {
        s->tx.env.smtputf8 = false;
        s->tx.env.size_hint = 0;
        return false;
    }
    /* RFC 6531 3.4: a UTF-8 address is only taken in an SMTPUTF8 transaction. */
    if (path.non_ascii && !s->tx.env.smtputf8) {
        s->tx.env.smtputf8 = false;
        conn_reply_const(s, "553 5.6.7 Error: non-ASCII address needs SMTPUTF8");
        return false;
    }
    /* Kept first: a MAIL refused for want of memory begins no transaction, nor leaves its
     * parameters to the next MAIL. */
    if (!commands_keep(s, path.address, params, n)) {
        s->tx.env.smtputf8 = false;
        s->tx.env.size_hint = 0;
        return false;
    }
    conn_begin_transaction(s);
    return true;
}

static bool
rcpt_check(struct session *s, char *arg)
{
    static const char usage[] = "RCPT TO: <address>";
    if (s->helo == NULL) {
        conn_reply_const(s, "503 5.5.1 Error: send HELO first");
        return false;
    }
    if (!s->tx.env.has_sender) {
        conn_reply_const(s, "503 5.5.1 Error: need MAIL command");
        return false;
    }
    if (bdat_refused(s, "RCPT"))
        return false;
    struct smtp_path path;
    struct smtp_param params[SMTP_PARAMS_MAX];
    if (!path_argument(s, arg, "TO:", usage, &path))
        return false;
    if (path.null_path) {
        syntax_error(s, usage);
        return false;
    }
    int n = params_argument(s, &path, usage, params);
    bool known[SMTP_PARAMS_MAX] = {false};
    if (n < 0 || !dsn_params(s, params, n, false, known))
        return false;
    if (path.non_ascii && !s->tx.env.smtputf8) {
        conn_reply_const(s, "553 5.6.7 Error: non-ASCII address needs SMTPUTF8");
        return false;
    }
    if (s->tx.env.rcpts.n >= s->g->cfg->max_recipients) {
        conn_reply_const(s, "452 4.5.3 Error: too many recipients");
        return false;
    }
    return commands_keep(s, path.address, params, n);
}

/* MAIL or RCPT accepted (after on_mail/on_rcpt): record s->cmd in the envelope; answer with
 * `reply` (the hook's 2xx, in wire form) or our own 250. */
static void
path_accept(struct session *s, bool mail, const char *reply, size_t len)
{
    struct envelope *env = &s->tx.env;
    bool ok = mail ? envelope_set_sender(env, s->cmd.arg) == 0
                   : envelope_add_rcpt(env, s->cmd.arg, &s->cmd.params) == 0;
    for (size_t i = 0; ok && mail && i < s->cmd.params.n; i++)
        ok = strv_push(&env->mail_options, s->cmd.params.items[i]) == 0;
    log_debug("session %lu: %s <%s>", s->id, mail ? "sender" : "recipient", s->cmd.arg);
    if (!ok) {
        conn_end_transaction(s);
        conn_reply_const(s, "451 4.3.0 Error: out of memory");
    } else if (reply != NULL) {
        conn_send(s, CONN_REPLY_COMMAND, reply, len);
    } else if (mail) {
        conn_reply_const(s, "250 2.1.0 OK");
    } else {
        conn_reply_const(s, "250 2.1.5 OK");
    }
}

static void
mail_proceed(struct session *s, const char *reply, size_t len)
{
    path_accept(s, true, reply, len);
}

/* The transaction began at the check: a refused MAIL ends it. */
static void
mail_refused(struct session *s, const char *reply, size_t len)
{
    commands_refused(s, reply, len);
    conn_end_transaction(s);
}

static void
rcpt_proceed(struct session *s, const char *reply, size_t len)
{
    path_accept(s, false, reply, len);
}

static bool
data_check(struct session *s, char *arg)
{
    if (s->helo == NULL) {
        conn_reply_const(s, "503 5.5.1 Error: send HELO first");
        return false;
    }
    if (s->tx.env.rcpts.n == 0) {
        conn_reply_const(s, "503 5.5.1 Error: need RCPT command");
        return false;
    }
    if (bdat_refused(s, "DATA"))
        return false;
    if (*arg) {
        conn_reply_const(s, "501 5.5.4 Syntax: DATA");
        return false;
    }
    return true;
}

static void
data_proceed(struct session *s, const char *reply, size_t len)
{
    (void)reply;
    (void)len;
    /* RFC 5321 4.5.3.1.10: out of room for now; the client may try DATA again, or QUIT. */
    if (!data_budget_begin(s)) {
        conn_reply_const(s, "452 4.3.1 Insufficient system storage");
        return;
    }
    conn_enter(s, SESSION_DATA);
    conn_reply_const(s, "354 End data with <CR><LF>.<CR><LF>");
}

/* Indexed by verb; SMTP_VERB_UNKNOWN's row is the connection's opening (no command line
 * reaches it: an unknown verb is answered before the table). */
static const struct command commands[SMTP_VERB_COUNT] = {
    [SMTP_VERB_UNKNOWN] = {NULL, LRT_HOOK_CONNECT, greeting_proceed, greeting_refused, NULL},
    [SMTP_VERB_HELO] = {helo_check, LRT_HOOK_HELO, helo_proceed, NULL, NULL},
    [SMTP_VERB_EHLO] = {ehlo_check, LRT_HOOK_HELO, ehlo_proceed, NULL, NULL},
    [SMTP_VERB_LHLO] = {ehlo_check, LRT_HOOK_HELO, ehlo_proceed, NULL, NULL},
    [SMTP_VERB_MAIL] = {mail_check, LRT_HOOK_MAIL, mail_proceed, mail_refused, NULL},
    [SMTP_VERB_RCPT] = {rcpt_check, LRT_HOOK_RCPT, rcpt_proceed, NULL, NULL},
    [SMTP_VERB_DATA] = {data_check, NO_HOOK, data_proceed, NULL, NULL},
    [SMTP_VERB_BDAT] = {bdat_check, NO_HOOK, bdat_proceed, NULL, NULL},
    [SMTP_VERB_RSET] = {rset_check, NO_HOOK, rset_proceed, NULL, NULL},
    /* NOOP's argument is ignored (RFC 5321 4.1.1.9), where Python's smtpd answers 501. */
    [SMTP_VERB_NOOP] = {NULL, NO_HOOK, ok_proceed, NULL, NULL},
    [SMTP_VERB_QUIT] = {NULL, NO_HOOK, quit_proceed, NULL, NULL},
    [SMTP_VERB_VRFY] = {vrfy_check, NO_HOOK, vrfy_proceed, NULL, NULL},
    [SMTP_VERB_EXPN] = {NULL, NO_HOOK, expn_proceed, NULL, NULL},
    [SMTP_VERB_HELP] = {keep_check, NO_HOOK, help_proceed, NULL, NULL},
    [SMTP_VERB_STARTTLS] = {starttls_check, NO_HOOK, starttls_proceed, NULL, NULL},
    [SMTP_VERB_AUTH] = {auth_check, LRT_HOOK_AUTH, auth_proceed, auth_refused,
                        "535 5.7.8 Authentication credentials invalid"},
};

/* The hook's answer: a 4xx/5xx reply refuses the command; nil (or a 2xx reply, sent in place
 * of ours for MAIL and RCPT) lets it go on. A failing hook refuses with 4xx. Then the session
 * goes on as after any command. */
static void
commands_hook_done(void *arg, enum lrt_outcome outcome, const char *text, size_t len)
{
    struct session *s = arg;
    const struct command *c = &commands[s->cmd.verb];
    s->call = NULL;
    conn_enter(s, s->cmd.resume);
    struct buf wire = {0};
    int code = 0;
    if (outcome == LRT_DEFAULT && c->denied != NULL) {
        outcome = LRT_REPLY;
        text = c->denied;
        len = strlen(text);
    }
    if (outcome == LRT_REPLY) {
        code = smtp_reply_format(text, len, &wire);
        if (code == -1) {
            log_error("session %lu: a hook returned an invalid reply: %.80s", s->id, text);
            outcome = LRT_FAILED;
        }
    }
    if (outcome == LRT_FAILED || code >= 400)
        (c->refused != NULL ? c->refused : commands_refused)(
            s, outcome == LRT_FAILED ? NULL : wire.data, wire.len);
    else
        c->proceed(s, code != 0 ? wire.data : NULL, wire.len);
    buf_free(&wire);
    conn_after_command(s);
    s->pump(s);
}

/* A row past its check: its hook (commands_hook_done carries it on) or its proceed. */
static void
commands_decide(struct session *s, const struct command *c)
{
    if (c->hook == NO_HOOK) {
        c->proceed(s, NULL, 0);
        return;
    }
    enum session_state resume = s->state;
    conn_enter(s, SESSION_HOOK);
    s->cmd.resume = resume;
    struct lrt_call *call =
        lrt_call_hook(s->ls, c->hook, s->cmd.arg, &s->cmd.params, commands_hook_done, s);
    if (call != NULL)
        s->call = call;
}

static void
commands_run(struct session *s, enum smtp_verb verb, char *arg)
{
    const struct command *c = &commands[verb];
    s->cmd.verb = verb;
    if (c->check == NULL || c->check(s, arg))
        commands_decide(s, c);
}

void
commands_connect(struct session *s)
{
    /* on_connect takes no argument: s->cmd stays empty, so nothing here can fail. */
    commands_run(s, SMTP_VERB_UNKNOWN, NULL);
}

/* Commands that move no mail. Past --max-junk of them, each further one counts as an error, so
 * a NOOP loop ends at --max-errors as any other error loop does (Postfix's
 * smtpd_junk_command_limit, which counts the same way). The count restarts when a message is
 * accepted: a client sending many messages may RSET between each. */
static bool
is_junk(enum smtp_verb verb)
{
    switch (verb) {
    case SMTP_VERB_NOOP:
    case SMTP_VERB_RSET:
    case SMTP_VERB_HELP:
    case SMTP_VERB_VRFY:
    case SMTP_VERB_EXPN:
    case SMTP_VERB_HELO:
    case SMTP_VERB_EHLO:
    case SMTP_VERB_LHLO:
        return true;
    default:
        return false;
    }
}

/* What --require-starttls lets through in plaintext (RFC 3207 4). BDAT too: its bytes must be
 * read even when it is refused, and without MAIL it is (bdat_check). */
static const bool allowed_before_tls[SMTP_VERB_COUNT] = {
    [SMTP_VERB_EHLO] = true, [SMTP_VERB_HELO] = true, [SMTP_VERB_STARTTLS] = true,
    [SMTP_VERB_NOOP] = true, [SMTP_VERB_RSET] = true, [SMTP_VERB_QUIT] = true,
    [SMTP_VERB_LHLO] = true, [SMTP_VERB_BDAT] = true,
};

void
commands_dispatch(struct session *s, char *line, size_t len)
{
    struct smtp_command cmd;
    /* An answer to a 334 is credentials: never logged, not even with -d. */
    if (s->sasl != SESSION_SASL_NONE) {
        log_debug("session %lu: < (AUTH response, %zu bytes, not shown)", s->id, len);
        s->cmd.verb = SMTP_VERB_AUTH;
        if (auth_response(s, line, len))
            commands_decide(s, &commands[SMTP_VERB_AUTH]);
        return;
    }
    size_t shown = auth_loggable(line, len);
    log_debug("session %lu: < %.*s%s", s->id, (int)shown, line,
              shown < len ? " (initial response not shown)" : "");
    /* Length first, as Python does: an over-long line is "too long" whatever it holds. */
    if (len > line_limit(s, long_verb(line, len))) {
        conn_reply_const(s, "500 5.5.2 Error: line too long");
        return;
    }
    switch (smtp_parse_command(line, len, &cmd)) {
    case SMTP_PARSE_EMPTY:
    case SMTP_PARSE_BAD:
        conn_reply_const(s, "500 5.5.2 Error: bad syntax");
        return;
    case SMTP_PARSE_OK:
        break;
    }
    /* The other protocol's greeting is no command here (RFC 2033 4.1). */
    if (lmtp_foreign_verb(s->g->cfg->lmtp, cmd.verb))
        cmd.verb = SMTP_VERB_UNKNOWN;
    if (cmd.verb == SMTP_VERB_UNKNOWN) {
        char quoted[QUOTED_MAX];
        smtp_reply_quote(cmd.verb_text, strlen(cmd.verb_text), quoted, sizeof(quoted));
        conn_reply(s, "500 5.5.1 Error: command \"%s\" not recognized", quoted);
        return;
    }
    if (s->g->cfg->require_starttls && !s->in_tls && !allowed_before_tls[cmd.verb]) {
        conn_reply_const(s, "530 5.7.0 Must issue a STARTTLS command first");
        return;
    }
    unsigned max_junk = s->g->cfg->max_junk;
    if (max_junk != 0 && is_junk(cmd.verb)) {
        if (s->junk < max_junk)
            s->junk++;
        else
            s->errors++;
    }
    commands_run(s, cmd.verb, cmd.arg);
}
