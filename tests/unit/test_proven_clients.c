/* The table of clients that had a message accepted lately (a full server serves them first). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "luasmtpd/proven_clients.h"

static void
test_recorded_until_the_ttl_is_over(void **state)
{
    (void)state;
    struct proven_clients *p = proven_clients_new(4, 3600);
    assert_non_null(p);
    assert_false(proven_clients_contains(p, "127.0.0.1", 1000));
    proven_clients_record(p, "127.0.0.1", 1000);
    assert_true(proven_clients_contains(p, "127.0.0.1", 1000));
    assert_true(proven_clients_contains(p, "127.0.0.1", 1000 + 3600));
    assert_false(proven_clients_contains(p, "127.0.0.1", 1000 + 3601));
    assert_false(proven_clients_contains(p, "127.0.0.2", 1000));
    /* A new message renews it. */
    proven_clients_record(p, "127.0.0.1", 5000);
    assert_true(proven_clients_contains(p, "127.0.0.1", 5000 + 3600));
    proven_clients_free(p);
}

static void
test_full_table_forgets_the_least_recent(void **state)
{
    (void)state;
    struct proven_clients *p = proven_clients_new(3, 3600);
    proven_clients_record(p, "a", 1);
    proven_clients_record(p, "b", 2);
    proven_clients_record(p, "c", 3);
    proven_clients_record(p, "a", 4); /* a is now the most recent: b goes next */
    proven_clients_record(p, "d", 5);
    assert_true(proven_clients_contains(p, "a", 10));
    assert_false(proven_clients_contains(p, "b", 10));
    assert_true(proven_clients_contains(p, "c", 10));
    assert_true(proven_clients_contains(p, "d", 10));
    proven_clients_record(p, "e", 6);
    assert_false(proven_clients_contains(p, "c", 10));
    assert_true(proven_clients_contains(p, "a", 10));
    proven_clients_free(p);
}

static void
test_many_addresses_stay_within_capacity(void **state)
{
    (void)state;
    struct proven_clients *p = proven_clients_new(1000, 3600);
    char addr[32];
    for (int i = 0; i < 50000; i++) {
        snprintf(addr, sizeof(addr), "10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
        proven_clients_record(p, addr, i);
    }
    /* The last 1000 are there, the one before them is not. */
    for (int i = 49000; i < 50000; i++) {
        snprintf(addr, sizeof(addr), "10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
        assert_true(proven_clients_contains(p, addr, 50000));
    }
    snprintf(addr, sizeof(addr), "10.%d.%d.%d", 48999 >> 16, (48999 >> 8) & 255, 48999 & 255);
    assert_false(proven_clients_contains(p, addr, 50000));
    proven_clients_free(p);
}

static void
test_long_address_not_remembered(void **state)
{
    (void)state;
    struct proven_clients *p = proven_clients_new(2, 60);
    char addr[PROVEN_ADDR_MAX + 1];
    memset(addr, 'f', sizeof(addr) - 1);
    addr[sizeof(addr) - 1] = '\0';
    proven_clients_record(p, addr, 1);
    assert_false(proven_clients_contains(p, addr, 1));
    assert_false(proven_clients_contains(NULL, "a", 1));
    proven_clients_record(NULL, "a", 1); /* no table: nothing to do */
    assert_null(proven_clients_new(0, 60));
    proven_clients_free(p);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_recorded_until_the_ttl_is_over),
        cmocka_unit_test(test_full_table_forgets_the_least_recent),
        cmocka_unit_test(test_many_addresses_stay_within_capacity),
        cmocka_unit_test(test_long_address_not_remembered),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
