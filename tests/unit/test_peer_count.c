/* The per-client connection counts behind --max-per-client. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#include <cmocka.h>

#include "luasmtpd/peer_count.h"

static void
test_counts_per_address(void **state)
{
    (void)state;
    struct peer_count *pc = peer_count_new();
    assert_non_null(pc);
    assert_int_equal(peer_count_add(pc, "127.0.0.1"), 1);
    assert_int_equal(peer_count_add(pc, "127.0.0.1"), 2);
    assert_int_equal(peer_count_add(pc, "::1"), 1);
    assert_int_equal(peer_count_get(pc, "127.0.0.1"), 2);
    peer_count_remove(pc, "127.0.0.1");
    assert_int_equal(peer_count_get(pc, "127.0.0.1"), 1);
    peer_count_remove(pc, "127.0.0.1");
    assert_int_equal(peer_count_get(pc, "127.0.0.1"), 0);
    peer_count_remove(pc, "127.0.0.1"); /* one too many is harmless */
    assert_int_equal(peer_count_get(pc, "127.0.0.1"), 0);
    assert_int_equal(peer_count_get(pc, "::1"), 1);
    peer_count_free(pc);
}

static void
test_many_addresses_share_buckets(void **state)
{
    (void)state;
    struct peer_count *pc = peer_count_new();
    char addr[32];
    for (int i = 0; i < 20000; i++) {
        snprintf(addr, sizeof(addr), "10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
        assert_int_equal(peer_count_add(pc, addr), 1);
    }
    for (int i = 0; i < 20000; i += 2) {
        snprintf(addr, sizeof(addr), "10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
        peer_count_remove(pc, addr);
    }
    for (int i = 0; i < 20000; i++) {
        snprintf(addr, sizeof(addr), "10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
        assert_int_equal(peer_count_get(pc, addr), i % 2);
    }
    peer_count_free(pc);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts_per_address),
        cmocka_unit_test(test_many_addresses_share_buckets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
