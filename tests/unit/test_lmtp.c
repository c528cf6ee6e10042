/* Unit tests for lmtp.c: the answer after the final dot, one reply per accepted recipient in
 * RCPT order over LMTP (RFC 2033 4.2), one for the message over SMTP, from the handler's one
 * reply or its replies by recipient; and which greeting each protocol refuses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "luasmtpd/lmtp.h"

#define MAX_RCPTS 4

struct each_case {
    const char *what;
    bool lmtp;
    const char *replies[MAX_RCPTS + 1]; /* NULL-terminated; "" is a recipient not named */
    int result;                         /* 0, or the index + 1 of the bad entry */
    const char *wire;                   /* checked when result == 0 */
    size_t accepted;
    bool mixed;
    const char *codes;
};

static const struct each_case each_cases[] = {
    {"lmtp: each its own, in order",
     true,
     {"250 2.1.5 ok", "550 5.1.1 no such user", "", NULL},
     0,
     "250 2.1.5 ok\r\n550 5.1.1 no such user\r\n250 2.0.0 OK\r\n",
     2,
     false,
     "250 550 250"},
    {"lmtp: none named: all the default",
     true,
     {"", "", NULL},
     0,
     "250 2.0.0 OK\r\n250 2.0.0 OK\r\n",
     2,
     false,
     "250 250"},
    {"lmtp: a multi-line reply stays one reply",
     true,
     {"452-4.2.2 full\n452 4.2.2 try later", "250 ok", NULL},
     0,
     "452-4.2.2 full\r\n452 4.2.2 try later\r\n250 ok\r\n",
     1,
     false,
     "452 250"},
    {"lmtp: a bad entry fails the whole table",
     true,
     {"250 ok", "hello", "", NULL},
     2,
     NULL,
     0,
     false,
     ""},
    {"lmtp: two lines of different codes are no reply",
     true,
     {"250 a\n550 b", NULL},
     1,
     NULL,
     0,
     false,
     ""},
    {"smtp: all taken: the first 2xx the handler gave",
     false,
     {"", "250 2.0.0 queued as X", "250 2.0.0 queued as Y", NULL},
     0,
     "250 2.0.0 queued as X\r\n",
     3,
     false,
     "250"},
    {"smtp: none named: the default",
     false,
     {"", "", NULL},
     0,
     "250 2.0.0 OK\r\n",
     2,
     false,
     "250"},
    {"smtp: a 5xx beats a 4xx, whatever the order",
     false,
     {"250 ok", "451 4.3.0 later", "550 5.1.1 no", "552 5.2.2 full", NULL},
     0,
     "550 5.1.1 no\r\n",
     0,
     true,
     "550"},
    {"smtp: the first 4xx when there is no 5xx",
     false,
     {"", "452 4.2.2 full", "451 4.3.0 later", NULL},
     0,
     "452 4.2.2 full\r\n",
     0,
     true,
     "452"},
    {"smtp: all refused is not mixed",
     false,
     {"550 5.1.1 a", "550 5.1.1 b", NULL},
     0,
     "550 5.1.1 a\r\n",
     0,
     false,
     "550"},
    {"smtp: a bad entry fails the whole table",
     false,
     {"550 no", "3 x", NULL},
     2,
     NULL,
     0,
     false,
     ""},
};

static void
test_answer_each(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(each_cases) / sizeof(each_cases[0]); i++) {
        const struct each_case *c = &each_cases[i];
        struct strv replies = {0};
        for (size_t j = 0; c->replies[j] != NULL; j++)
            assert_int_equal(strv_push(&replies, c->replies[j]), 0);
        struct lmtp_answer a = {0};
        int got = lmtp_answer_each(&a, c->lmtp, &replies);
        if (got != c->result)
            fail_msg("%s: result %d, want %d", c->what, got, c->result);
        if (c->result != 0) {
            if (a.wire.len != 0)
                fail_msg("%s: refused, yet %zu bytes appended", c->what, a.wire.len);
        } else {
            if (a.wire.len != strlen(c->wire) || memcmp(a.wire.data, c->wire, a.wire.len) != 0)
                fail_msg("%s: wire %.*s, want %s", c->what, (int)a.wire.len, a.wire.data, c->wire);
            if (a.accepted != c->accepted || a.mixed != c->mixed)
                fail_msg("%s: accepted %zu mixed %d, want %zu %d", c->what, a.accepted, a.mixed,
                         c->accepted, c->mixed);
        }
        if (strcmp(a.codes, c->codes) != 0)
            fail_msg("%s: codes \"%s\", want \"%s\"", c->what, a.codes, c->codes);
        lmtp_answer_free(&a);
        strv_clear(&replies);
    }
}

/* One reply for the whole message: a copy per recipient over LMTP, one over SMTP. */
static void
test_answer_all(void **state)
{
    (void)state;
    struct lmtp_answer a = {0};
    assert_int_equal(lmtp_answer_all(&a, true, 3, "552 5.3.4 too big", 17), 0);
    assert_int_equal(a.wire.len, 3 * strlen("552 5.3.4 too big\r\n"));
    assert_memory_equal(
        a.wire.data, "552 5.3.4 too big\r\n552 5.3.4 too big\r\n552 5.3.4 too big\r\n", a.wire.len);
    assert_int_equal(a.accepted, 0);
    assert_string_equal(a.codes, "552 552 552");
    lmtp_answer_free(&a);

    assert_int_equal(lmtp_answer_all(&a, false, 3, "250 ok\n", 7), 0);
    assert_memory_equal(a.wire.data, "250 ok\r\n", a.wire.len);
    assert_int_equal(a.wire.len, 8);
    assert_int_equal(a.accepted, 3);
    assert_string_equal(a.codes, "250");
    lmtp_answer_free(&a);

    /* Invalid: nothing appended. */
    assert_int_equal(lmtp_answer_all(&a, true, 2, "OK", 2), -1);
    assert_int_equal(a.wire.len, 0);
    assert_string_equal(a.codes, "");
    lmtp_answer_free(&a);

    /* Many recipients: every copy is sent; the log's list of codes is cut short, marked. */
    enum { MANY = 1000 };
    assert_int_equal(lmtp_answer_all(&a, true, MANY, "250-a\n250 b", 11), 0);
    assert_int_equal(a.wire.len, MANY * strlen("250-a\r\n250 b\r\n"));
    for (size_t i = 0; i < MANY; i++)
        assert_memory_equal(a.wire.data + i * 14, "250-a\r\n250 b\r\n", 14);
    assert_int_equal(a.accepted, MANY);
    assert_true(strlen(a.codes) < LMTP_CODES_MAX);
    assert_non_null(strstr(a.codes, " ..."));
    assert_int_equal(strncmp(a.codes, "250 250 ", 8), 0);
    lmtp_answer_free(&a);
}

static void
test_foreign_verbs(void **state)
{
    (void)state;
    assert_true(lmtp_foreign_verb(false, SMTP_VERB_LHLO));
    assert_false(lmtp_foreign_verb(false, SMTP_VERB_EHLO));
    assert_false(lmtp_foreign_verb(false, SMTP_VERB_HELO));
    assert_true(lmtp_foreign_verb(true, SMTP_VERB_EHLO));
    assert_true(lmtp_foreign_verb(true, SMTP_VERB_HELO));
    assert_false(lmtp_foreign_verb(true, SMTP_VERB_LHLO));
    assert_false(lmtp_foreign_verb(true, SMTP_VERB_MAIL));
    assert_false(lmtp_foreign_verb(false, SMTP_VERB_MAIL));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_answer_each),
        cmocka_unit_test(test_answer_all),
        cmocka_unit_test(test_foreign_verbs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
