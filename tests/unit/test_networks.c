/* networks.c: CIDR lists (--trusted-networks, smtpd.networks) and address matching, IPv4,
 * IPv6 and IPv4-mapped IPv6, with the input a typo makes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "luasmtpd/networks.h"

/* One list, then addresses in it (+) and not (-). */
static const struct {
    const char *list;
    const char *in[6];
    const char *out[6];
} match_cases[] = {
    {"127.0.0.0/8,::1/128",
     {"127.0.0.1", "127.255.255.254", "::1", "::ffff:127.0.0.1", "127.0.0.2", NULL},
     {"128.0.0.1", "126.255.255.255", "::2", "::ffff:128.0.0.1", "0:0:0:0:0:1:7f00:1", NULL}},
    {"127.0.0.1/32",
     {"127.0.0.1", "::ffff:127.0.0.1", "::FFFF:7f00:1", NULL},
     {"127.0.0.2", "127.0.0.0", "::1", NULL}},
    {"10.0.0.0/8 192.168.0.0/16,\t172.16.0.0/12",
     {"10.1.2.3", "192.168.255.1", "172.31.255.255", "172.16.0.0", NULL},
     {"172.32.0.0", "11.0.0.1", "192.169.0.1", NULL}},
    {"2001:db8::/32",
     {"2001:db8::1", "2001:db8:ffff:ffff::", "2001:DB8::abcd", NULL},
     {"2001:db9::1", "2001:db7:ffff::", "::ffff:32.1.13.184", NULL}},
    {"fe80::/10", {"fe80::1%eth0", "febf::1", NULL}, {"fec0::1", NULL}},
    {"2001:db8:0:2::/63",
     {"2001:db8:0:2::5", "2001:db8:0:3:ffff::", NULL},
     {"2001:db8:0:4::", "2001:db8:0:1::", NULL}},
    {"::ffff:127.0.0.0/104", {"127.9.9.9", "::ffff:127.0.0.1", NULL}, {"128.0.0.0", NULL}},
    {"192.0.2.7", {"192.0.2.7", NULL}, {"192.0.2.8", "192.0.2.6", NULL}},
    {"0.0.0.0/0", {"1.2.3.4", "255.255.255.255", "::ffff:1.2.3.4", NULL}, {"::1", NULL}},
    {"*", {"1.2.3.4", "::1", "2001:db8::1", NULL}, {"not an address", "", NULL}},
    {"", {NULL}, {"127.0.0.1", "::1", NULL}},
    {" , ,", {NULL}, {"127.0.0.1", NULL}},
    {"127.0.0.0/8",
     {NULL},
     {"127.0.0.1/32", "localhost", "127.1", "127.0.0.1 ", "[127.0.0.1]", "127.0.0.1%lo"}},
};

static void
test_matching(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(match_cases) / sizeof(match_cases[0]); i++) {
        struct networks nets;
        char err[160] = "";
        if (networks_parse(&nets, match_cases[i].list, err, sizeof(err)) != 0)
            fail_msg("list '%s' refused: %s", match_cases[i].list, err);
        for (size_t j = 0; j < 6 && match_cases[i].in[j] != NULL; j++)
            if (!networks_contains(&nets, match_cases[i].in[j]))
                fail_msg("'%s' should be in '%s'", match_cases[i].in[j], match_cases[i].list);
        for (size_t j = 0; j < 6 && match_cases[i].out[j] != NULL; j++)
            if (networks_contains(&nets, match_cases[i].out[j]))
                fail_msg("'%s' should not be in '%s'", match_cases[i].out[j], match_cases[i].list);
        networks_free(&nets);
    }
}

/* Lists refused, with the words the error must hold. */
static void
test_bad_lists(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"127.0.0.0/33", "'127.0.0.0/33': the prefix length must be 0 to 32"},
        {"::1/129", "'::1/129': the prefix length must be 0 to 128"},
        {"10.0.0.0/", "'10.0.0.0/'"},
        {"10.0.0.0/x", "'10.0.0.0/x'"},
        {"10.0.0.0/-1", "'10.0.0.0/-1'"},
        {"10.0.0.0/08000", "'10.0.0.0/08000'"},
        {"/8", "'/8': not an address"},
        {"localhost", "'localhost': not an IPv4 or IPv6 address"},
        {"127.1/8", "'127.1/8': not an IPv4"},
        {"256.0.0.0/8", "'256.0.0.0/8'"},
        {"fe80::1%eth0/64", "'fe80::1%eth0/64'"},
        {"127.0.0.1/8", "'127.0.0.1/8': bits set past the /8 prefix"},
        {"2001:db8::1/32", "bits set past the /32 prefix"},
        {"::ffff:127.0.0.0/95", "an IPv4-mapped network takes /96 to /128"},
        {"127.0.0.0/8,,10.0.0.0/8,bogus", "'bogus'"},
        {"1234567890123456789012345678901234567890123456789012345678901234567890", "too long"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct networks nets = {NULL, 5};
        char err[160] = "";
        if (networks_parse(&nets, cases[i][0], err, sizeof(err)) != -1)
            fail_msg("list '%s' was taken", cases[i][0]);
        if (strstr(err, cases[i][1]) == NULL)
            fail_msg("list '%s': error '%s' lacks '%s'", cases[i][0], err, cases[i][1]);
        assert_null(nets.items);
        assert_int_equal(nets.n, 0);
    }
}

/* What a refused list leaves behind holds nothing; a NULL list matches nothing. */
static void
test_empty(void **state)
{
    (void)state;
    assert_false(networks_contains(NULL, "127.0.0.1"));
    struct networks nets;
    char err[80];
    assert_int_equal(networks_parse(&nets, "127.0.0.0/8, bad", err, sizeof(err)), -1);
    assert_false(networks_contains(&nets, "127.0.0.1"));
    networks_free(&nets);
    networks_free(&nets); /* twice is harmless */
    char longer[300];
    memset(longer, '1', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = '\0';
    assert_int_equal(networks_parse(&nets, "*", err, sizeof(err)), 0);
    assert_false(networks_contains(&nets, longer));
    networks_free(&nets);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matching),
        cmocka_unit_test(test_bad_lists),
        cmocka_unit_test(test_empty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
