/* The SMTP commands of a session (RFC 5321 4.1 with Python smtpd's replies and RFC 3463
 * enhanced codes): each checks its syntax and the session's state, answers, and hands the
 * command to the script's hook where there is one. No I/O here beyond the session's replies. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "luasmtpd/config.h"
#include "luasmtpd/log.h"
#include "session_internal.h"

/* Python's smtpd allows MAIL more than other commands after EHLO, for SIZE and SMTPUTF8. */
static size_t
line_limit(const struct session *s, enum smtp_verb verb)
{
    size_t limit = SMTP_COMMAND_LINE_LIMIT;
    if (s->esmtp && verb == SMTP_VERB_MAIL) {
        limit += SMTP_SIZE_EXTRA; /* we always advertise SIZE */
        if (s->g->cfg->smtputf8)
            limit += SMTP_SMTPUTF8_EXTRA;
    }
    return limit;
}

void
commands_accept_helo(struct session *s, const char *name, bool extended)
{
    session_reset_transaction(s);
    free(s->helo);
    s->helo = strdup(name);
    s->esmtp = extended;
    lrt_session_set_helo(s->ls, name, extended);
    if (!extended) {
        session_reply(s, "250 %s", s->g->hostname);
        return;
    }
    const struct config *cfg = s->g->cfg;
    struct buf b = {0};
    buf_printf(&b, "250-%s\r\n", s->g->hostname);
    if (cfg->size_limit)
        buf_printf(&b, "250-SIZE %zu\r\n", cfg->size_limit);
    else
        buf_append_str(&b, "250-SIZE\r\n");
    buf_append_str(&b, "250-8BITMIME\r\n");
    if (cfg->smtputf8)
        buf_append_str(&b, "250-SMTPUTF8\r\n");
    buf_append_str(&b, "250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 HELP\r\n");
    session_reply_bytes(s, b.data, b.len);
    buf_free(&b);
}

void
commands_accept_path(struct session *s, enum smtp_verb verb, const char *reply, size_t len)
{
    bool mail = verb == SMTP_VERB_MAIL;
    bool ok = mail ? envelope_set_sender(&s->env, s->hook_arg) == 0
                   : strv_push(&s->env.rcpts, s->hook_arg) == 0;
    for (size_t i = 0; ok && mail && i < s->hook_params.n; i++)
        ok = strv_push(&s->env.mail_options, s->hook_params.items[i]) == 0;
    log_debug("session %lu: %s <%s>", s->id, mail ? "sender" : "recipient", s->hook_arg);
    if (!ok) {
        session_reset_transaction(s);
        session_reply_const(s, "451 4.3.0 Error: out of memory");
    } else if (reply != NULL) {
        session_reply_bytes(s, reply, len);
    } else if (mail) {
        session_reply_const(s, "250 2.1.0 OK");
    } else {
        session_reply_const(s, "250 2.1.5 OK");
    }
}

static void
cmd_greeting(struct session *s, const char *arg, bool extended)
{
    const char *verb = extended ? "EHLO" : "HELO";
    if (*arg == '\0') {
        session_reply(s, "501 5.5.4 Syntax: %s hostname", verb);
        return;
    }
    /* RFC 5321 would let a second EHLO reset the session; Python's smtpd answers 503, and so
     * do we, so scripts see one helo name per connection. */
    if (s->helo != NULL) {
        session_reply_const(s, "503 5.5.1 Duplicate HELO/EHLO");
        return;
    }
    session_ask_hook(s, LRT_HOOK_HELO, extended ? SMTP_VERB_EHLO : SMTP_VERB_HELO, arg, NULL, 0);
}

static void
cmd_helo(struct session *s, char *arg)
{
    cmd_greeting(s, arg, false);
}

static void
cmd_ehlo(struct session *s, char *arg)
{
    cmd_greeting(s, arg, true);
}

static void
cmd_noop(struct session *s, char *arg)
{
    if (*arg)
        session_reply_const(s, "501 5.5.4 Syntax: NOOP");
    else
        session_reply_const(s, "250 2.0.0 OK");
}

static void
cmd_quit(struct session *s, char *arg)
{
    (void)arg;
    session_reply_const(s, "221 2.0.0 Bye");
    session_close_after_flush(s);
}

static void
cmd_rset(struct session *s, char *arg)
{
    if (*arg) {
        session_reply_const(s, "501 5.5.4 Syntax: RSET");
        return;
    }
    session_reset_transaction(s);
    session_reply_const(s, "250 2.0.0 OK");
}

static void
cmd_help(struct session *s, char *arg)
{
    static const char *const topics[][2] = {
        {"EHLO", "EHLO hostname"}, {"HELO", "HELO hostname"}, {"MAIL", "MAIL FROM: <address>"},
        {"RCPT", "RCPT TO: <address>"}, {"DATA", "DATA"}, {"RSET", "RSET"},
        {"NOOP", "NOOP"}, {"QUIT", "QUIT"}, {"VRFY", "VRFY <address>"},
    };
    static const char commands[] = "Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY";
    if (*arg == '\0') {
        session_reply(s, "250 2.0.0 %s", commands);
        return;
    }
    for (size_t i = 0; i < sizeof(topics) / sizeof(topics[0]); i++) {
        if (strcasecmp(arg, topics[i][0]) == 0) {
            bool params = s->esmtp && (i == 2 || i == 3);
            session_reply(s, "250 2.0.0 Syntax: %s%s", topics[i][1], params ? " [SP <mail-parameters>]" : "");
            return;
        }
    }
    session_reply(s, "501 5.5.4 %s", commands);
}

static void
cmd_vrfy(struct session *s, char *arg)
{
    struct smtp_path path;
    if (*arg == '\0') {
        session_reply_const(s, "501 5.5.4 Syntax: VRFY <address>");
        return;
    }
    char copy[LINE_MAX_BYTES + 1];
    snprintf(copy, sizeof(copy), "%s", arg);
    if (smtp_parse_path(arg, &path) && !path.null_path)
        session_reply_const(s, "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery");
    else
        session_reply(s, "502 5.5.1 Could not VRFY %s", copy);
}

static void
cmd_expn(struct session *s, char *arg)
{
    (void)arg;
    session_reply_const(s, "502 5.5.1 EXPN not implemented");
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

static void
syntax_error(struct session *s, const char *usage)
{
    session_reply(s, "501 5.5.4 Syntax: %s%s", usage, s->esmtp ? " [SP <mail-parameters>]" : "");
}

/* Checks MAIL's parameters in Python smtpd's order (BODY, SMTPUTF8, SIZE, then anything left)
 * and records them. Returns false when a reply was sent. */
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
            session_reply_const(s, "501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME");
            return false;
        }
    }
    for (int i = 0; cfg->smtputf8 && i < n; i++) {
        if (strcmp(params[i].keyword, "SMTPUTF8") != 0)
            continue;
        known[i] = true;
        if (params[i].value != NULL) {
            session_reply_const(s, "501 5.5.4 Error: SMTPUTF8 takes no arguments");
            return false;
        }
        s->env.smtputf8 = true;
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
        enum session_data_fit fit = cfg->size_limit && size > cfg->size_limit
                                        ? SESSION_DATA_NEVER
                                        : session_data_fit(s, (size_t)size);
        if (fit == SESSION_DATA_NEVER) {
            session_reply_const(s, "552 5.3.4 Error: message size exceeds fixed maximum message size");
            return false;
        }
        if (fit == SESSION_DATA_FULL) {
            session_reply_const(s, "452 4.3.1 Insufficient system storage");
            return false;
        }
        s->env.size_hint = (size_t)size;
    }
    for (int i = 0; i < n; i++) {
        if (!known[i]) {
            session_reply_const(s, "555 5.5.4 MAIL FROM parameters not recognized or not implemented");
            return false;
        }
    }
    return true;
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

static void
cmd_mail(struct session *s, char *arg)
{
    static const char usage[] = "MAIL FROM: <address>";
    if (s->helo == NULL) {
        session_reply_const(s, "503 5.5.1 Error: send HELO first");
        return;
    }
    struct smtp_path path;
    if (!path_argument(s, arg, "FROM:", usage, &path))
        return;
    if (s->env.has_sender) {
        session_reply_const(s, "503 5.5.1 Error: nested MAIL command");
        return;
    }
    if (s->g->cfg->max_messages != 0 && s->messages >= s->g->cfg->max_messages) {
        session_reply(s, "421 4.7.0 %s Error: too many messages in this connection, closing",
              s->g->hostname);
        session_close_after_flush(s);
        return;
    }
    struct smtp_param params[SMTP_PARAMS_MAX];
    int n = params_argument(s, &path, usage, params);
    if (n < 0)
        return;
    if (!mail_params(s, params, n, usage)) {
        s->env.smtputf8 = false;
        s->env.size_hint = 0;
        return;
    }
    /* RFC 6531 3.4: a UTF-8 address is only taken in an SMTPUTF8 transaction. */
    if (path.non_ascii && !s->env.smtputf8) {
        s->env.smtputf8 = false;
        session_reply_const(s, "553 5.6.7 Error: non-ASCII address needs SMTPUTF8");
        return;
    }
    session_begin_transaction(s);
    session_ask_hook(s, LRT_HOOK_MAIL, SMTP_VERB_MAIL, path.address, params, n);
}

static void
cmd_rcpt(struct session *s, char *arg)
{
    static const char usage[] = "RCPT TO: <address>";
    if (s->helo == NULL) {
        session_reply_const(s, "503 5.5.1 Error: send HELO first");
        return;
    }
    if (!s->env.has_sender) {
        session_reply_const(s, "503 5.5.1 Error: need MAIL command");
        return;
    }
    struct smtp_path path;
    if (!path_argument(s, arg, "TO:", usage, &path))
        return;
    if (path.null_path) {
        syntax_error(s, usage);
        return;
    }
    struct smtp_param params[SMTP_PARAMS_MAX];
    int n = params_argument(s, &path, usage, params);
    if (n < 0)
        return;
    if (n > 0) {
        session_reply_const(s, "555 5.5.4 RCPT TO parameters not recognized or not implemented");
        return;
    }
    if (path.non_ascii && !s->env.smtputf8) {
        session_reply_const(s, "553 5.6.7 Error: non-ASCII address needs SMTPUTF8");
        return;
    }
    if (s->env.rcpts.n >= s->g->cfg->max_recipients) {
        session_reply_const(s, "452 4.5.3 Error: too many recipients");
        return;
    }
    session_ask_hook(s, LRT_HOOK_RCPT, SMTP_VERB_RCPT, path.address, params, n);
}

static void
cmd_data(struct session *s, char *arg)
{
    if (s->helo == NULL) {
        session_reply_const(s, "503 5.5.1 Error: send HELO first");
        return;
    }
    if (s->env.rcpts.n == 0) {
        session_reply_const(s, "503 5.5.1 Error: need RCPT command");
        return;
    }
    if (*arg) {
        session_reply_const(s, "501 5.5.4 Syntax: DATA");
        return;
    }
    /* RFC 5321 4.5.3.1.10: out of room for now; the client may try DATA again, or QUIT. */
    if (!session_data_begin(s)) {
        session_reply_const(s, "452 4.3.1 Insufficient system storage");
        return;
    }
    session_enter(s, SESSION_DATA);
    session_reply_const(s, "354 End data with <CR><LF>.<CR><LF>");
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
        return true;
    default:
        return false;
    }
}

typedef void (*command_fn)(struct session *s, char *arg);

static const command_fn commands[] = {
    [SMTP_VERB_HELO] = cmd_helo, [SMTP_VERB_EHLO] = cmd_ehlo, [SMTP_VERB_MAIL] = cmd_mail,
    [SMTP_VERB_RCPT] = cmd_rcpt, [SMTP_VERB_DATA] = cmd_data, [SMTP_VERB_RSET] = cmd_rset,
    [SMTP_VERB_NOOP] = cmd_noop, [SMTP_VERB_QUIT] = cmd_quit, [SMTP_VERB_VRFY] = cmd_vrfy,
    [SMTP_VERB_EXPN] = cmd_expn, [SMTP_VERB_HELP] = cmd_help,
};

void
commands_dispatch(struct session *s, char *line, size_t len)
{
    struct smtp_command cmd;
    log_debug("session %lu: < %.*s", s->id, (int)len, line);
    /* Length first, as Python does: an over-long line is "too long" whatever it holds. */
    bool mail = len >= 4 && strncasecmp(line, "MAIL", 4) == 0 && (len == 4 || line[4] == ' ');
    if (len > line_limit(s, mail ? SMTP_VERB_MAIL : SMTP_VERB_UNKNOWN)) {
        session_reply_const(s, "500 5.5.2 Error: line too long");
        return;
    }
    switch (smtp_parse_command(line, len, &cmd)) {
    case SMTP_PARSE_EMPTY:
    case SMTP_PARSE_BAD:
        session_reply_const(s, "500 5.5.2 Error: bad syntax");
        return;
    case SMTP_PARSE_OK:
        break;
    }
    if (cmd.verb == SMTP_VERB_UNKNOWN) {
        session_reply(s, "500 5.5.1 Error: command \"%s\" not recognized", cmd.verb_text);
        return;
    }
    unsigned max_junk = s->g->cfg->max_junk;
    if (max_junk != 0 && is_junk(cmd.verb)) {
        if (s->junk < max_junk)
            s->junk++;
        else
            s->errors++;
    }
    commands[cmd.verb](s, cmd.arg);
}

