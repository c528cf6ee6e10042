/* A transaction's bookkeeping apart from any connection: the bytes it holds against the group's
 * DATA budget, its id, and the sliding window behind --min-data-rate. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "luasmtpd/transaction.h"

static struct timeval
at(long sec)
{
    return (struct timeval){.tv_sec = 1000000 + sec};
}

static void
test_held_bytes_follow_the_group_count(void **state)
{
    (void)state;
    size_t in_use = 0;
    struct transaction a = {0}, b = {0};
    tx_init(&a, &in_use);
    tx_init(&b, &in_use);
    tx_hold(&a, 1000);
    tx_hold(&b, 500);
    assert_int_equal(in_use, 1500);
    tx_hold(&a, 4000); /* a buffer that grew counts its new capacity, not both */
    assert_int_equal(in_use, 4500);
    tx_reset(&a);
    assert_int_equal(a.held, 0);
    assert_int_equal(in_use, 500);
    tx_begin_data(&b, 0); /* a new DATA starts from nothing */
    assert_int_equal(in_use, 0);
    tx_reset(&b);
}

static void
test_overflow_frees_the_message_at_once(void **state)
{
    (void)state;
    size_t in_use = 0;
    struct transaction tx = {0};
    tx_init(&tx, &in_use);
    tx_begin_data(&tx, 16);
    const char line[] = "0123456789\r\n";
    assert_int_equal(tx_feed(&tx, line, sizeof(line) - 1), sizeof(line) - 1);
    assert_non_null(tx.message.data);
    tx_hold(&tx, tx.message.cap);
    assert_true(in_use > 0);
    assert_int_equal(tx_feed(&tx, line, sizeof(line) - 1), sizeof(line) - 1);
    assert_true(tx.decoder.overflow);
    assert_null(tx.message.data);
    assert_int_equal(in_use, 0);
    tx_reset(&tx);
}

static void
test_ids_are_unique_and_fixed_width(void **state)
{
    (void)state;
    size_t in_use = 0;
    struct tx_ids ids = {0};
    struct transaction a = {0}, b = {0};
    tx_init(&a, &in_use);
    tx_init(&b, &in_use);
    tx_begin(&a, &ids);
    tx_begin(&b, &ids);
    assert_string_not_equal(a.id, b.id);
    assert_int_equal(strncmp(a.id, b.id, 14), 0); /* one process: one prefix */
    assert_int_equal(strlen(a.id), 15);
    assert_int_equal(strspn(a.id, "0123456789ABCDEF"), strlen(a.id));
    tx_reset(&a);
    assert_string_equal(a.id, "");
}

/* Looks as session.c's timer does, every 5 s, feeding `per_look` bytes before each. */
static bool
slow_by(struct transaction *tx, long from, long to, size_t per_look, unsigned rate)
{
    for (long t = from; t <= to; t += 5) {
        tx->decoder.size += per_look;
        struct timeval now = at(t);
        if (tx_too_slow(tx, &now, rate))
            return true;
    }
    return false;
}

/* A DATA whose transfer began at time 0, with no size limit. */
static void
begin_data_at_zero(struct transaction *tx, size_t *in_use)
{
    tx_init(tx, in_use);
    tx_begin_data(tx, 0);
    struct timeval start = at(0);
    tx_rate_start(tx, &start);
}

static void
test_a_steady_transfer_is_never_too_slow(void **state)
{
    (void)state;
    size_t in_use = 0;
    struct transaction tx = {0};
    begin_data_at_zero(&tx, &in_use);
    /* 600 bytes a second against a floor of 500, for ten minutes. */
    assert_false(slow_by(&tx, 5, 600, 3000, 500));
    tx_reset(&tx);
}

static void
test_a_drip_after_a_burst_is_cut_within_the_window(void **state)
{
    (void)state;
    size_t in_use = 0;
    struct transaction tx = {0};
    begin_data_at_zero(&tx, &in_use);
    /* 10 MB in the first 5 s would carry an average above the floor for hours. */
    assert_false(slow_by(&tx, 5, 5, 10 * 1000 * 1000, 500));
    /* Then 1 byte a look: cut once the window (30 s and one sample step) holds only drip. */
    long cut = -1;
    for (long t = 10; t <= 300 && cut < 0; t += 5)
        if (slow_by(&tx, t, t, 1, 500))
            cut = t;
    assert_true(cut > 30);
    assert_true(cut <= 5 + TX_RATE_GRACE_SEC + TX_RATE_SAMPLE_SEC + 5);
    tx_reset(&tx);
}

static void
test_nothing_is_judged_in_the_grace_period(void **state)
{
    (void)state;
    size_t in_use = 0;
    struct transaction tx = {0};
    begin_data_at_zero(&tx, &in_use);
    /* Not a byte for the first 25 s: no sample is 30 s old yet. */
    assert_false(slow_by(&tx, 5, 25, 0, 500));
    assert_true(slow_by(&tx, 30, 30, 0, 500));
    tx_reset(&tx);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_held_bytes_follow_the_group_count),
        cmocka_unit_test(test_overflow_frees_the_message_at_once),
        cmocka_unit_test(test_ids_are_unique_and_fixed_width),
        cmocka_unit_test(test_a_steady_transfer_is_never_too_slow),
        cmocka_unit_test(test_a_drip_after_a_burst_is_cut_within_the_window),
        cmocka_unit_test(test_nothing_is_judged_in_the_grace_period),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
