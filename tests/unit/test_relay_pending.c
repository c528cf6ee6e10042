/* Unit tests for relay_pending.c: a command line that could carry a second command is refused
 * before anything is queued, and the queue keeps the order replies will come in. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "luasmtpd/relay_pending.h"

static void
test_command_line(void **state)
{
    (void)state;
    struct relay_pending *p =
        relay_pending_command("MAIL FROM:<a@b>", 15, RELAY_EXPECT_2XX, NULL, NULL);
    assert_non_null(p);
    assert_int_equal(p->kind, RELAY_PENDING_COMMAND);
    assert_int_equal(p->line_len, 17);
    assert_memory_equal(p->line, "MAIL FROM:<a@b>\r\n", 17);
    assert_int_equal(relay_pending_verb_length(p), 4);
    relay_pending_free(p);
    /* A verb alone, and one longer than a message needs. */
    p = relay_pending_command("NOOP", 4, RELAY_EXPECT_2XX, NULL, NULL);
    assert_int_equal(relay_pending_verb_length(p), 4);
    relay_pending_free(p);
    p = relay_pending_command("XAVERYLONGVERBINDEED x", 22, RELAY_EXPECT_2XX_3XX, NULL, NULL);
    assert_int_equal(relay_pending_verb_length(p), 16);
    relay_pending_free(p);
}

static void
test_smuggling_refused(void **state)
{
    (void)state;
    static const char *const lines[] = {"RCPT TO:<a>\r\nDATA", "RCPT TO:<a>\nDATA", "RSET\r"};
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        errno = 0;
        assert_null(
            relay_pending_command(lines[i], strlen(lines[i]), RELAY_EXPECT_2XX, NULL, NULL));
        assert_int_equal(errno, EINVAL);
    }
    errno = 0;
    assert_null(relay_pending_command("NOOP\0RSET", 9, RELAY_EXPECT_2XX, NULL, NULL));
    assert_int_equal(errno, EINVAL);
}

static void
test_data(void **state)
{
    (void)state;
    struct relay_pending *p = relay_pending_data("body", 4, 0, NULL, NULL);
    assert_int_equal(p->kind, RELAY_PENDING_DATA);
    assert_memory_equal(p->line, "DATA\r\n", 6);
    assert_int_equal(p->line_len, 6);
    assert_int_equal(p->nreplies, 1); /* SMTP: one reply, however it was asked */
    relay_pending_free(p);
    p = relay_pending_data("body", 4, 3, NULL, NULL);
    assert_int_equal(p->nreplies, 3);
    relay_pending_free(p);
}

static void
test_queue_order(void **state)
{
    (void)state;
    struct relay_pending_queue q = {0};
    static const char *const verbs[] = {"MAIL", "RCPT", "RSET"};
    for (size_t i = 0; i < 3; i++)
        relay_pending_push(&q, relay_pending_command(verbs[i], 4, RELAY_EXPECT_2XX, NULL, NULL));
    for (size_t i = 0; i < 2; i++) {
        struct relay_pending *p = relay_pending_pop(&q);
        assert_memory_equal(p->line, verbs[i], 4);
        relay_pending_free(p);
    }
    assert_ptr_equal(q.head, q.tail);
    relay_pending_free(relay_pending_pop(&q));
    assert_null(q.head);
    assert_null(q.tail);
    relay_pending_push(&q, relay_pending_command("QUIT", 4, RELAY_EXPECT_2XX, NULL, NULL));
    relay_pending_push(&q, relay_pending_data("x", 1, 1, NULL, NULL));
    relay_pending_clear(&q); /* frees both; nothing to leak under ASan */
    assert_null(q.head);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_command_line),
        cmocka_unit_test(test_smuggling_refused),
        cmocka_unit_test(test_data),
        cmocka_unit_test(test_queue_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
