/* Unit tests for dsn.c: RFC 3461's parameters through the same path the session takes them
 * (smtp_parse_params, then dsn_check_params; accepted ones as "KEYWORD=value" words, then
 * decoded). One case is one line: the parameters, the reply, and what decodes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "luasmtpd/buf.h"
#include "luasmtpd/dsn.h"
#include "luasmtpd/smtp_parse.h"

#define BAD_RET "501 5.5.4 Error: RET can only be one of FULL, HDRS"
#define BAD_ENVID "501 5.5.4 Error: ENVID must be xtext of at most 100 characters"
#define BAD_NOTIFY "501 5.5.4 Error: NOTIFY can only be NEVER, or a list of SUCCESS, FAILURE, DELAY"
#define BAD_ORCPT "501 5.5.4 Error: ORCPT must be addr-type;xtext of at most 500 characters"
#define MAIL_555 "555 5.5.4 MAIL FROM parameters not recognized or not implemented"
#define RCPT_555 "555 5.5.4 RCPT TO parameters not recognized or not implemented"

struct mail_case {
    const char *in;
    const char *reply; /* NULL: accepted */
    enum dsn_ret ret;
    const char *envid; /* NULL: none */
};

static const struct mail_case mail_cases[] = {
    {"", NULL, DSN_RET_UNSET, NULL},
    {"RET=FULL", NULL, DSN_RET_FULL, NULL},
    {"ret=hdrs", NULL, DSN_RET_HDRS, NULL},
    {"RET=HDRS ENVID=abc+2B", NULL, DSN_RET_HDRS, "abc+"},
    {"ENVID=QQ+3D+20x SIZE=10", NULL, DSN_RET_UNSET, "QQ= x"}, /* SIZE: the session's */
    {"BODY=8BITMIME RET=FULL", NULL, DSN_RET_FULL, NULL},
    {"RET=BOTH", BAD_RET, DSN_RET_UNSET, NULL},
    {"RET", BAD_RET, DSN_RET_UNSET, NULL},
    {"RET=FULL RET=FULL", "501 5.5.4 Error: RET given more than once", DSN_RET_UNSET, NULL},
    {"ENVID=a ENVID=b", "501 5.5.4 Error: ENVID given more than once", DSN_RET_UNSET, NULL},
    {"ENVID", BAD_ENVID, DSN_RET_UNSET, NULL},
    {"ENVID=a+2b", BAD_ENVID, DSN_RET_UNSET, NULL}, /* hex must be upper case */
    {"ENVID=a+2", BAD_ENVID, DSN_RET_UNSET, NULL},  /* cut short */
    {"ENVID=a+", BAD_ENVID, DSN_RET_UNSET, NULL},
    {"ENVID=a+G0", BAD_ENVID, DSN_RET_UNSET, NULL},
    {"ENVID=a+00", BAD_ENVID, DSN_RET_UNSET, NULL}, /* NUL is not printable */
    {"ENVID=a+0A", BAD_ENVID, DSN_RET_UNSET, NULL}, /* nor LF */
    {"ENVID=a+80", BAD_ENVID, DSN_RET_UNSET, NULL}, /* nor 8-bit */
    {"ENVID=a\xc3\xa9", BAD_ENVID, DSN_RET_UNSET, NULL},
    /* RCPT's parameters are not MAIL's */
    {"NOTIFY=NEVER", MAIL_555, DSN_RET_UNSET, NULL},
    {"ORCPT=rfc822;a@b", MAIL_555, DSN_RET_UNSET, NULL},
    {"RET=FULL X-FOO=1", MAIL_555, DSN_RET_UNSET, NULL},
    {"RET=BAD X-FOO=1", BAD_RET, DSN_RET_UNSET, NULL},
};

struct rcpt_case {
    const char *in;
    const char *reply;
    unsigned notify;
    const char *orcpt;
};

static const struct rcpt_case rcpt_cases[] = {
    {"", NULL, 0, NULL},
    {"NOTIFY=NEVER", NULL, DSN_NOTIFY_NEVER, NULL},
    {"notify=success,failure", NULL, DSN_NOTIFY_SUCCESS | DSN_NOTIFY_FAILURE, NULL},
    {"NOTIFY=DELAY,SUCCESS,DELAY", NULL, DSN_NOTIFY_SUCCESS | DSN_NOTIFY_DELAY, NULL},
    {"NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;Bob@Example.NET", NULL,
     DSN_NOTIFY_SUCCESS | DSN_NOTIFY_FAILURE | DSN_NOTIFY_DELAY, "rfc822;Bob@Example.NET"},
    {"ORCPT=rfc822;a+2Bb@c", NULL, 0, "rfc822;a+b@c"},
    {"ORCPT=x-local;+22q+20r+22", NULL, 0, "x-local;\"q r\""},
    {"NOTIFY=NEVER,SUCCESS", BAD_NOTIFY, 0, NULL},
    {"NOTIFY=FAILURE,NEVER", BAD_NOTIFY, 0, NULL},
    {"NOTIFY=SUCCESS,", BAD_NOTIFY, 0, NULL},
    {"NOTIFY=,SUCCESS", BAD_NOTIFY, 0, NULL},
    {"NOTIFY=SUCCESS,,FAILURE", BAD_NOTIFY, 0, NULL},
    {"NOTIFY=ALWAYS", BAD_NOTIFY, 0, NULL},
    {"NOTIFY=SUCCES", BAD_NOTIFY, 0, NULL},
    {"NOTIFY", BAD_NOTIFY, 0, NULL},
    {"NOTIFY=NEVER NOTIFY=NEVER", "501 5.5.4 Error: NOTIFY given more than once", 0, NULL},
    {"ORCPT=rfc822;a ORCPT=rfc822;a", "501 5.5.4 Error: ORCPT given more than once", 0, NULL},
    {"ORCPT=rfc822", BAD_ORCPT, 0, NULL},
    {"ORCPT=rfc822;", BAD_ORCPT, 0, NULL},
    {"ORCPT=;a@b", BAD_ORCPT, 0, NULL},
    {"ORCPT=rf(c;a@b", BAD_ORCPT, 0, NULL},
    {"ORCPT=rfc822;a+2b", BAD_ORCPT, 0, NULL},
    {"ORCPT=rfc822;a+0D+0A", BAD_ORCPT, 0, NULL},
    {"ORCPT", BAD_ORCPT, 0, NULL},
    {"RET=FULL", RCPT_555, 0, NULL},
    {"ENVID=x NOTIFY=NEVER", RCPT_555, 0, NULL},
    {"BODY=7BIT", RCPT_555, 0, NULL},
};

/* Parses `in` as the session does, in `copy`; returns the count. */
static int
parse(const char *in, struct smtp_param *params, char *copy, size_t copy_size)
{
    snprintf(copy, copy_size, "%s", in);
    return smtp_parse_params(copy, params, SMTP_PARAMS_MAX);
}

/* The accepted parameters as the session keeps them, "KEYWORD=value". */
static size_t
words_of(const struct smtp_param *params, int n, const bool *known, char words[][700],
         const char **ptrs)
{
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        if (!known[i])
            continue;
        snprintf(words[k], 700, "%s%s%s", params[i].keyword, params[i].value ? "=" : "",
                 params[i].value ? params[i].value : "");
        ptrs[k] = words[k];
        k++;
    }
    return k;
}

/* What the session takes itself on MAIL before DSN's are checked. */
static void
mark_session_params(const struct smtp_param *params, int n, bool *known)
{
    for (int i = 0; i < n; i++)
        known[i] = strcmp(params[i].keyword, "SIZE") == 0 ||
                   strcmp(params[i].keyword, "BODY") == 0 ||
                   strcmp(params[i].keyword, "SMTPUTF8") == 0;
}

static void
check_reply(const char *what, size_t i, const char *in, const char *got, const char *want)
{
    if ((got == NULL) != (want == NULL) || (got != NULL && strcmp(got, want) != 0))
        fail_msg("%s case %zu (\"%s\"): reply \"%s\", want \"%s\"", what, i, in,
                 got ? got : "(none)", want ? want : "(none)");
}

static void
test_mail_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(mail_cases) / sizeof(mail_cases[0]); i++) {
        const struct mail_case *tc = &mail_cases[i];
        char copy[1100];
        struct smtp_param params[SMTP_PARAMS_MAX];
        int n = parse(tc->in, params, copy, sizeof(copy));
        if (n < 0) {
            if (tc->reply != NULL || tc->envid != NULL)
                fail_msg("mail case %zu (\"%s\"): the parameters did not parse", i, tc->in);
            continue;
        }
        bool known[SMTP_PARAMS_MAX] = {false};
        mark_session_params(params, n, known);
        const char *reply = dsn_check_params(params, n, true, known);
        check_reply("mail", i, tc->in, reply, tc->reply);
        if (reply != NULL)
            continue;
        char words[SMTP_PARAMS_MAX][700];
        const char *ptrs[SMTP_PARAMS_MAX];
        size_t k = words_of(params, n, known, words, ptrs);
        struct dsn_mail d;
        dsn_mail_decode(&d, ptrs, k);
        if (d.ret != tc->ret)
            fail_msg("mail case %zu (\"%s\"): ret %d, want %d", i, tc->in, d.ret, tc->ret);
        if (d.has_envid != (tc->envid != NULL) || (tc->envid && strcmp(d.envid, tc->envid)))
            fail_msg("mail case %zu (\"%s\"): envid \"%s\", want \"%s\"", i, tc->in,
                     d.has_envid ? d.envid : "(none)", tc->envid ? tc->envid : "(none)");
    }
}

static void
test_rcpt_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(rcpt_cases) / sizeof(rcpt_cases[0]); i++) {
        const struct rcpt_case *tc = &rcpt_cases[i];
        char copy[1100];
        struct smtp_param params[SMTP_PARAMS_MAX];
        int n = parse(tc->in, params, copy, sizeof(copy));
        assert_true(n >= 0);
        bool known[SMTP_PARAMS_MAX] = {false};
        const char *reply = dsn_check_params(params, n, false, known);
        check_reply("rcpt", i, tc->in, reply, tc->reply);
        if (reply != NULL)
            continue;
        /* as the envelope keeps them: one string, words joined by spaces */
        char words[SMTP_PARAMS_MAX][700];
        const char *ptrs[SMTP_PARAMS_MAX];
        size_t k = words_of(params, n, known, words, ptrs);
        char joined[1100] = "";
        for (size_t w = 0; w < k; w++) {
            strcat(joined, w ? " " : "");
            strcat(joined, ptrs[w]);
        }
        struct dsn_rcpt d;
        dsn_rcpt_decode(&d, joined);
        if (d.notify != tc->notify)
            fail_msg("rcpt case %zu (\"%s\"): notify %u, want %u", i, tc->in, d.notify, tc->notify);
        if (d.has_orcpt != (tc->orcpt != NULL) || (tc->orcpt && strcmp(d.orcpt, tc->orcpt)))
            fail_msg("rcpt case %zu (\"%s\"): orcpt \"%s\", want \"%s\"", i, tc->in,
                     d.has_orcpt ? d.orcpt : "(none)", tc->orcpt ? tc->orcpt : "(none)");
    }
}

/* The lengths are RFC 3461's, counted as sent: 100 for ENVID, 500 for all of ORCPT. */
static void
test_lengths(void **state)
{
    (void)state;
    char in[700];
    struct smtp_param params[SMTP_PARAMS_MAX];
    bool known[SMTP_PARAMS_MAX] = {false};
    char copy[1100];

    snprintf(in, sizeof(in), "ENVID=%0100d", 0);
    int n = parse(in, params, copy, sizeof(copy));
    assert_int_equal(n, 1);
    assert_null(dsn_check_params(params, n, true, known));
    snprintf(in, sizeof(in), "ENVID=%0101d", 0);
    n = parse(in, params, copy, sizeof(copy));
    assert_string_equal(dsn_check_params(params, n, true, known), BAD_ENVID);

    snprintf(in, sizeof(in), "ORCPT=rfc822;%0493d", 0); /* 7 + 493 = 500 */
    assert_int_equal(strlen(in) - 6, 500);
    n = parse(in, params, copy, sizeof(copy));
    assert_null(dsn_check_params(params, n, false, known));
    char words[1][700];
    const char *ptrs[1];
    words_of(params, n, known, words, ptrs);
    struct dsn_rcpt d;
    dsn_rcpt_decode(&d, ptrs[0]);
    assert_true(d.has_orcpt);
    assert_int_equal(strlen(d.orcpt), 500);

    snprintf(in, sizeof(in), "ORCPT=rfc822;%0494d", 0);
    n = parse(in, params, copy, sizeof(copy));
    assert_string_equal(dsn_check_params(params, n, false, known), BAD_ORCPT);
}

static void
test_xtext(void **state)
{
    (void)state;
    char out[32];
    assert_true(dsn_xtext_decode("", out));
    assert_string_equal(out, "");
    assert_true(dsn_xtext_decode("+2B+3D+7E!", out));
    assert_string_equal(out, "+=~!");
    assert_true(dsn_xtext_decode("+20", out));
    assert_string_equal(out, " ");
    assert_false(dsn_xtext_decode("a=b", out));
    assert_false(dsn_xtext_decode("a b", out));
    assert_false(dsn_xtext_decode("+7F", out));
    assert_false(dsn_xtext_decode("+1F", out));
    assert_false(dsn_xtext_decode("\x7f", out));
    assert_false(dsn_xtext_decode("+", out));
}

static void
test_notify_names(void **state)
{
    (void)state;
    const char *names[4];
    assert_int_equal(dsn_notify_names(0, names), 0);
    assert_int_equal(dsn_notify_names(DSN_NOTIFY_NEVER, names), 1);
    assert_string_equal(names[0], "NEVER");
    assert_int_equal(dsn_notify_names(DSN_NOTIFY_DELAY | DSN_NOTIFY_SUCCESS, names), 2);
    assert_string_equal(names[0], "SUCCESS");
    assert_string_equal(names[1], "DELAY");
}

/* What a script gives smtpd.relay is encoded as a client would send it, and decodes back. */
static void
test_set_and_format(void **state)
{
    (void)state;
    struct dsn_mail m;
    assert_null(dsn_mail_set(&m, "hdrs", "a+b=c d~"));
    struct buf b = {0};
    assert_int_equal(dsn_mail_format(&m, &b), 0);
    assert_int_equal(buf_append(&b, "", 1), 0);
    assert_string_equal(b.data, " RET=HDRS ENVID=a+2Bb+3Dc+20d~");
    struct smtp_param params[SMTP_PARAMS_MAX];
    bool known[SMTP_PARAMS_MAX] = {false};
    int n = smtp_parse_params(b.data, params, SMTP_PARAMS_MAX);
    assert_int_equal(n, 2);
    assert_null(dsn_check_params(params, n, true, known));
    const char *words[] = {"ENVID=a+2Bb+3Dc+20d~"};
    struct dsn_mail back;
    dsn_mail_decode(&back, words, 1);
    assert_string_equal(back.envid, "a+b=c d~");

    assert_null(dsn_mail_set(&m, NULL, NULL));
    buf_reset(&b);
    assert_int_equal(dsn_mail_format(&m, &b), 0);
    assert_int_equal(b.len, 0);

    assert_string_equal(dsn_mail_set(&m, "NONE", NULL), "ret must be FULL or HDRS");
    assert_non_null(dsn_mail_set(&m, NULL, "tab\there"));
    assert_non_null(dsn_mail_set(&m, NULL, ""));
    char long_envid[40];
    memset(long_envid, '+', 34); /* 34 x "+2B" = 102 as xtext */
    long_envid[34] = '\0';
    assert_non_null(dsn_mail_set(&m, NULL, long_envid));
    long_envid[33] = '\0';
    assert_null(dsn_mail_set(&m, NULL, long_envid));

    struct dsn_rcpt r;
    const char *notify[] = {"delay", "SUCCESS"};
    assert_null(dsn_rcpt_set(&r, notify, 2, "rfc822;Bob+1@x"));
    buf_reset(&b);
    assert_int_equal(dsn_rcpt_format(&r, &b), 0);
    assert_int_equal(buf_append(&b, "", 1), 0);
    assert_string_equal(b.data, " NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Bob+2B1@x");
    const char *never[] = {"NEVER", "FAILURE"};
    assert_non_null(dsn_rcpt_set(&r, never, 2, NULL));
    assert_null(dsn_rcpt_set(&r, never, 1, NULL));
    const char *other[] = {"SOMETIMES"};
    assert_non_null(dsn_rcpt_set(&r, other, 1, NULL));
    assert_non_null(dsn_rcpt_set(&r, NULL, 0, "no-type"));
    assert_non_null(dsn_rcpt_set(&r, NULL, 0, ";a@b"));
    assert_non_null(dsn_rcpt_set(&r, NULL, 0, "rfc822;"));
    assert_non_null(dsn_rcpt_set(&r, NULL, 0, "rfc822;a\x01"));
    assert_null(dsn_rcpt_set(&r, NULL, 0, NULL));
    buf_reset(&b);
    assert_int_equal(dsn_rcpt_format(&r, &b), 0);
    assert_int_equal(b.len, 0);
    buf_free(&b);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mail_table),   cmocka_unit_test(test_rcpt_table),
        cmocka_unit_test(test_lengths),      cmocka_unit_test(test_xtext),
        cmocka_unit_test(test_notify_names), cmocka_unit_test(test_set_and_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
