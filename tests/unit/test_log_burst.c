/* The rate limit on log lines a flood brings by the thousand a second. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "luasmtpd/log_burst.h"

static void
test_first_of_each_interval_passes_with_a_count(void **state)
{
    (void)state;
    struct log_burst b = {0};
    char more[80];
    struct timeval now = {.tv_sec = 5000};
    assert_true(log_burst_pass(&b, &now, "refusals", more, sizeof(more)));
    assert_string_equal(more, "");
    for (int i = 0; i < 999; i++) {
        now.tv_usec = i * 1000;
        assert_false(log_burst_pass(&b, &now, "refusals", more, sizeof(more)));
    }
    now = (struct timeval){.tv_sec = 5000 + LOG_BURST_INTERVAL_SEC - 1, .tv_usec = 999999};
    assert_false(log_burst_pass(&b, &now, "refusals", more, sizeof(more)));
    now = (struct timeval){.tv_sec = 5000 + LOG_BURST_INTERVAL_SEC};
    assert_true(log_burst_pass(&b, &now, "refusals", more, sizeof(more)));
    assert_string_equal(more, " (and 1000 more refusals in the last 10 s)");
    /* A quiet spell: the next one passes alone. */
    now.tv_sec += 3600;
    assert_true(log_burst_pass(&b, &now, "refusals", more, sizeof(more)));
    assert_string_equal(more, "");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_of_each_interval_passes_with_a_count),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
