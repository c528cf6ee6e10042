/* Unit tests for smtp_reply_format: what a handler may return and the wire form it becomes.
 * A reply that gets through must be exactly one well-formed SMTP reply (RFC 5321 4.2), so a
 * script can never make the server send two replies, a command-like line or a bare CR. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "luasmtpd/buf.h"
#include "luasmtpd/smtp_reply.h"

struct reply_case {
    const char *in;
    size_t len;
    int code;         /* -1: refused */
    const char *wire; /* checked when code != -1 */
};

#define B(s) s, sizeof(s) - 1

static const struct reply_case reply_cases[] = {
    {B("250 OK"), 250, "250 OK\r\n"},
    {B("250 OK\n"), 250, "250 OK\r\n"},
    {B("250 OK\r\n"), 250, "250 OK\r\n"},
    {B("550 5.7.1 No\n"), 550, "550 5.7.1 No\r\n"},
    {B("451 4.3.0 try later"), 451, "451 4.3.0 try later\r\n"},
    {B("221 Bye"), 221, "221 Bye\r\n"},
    {B("599 x"), 599, "599 x\r\n"},
    {B("200 x"), 200, "200 x\r\n"},
    {B("250 a\tb"), 250, "250 a\tb\r\n"},
    {B("250  two spaces "), 250, "250  two spaces \r\n"},
    {B("250 caf\xc3\xa9"), 250, "250 caf\xc3\xa9\r\n"},
    /* multi-line: "-" on every line but the last, whatever the handler wrote */
    {B("250-a\n250 b"), 250, "250-a\r\n250 b\r\n"},
    {B("250 a\r\n250 b"), 250, "250-a\r\n250 b\r\n"},
    {B("250 a\n250 b\n"), 250, "250-a\r\n250 b\r\n"},
    {B("250-a\r\n250-b\r\n250-c\r\n"), 250, "250-a\r\n250-b\r\n250 c\r\n"},
    {B("250-only"), 250, "250 only\r\n"},
    {B("550-5.1.1 one\n550 5.1.1 two"), 550, "550-5.1.1 one\r\n550 5.1.1 two\r\n"},
    /* the code alone: RFC 5321 4.2 Reply-code [ SP textstring ] CRLF, and textstring is
     * 1*(...), so no space without text */
    {B("250"), 250, "250\r\n"},
    {B("250\n"), 250, "250\r\n"},
    {B("250 "), 250, "250\r\n"},
    {B("250-a\n250"), 250, "250-a\r\n250\r\n"},
    {B("250\n250 b"), 250, "250-\r\n250 b\r\n"},

    {B("250 a\n251 b"), -1, NULL},
    {B("250 a\n550 b"), -1, NULL},
    {B("250 a\r\n25 b"), -1, NULL},
    {B("354 go ahead"), -1, NULL},
    {B("334 VXNlcm5hbWU6"), -1, NULL},
    {B("150 x"), -1, NULL},
    {B("050 x"), -1, NULL},
    {B("650 x"), -1, NULL},
    {B("950 x"), -1, NULL},
    {B("25"), -1, NULL},
    {B("2"), -1, NULL},
    {B(""), -1, NULL},
    {B("\n"), -1, NULL},
    {B("\r\n"), -1, NULL},
    {B("250x"), -1, NULL},
    {B("250x OK"), -1, NULL},
    {B("2500 OK"), -1, NULL},
    {B("25a OK"), -1, NULL},
    {B(" 250 OK"), -1, NULL},
    {B("OK"), -1, NULL},
    {B("250 a\rb"), -1, NULL},
    {B("250 a\r"), 250, "250 a\r\n"}, /* one trailing line end, CR alone included */
    {B("250 a\r\r\n"), -1, NULL},
    {B("250 a\r\n\r\n"), -1, NULL},
    {B("250 a\n\n"), -1, NULL},
    {B("250 a\n\n250 b"), -1, NULL},
    {B("250 a\n\r\n250 b"), -1, NULL},
    {B("250 a\x00"), -1, NULL},
    {B("250 a\x00\n"), -1, NULL},
    {B("250\x00"), -1, NULL},
    {B("250 a\x1b[2J"), -1, NULL},
    {B("250 a\x7f"), -1, NULL},
    {B("250 a\x0b"), -1, NULL},
    {B("250 a\n250 b\rRCPT TO:<x@y>"), -1, NULL},
    {B("250 a\nQUIT"), -1, NULL},
    {B("250 a\n\n250 b\n"), -1, NULL},
};

static void
test_reply_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(reply_cases) / sizeof(reply_cases[0]); i++) {
        const struct reply_case *tc = &reply_cases[i];
        struct buf out = {0};
        /* something already in `out`: the reply is appended to it, or it is left alone */
        assert_int_equal(buf_append_str(&out, "prefix"), 0);
        int code = smtp_reply_format(tc->in, tc->len, &out);
        if (code != tc->code)
            fail_msg("case %zu (\"%.*s\"): code %d, want %d", i, (int)tc->len, tc->in, code,
                     tc->code);
        if (code == -1) {
            if (out.len != 6 || memcmp(out.data, "prefix", 6) != 0)
                fail_msg("case %zu (\"%.*s\"): out changed on failure (%zu bytes)", i, (int)tc->len,
                         tc->in, out.len);
        } else {
            size_t n = strlen(tc->wire);
            if (out.len != 6 + n || memcmp(out.data, "prefix", 6) != 0 ||
                memcmp(out.data + 6, tc->wire, n) != 0)
                fail_msg("case %zu (\"%.*s\"): wrote \"%.*s\", want \"%s\"", i, (int)tc->len,
                         tc->in, (int)(out.len - 6), out.data + 6, tc->wire);
        }
        buf_free(&out);
    }
}

/* A reply line is at most SMTP_REPLY_LINE_MAX bytes with its CRLF, on any line of a reply. */
static void
test_reply_line_length(void **state)
{
    (void)state;
    char text[2 * SMTP_REPLY_LINE_MAX];
    size_t max_text = SMTP_REPLY_LINE_MAX - 4 - 2; /* "250 " and CRLF */

    memcpy(text, "250 ", 4);
    memset(text + 4, 'x', max_text);
    struct buf out = {0};
    assert_int_equal(smtp_reply_format(text, 4 + max_text, &out), 250);
    assert_int_equal(out.len, SMTP_REPLY_LINE_MAX);
    assert_memory_equal(out.data + out.len - 2, "\r\n", 2);
    buf_reset(&out);

    memset(text + 4, 'x', max_text + 1);
    assert_int_equal(smtp_reply_format(text, 4 + max_text + 1, &out), -1);
    assert_int_equal(out.len, 0);

    /* the long line in the middle of a reply, and a trailing newline not counted against it */
    size_t n = 0;
    memcpy(text, "250-a\n250-", 10);
    n = 10;
    memset(text + n, 'y', max_text + 1);
    n += max_text + 1;
    memcpy(text + n, "\n250 b", 6);
    n += 6;
    assert_int_equal(smtp_reply_format(text, n, &out), -1);
    assert_int_equal(out.len, 0);

    memcpy(text, "250 ", 4);
    memset(text + 4, 'x', max_text);
    text[4 + max_text] = '\n';
    assert_int_equal(smtp_reply_format(text, 4 + max_text + 1, &out), 250);
    assert_int_equal(out.len, SMTP_REPLY_LINE_MAX);
    buf_free(&out);
}

/* Many lines: every one but the last carries "-"; the length is not bounded by line count. */
static void
test_reply_many_lines(void **state)
{
    (void)state;
    struct buf in = {0}, want = {0}, out = {0};
    for (int i = 0; i < 200; i++) {
        assert_int_equal(buf_printf(&in, "%s421 4.7.0 line %d", i ? "\n" : "", i), 0);
        assert_int_equal(buf_printf(&want, "421%c4.7.0 line %d\r\n", i < 199 ? '-' : ' ', i), 0);
    }
    assert_int_equal(smtp_reply_format(in.data, in.len, &out), 421);
    assert_int_equal(out.len, want.len);
    assert_memory_equal(out.data, want.data, want.len);
    buf_free(&in);
    buf_free(&want);
    buf_free(&out);
}

/* Only `len` bytes are read: text need not be NUL-terminated, and bytes after it are ignored. */
static void
test_reply_uses_len(void **state)
{
    (void)state;
    static const char text[] = "250 OK\n550 no";
    struct buf out = {0};
    assert_int_equal(smtp_reply_format(text, 6, &out), 250);
    assert_int_equal(out.len, 8);
    assert_memory_equal(out.data, "250 OK\r\n", 8);
    buf_free(&out);

    char *exact = malloc(6);
    assert_non_null(exact);
    memcpy(exact, "221 Bye", 6); /* "221 By", no NUL: ASan flags any read past it */
    assert_int_equal(smtp_reply_format(exact, 6, &out), 221);
    assert_int_equal(out.len, 8);
    assert_memory_equal(out.data, "221 By\r\n", 8);
    free(exact);
    buf_free(&out);
}

/* Client bytes quoted in our replies: one case a line, input (with its length, NULs
 * included), the buffer's size, what comes out. */
static void
test_quote_table(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        size_t len, size;
        const char *want;
    } cases[] = {
        {"FOO", 3, 64, "FOO"},
        {"FOO bar \"baz\" ~!", 16, 64, "FOO bar \"baz\" ~!"},
        {"\x80", 1, 64, "\\x80"},
        {"caf\xc3\xa9", 5, 64, "caf\\xc3\\xa9"},
        {"a\rb\nc\td\x7f", 8, 64, "a\\x0db\\x0ac\\x09d\\x7f"},
        {"a\0b", 3, 64, "a\\x00b"},
        {"back\\slash", 10, 64, "back\\x5cslash"}, /* the escape's own mark, unambiguous */
        {"\xff\x01", 2, 64, "\\xff\\x01"},
        {"", 0, 64, ""},
        /* exactly fits: no "..." */
        {"abcd", 4, 5, "abcd"},
        {"\x80", 1, 5, "\\x80"},
        /* one over: cut, "..." after whole pieces */
        {"abcde", 5, 5, "a..."},
        {"\x80\x80", 2, 8, "\\x80..."},
        {"a\x80", 2, 5, "a..."},
        {"abcdefgh", 8, 8, "abcd..."},
        /* too small even for "..." */
        {"abcde", 5, 3, ""},
        {"abcde", 5, 1, ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char out[64];
        memset(out, '#', sizeof(out));
        size_t n = smtp_reply_quote(cases[i].in, cases[i].len, out, cases[i].size);
        if (strcmp(out, cases[i].want) != 0 || n != strlen(cases[i].want))
            fail_msg("case %zu: got \"%s\" (%zu), want \"%s\"", i, out, n, cases[i].want);
        assert_true(n < cases[i].size);
        for (size_t j = 0; j < n; j++)
            assert_true(out[j] >= 0x20 && out[j] <= 0x7e);
    }
}

/* Every byte value comes out printable, and a long line of them stays within the buffer. */
static void
test_quote_every_byte(void **state)
{
    (void)state;
    char in[256], out[1025];
    for (int i = 0; i < 256; i++)
        in[i] = (char)i;
    assert_int_equal(smtp_reply_quote(in, sizeof(in), out, sizeof(out)), 94 + 4 * 162);
    for (size_t j = 0; out[j] != '\0'; j++)
        assert_true(out[j] >= 0x20 && out[j] <= 0x7e);
    char small[100];
    size_t n = smtp_reply_quote(in, sizeof(in), small, sizeof(small));
    assert_true(n <= sizeof(small) - 1);
    assert_string_equal(small + n - 3, "...");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reply_table),      cmocka_unit_test(test_reply_line_length),
        cmocka_unit_test(test_reply_many_lines), cmocka_unit_test(test_reply_uses_len),
        cmocka_unit_test(test_quote_table),      cmocka_unit_test(test_quote_every_byte),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
