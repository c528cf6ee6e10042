/* Unit tests for smtp_parse: command lines, MAIL/RCPT keywords, paths and ESMTP parameters.
 * Each table row is one awkward input and what the parser must make of it; the parser works in
 * place, so every case runs on a fresh heap copy sized exactly as the contract says (len+1), which
 * lets AddressSanitizer catch a byte read or written past it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "luasmtpd/smtp_parse.h"

/* A heap copy of n bytes plus one spare byte (poisoned, so a missing NUL shows). */
static char *
copy_bytes(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    assert_non_null(p);
    memcpy(p, s, n);
    p[n] = 'Z';
    return p;
}

/* ---- smtp_parse_command ---------------------------------------------------------------- */

struct command_case {
    const char *in;
    size_t len; /* 0: strlen(in) */
    enum smtp_parse_status status;
    enum smtp_verb verb;
    const char *verb_text; /* checked when status is OK */
    const char *arg;       /* checked when status is OK */
};

#define LEN(s) (sizeof(s) - 1)

static const struct command_case command_cases[] = {
    {"QUIT", 0, SMTP_PARSE_OK, SMTP_VERB_QUIT, "QUIT", ""},
    {"quit", 0, SMTP_PARSE_OK, SMTP_VERB_QUIT, "QUIT", ""},
    {"QuIt", 0, SMTP_PARSE_OK, SMTP_VERB_QUIT, "QUIT", ""},
    {"QUITX", 0, SMTP_PARSE_OK, SMTP_VERB_UNKNOWN, "QUITX", ""},
    {"QUI", 0, SMTP_PARSE_OK, SMTP_VERB_UNKNOWN, "QUI", ""},
    {"quitx now", 0, SMTP_PARSE_OK, SMTP_VERB_UNKNOWN, "QUITX", "now"},
    {"HELO", 0, SMTP_PARSE_OK, SMTP_VERB_HELO, "HELO", ""},
    {"helo example.org", 0, SMTP_PARSE_OK, SMTP_VERB_HELO, "HELO", "example.org"},
    {"EHLO  example.org  ", 0, SMTP_PARSE_OK, SMTP_VERB_EHLO, "EHLO", "example.org"},
    {"EHLO \t example.org\t", 0, SMTP_PARSE_OK, SMTP_VERB_EHLO, "EHLO", "example.org"},
    {"MAIL FROM:<a@b>", 0, SMTP_PARSE_OK, SMTP_VERB_MAIL, "MAIL", "FROM:<a@b>"},
    {"mail from:<a@b> SIZE=10", 0, SMTP_PARSE_OK, SMTP_VERB_MAIL, "MAIL", "from:<a@b> SIZE=10"},
    {"RCPT TO:<a@b>", 0, SMTP_PARSE_OK, SMTP_VERB_RCPT, "RCPT", "TO:<a@b>"},
    {"DATA", 0, SMTP_PARSE_OK, SMTP_VERB_DATA, "DATA", ""},
    {"RSET", 0, SMTP_PARSE_OK, SMTP_VERB_RSET, "RSET", ""},
    {"NOOP", 0, SMTP_PARSE_OK, SMTP_VERB_NOOP, "NOOP", ""},
    {"NOOP ", 0, SMTP_PARSE_OK, SMTP_VERB_NOOP, "NOOP", ""},
    {"NOOP    ", 0, SMTP_PARSE_OK, SMTP_VERB_NOOP, "NOOP", ""},
    {"NOOP x y", 0, SMTP_PARSE_OK, SMTP_VERB_NOOP, "NOOP", "x y"},
    {"VRFY user", 0, SMTP_PARSE_OK, SMTP_VERB_VRFY, "VRFY", "user"},
    {"EXPN list", 0, SMTP_PARSE_OK, SMTP_VERB_EXPN, "EXPN", "list"},
    {"help", 0, SMTP_PARSE_OK, SMTP_VERB_HELP, "HELP", ""},
    {"starttls", 0, SMTP_PARSE_OK, SMTP_VERB_STARTTLS, "STARTTLS", ""},
    {"STARTTLS x", 0, SMTP_PARSE_OK, SMTP_VERB_STARTTLS, "STARTTLS", "x"},
    {"STARTTLSX", 0, SMTP_PARSE_OK, SMTP_VERB_UNKNOWN, "STARTTLSX", ""},
    /* Python splits at the first space only: a tab is part of the verb, a leading space makes
     * the verb empty. Neither is a known command. */
    {"NOOP\t", 0, SMTP_PARSE_OK, SMTP_VERB_UNKNOWN, "NOOP\t", ""},
    {" QUIT", 0, SMTP_PARSE_OK, SMTP_VERB_UNKNOWN, "", "QUIT"},
    {"\xc3\xa9hlo x", 0, SMTP_PARSE_OK, SMTP_VERB_UNKNOWN, "\xc3\xa9HLO", "x"},
    /* exactly SMTP_VERB_MAX bytes is still a verb; one more is not */
    {"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345", 0, SMTP_PARSE_OK, SMTP_VERB_UNKNOWN,
     "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345", ""},
    {"abcdefghijklmnopqrstuvwxyz012345 arg", 0, SMTP_PARSE_OK, SMTP_VERB_UNKNOWN,
     "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345", "arg"},
    {"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456", 0, SMTP_PARSE_BAD, SMTP_VERB_UNKNOWN, NULL, NULL},
    {"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456 x", 0, SMTP_PARSE_BAD, SMTP_VERB_UNKNOWN, NULL, NULL},
    {"", 0, SMTP_PARSE_EMPTY, SMTP_VERB_UNKNOWN, NULL, NULL},
    /* control bytes anywhere, NUL included; a tab is the one allowed */
    {"NO\0OP", LEN("NO\0OP"), SMTP_PARSE_BAD, SMTP_VERB_UNKNOWN, NULL, NULL},
    {"\0", LEN("\0"), SMTP_PARSE_BAD, SMTP_VERB_UNKNOWN, NULL, NULL},
    {"QUIT\0", LEN("QUIT\0"), SMTP_PARSE_BAD, SMTP_VERB_UNKNOWN, NULL, NULL},
    {"MAIL FROM:<a@b>\0x", LEN("MAIL FROM:<a@b>\0x"), SMTP_PARSE_BAD, SMTP_VERB_UNKNOWN, NULL,
     NULL},
    {"QUIT\r", 0, SMTP_PARSE_BAD, SMTP_VERB_UNKNOWN, NULL, NULL},
    {"QU\rIT", 0, SMTP_PARSE_BAD, SMTP_VERB_UNKNOWN, NULL, NULL},
    {"NOOP \n", 0, SMTP_PARSE_BAD, SMTP_VERB_UNKNOWN, NULL, NULL},
    {"NOOP a\x01", 0, SMTP_PARSE_BAD, SMTP_VERB_UNKNOWN, NULL, NULL},
    {"\x1bQUIT", 0, SMTP_PARSE_BAD, SMTP_VERB_UNKNOWN, NULL, NULL},
    {"NOOP \x7f", 0, SMTP_PARSE_BAD, SMTP_VERB_UNKNOWN, NULL, NULL},
    {"NOOP \x0b", 0, SMTP_PARSE_BAD, SMTP_VERB_UNKNOWN, NULL, NULL},
    {"NOOP \x1f", 0, SMTP_PARSE_BAD, SMTP_VERB_UNKNOWN, NULL, NULL},
    {"NOOP\ta", 0, SMTP_PARSE_OK, SMTP_VERB_UNKNOWN, "NOOP\tA", ""},
};

static void
test_parse_command_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(command_cases) / sizeof(command_cases[0]); i++) {
        const struct command_case *tc = &command_cases[i];
        size_t len = tc->len ? tc->len : strlen(tc->in);
        char *line = copy_bytes(tc->in, len);
        struct smtp_command cmd;
        memset(&cmd, 0xa5, sizeof(cmd));
        enum smtp_parse_status st = smtp_parse_command(line, len, &cmd);
        if (st != tc->status)
            fail_msg("case %zu (\"%s\"): status %d, want %d", i, tc->in, (int)st, (int)tc->status);
        /* the contract: the line is NUL-terminated in place, arg is never NULL */
        if (line[len] != '\0')
            fail_msg("case %zu (\"%s\"): line not NUL-terminated", i, tc->in);
        if (cmd.arg == NULL)
            fail_msg("case %zu (\"%s\"): arg is NULL", i, tc->in);
        if (st == SMTP_PARSE_OK) {
            if (cmd.verb != tc->verb)
                fail_msg("case %zu (\"%s\"): verb %d, want %d", i, tc->in, (int)cmd.verb,
                         (int)tc->verb);
            if (strcmp(cmd.verb_text, tc->verb_text) != 0)
                fail_msg("case %zu (\"%s\"): verb_text \"%s\", want \"%s\"", i, tc->in,
                         cmd.verb_text, tc->verb_text);
            if (strcmp(cmd.arg, tc->arg) != 0)
                fail_msg("case %zu (\"%s\"): arg \"%s\", want \"%s\"", i, tc->in, cmd.arg, tc->arg);
            /* the argument lives inside the caller's line: parsing is in place */
            if (cmd.arg < line || cmd.arg > line + len)
                fail_msg("case %zu (\"%s\"): arg outside the line buffer", i, tc->in);
        } else {
            assert_int_equal(cmd.verb, SMTP_VERB_UNKNOWN);
        }
        free(line);
    }
}

/* Every byte value in every position of a short line: only tab and printable bytes (and 8-bit
 * ones) may pass, so a CR, LF, NUL or ESC can never reach a handler or a log line. */
static void
test_parse_command_every_byte(void **state)
{
    (void)state;
    for (int c = 0; c < 256; c++) {
        for (size_t pos = 0; pos < 9; pos++) {
            char tmpl[] = "NOOP abcd";
            size_t len = sizeof(tmpl) - 1;
            tmpl[pos] = (char)c;
            char *line = copy_bytes(tmpl, len);
            struct smtp_command cmd;
            enum smtp_parse_status st = smtp_parse_command(line, len, &cmd);
            bool control = (c < 0x20 && c != '\t') || c == 0x7f;
            if (control && st != SMTP_PARSE_BAD)
                fail_msg("byte 0x%02x at %zu: status %d, want BAD", c, pos, (int)st);
            if (!control && st != SMTP_PARSE_OK)
                fail_msg("byte 0x%02x at %zu: status %d, want OK", c, pos, (int)st);
            free(line);
        }
    }
}

/* A whole line at the command limit parses, and the argument is all of it. */
static void
test_parse_command_long_arg(void **state)
{
    (void)state;
    size_t len = SMTP_COMMAND_LINE_LIMIT;
    char *line = malloc(len + 1);
    assert_non_null(line);
    memcpy(line, "NOOP ", 5);
    memset(line + 5, 'x', len - 5);
    struct smtp_command cmd;
    assert_int_equal(smtp_parse_command(line, len, &cmd), SMTP_PARSE_OK);
    assert_int_equal(cmd.verb, SMTP_VERB_NOOP);
    assert_int_equal(strlen(cmd.arg), len - 5);
    free(line);
}

/* ---- smtp_strip_keyword ---------------------------------------------------------------- */

struct keyword_case {
    const char *in;
    const char *keyword;
    const char *rest; /* NULL: no match */
};

static const struct keyword_case keyword_cases[] = {
    {"FROM:<a@b>", "FROM:", "<a@b>"},
    {"from:<a@b>", "FROM:", "<a@b>"},
    {"From: <a@b>", "FROM:", "<a@b>"},
    {"FROM:  \t<a@b> SIZE=1", "FROM:", "<a@b> SIZE=1"},
    {"FROM:", "FROM:", ""},
    {"FROM <a@b>", "FROM:", NULL},
    {"FRO:<a@b>", "FROM:", NULL},
    {"FRO", "FROM:", NULL},
    {"", "FROM:", NULL},
    {"<a@b>", "FROM:", NULL},
    {"TO:<a@b>", "TO:", "<a@b>"},
    {"to: <a@b>", "TO:", "<a@b>"},
    {"TO:", "TO:", ""},
    {"TO <a@b>", "TO:", NULL},
    {"FROM:<a@b>", "TO:", NULL},
};

static void
test_strip_keyword_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(keyword_cases) / sizeof(keyword_cases[0]); i++) {
        const struct keyword_case *tc = &keyword_cases[i];
        char *arg = strdup(tc->in);
        assert_non_null(arg);
        char *rest = smtp_strip_keyword(arg, tc->keyword);
        if (tc->rest == NULL) {
            if (rest != NULL)
                fail_msg("case %zu (\"%s\", \"%s\"): got \"%s\", want NULL", i, tc->in, tc->keyword,
                         rest);
        } else {
            if (rest == NULL)
                fail_msg("case %zu (\"%s\", \"%s\"): got NULL, want \"%s\"", i, tc->in, tc->keyword,
                         tc->rest);
            if (strcmp(rest, tc->rest) != 0)
                fail_msg("case %zu (\"%s\", \"%s\"): got \"%s\", want \"%s\"", i, tc->in,
                         tc->keyword, rest, tc->rest);
            if (rest < arg || rest > arg + strlen(tc->in))
                fail_msg("case %zu: result outside the argument", i);
        }
        free(arg);
    }
}

/* ---- smtp_parse_path ------------------------------------------------------------------- */

struct path_case {
    const char *in;
    bool ok;
    const char *address; /* checked when ok */
    const char *params;
    bool null_path;
    bool non_ascii;
};

static const struct path_case path_cases[] = {
    {"<a@b>", true, "a@b", "", false, false},
    {"<user@example.org>", true, "user@example.org", "", false, false},
    {"  <a@b>  ", true, "a@b", "", false, false},
    {"<A.B+tag@Sub-Domain.Example_1.org>", true, "A.B+tag@Sub-Domain.Example_1.org", "", false,
     false},
    {"<!#$%&'*+-/=?^_`{|}~@b>", true, "!#$%&'*+-/=?^_`{|}~@b", "", false, false},
    {"<>", true, "", "", true, false},
    {"<> SIZE=10", true, "", "SIZE=10", true, false},
    {"<>  BODY=8BITMIME  ", true, "", "BODY=8BITMIME", true, false},
    {"<@r1,@r2:a@b>", true, "a@b", "", false, false},
    {"<@r1:a@b> SIZE=1", true, "a@b", "SIZE=1", false, false},
    {"a@b", true, "a@b", "", false, false},
    {"a@b SIZE=10", true, "a@b", "SIZE=10", false, false},
    {"a@b\tSIZE=10", true, "a@b", "SIZE=10", false, false},
    {"<a@b> SIZE=100 BODY=8BITMIME", true, "a@b", "SIZE=100 BODY=8BITMIME", false, false},
    {"<a@b>\tSIZE=100", true, "a@b", "SIZE=100", false, false},
    {"<postmaster>", true, "postmaster", "", false, false},
    {"<Postmaster> x", true, "Postmaster", "x", false, false},
    {"postmaster", true, "postmaster", "", false, false},
    {"<\"a b\"@c>", true, "\"a b\"@c", "", false, false},
    {"<\"a>b\"@c>", true, "\"a>b\"@c", "", false, false},
    {"<\"a\\\"b\"@c>", true, "\"a\\\"b\"@c", "", false, false},
    {"<\"\"@c>", true, "\"\"@c", "", false, false},
    {"\"a b\"@c SIZE=1", true, "\"a b\"@c", "SIZE=1", false, false},
    {"<a@[127.0.0.1]>", true, "a@[127.0.0.1]", "", false, false},
    {"<a@[IPv6:::1]>", true, "a@[IPv6:::1]", "", false, false},
    /* UTF-8 (RFC 6531): accepted, and flagged so the session can insist on SMTPUTF8 */
    {"<j\xc3\xb6rg@b>", true, "j\xc3\xb6rg@b", "", false, true},
    {"<a@b\xc3\xbc.de>", true, "a@b\xc3\xbc.de", "", false, true},
    {"<\"\xc3\xb6 x\"@b>", true, "\"\xc3\xb6 x\"@b", "", false, true},
    {"\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.\xe5\xb9\xbf\xe5\x91\x8a SMTPUTF8", true,
     "\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.\xe5\xb9\xbf\xe5\x91\x8a", "SMTPUTF8",
     false, true},

    {"<a@b", false, NULL, NULL, false, false},
    {"<a b@c>", false, NULL, NULL, false, false},
    {"<a@b c>", false, NULL, NULL, false, false},
    {"<a@b>x", false, NULL, NULL, false, false},
    {"<a@b><c@d>", false, NULL, NULL, false, false},
    {"<<a@b>>", false, NULL, NULL, false, false},
    {"<a<b@c>", false, NULL, NULL, false, false},
    {"", false, NULL, NULL, false, false},
    {"   ", false, NULL, NULL, false, false},
    {"<", false, NULL, NULL, false, false},
    {">", false, NULL, NULL, false, false},
    {"<.a@b>", false, NULL, NULL, false, false},
    {"<a.@b>", false, NULL, NULL, false, false},
    {"<a@b.>", false, NULL, NULL, false, false},
    {"<a@.b>", false, NULL, NULL, false, false},
    {"<@b>", false, NULL, NULL, false, false},
    {"<@r1:>", false, NULL, NULL, false, false},
    {"<a@>", false, NULL, NULL, false, false},
    {"<@a@b>", false, NULL, NULL, false, false},
    {"@b", false, NULL, NULL, false, false},
    {"<a@b@c>", false, NULL, NULL, false, false},
    {"<a(b)@c>", false, NULL, NULL, false, false},
    {"<a,b@c>", false, NULL, NULL, false, false},
    {"<a@b!c>", false, NULL, NULL, false, false},
    {"<\"ab@c>", false, NULL, NULL, false, false},
    {"<\"a\"b@c>", false, NULL, NULL, false, false},
    {"\"a b@c", false, NULL, NULL, false, false},
    {"<a@[]>", false, NULL, NULL, false, false},
    {"<a@[1.2.3.4>", false, NULL, NULL, false, false},
    {"<a@[1.2.3.4]x>", false, NULL, NULL, false, false},
    {"<a@[1.2[3]>", false, NULL, NULL, false, false},
    {"<a@[1.2\\3]>", false, NULL, NULL, false, false},
    {"<a@[\xc3\xa9]>", false, NULL, NULL, false, false},
    {"<\xc3\xa9@[1.2.3.4\xc3\xa9]>", false, NULL, NULL, false, false},
    {"<a@[1.2.3.4\x7f]>", false, NULL, NULL, false, false},
    {"a<b@c", false, NULL, NULL, false, false},
    /* control bytes, inside brackets, quotes, domains and literals, or bare */
    {"<a\x01@b>", false, NULL, NULL, false, false},
    {"<a@b\x01>", false, NULL, NULL, false, false},
    {"<a@\x7f>", false, NULL, NULL, false, false},
    {"<\"a\x01\"@b>", false, NULL, NULL, false, false},
    {"<\"a\tb\"@b>", false, NULL, NULL, false, false},
    {"<a@[1.2\x01.3]>", false, NULL, NULL, false, false},
    {"a\x1b@b", false, NULL, NULL, false, false},
    {"<a\r@b>", false, NULL, NULL, false, false},
    {"<a\n@b>", false, NULL, NULL, false, false},
};

static void
test_parse_path_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(path_cases) / sizeof(path_cases[0]); i++) {
        const struct path_case *tc = &path_cases[i];
        char *arg = strdup(tc->in);
        assert_non_null(arg);
        struct smtp_path path;
        bool ok = smtp_parse_path(arg, &path);
        if (ok != tc->ok)
            fail_msg("case %zu (\"%s\"): returned %d, want %d", i, tc->in, ok, tc->ok);
        if (ok) {
            if (strcmp(path.address, tc->address) != 0)
                fail_msg("case %zu (\"%s\"): address \"%s\", want \"%s\"", i, tc->in, path.address,
                         tc->address);
            if (strcmp(path.params, tc->params) != 0)
                fail_msg("case %zu (\"%s\"): params \"%s\", want \"%s\"", i, tc->in, path.params,
                         tc->params);
            if (path.null_path != tc->null_path)
                fail_msg("case %zu (\"%s\"): null_path %d, want %d", i, tc->in, path.null_path,
                         tc->null_path);
            if (path.non_ascii != tc->non_ascii)
                fail_msg("case %zu (\"%s\"): non_ascii %d, want %d", i, tc->in, path.non_ascii,
                         tc->non_ascii);
        }
        free(arg);
    }
}

/* The path a MAIL line carries, parsed the way the session will: command, keyword, path,
 * parameters, all in the one line buffer. */
static void
test_mail_line_end_to_end(void **state)
{
    (void)state;
    const char text[] = "mail from: <@relay.example:User@Example.org>  size=1000 body=8bitmime";
    char *line = copy_bytes(text, sizeof(text) - 1);
    struct smtp_command cmd;
    assert_int_equal(smtp_parse_command(line, sizeof(text) - 1, &cmd), SMTP_PARSE_OK);
    assert_int_equal(cmd.verb, SMTP_VERB_MAIL);
    char *rest = smtp_strip_keyword(cmd.arg, "FROM:");
    assert_non_null(rest);
    struct smtp_path path;
    assert_true(smtp_parse_path(rest, &path));
    assert_string_equal(path.address, "User@Example.org");
    struct smtp_param params[SMTP_PARAMS_MAX];
    assert_int_equal(smtp_parse_params(path.params, params, SMTP_PARAMS_MAX), 2);
    assert_string_equal(params[0].keyword, "SIZE");
    assert_string_equal(params[0].value, "1000");
    assert_string_equal(params[1].keyword, "BODY");
    assert_string_equal(params[1].value, "8BITMIME");
    free(line);
}

/* ---- smtp_parse_params ----------------------------------------------------------------- */

struct params_case {
    const char *in;
    int max;
    int count;
    const char *pairs[6][2]; /* keyword, value (NULL: bare) */
};

static const struct params_case params_cases[] = {
    {"", SMTP_PARAMS_MAX, 0, {{NULL, NULL}}},
    {"   ", SMTP_PARAMS_MAX, 0, {{NULL, NULL}}},
    {"", 0, 0, {{NULL, NULL}}},
    {"SIZE=100 BODY=8bitmime", SMTP_PARAMS_MAX, 2, {{"SIZE", "100"}, {"BODY", "8BITMIME"}}},
    {"size=100\tbody=8bitmime ", SMTP_PARAMS_MAX, 2, {{"SIZE", "100"}, {"BODY", "8BITMIME"}}},
    {"  SMTPUTF8  ", SMTP_PARAMS_MAX, 1, {{"SMTPUTF8", NULL}}},
    {"smtputf8 SIZE=1", SMTP_PARAMS_MAX, 2, {{"SMTPUTF8", NULL}, {"SIZE", "1"}}},
    {"X-FOO=1", SMTP_PARAMS_MAX, 1, {{"X-FOO", "1"}}},
    {"x-foo=bar-baz", SMTP_PARAMS_MAX, 1, {{"X-FOO", "BAR-BAZ"}}},
    {"1X=y", SMTP_PARAMS_MAX, 1, {{"1X", "Y"}}},
    {"ENVID=a+2Bb<c>", SMTP_PARAMS_MAX, 1, {{"ENVID", "a+2Bb<c>"}}},
    {"envid=x orcpt=rfc822;Bob@x notify=success",
     SMTP_PARAMS_MAX,
     3,
     {{"ENVID", "x"}, {"ORCPT", "rfc822;Bob@x"}, {"NOTIFY", "SUCCESS"}}},
    {"ENVIDX=ab", SMTP_PARAMS_MAX, 1, {{"ENVIDX", "AB"}}},
    {"A=1 B=2 C=3", 3, 3, {{"A", "1"}, {"B", "2"}, {"C", "3"}}},
    {"A=1 B=2 C=3", 2, -1, {{NULL, NULL}}},
    {"A", 0, -1, {{NULL, NULL}}},
    {"SIZE=", SMTP_PARAMS_MAX, -1, {{NULL, NULL}}},
    {"=x", SMTP_PARAMS_MAX, -1, {{NULL, NULL}}},
    {"=", SMTP_PARAMS_MAX, -1, {{NULL, NULL}}},
    {"-X=1", SMTP_PARAMS_MAX, -1, {{NULL, NULL}}},
    {"X_Y=1", SMTP_PARAMS_MAX, -1, {{NULL, NULL}}},
    {"A=b=c", SMTP_PARAMS_MAX, -1, {{NULL, NULL}}},
    {"SIZE=1 BODY=", SMTP_PARAMS_MAX, -1, {{NULL, NULL}}},
    {"A=\x01", SMTP_PARAMS_MAX, -1, {{NULL, NULL}}},
    {"A=x\x7f", SMTP_PARAMS_MAX, -1, {{NULL, NULL}}},
    {"A\x01=x", SMTP_PARAMS_MAX, -1, {{NULL, NULL}}},
    {"\xc3\xa9=x", SMTP_PARAMS_MAX, -1, {{NULL, NULL}}},
};

static void
test_parse_params_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(params_cases) / sizeof(params_cases[0]); i++) {
        const struct params_case *tc = &params_cases[i];
        char *in = strdup(tc->in);
        assert_non_null(in);
        struct smtp_param out[SMTP_PARAMS_MAX];
        int n = smtp_parse_params(in, out, tc->max);
        if (n != tc->count)
            fail_msg("case %zu (\"%s\"): count %d, want %d", i, tc->in, n, tc->count);
        for (int k = 0; k < n; k++) {
            if (strcmp(out[k].keyword, tc->pairs[k][0]) != 0)
                fail_msg("case %zu (\"%s\"): keyword %d \"%s\", want \"%s\"", i, tc->in, k,
                         out[k].keyword, tc->pairs[k][0]);
            if (tc->pairs[k][1] == NULL && out[k].value != NULL)
                fail_msg("case %zu (\"%s\"): value %d \"%s\", want NULL", i, tc->in, k,
                         out[k].value);
            if (tc->pairs[k][1] != NULL &&
                (out[k].value == NULL || strcmp(out[k].value, tc->pairs[k][1]) != 0))
                fail_msg("case %zu (\"%s\"): value %d \"%s\", want \"%s\"", i, tc->in, k,
                         out[k].value ? out[k].value : "(null)", tc->pairs[k][1]);
        }
        free(in);
    }
}

/* SMTP_PARAMS_MAX parameters fit; one more is refused rather than written past `out`. */
static void
test_parse_params_limit(void **state)
{
    (void)state;
    char in[256] = "";
    for (int i = 0; i < SMTP_PARAMS_MAX; i++) {
        char word[16];
        snprintf(word, sizeof(word), "K%d=v%d ", i, i);
        strcat(in, word);
    }
    char *copy = strdup(in);
    assert_non_null(copy);
    /* one slot more than allowed, so a write past `max` would show as a changed sentinel */
    struct smtp_param out[SMTP_PARAMS_MAX + 1];
    out[SMTP_PARAMS_MAX].keyword = (char *)"sentinel";
    assert_int_equal(smtp_parse_params(copy, out, SMTP_PARAMS_MAX), SMTP_PARAMS_MAX);
    assert_string_equal(out[0].keyword, "K0");
    assert_string_equal(out[0].value, "V0");
    assert_string_equal(out[SMTP_PARAMS_MAX - 1].keyword, "K15");
    assert_string_equal(out[SMTP_PARAMS_MAX - 1].value, "V15");
    free(copy);

    strcat(in, "EXTRA");
    copy = strdup(in);
    assert_non_null(copy);
    assert_int_equal(smtp_parse_params(copy, out, SMTP_PARAMS_MAX), -1);
    assert_string_equal(out[SMTP_PARAMS_MAX].keyword, "sentinel");
    free(copy);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_command_table),
        cmocka_unit_test(test_parse_command_every_byte),
        cmocka_unit_test(test_parse_command_long_arg),
        cmocka_unit_test(test_strip_keyword_table),
        cmocka_unit_test(test_parse_path_table),
        cmocka_unit_test(test_mail_line_end_to_end),
        cmocka_unit_test(test_parse_params_table),
        cmocka_unit_test(test_parse_params_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
