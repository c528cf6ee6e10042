/* Command lines, paths and ESMTP parameters (RFC 5321 4.1). Verbs are matched exactly, case
 * aside: "QUITX" is no QUIT. Addresses are taken as leniently as Python's smtpd takes them
 * (a bare "a@b", "<postmaster>") but never with spaces or control bytes in them. */
#include "luasmtpd/smtp_parse.h"

#include <stdint.h>
#include <string.h>
#include <strings.h>

static const struct {
    const char *name;
    enum smtp_verb verb;
} verbs[] = {
    {"HELO", SMTP_VERB_HELO}, {"EHLO", SMTP_VERB_EHLO}, {"MAIL", SMTP_VERB_MAIL},
    {"RCPT", SMTP_VERB_RCPT}, {"DATA", SMTP_VERB_DATA}, {"RSET", SMTP_VERB_RSET},
    {"NOOP", SMTP_VERB_NOOP}, {"QUIT", SMTP_VERB_QUIT}, {"VRFY", SMTP_VERB_VRFY},
    {"EXPN", SMTP_VERB_EXPN}, {"HELP", SMTP_VERB_HELP}, {"STARTTLS", SMTP_VERB_STARTTLS},
    {"AUTH", SMTP_VERB_AUTH}, {"LHLO", SMTP_VERB_LHLO}, {"BDAT", SMTP_VERB_BDAT},
};

static bool
is_space(char c)
{
    return c == ' ' || c == '\t';
}

static char
to_upper(char c)
{
    return (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
}

static char *
trim(char *s)
{
    while (is_space(*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && is_space(s[n - 1]))
        s[--n] = '\0';
    return s;
}

enum smtp_parse_status
smtp_parse_command(char *line, size_t len, struct smtp_command *cmd)
{
    memset(cmd, 0, sizeof(*cmd));
    cmd->arg = line + len;
    line[len] = '\0';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)line[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return SMTP_PARSE_BAD;
    }
    if (len == 0)
        return SMTP_PARSE_EMPTY;

    char *sp = memchr(line, ' ', len);
    size_t verb_len = sp ? (size_t)(sp - line) : len;
    if (verb_len > SMTP_VERB_MAX)
        return SMTP_PARSE_BAD;
    for (size_t i = 0; i < verb_len; i++)
        cmd->verb_text[i] = to_upper(line[i]);
    cmd->verb_text[verb_len] = '\0';
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
        if (strcmp(cmd->verb_text, verbs[i].name) == 0) {
            cmd->verb = verbs[i].verb;
            break;
        }
    }
    if (sp != NULL)
        cmd->arg = trim(sp + 1);
    return SMTP_PARSE_OK;
}

char *
smtp_strip_keyword(char *arg, const char *keyword)
{
    size_t n = strlen(keyword);
    if (strncasecmp(arg, keyword, n) != 0)
        return NULL;
    arg += n;
    while (is_space(*arg))
        arg++;
    return arg;
}

/* RFC 5322 atext, which RFC 5321's Dot-string is made of. */
static bool
is_atext(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

/* Checks local-part ["@" domain] in [s, e). Bytes >= 0x80 are taken as UTF-8 (RFC 6531) and
 * reported, so the session can insist on SMTPUTF8. */
static bool
valid_mailbox(const char *s, const char *e, bool *non_ascii)
{
    const char *p = s;
    if (p == e)
        return false;
    if (*p == '"') {
        if (e - p == 2 && p[1] == '"')
            return false; /* a bare "" names nobody; Python's smtpd refuses it too */
        for (p++; p < e && *p != '"'; p++) {
            if (*p == '\\' && p + 1 < e)
                p++;
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                return false;
            if ((unsigned char)*p >= 0x80)
                *non_ascii = true;
        }
        if (p == e)
            return false;
        p++;
    } else {
        const char *start = p;
        for (; p < e && *p != '@'; p++) {
            unsigned char c = (unsigned char)*p;
            if (c >= 0x80)
                *non_ascii = true;
            else if (!is_atext(c) && c != '.')
                return false;
        }
        if (p == start || *start == '.' || p[-1] == '.')
            return false;
    }
    if (p == e)
        return true; /* "postmaster" and friends: Python takes a bare local part */
    if (*p != '@' || ++p == e)
        return false;
    if (*p == '[') {
        if (e[-1] != ']' || e - p < 3)
            return false;
        /* dcontent is printable ASCII only, SMTPUTF8 or not (RFC 5321 4.1.3, RFC 6531 3.3):
         * an 8-bit byte here would also slip past the non_ascii check. */
        for (const char *q = p + 1; q < e - 1; q++)
            if ((unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f || *q == '[' || *q == ']' ||
                *q == '\\')
                return false;
        return true;
    }
    for (const char *q = p; q < e; q++) {
        unsigned char c = (unsigned char)*q;
        if (c >= 0x80)
            *non_ascii = true;
        else if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   c == '-' || c == '.' || c == '_'))
            return false;
    }
    return *p != '.' && e[-1] != '.';
}

/* The end of an address token: a space outside quotes, or the end of the string. With `angle`
 * the token ends at the first '>' outside quotes instead. NULL when a quote is left open. */
static char *
token_end(char *p, bool angle)
{
    bool quoted = false;
    for (; *p; p++) {
        if (quoted) {
            if (*p == '\\' && p[1] != '\0')
                p++;
            else if (*p == '"')
                quoted = false;
        } else if (*p == '"') {
            quoted = true;
        } else if (angle ? *p == '>' : is_space(*p)) {
            return p;
        } else if (angle && (*p == '<' || is_space(*p))) {
            return NULL;
        }
    }
    return (quoted || angle) ? NULL : p;
}

bool
smtp_parse_path(char *arg, struct smtp_path *path)
{
    memset(path, 0, sizeof(*path));
    while (is_space(*arg))
        arg++;
    bool angle = *arg == '<';
    char *start = angle ? arg + 1 : arg;
    char *end = token_end(start, angle);
    if (end == NULL)
        return false;
    char *params = angle || *end != '\0' ? end + 1 : end;
    if (angle && *params != '\0' && !is_space(*params))
        return false;

    if (angle && start == end) {
        path->null_path = true;
    } else {
        /* A source route (RFC 5321 4.1.2 A-d-l, "@a,@b:") is obsolete and dropped, as Python
         * does; the mailbox after it is the address. */
        if (angle && *start == '@') {
            char *colon = memchr(start, ':', (size_t)(end - start));
            if (colon == NULL)
                return false;
            start = colon + 1;
        }
        if (!valid_mailbox(start, end, &path->non_ascii))
            return false;
    }
    *end = '\0';
    path->address = start;
    path->params = trim(params);
    return true;
}

int
smtp_parse_params(char *params, struct smtp_param *out, int max)
{
    int n = 0;
    char *p = params;
    for (;;) {
        while (is_space(*p))
            p++;
        if (*p == '\0')
            return n;
        if (n == max)
            return -1;
        char *word = p;
        while (*p && !is_space(*p))
            p++;
        if (*p)
            *p++ = '\0';
        char *eq = strchr(word, '=');
        if (eq != NULL)
            *eq = '\0';
        for (char *q = word; *q; q++)
            *q = to_upper(*q);
        /* RFC 3461's xtext values name things for the sender (its envelope id, the original
         * recipient's mailbox) and spell "+XX" in upper-case hex: they keep their case. */
        bool keep_case = strcmp(word, "ENVID") == 0 || strcmp(word, "ORCPT") == 0;
        for (char *q = eq ? eq + 1 : NULL; q != NULL && !keep_case && *q; q++)
            *q = to_upper(*q);
        /* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
        if (word[0] == '\0' || word[0] == '-')
            return -1;
        for (char *q = word; *q; q++)
            if (!((*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9') || *q == '-'))
                return -1;
        if (eq != NULL) {
            if (eq[1] == '\0')
                return -1;
            for (unsigned char *q = (unsigned char *)eq + 1; *q; q++)
                if (*q < 0x21 || *q == '=' || *q == 0x7f)
                    return -1;
        }
        out[n].keyword = word;
        out[n].value = eq ? eq + 1 : NULL;
        n++;
    }
}
