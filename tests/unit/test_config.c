/* Unit tests for the command line: Python smtpd's flags and positional host:port pair, our long
 * options, the errors that must end in usage, and how -c's value becomes a script path. Output
 * goes to memory streams, so what a user would read is asserted too. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "luasmtpd/config.h"

#define MAX_ARGS 32

struct run {
    struct config cfg;
    enum config_result result;
    char *out;
    size_t out_len;
    char *err;
    size_t err_len;
};

/* Runs config_parse on a NULL-terminated list (program name first), on copies the parser may
 * permute, then frees the copies: the config must own everything it keeps. */
static enum config_result
run_parse(struct run *r, const char *const *args)
{
    char *argv[MAX_ARGS + 1];
    int argc = 0;
    for (; args[argc] != NULL; argc++) {
        assert_true(argc < MAX_ARGS);
        argv[argc] = strdup(args[argc]);
        assert_non_null(argv[argc]);
    }
    argv[argc] = NULL;
    char *owned[MAX_ARGS];
    memcpy(owned, argv, sizeof(owned[0]) * (size_t)argc);

    memset(r, 0, sizeof(*r));
    FILE *out = open_memstream(&r->out, &r->out_len);
    FILE *err = open_memstream(&r->err, &r->err_len);
    assert_non_null(out);
    assert_non_null(err);
    r->result = config_parse(&r->cfg, argc, argv, out, err);
    fclose(out);
    fclose(err);
    for (int i = 0; i < argc; i++) {
        memset(owned[i], 'Z', strlen(owned[i])); /* a pointer kept into argv would show */
        free(owned[i]);
    }
    return r->result;
}

static void
run_free(struct run *r)
{
    config_free(&r->cfg);
    free(r->out);
    free(r->err);
}

static void
expect_usage(const char *const *args, const char *message)
{
    struct run r;
    if (run_parse(&r, args) != CONFIG_EXIT_USAGE)
        fail_msg("%s ...: result %d, want usage", args[1], (int)r.result);
    if (strstr(r.err, message) == NULL)
        fail_msg("%s ...: stderr lacks \"%s\":\n%s", args[1], message, r.err);
    if (strstr(r.err, "Usage: luasmtpd") == NULL)
        fail_msg("%s ...: no usage on stderr:\n%s", args[1], r.err);
    if (r.out_len != 0)
        fail_msg("%s ...: stdout not empty:\n%s", args[1], r.out);
    run_free(&r);
}

/* ---- config_parse ---------------------------------------------------------------------- */

static void
test_defaults(void **state)
{
    (void)state;
    struct run r;
    const char *args[] = {"luasmtpd", NULL};
    assert_int_equal(run_parse(&r, args), CONFIG_RUN);
    assert_string_equal(r.cfg.local_host, "localhost");
    assert_int_equal(r.cfg.local_port, 8025);
    assert_string_equal(r.cfg.remote_host, "localhost");
    assert_int_equal(r.cfg.remote_port, 25);
    assert_string_equal(r.cfg.handler, "debugging");
    assert_null(r.cfg.script_path);
    assert_int_equal(r.cfg.size_limit, 33554432);
    assert_false(r.cfg.debug);
    assert_true(r.cfg.smtputf8); /* offered unless --no-smtputf8 */
    assert_false(r.cfg.nosetuid);
    assert_null(r.cfg.hostname);
    assert_int_equal(r.cfg.max_recipients, 1000);
    assert_int_equal(r.cfg.timeout, 300);
    assert_int_equal(r.cfg.data_timeout, 180);
    assert_int_equal(r.cfg.shutdown_timeout, 30);
    assert_int_equal(r.cfg.workers, 1);
    assert_int_equal(r.cfg.max_errors, 20);
    assert_int_equal(r.cfg.max_junk, 100);
    assert_int_equal(r.cfg.greet_delay_ms, 0);
    assert_int_equal(r.cfg.lua_instructions, 50000000);
    assert_int_equal(r.cfg.watchdog, 60);
    /* min(1024, RAM/4): at least 1 MiB, at most the cap */
    assert_int_equal(r.cfg.data_memory_mb, config_default_data_memory());
    assert_in_range(r.cfg.data_memory_mb, 1, CONFIG_DATA_MEMORY_CAP);
    assert_int_equal(config_data_budget(&r.cfg), (size_t)r.cfg.data_memory_mb * 1024 * 1024);
    assert_int_equal(r.cfg.n_settings, 0);
    assert_int_equal(r.out_len, 0);
    assert_int_equal(r.err_len, 0);
    run_free(&r);
}

static void
test_short_options(void **state)
{
    (void)state;
    struct run r;
    const char *args[] = {
        "luasmtpd",         "-n", "-c", "x", "-s", "10", "-d", "-u", "127.0.0.1:2525",
        "mail.example:587", NULL};
    assert_int_equal(run_parse(&r, args), CONFIG_RUN);
    assert_true(r.cfg.nosetuid);
    assert_string_equal(r.cfg.handler, "x");
    assert_int_equal(r.cfg.size_limit, 10);
    assert_true(r.cfg.debug);
    assert_true(r.cfg.smtputf8);
    assert_string_equal(r.cfg.local_host, "127.0.0.1");
    assert_int_equal(r.cfg.local_port, 2525);
    assert_string_equal(r.cfg.remote_host, "mail.example");
    assert_int_equal(r.cfg.remote_port, 587);
    assert_int_equal(r.err_len, 0);
    run_free(&r);

    /* grouped and attached, as getopt allows */
    const char *grouped[] = {"luasmtpd", "-ndu", "-cSinkServer", "-s0", NULL};
    assert_int_equal(run_parse(&r, grouped), CONFIG_RUN);
    assert_true(r.cfg.nosetuid);
    assert_true(r.cfg.debug);
    assert_true(r.cfg.smtputf8);
    assert_string_equal(r.cfg.handler, "SinkServer");
    assert_int_equal(r.cfg.size_limit, 0);
    run_free(&r);

    /* -u is the default kept for Python's flag; --no-smtputf8 wins over it only when later */
    const char *off[] = {"luasmtpd", "-u", "--no-smtputf8", NULL};
    assert_int_equal(run_parse(&r, off), CONFIG_RUN);
    assert_false(r.cfg.smtputf8);
    run_free(&r);
    const char *on_again[] = {"luasmtpd", "--no-smtputf8", "-u", NULL};
    assert_int_equal(run_parse(&r, on_again), CONFIG_RUN);
    assert_true(r.cfg.smtputf8);
    run_free(&r);

    /* a repeated -c replaces the first (and frees it: ASan would see the leak) */
    const char *twice[] = {"luasmtpd", "-c", "a", "-c", "b", NULL};
    assert_int_equal(run_parse(&r, twice), CONFIG_RUN);
    assert_string_equal(r.cfg.handler, "b");
    run_free(&r);
}

static void
test_long_options(void **state)
{
    (void)state;
    struct run r;
    const char *args[] = {"luasmtpd",
                          "--nosetuid",
                          "--class",
                          "smtpd.DebuggingServer",
                          "--size=0",
                          "--debug",
                          "--smtputf8",
                          "--hostname",
                          "mx.example.org",
                          "--max-recipients",
                          "5",
                          "--timeout=60",
                          "--shutdown-timeout",
                          "0",
                          "--watchdog=0",
                          "--set",
                          "a=b",
                          "--set=relay=smtp.example:25",
                          "--set",
                          "a=c",
                          "--set",
                          "empty=",
                          "[::1]:8025",
                          NULL};
    assert_int_equal(run_parse(&r, args), CONFIG_RUN);
    assert_true(r.cfg.nosetuid);
    assert_string_equal(r.cfg.handler, "smtpd.DebuggingServer");
    assert_int_equal(r.cfg.size_limit, 0);
    assert_true(r.cfg.debug);
    assert_true(r.cfg.smtputf8);
    assert_string_equal(r.cfg.hostname, "mx.example.org");
    assert_int_equal(r.cfg.max_recipients, 5);
    assert_int_equal(r.cfg.timeout, 60);
    assert_int_equal(r.cfg.shutdown_timeout, 0);
    assert_int_equal(r.cfg.watchdog, 0);
    assert_string_equal(r.cfg.local_host, "::1");
    assert_int_equal(r.cfg.local_port, 8025);
    assert_string_equal(r.cfg.remote_host, "localhost");
    assert_int_equal(r.cfg.remote_port, 25);
    /* every --set kept, in order, the value split at the first "=" only */
    assert_int_equal(r.cfg.n_settings, 4);
    assert_string_equal(r.cfg.settings[0].key, "a");
    assert_string_equal(r.cfg.settings[0].value, "b");
    assert_string_equal(r.cfg.settings[1].key, "relay");
    assert_string_equal(r.cfg.settings[1].value, "smtp.example:25");
    assert_string_equal(r.cfg.settings[2].key, "a");
    assert_string_equal(r.cfg.settings[2].value, "c");
    assert_string_equal(r.cfg.settings[3].key, "empty");
    assert_string_equal(r.cfg.settings[3].value, "");
    assert_int_equal(r.err_len, 0);
    run_free(&r);
}

/* --data-memory is for the whole server: each of --workers N gets a share; 0 is no limit. */
static void
test_data_memory(void **state)
{
    (void)state;
    struct run r;
    const char *shared[] = {"luasmtpd", "--data-memory", "10", "--workers", "4", NULL};
    assert_int_equal(run_parse(&r, shared), CONFIG_RUN);
    assert_int_equal(r.cfg.data_memory_mb, 10);
    assert_int_equal(config_data_budget(&r.cfg), 10 * 1024 * 1024 / 4);
    run_free(&r);
    const char *off[] = {"luasmtpd", "--data-memory=0", NULL};
    assert_int_equal(run_parse(&r, off), CONFIG_RUN);
    assert_int_equal(config_data_budget(&r.cfg), 0);
    run_free(&r);
    const char *big[] = {"luasmtpd", "--data-memory", "1048577", NULL};
    expect_usage(big, "invalid number for --data-memory: 1048577 (0 to 1048576)");
}

/* 0 is none for every limit that can have none: read as 0 where the code says what 0 does,
 * stored as UINT_MAX (no count reaches it) where it compares. */
static void
test_zero_is_none(void **state)
{
    (void)state;
    struct run r;
    const char *zeros[] = {"luasmtpd",
                           "--max-recipients=0",
                           "--max-connections=0",
                           "--max-per-client=0",
                           "--max-errors=0",
                           "--max-messages=0",
                           "--max-junk=0",
                           "--min-data-rate=0",
                           "--lua-instructions=0",
                           "--lua-memory=0",
                           "--watchdog=0",
                           "--greet-delay=0",
                           "--shutdown-timeout=0",
                           "-s0",
                           NULL};
    assert_int_equal(run_parse(&r, zeros), CONFIG_RUN);
    assert_true(r.cfg.max_recipients == UINT_MAX);
    assert_true(r.cfg.max_connections == UINT_MAX);
    assert_true(r.cfg.max_per_client == UINT_MAX);
    assert_true(r.cfg.max_errors == UINT_MAX);
    assert_int_equal(r.cfg.max_messages, 0);
    assert_int_equal(r.cfg.max_junk, 0);
    assert_int_equal(r.cfg.min_data_rate, 0);
    assert_int_equal(r.cfg.lua_instructions, 0);
    assert_int_equal(r.cfg.lua_memory_mb, 0);
    assert_int_equal(r.cfg.watchdog, 0);
    assert_int_equal(r.cfg.size_limit, 0);
    run_free(&r);
}

/* --trusted-networks: loopback by default, replaced (not added to) when given, "" for none. */
static void
test_trusted_networks(void **state)
{
    (void)state;
    struct run r;
    const char *none[] = {"luasmtpd", NULL};
    assert_int_equal(run_parse(&r, none), CONFIG_RUN);
    assert_true(networks_contains(&r.cfg.trusted, "127.0.0.1"));
    assert_true(networks_contains(&r.cfg.trusted, "127.1.2.3"));
    assert_true(networks_contains(&r.cfg.trusted, "::1"));
    assert_true(networks_contains(&r.cfg.trusted, "::ffff:127.0.0.1"));
    assert_false(networks_contains(&r.cfg.trusted, "10.0.0.1"));
    run_free(&r);
    const char *given[] = {"luasmtpd", "--trusted-networks", "127.0.0.1/32",
                           "--trusted-networks=10.0.0.0/8, 2001:db8::/32", NULL};
    assert_int_equal(run_parse(&r, given), CONFIG_RUN);
    assert_false(networks_contains(&r.cfg.trusted, "127.0.0.1"));
    assert_true(networks_contains(&r.cfg.trusted, "10.9.8.7"));
    assert_true(networks_contains(&r.cfg.trusted, "2001:db8::7"));
    run_free(&r);
    const char *empty[] = {"luasmtpd", "--trusted-networks", "", NULL};
    assert_int_equal(run_parse(&r, empty), CONFIG_RUN);
    assert_int_equal(r.cfg.trusted.n, 0);
    run_free(&r);
}

static void
test_size_values(void **state)
{
    (void)state;
    struct run r;
    const char *big[] = {"luasmtpd", "-s", "18446744073709551615", NULL};
    assert_int_equal(run_parse(&r, big), CONFIG_RUN);
    assert_true(r.cfg.size_limit == SIZE_MAX);
    run_free(&r);

    const char *plain[] = {"luasmtpd", "--size", "1048576", NULL};
    assert_int_equal(run_parse(&r, plain), CONFIG_RUN);
    assert_int_equal(r.cfg.size_limit, 1048576);
    run_free(&r);

    const char *over[] = {"luasmtpd", "-s", "18446744073709551616", NULL};
    expect_usage(over, "invalid size: 18446744073709551616");
    const char *neg[] = {"luasmtpd", "-s", "-1", NULL};
    expect_usage(neg, "invalid size: -1");
    const char *unit[] = {"luasmtpd", "-s", "10k", NULL};
    expect_usage(unit, "invalid size: 10k");
    const char *empty[] = {"luasmtpd", "--size=", NULL};
    expect_usage(empty, "invalid size");
    const char *plus[] = {"luasmtpd", "-s", "+5", NULL};
    expect_usage(plus, "invalid size: +5");
    const char *space[] = {"luasmtpd", "-s", " 5", NULL};
    expect_usage(space, "invalid size");
}

struct hostport_case {
    const char *spec;
    bool ok;
    const char *host;
    unsigned short port;
};

static const struct hostport_case hostport_cases[] = {
    {"localhost:8025", true, "localhost", 8025},
    {"127.0.0.1:0", true, "127.0.0.1", 0},
    {"h:65535", true, "h", 65535},
    {"h:00025", true, "h", 25},
    {"[::1]:8025", true, "::1", 8025},
    {"[2001:db8::1]:25", true, "2001:db8::1", 25},
    {"[::]:1", true, "::", 1},
    {"foo", false, NULL, 0},
    {"", false, NULL, 0},
    {"h:99999", false, NULL, 0},
    {"h:65536", false, NULL, 0},
    {"h:", false, NULL, 0},
    {":25", false, NULL, 0},
    {"h:x", false, NULL, 0},
    {"h:25x", false, NULL, 0},
    {"h:-1", false, NULL, 0},
    {"h:+1", false, NULL, 0},
    {"h: 1", false, NULL, 0},
    {"h:1:2", false, NULL, 0},
    {"::1:25", false, NULL, 0},
    {"[::1]", false, NULL, 0},
    {"[::1]8025", false, NULL, 0},
    {"[::1:8025", false, NULL, 0},
    {"[]:25", false, NULL, 0},
    {"[::1]:", false, NULL, 0},
    {"h:99999999999999999999999", false, NULL, 0},
};

static void
test_hostport(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(hostport_cases) / sizeof(hostport_cases[0]); i++) {
        const struct hostport_case *tc = &hostport_cases[i];
        char *host = NULL;
        unsigned short port = 4242;
        bool ok = config_parse_hostport(tc->spec, &host, &port);
        if (ok != tc->ok)
            fail_msg("\"%s\": returned %d, want %d", tc->spec, ok, tc->ok);
        if (ok) {
            if (strcmp(host, tc->host) != 0 || port != tc->port)
                fail_msg("\"%s\": got %s port %u, want %s port %u", tc->spec, host, port, tc->host,
                         tc->port);
        } else if (host != NULL || port != 4242) {
            fail_msg("\"%s\": failed but wrote its outputs", tc->spec);
        }
        free(host);
    }
}

static void
test_bad_specs(void **state)
{
    (void)state;
    static const char *const bad[] = {"foo", "h:99999", "h:", ":25", "h:x", "[::1]"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char want[64];
        const char *local[] = {"luasmtpd", bad[i], NULL};
        snprintf(want, sizeof(want), "bad local spec: %s\n", bad[i]);
        expect_usage(local, want);
        const char *remote[] = {"luasmtpd", "localhost:8025", bad[i], NULL};
        snprintf(want, sizeof(want), "bad remote spec: %s\n", bad[i]);
        expect_usage(remote, want);
    }
}

static void
test_usage_errors(void **state)
{
    (void)state;
    const char *three[] = {"luasmtpd", "a:1", "b:2", "c:3", NULL};
    expect_usage(three, "invalid arguments: c:3");
    const char *four[] = {"luasmtpd", "a:1", "b:2", "c:3", "d:4", NULL};
    expect_usage(four, "invalid arguments: c:3 d:4");
    const char *unknown_short[] = {"luasmtpd", "-x", NULL};
    expect_usage(unknown_short, "unknown option: -x");
    const char *unknown_long[] = {"luasmtpd", "--bogus", NULL};
    expect_usage(unknown_long, "unknown option: --bogus");
    const char *unknown_grouped[] = {"luasmtpd", "-dx", NULL};
    expect_usage(unknown_grouped, "unknown option: -x");
    /* the unknown one first in a group: the message still names it, not another argument */
    const char *unknown_first[] = {"luasmtpd", "-xd", NULL};
    expect_usage(unknown_first, "unknown option: -x");
    const char *missing[] = {"luasmtpd", "-c", NULL};
    expect_usage(missing, "option requires an argument: -c");
    const char *missing_long[] = {"luasmtpd", "--size", NULL};
    expect_usage(missing_long, "option requires an argument: --size");
    const char *flag_arg[] = {"luasmtpd", "--debug=yes", NULL};
    expect_usage(flag_arg, "luasmtpd: ");
    const char *set_no_eq[] = {"luasmtpd", "--set", "a", NULL};
    expect_usage(set_no_eq, "--set takes KEY=VALUE, got: a");
    const char *set_no_key[] = {"luasmtpd", "--set", "=b", NULL};
    expect_usage(set_no_key, "--set takes KEY=VALUE, got: =b");
    const char *host_space[] = {"luasmtpd", "--hostname", "a b", NULL};
    expect_usage(host_space, "invalid hostname: a b");
    const char *host_empty[] = {"luasmtpd", "--hostname=", NULL};
    expect_usage(host_empty, "invalid hostname");
    const char *host_crlf[] = {"luasmtpd", "--hostname", "a\r\nb", NULL};
    expect_usage(host_crlf, "invalid hostname");
    /* The options that take no 0 (see the table in config.c). */
    const char *timeout_zero[] = {"luasmtpd", "--timeout", "0", NULL};
    expect_usage(timeout_zero, "invalid number for --timeout: 0 (1 to 86400)");
    const char *data_timeout_zero[] = {"luasmtpd", "--data-timeout", "0", NULL};
    expect_usage(data_timeout_zero, "invalid number for --data-timeout: 0");
    const char *workers_zero[] = {"luasmtpd", "--workers", "0", NULL};
    expect_usage(workers_zero, "invalid number for --workers: 0");
    const char *children_zero[] = {"luasmtpd", "--max-children", "0", NULL};
    expect_usage(children_zero, "invalid number for --max-children: 0");
    const char *trusted_bad[] = {"luasmtpd", "--trusted-networks", "10.0.0.0/8,10.0.0.1/8", NULL};
    expect_usage(trusted_bad, "--trusted-networks: bad network '10.0.0.1/8': bits set past");
    const char *timeout_big[] = {"luasmtpd", "--timeout", "4294967296", NULL};
    expect_usage(timeout_big, "invalid number for --timeout: 4294967296");
    const char *shutdown_neg[] = {"luasmtpd", "--shutdown-timeout", "-1", NULL};
    expect_usage(shutdown_neg, "invalid number for --shutdown-timeout: -1");
}

static void
test_version_and_help(void **state)
{
    (void)state;
    struct run r;
    const char *version[] = {"luasmtpd", "-V", NULL};
    assert_int_equal(run_parse(&r, version), CONFIG_EXIT_OK);
    assert_string_equal(r.out, "luasmtpd " LUASMTPD_VERSION "\n");
    assert_int_equal(r.err_len, 0);
    run_free(&r);

    const char *version_long[] = {"luasmtpd", "--version", NULL};
    assert_int_equal(run_parse(&r, version_long), CONFIG_EXIT_OK);
    assert_string_equal(r.out, "luasmtpd " LUASMTPD_VERSION "\n");
    run_free(&r);

    const char *help[] = {"luasmtpd", "-h", NULL};
    assert_int_equal(run_parse(&r, help), CONFIG_EXIT_OK);
    assert_true(strncmp(r.out, "Usage: luasmtpd [options]", 25) == 0);
    assert_non_null(strstr(r.out, "--set KEY=VALUE"));
    assert_non_null(strstr(r.out, "(default 33554432;"));
    assert_non_null(strstr(r.out, "--data-memory N"));
    assert_non_null(strstr(r.out, "(default min(1024, RAM/4), here "));
    assert_int_equal(r.err_len, 0);
    run_free(&r);

    const char *help_long[] = {"luasmtpd", "-d", "--help", "ignored:1", NULL};
    assert_int_equal(run_parse(&r, help_long), CONFIG_EXIT_OK);
    assert_true(strncmp(r.out, "Usage: luasmtpd", 15) == 0);
    run_free(&r);
}

/* config_parse is called more than once in one process (these tests; a future config
 * reload): a parse that stopped in the middle of "-Vd" or "-xd" must not leak getopt state into
 * the next one. */
static void
test_parse_twice(void **state)
{
    (void)state;
    struct run r;
    const char *stop_mid_group[] = {"luasmtpd", "-Vd", NULL};
    assert_int_equal(run_parse(&r, stop_mid_group), CONFIG_EXIT_OK);
    run_free(&r);
    const char *next[] = {"luasmtpd", "-n", NULL};
    assert_int_equal(run_parse(&r, next), CONFIG_RUN);
    assert_true(r.cfg.nosetuid);
    assert_false(r.cfg.debug);
    run_free(&r);

    const char *error_mid_group[] = {"luasmtpd", "-xd", NULL};
    assert_int_equal(run_parse(&r, error_mid_group), CONFIG_EXIT_USAGE);
    run_free(&r);
    const char *after[] = {"luasmtpd", "-s", "7", NULL};
    assert_int_equal(run_parse(&r, after), CONFIG_RUN);
    assert_false(r.cfg.debug);
    assert_int_equal(r.cfg.size_limit, 7);
    run_free(&r);
}

/* ---- config_resolve_handler ------------------------------------------------------------ */

struct lua_dir {
    char path[64];
};

static void
touch(const char *dir, const char *name)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("return {}\n", f);
    fclose(f);
}

static void
remove_file(const char *dir, const char *name)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    unlink(path);
}

static int
setup_lua_dir(void **state)
{
    struct lua_dir *d = malloc(sizeof(*d));
    if (d == NULL)
        return -1;
    strcpy(d->path, "/tmp/luasmtpd-test-XXXXXX");
    if (mkdtemp(d->path) == NULL) {
        free(d);
        return -1;
    }
    touch(d->path, "debugging.lua");
    touch(d->path, "sink.lua");
    touch(d->path, "my_handler.lua");
    *state = d;
    return 0;
}

static int
teardown_lua_dir(void **state)
{
    struct lua_dir *d = *state;
    remove_file(d->path, "debugging.lua");
    remove_file(d->path, "sink.lua");
    remove_file(d->path, "my_handler.lua");
    remove_file(d->path, "pureproxy.lua");
    rmdir(d->path);
    free(d);
    return 0;
}

/* Parses "-c handler", resolves it against `dir` and returns whether it resolved; the script
 * path (or NULL) and what went to stderr are copied out. */
static bool
resolve(const char *dir, const char *handler, char **script, char **err_text)
{
    struct run r;
    const char *args[] = {"luasmtpd", "-c", handler, NULL};
    assert_int_equal(run_parse(&r, args), CONFIG_RUN);
    char *err = NULL;
    size_t err_len = 0;
    FILE *ef = open_memstream(&err, &err_len);
    assert_non_null(ef);
    bool ok = config_resolve_handler(&r.cfg, dir, ef);
    fclose(ef);
    *script = r.cfg.script_path ? strdup(r.cfg.script_path) : NULL;
    *err_text = err;
    run_free(&r);
    return ok;
}

static void
expect_resolved(const char *dir, const char *handler, const char *want)
{
    char *script, *err;
    if (!resolve(dir, handler, &script, &err))
        fail_msg("-c %s: not resolved: %s", handler, err);
    if (script == NULL || strcmp(script, want) != 0)
        fail_msg("-c %s: script %s, want %s", handler, script ? script : "(null)", want);
    if (err[0] != '\0')
        fail_msg("-c %s: printed \"%s\" on success", handler, err);
    free(script);
    free(err);
}

static void
expect_unresolved(const char *dir, const char *handler, const char *message)
{
    char *script, *err;
    if (resolve(dir, handler, &script, &err))
        fail_msg("-c %s: resolved to %s, want a failure", handler, script);
    if (strstr(err, message) == NULL)
        fail_msg("-c %s: stderr lacks \"%s\": %s", handler, message, err);
    free(script);
    free(err);
}

static void
test_resolve_bundled(void **state)
{
    struct lua_dir *d = *state;
    char want[256];
    snprintf(want, sizeof(want), "%s/debugging.lua", d->path);
    expect_resolved(d->path, "debugging", want);
    expect_resolved(d->path, "DebuggingServer", want);
    expect_resolved(d->path, "debuggingserver", want);
    expect_resolved(d->path, "smtpd.DebuggingServer", want);
    snprintf(want, sizeof(want), "%s/sink.lua", d->path);
    expect_resolved(d->path, "sink", want);
    expect_resolved(d->path, "SinkServer", want);
    snprintf(want, sizeof(want), "%s/my_handler.lua", d->path);
    expect_resolved(d->path, "my_handler", want);

    /* the default, with no -c at all */
    struct run r;
    const char *args[] = {"luasmtpd", NULL};
    assert_int_equal(run_parse(&r, args), CONFIG_RUN);
    assert_true(config_resolve_handler(&r.cfg, d->path, stderr));
    snprintf(want, sizeof(want), "%s/debugging.lua", d->path);
    assert_string_equal(r.cfg.script_path, want);
    run_free(&r);
}

static void
test_resolve_path(void **state)
{
    struct lua_dir *d = *state;
    char path[256];
    snprintf(path, sizeof(path), "%s/my_handler.lua", d->path);
    expect_resolved("/nonexistent", path, path);
    /* a path is taken as it is, not looked up in the bundled directory */
    expect_unresolved(d->path, "/nonexistent/debugging.lua", "cannot read handler script");
    expect_unresolved(d->path, "missing_here.lua", "cannot read handler script missing_here.lua");
    snprintf(path, sizeof(path), "%s/absent.lua", d->path);
    expect_unresolved(d->path, path, "No such file or directory");
}

static void
test_resolve_unavailable(void **state)
{
    struct lua_dir *d = *state;
    expect_unresolved(d->path, "pureproxy", "not available");
    expect_unresolved(d->path, "PureProxy", "the pureproxy handler is not available");
    expect_unresolved(d->path, "smtpd.PureProxy", "not available");
    expect_unresolved(d->path, "mailman", "the mailman handler is not available");
    expect_unresolved(d->path, "MailmanProxy", "not available");
    expect_unresolved(d->path, "nosuch", "unknown handler 'nosuch'");
    expect_unresolved(d->path, "smtpd.", "unknown handler 'smtpd.'");
    expect_unresolved(d->path, "", "unknown handler ''");
    expect_unresolved(d->path, "debug ging", "unknown handler");
    expect_unresolved(d->path, "..", "unknown handler");

    /* once the file is there, the name resolves like any other */
    touch(d->path, "pureproxy.lua");
    char want[256];
    snprintf(want, sizeof(want), "%s/pureproxy.lua", d->path);
    expect_resolved(d->path, "PureProxy", want);
    remove_file(d->path, "pureproxy.lua");
}

/* The TLS options: aiosmtpd's names and the hyphenated ones fill the same fields; a file
 * must be readable; a certificate needs its key. /dev/null stands for a readable file: what
 * it holds is tls.c's to judge. */
static void
test_tls_options(void **state)
{
    (void)state;
    struct run r;
    const char *const both[] = {"luasmtpd",  "--tls-cert",  "/dev/null",      "--tlskey",
                                "/dev/null", "--smtpscert", "/dev/null",      "--smtpskey",
                                "/dev/null", "--smtps",     "127.0.0.1:8465", "--require-starttls",
                                NULL};
    assert_int_equal(run_parse(&r, both), CONFIG_RUN);
    assert_string_equal(r.cfg.tls_cert, "/dev/null");
    assert_string_equal(r.cfg.tls_key, "/dev/null");
    assert_string_equal(r.cfg.smtps_cert, "/dev/null");
    assert_string_equal(r.cfg.smtps_host, "127.0.0.1");
    assert_int_equal(r.cfg.smtps_port, 8465);
    assert_true(r.cfg.require_starttls);
    run_free(&r);
    const char *const none[] = {"luasmtpd", NULL};
    assert_int_equal(run_parse(&r, none), CONFIG_RUN);
    assert_null(r.cfg.tls_cert);
    assert_false(r.cfg.require_starttls);
    run_free(&r);
    const char *const half[] = {"luasmtpd", "--tlscert", "/dev/null", NULL};
    expect_usage(half, "--tlscert and --tlskey go together");
    const char *const missing[] = {"luasmtpd", "--tlscert", "/nonexistent/c.pem",
                                   "--tlskey", "/dev/null", NULL};
    expect_usage(missing, "cannot read --tlscert /nonexistent/c.pem");
    const char *const lone_smtps[] = {"luasmtpd", "--smtps", "127.0.0.1:8465", NULL};
    expect_usage(lone_smtps, "--smtps needs --smtpscert and --smtpskey");
    const char *const bad_smtps[] = {"luasmtpd", "--smtps", "nowhere", NULL};
    expect_usage(bad_smtps, "bad --smtps address: nowhere");
    const char *const require[] = {"luasmtpd", "--require-starttls", NULL};
    expect_usage(require, "--require-starttls needs --tlscert and --tlskey");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_data_memory),
        cmocka_unit_test(test_short_options),
        cmocka_unit_test(test_long_options),
        cmocka_unit_test(test_size_values),
        cmocka_unit_test(test_hostport),
        cmocka_unit_test(test_bad_specs),
        cmocka_unit_test(test_usage_errors),
        cmocka_unit_test(test_version_and_help),
        cmocka_unit_test(test_parse_twice),
        cmocka_unit_test(test_zero_is_none),
        cmocka_unit_test(test_trusted_networks),
        cmocka_unit_test(test_tls_options),
        cmocka_unit_test_setup_teardown(test_resolve_bundled, setup_lua_dir, teardown_lua_dir),
        cmocka_unit_test_setup_teardown(test_resolve_path, setup_lua_dir, teardown_lua_dir),
        cmocka_unit_test_setup_teardown(test_resolve_unavailable, setup_lua_dir, teardown_lua_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
