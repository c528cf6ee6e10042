/* Unit tests for relay_reply.c: how an upstream's reply bytes become a reply. A server is
 * trusted for nothing, so the cases are the awkward ones: lines split across reads, a CR in
 * one read and its LF in the next, codes that change mid-reply, bytes outside ASCII, lines
 * and replies too long to keep. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>

#include "luasmtpd/relay_reply.h"

struct read_case {
    const char *in;          /* fed in one piece */
    enum relay_read outcome; /* of the first relay_reply_read */
    int code;                /* when RELAY_READ_REPLY */
    const char *text;        /* when RELAY_READ_REPLY */
};

static const struct read_case read_cases[] = {
    {"250 OK\r\n", RELAY_READ_REPLY, 250, "OK"},
    {"250 OK\n", RELAY_READ_REPLY, 250, "OK"}, /* a bare LF ends a line too */
    {"250\r\n", RELAY_READ_REPLY, 250, ""},
    {"250-a\r\n250-b\r\n250 c\r\n", RELAY_READ_REPLY, 250, "a\nb\nc"},
    {"250-a\r\n", RELAY_READ_MORE, 0, NULL},
    {"250 OK", RELAY_READ_MORE, 0, NULL}, /* no line end yet */
    {"", RELAY_READ_MORE, 0, NULL},
    {"354 go ahead\r\n", RELAY_READ_REPLY, 354, "go ahead"},
    {"199 x\r\n", RELAY_READ_REPLY, 199, "x"},    /* a code; which class is allowed is not ours */
    {"550xyz\r\n", RELAY_READ_REPLY, 550, "xyz"}, /* no separator: the rest is text */
    {"250 a\tb\x01\x7f\xc3\xa9\r\n", RELAY_READ_REPLY, 250, "a b????"},
    {"600 no\r\n", RELAY_READ_MALFORMED, 0, NULL},
    {"099 no\r\n", RELAY_READ_MALFORMED, 0, NULL},
    {"25 no\r\n", RELAY_READ_MALFORMED, 0, NULL},
    {"2x0 no\r\n", RELAY_READ_MALFORMED, 0, NULL},
    {"\r\n", RELAY_READ_MALFORMED, 0, NULL},
    {"250-a\r\n550 b\r\n", RELAY_READ_MALFORMED, 0, NULL}, /* one reply, one code */
};

static void
test_read_cases(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(read_cases) / sizeof(read_cases[0]); i++) {
        const struct read_case *c = &read_cases[i];
        struct evbuffer *in = evbuffer_new();
        evbuffer_add(in, c->in, strlen(c->in));
        struct relay_reply_reader rd = {0};
        struct relay_reply reply = {0};
        enum relay_read got = relay_reply_read(&rd, in, &reply);
        if (got != c->outcome)
            fail_msg("case %zu (%s): outcome %d, wanted %d", i, c->in, got, c->outcome);
        if (got == RELAY_READ_REPLY) {
            assert_int_equal(reply.code, c->code);
            assert_string_equal(reply.text, c->text);
            assert_false(reply.end_of_data);
            assert_false(relay_reply_reader_busy(&rd));
        }
        relay_reply_reader_free(&rd);
        evbuffer_free(in);
    }
}

/* Byte by byte, a CR and its LF in different reads, and two replies in one read. */
static void
test_read_in_pieces(void **state)
{
    (void)state;
    const char *wire = "220-hello\r\n220 there\r\n250 next\r\n";
    struct evbuffer *in = evbuffer_new();
    struct relay_reply_reader rd = {0};
    struct relay_reply reply;
    size_t n = strlen(wire);
    size_t i = 0;
    for (; i < n; i++) {
        evbuffer_add(in, wire + i, 1);
        enum relay_read got = relay_reply_read(&rd, in, &reply);
        if (got == RELAY_READ_REPLY)
            break;
        assert_int_equal(got, RELAY_READ_MORE);
        assert_true(relay_reply_reader_busy(&rd) || i == 10); /* after "220-hello\r\n": a line */
    }
    assert_int_equal(i, strlen("220-hello\r\n220 there\r\n") - 1);
    assert_int_equal(reply.code, 220);
    assert_string_equal(reply.text, "hello\nthere");
    evbuffer_add(in, wire + i + 1, n - i - 1);
    assert_int_equal(relay_reply_read(&rd, in, &reply), RELAY_READ_REPLY);
    assert_int_equal(reply.code, 250);
    assert_string_equal(reply.text, "next"); /* the last reply's text does not stay */
    assert_int_equal(relay_reply_read(&rd, in, &reply), RELAY_READ_MORE);
    assert_false(relay_reply_reader_busy(&rd));
    relay_reply_reader_free(&rd);
    evbuffer_free(in);
}

/* A line far longer than we keep: its head is the text (cut to RELAY_TEXT_LINE_MAX), the rest
 * is dropped as it comes, and the reply is still a 250. */
static void
test_long_line(void **state)
{
    (void)state;
    struct evbuffer *in = evbuffer_new();
    struct relay_reply_reader rd = {0};
    struct relay_reply reply;
    evbuffer_add(in, "250 ", 4);
    char chunk[4096];
    memset(chunk, 'x', sizeof(chunk));
    for (int i = 0; i < 256; i++) { /* 1 MiB */
        evbuffer_add(in, chunk, sizeof(chunk));
        assert_int_equal(relay_reply_read(&rd, in, &reply), RELAY_READ_MORE);
        assert_true(evbuffer_get_length(in) == 0); /* nothing piles up */
        assert_true(rd.line.len <= 4 + RELAY_TEXT_LINE_MAX + 1);
    }
    evbuffer_add(in, "\r\n", 2);
    assert_int_equal(relay_reply_read(&rd, in, &reply), RELAY_READ_REPLY);
    assert_int_equal(reply.code, 250);
    assert_int_equal(strlen(reply.text), RELAY_TEXT_LINE_MAX);
    relay_reply_reader_free(&rd);
    evbuffer_free(in);
}

/* Lines past RELAY_REPLY_LINES_MAX are read and dropped, not kept. */
static void
test_many_lines(void **state)
{
    (void)state;
    struct evbuffer *in = evbuffer_new();
    for (int i = 0; i < 1000; i++)
        evbuffer_add_printf(in, "250-line %d\r\n", i);
    evbuffer_add_printf(in, "250 end\r\n");
    struct relay_reply_reader rd = {0};
    struct relay_reply reply;
    assert_int_equal(relay_reply_read(&rd, in, &reply), RELAY_READ_REPLY);
    size_t lines = 1;
    for (const char *p = reply.text; (p = strchr(p, '\n')) != NULL; p++)
        lines++;
    assert_int_equal(lines, RELAY_REPLY_LINES_MAX);
    assert_int_equal(strncmp(reply.text, "line 0\n", 7), 0);
    relay_reply_reader_free(&rd);
    evbuffer_free(in);
}

static void
test_extensions(void **state)
{
    (void)state;
    size_t limit = 99;
    assert_int_equal(relay_reply_extensions("mx.example", &limit), 0);
    assert_int_equal(limit, 0);
    unsigned ext = relay_reply_extensions(
        "mx.example greets you\npipelining\nSIZE 10240000\n8BITMIME\nSMTPUTF8\nDSN", &limit);
    assert_int_equal(ext, RELAY_EXT_PIPELINING | RELAY_EXT_SIZE | RELAY_EXT_8BITMIME |
                              RELAY_EXT_SMTPUTF8 | RELAY_EXT_DSN);
    assert_int_equal(limit, 10240000);
    /* Keywords are whole words, and the first line is the server's name, not a keyword. */
    ext = relay_reply_extensions("DSN\n8BITMIMEX\nXPIPELINING\nSIZE\nDSNX", &limit);
    assert_int_equal(ext, RELAY_EXT_SIZE);
    assert_int_equal(limit, 0);
}

static void
test_kinds_and_names(void **state)
{
    (void)state;
    static const struct {
        int code;
        enum relay_failure kind;
    } kinds[] = {{250, RELAY_OK},       {354, RELAY_OK},       {421, RELAY_TEMPFAIL},
                 {550, RELAY_PERMFAIL}, {199, RELAY_PROTOCOL}, {0, RELAY_PROTOCOL}};
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        struct relay_reply reply = {.code = kinds[i].code, .text = ""};
        assert_int_equal(relay_reply_kind(&reply), kinds[i].kind);
    }
    assert_false(relay_failure_is_fatal(RELAY_OK));
    assert_false(relay_failure_is_fatal(RELAY_TEMPFAIL));
    assert_false(relay_failure_is_fatal(RELAY_PERMFAIL));
    assert_true(relay_failure_is_fatal(RELAY_TIMED_OUT));
    assert_true(relay_failure_is_fatal(RELAY_UNKNOWN));
    assert_string_equal(relay_failure_name(RELAY_CONNECT_FAILED), "could not connect");
}

static void
test_excerpt(void **state)
{
    (void)state;
    char out[101];
    assert_string_equal(relay_reply_excerpt(out, "a\r\nb\0c", 6), "a??b?c");
    char longer[300];
    memset(longer, 'y', sizeof(longer));
    assert_int_equal(strlen(relay_reply_excerpt(out, longer, sizeof(longer))), 100);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_cases), cmocka_unit_test(test_read_in_pieces),
        cmocka_unit_test(test_long_line),  cmocka_unit_test(test_many_lines),
        cmocka_unit_test(test_extensions), cmocka_unit_test(test_kinds_and_names),
        cmocka_unit_test(test_excerpt),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
