/* Unit tests for the DATA decoder: dot-unstuffing, line-end normalisation, the end of data, the
 * size limit. Every input is decoded whole, split at every byte boundary and fed byte by byte,
 * because the network may cut the stream anywhere. A small reference decoder written line by
 * line (the obvious way, not the fast way) is the oracle for exhaustive and random inputs. The
 * encoder (the relay's direction) is checked the same way and by a round trip through the
 * decoder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "luasmtpd/buf.h"
#include "luasmtpd/smtp_data.h"

struct decode_result {
    struct buf out;
    size_t consumed;
    bool done;
    bool overflow;
    size_t size;
};

static void
result_free(struct decode_result *r)
{
    buf_free(&r->out);
}

/* A readable rendering of bytes for failure messages. */
static const char *
show(const char *s, size_t n)
{
    static char text[4][512];
    static int slot;
    char *t = text[slot++ % 4];
    size_t k = 0;
    for (size_t i = 0; i < n && k < sizeof(text[0]) - 8; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\r')
            k += (size_t)sprintf(t + k, "\\r");
        else if (c == '\n')
            k += (size_t)sprintf(t + k, "\\n");
        else if (c < 0x20 || c >= 0x7f)
            k += (size_t)sprintf(t + k, "\\x%02x", c);
        else
            t[k++] = (char)c;
    }
    t[k] = '\0';
    return t;
}

/* Feeds `in` to a fresh decoder in pieces cut at `cuts` (ascending, may repeat: an empty piece).
 * Checks the decoder's promises on the way: it takes a whole piece unless it finished inside
 * it, and once finished it takes nothing more and writes nothing more. */
static void
decode_pieces(const char *in, size_t len, size_t limit, const size_t *cuts, size_t ncuts,
              struct decode_result *r)
{
    struct smtp_data_decoder d;
    smtp_data_init(&d, limit);
    assert_false(smtp_data_done(&d));
    memset(r, 0, sizeof(*r));
    size_t off = 0;
    for (size_t k = 0; k <= ncuts && !smtp_data_done(&d); k++) {
        size_t next = k < ncuts ? cuts[k] : len;
        size_t got = smtp_data_decode(&d, in + off, next - off, &r->out);
        if (got > next - off)
            fail_msg("\"%s\": consumed %zu of a %zu-byte piece", show(in, len), got, next - off);
        if (got < next - off && !smtp_data_done(&d))
            fail_msg("\"%s\": took %zu of %zu bytes without finishing", show(in, len), got,
                     next - off);
        off += got;
    }
    r->consumed = off;
    r->done = smtp_data_done(&d);
    r->overflow = d.overflow;
    r->size = d.size;
    assert_false(d.failed);
    if (r->done) {
        size_t before = r->out.len;
        assert_int_equal(smtp_data_decode(&d, "x\r\n.\r\n", 6, &r->out), 0);
        assert_int_equal(r->out.len, before);
        assert_true(smtp_data_done(&d));
    }
}

static void
decode_whole(const char *in, size_t len, size_t limit, struct decode_result *r)
{
    decode_pieces(in, len, limit, NULL, 0, r);
}

/* The reference: split the input into lines at CRLF, bare CR or bare LF; a "." line ended by
 * CRLF right after a CRLF (or at the start) is the end; a leading dot is dropped when more
 * follows it; every line goes out with CRLF. An unfinished last line goes out as far as the
 * decoder can know it: its text without a line end, nothing for "" or ".". */
static void
reference_decode(const char *in, size_t len, struct decode_result *r)
{
    memset(r, 0, sizeof(*r));
    bool after_crlf = true;
    size_t i = 0;
    while (i < len) {
        size_t start = i;
        while (i < len && in[i] != '\r' && in[i] != '\n')
            i++;
        const char *line = in + start;
        size_t n = i - start;
        size_t skip = (n > 1 && line[0] == '.') ? 1 : 0;
        if (i == len || (in[i] == '\r' && i + 1 == len)) {
            /* unfinished: a pending CR or dot is not output yet */
            if (!(n == 1 && line[0] == '.'))
                assert_int_equal(buf_append(&r->out, line + skip, n - skip), 0);
            r->size = r->out.len;
            r->consumed = len;
            return;
        }
        bool crlf = in[i] == '\r' && in[i + 1] == '\n';
        size_t eol = crlf ? 2 : 1;
        if (after_crlf && crlf && n == 1 && line[0] == '.') {
            r->done = true;
            r->consumed = i + eol;
            r->size = r->out.len;
            return;
        }
        assert_int_equal(buf_append(&r->out, line + skip, n - skip), 0);
        assert_int_equal(buf_append(&r->out, "\r\n", 2), 0);
        after_crlf = crlf;
        i += eol;
    }
    r->size = r->out.len;
    r->consumed = len;
}

static void
expect_same(const char *what, const char *in, size_t len, const struct decode_result *got,
            const struct decode_result *want)
{
    if (got->out.len != want->out.len ||
        (want->out.len > 0 && memcmp(got->out.data, want->out.data, want->out.len) != 0))
        fail_msg("%s \"%s\": decoded \"%s\", want \"%s\"", what, show(in, len),
                 show(got->out.data, got->out.len), show(want->out.data, want->out.len));
    if (got->consumed != want->consumed)
        fail_msg("%s \"%s\": consumed %zu, want %zu", what, show(in, len), got->consumed,
                 want->consumed);
    if (got->done != want->done)
        fail_msg("%s \"%s\": done %d, want %d", what, show(in, len), got->done, want->done);
    if (got->size != want->size)
        fail_msg("%s \"%s\": size %zu, want %zu", what, show(in, len), got->size, want->size);
    if (got->overflow != want->overflow)
        fail_msg("%s \"%s\": overflow %d, want %d", what, show(in, len), got->overflow,
                 want->overflow);
}

/* Decodes whole, in two pieces at every boundary, in three pieces at every pair of boundaries
 * (short inputs), with an empty piece, and byte by byte; every way must give `want`. */
static void
check_all_splits(const char *in, size_t len, const struct decode_result *want)
{
    struct decode_result got;
    decode_whole(in, len, 0, &got);
    expect_same("whole", in, len, &got, want);
    result_free(&got);

    for (size_t i = 0; i <= len; i++) {
        size_t cuts[2] = {i, i};
        decode_pieces(in, len, 0, cuts, 1, &got);
        expect_same("two pieces", in, len, &got, want);
        result_free(&got);
        decode_pieces(in, len, 0, cuts, 2, &got);
        expect_same("with an empty piece", in, len, &got, want);
        result_free(&got);
        if (len <= 40) {
            for (size_t j = i; j <= len; j++) {
                size_t three[2] = {i, j};
                decode_pieces(in, len, 0, three, 2, &got);
                expect_same("three pieces", in, len, &got, want);
                result_free(&got);
            }
        }
    }

    size_t *each = malloc((len + 1) * sizeof(*each));
    assert_non_null(each);
    for (size_t i = 0; i < len; i++)
        each[i] = i + 1;
    decode_pieces(in, len, 0, each, len, &got);
    expect_same("byte by byte", in, len, &got, want);
    result_free(&got);
    free(each);
}

/* ---- the table ------------------------------------------------------------------------- */

struct data_case {
    const char *in;
    size_t in_len;
    const char *out;
    size_t out_len;
    size_t consumed;
    bool done;
};

/* Byte strings with their lengths, so NUL bytes count. */
#define B(s) s, sizeof(s) - 1

static const struct data_case data_cases[] = {
    {B("a\r\n.\r\n"), B("a\r\n"), 6, true},
    {B(".\r\n"), B(""), 3, true},
    {B(""), B(""), 0, false},
    {B("\r\n.\r\n"), B("\r\n"), 5, true},
    {B("\r\n\r\n.\r\n"), B("\r\n\r\n"), 7, true},
    {B("line one\r\nline two\r\n.\r\n"), B("line one\r\nline two\r\n"), 23, true},
    /* dot-stuffing (RFC 5321 4.5.2): one leading dot goes when more follows it */
    {B("..x\r\n.\r\n"), B(".x\r\n"), 8, true},
    {B("...\r\n.\r\n"), B("..\r\n"), 8, true},
    {B("..\r\n.\r\n"), B(".\r\n"), 7, true},
    {B(".x\r\n.\r\n"), B("x\r\n"), 7, true},
    {B("a\r\n.x\r\n.\r\n"), B("a\r\nx\r\n"), 10, true},
    {B("a\r\n. \r\n.\r\n"), B("a\r\n \r\n"), 10, true},
    {B("a\r\nb.c\r\n.\r\n"), B("a\r\nb.c\r\n"), 11, true},
    {B("a.\r\n.\r\n"), B("a.\r\n"), 7, true},
    /* the end is not there yet: a pending "." or ".\r" is not output */
    {B("a\r\n."), B("a\r\n"), 4, false},
    {B("a\r\n.\r"), B("a\r\n"), 5, false},
    {B("."), B(""), 1, false},
    {B(".\r"), B(""), 2, false},
    {B("a"), B("a"), 1, false},
    {B("a\r"), B("a"), 2, false},
    {B("a\r\n"), B("a\r\n"), 3, false},
    {B("a\r\n.."), B("a\r\n."), 5, false},
    /* bare LF and bare CR become CRLF */
    {B("a\nb\r\n.\r\n"), B("a\r\nb\r\n"), 8, true},
    {B("a\rb\r\n.\r\n"), B("a\r\nb\r\n"), 8, true},
    {B("a\r\rb\r\n.\r\n"), B("a\r\n\r\nb\r\n"), 9, true},
    {B("a\r\r\n.\r\n"), B("a\r\n\r\n"), 7, true},
    {B("a\n\nb\r\n.\r\n"), B("a\r\n\r\nb\r\n"), 9, true},
    {B("a\n\r\n.\r\n"), B("a\r\n\r\n"), 7, true},
    {B("\n\r\n.\r\n"), B("\r\n\r\n"), 6, true},
    /* only CRLF "." CRLF ends the data: every lookalike is kept as a "." line (smuggling) */
    {B("\n.\n"), B("\r\n.\r\n"), 3, false},
    {B("a\r\n.\n"), B("a\r\n.\r\n"), 5, false},
    {B("a\n.\r\n"), B("a\r\n.\r\n"), 5, false},
    {B("a\r.\r\n"), B("a\r\n.\r\n"), 5, false},
    {B("\r.\r"), B("\r\n"), 3, false},
    {B("\r.\rx"), B("\r\n.\r\nx"), 4, false},
    {B("a\r\n.\rb"), B("a\r\n.\r\nb"), 6, false},
    {B("a\r\n.\r.\r\n"), B("a\r\n.\r\n.\r\n"), 8, false},
    {B("\n.\n.\n"), B("\r\n.\r\n.\r\n"), 5, false},
    {B("a\n.\nb\r\n.\r\n"), B("a\r\n.\r\nb\r\n"), 10, true},
    {B("a\n.\r\n.\r\n"), B("a\r\n.\r\n"), 8, true},
    {B("a\r\n.\n.\r\n.\r\n"), B("a\r\n.\r\n.\r\n"), 11, true},
    {B("a\r\n.\r\r\n.\r\n"), B("a\r\n.\r\n\r\n"), 10, true},
    {B("a\r\n.\nMAIL FROM:<x@y>\r\n.\r\n"), B("a\r\n.\r\nMAIL FROM:<x@y>\r\n"), 25, true},
    {B("a\n.\nRCPT TO:<x@y>\n.\r\nQUIT\r\n"), B("a\r\n.\r\nRCPT TO:<x@y>\r\n.\r\nQUIT\r\n"), 27,
     false},
    /* what follows the end is the command reader's */
    {B("a\r\n.\r\nQUIT\r\n"), B("a\r\n"), 6, true},
    {B(".\r\nQUIT\r\n"), B(""), 3, true},
    {B("a\r\n.\r\n.\r\n"), B("a\r\n"), 6, true},
    {B("a\r\n.\r\n\x00\xff"), B("a\r\n"), 6, true},
    /* 8-bit bytes and NUL pass through untouched */
    {B("\x00\xff\x80z\x00\r\n.\r\n"), B("\x00\xff\x80z\x00\r\n"), 10, true},
    {B("\xc3\xa9t\xc3\xa9\r\n.\r\n"), B("\xc3\xa9t\xc3\xa9\r\n"), 10, true},
    {B(".\x00\r\n.\r\n"), B("\x00\r\n"), 7, true},
    {B("\x00.\r\n.\r\n"), B("\x00.\r\n"), 7, true},
    {B(".\xff\r\n.\r\n"), B("\xff\r\n"), 7, true},
};

static void
test_data_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(data_cases) / sizeof(data_cases[0]); i++) {
        const struct data_case *tc = &data_cases[i];
        struct decode_result want = {
            .consumed = tc->consumed, .done = tc->done, .size = tc->out_len};
        assert_int_equal(buf_append(&want.out, tc->out, tc->out_len), 0);
        check_all_splits(tc->in, tc->in_len, &want);

        /* the table and the reference must agree, or one of them is wrong */
        struct decode_result ref;
        reference_decode(tc->in, tc->in_len, &ref);
        expect_same("reference", tc->in, tc->in_len, &ref, &want);
        result_free(&ref);
        result_free(&want);
    }
}

/* Every string of up to 8 bytes over the bytes that matter ('\r', '\n', '.', 'a'), on its own
 * and followed by a terminator and a command, decoded every way and compared with the
 * reference. */
static void
test_data_exhaustive(void **state)
{
    (void)state;
    static const char alphabet[] = {'\r', '\n', '.', 'a'};
    static const char tail[] = "\r\n.\r\nQUIT\r\n";
    char in[8 + sizeof(tail)];
    for (size_t len = 0; len <= 8; len++) {
        size_t total = 1;
        for (size_t k = 0; k < len; k++)
            total *= 4;
        for (size_t code = 0; code < total; code++) {
            size_t c = code;
            for (size_t k = 0; k < len; k++) {
                in[k] = alphabet[c % 4];
                c /= 4;
            }
            for (int with_tail = 0; with_tail < 2; with_tail++) {
                size_t n = len;
                if (with_tail) {
                    memcpy(in + len, tail, sizeof(tail) - 1);
                    n += sizeof(tail) - 1;
                }
                struct decode_result want, got;
                reference_decode(in, n, &want);
                /* all splits for the short ones, a few for the rest: it stays quick */
                if (len <= 6) {
                    check_all_splits(in, n, &want);
                } else {
                    decode_whole(in, n, 0, &got);
                    expect_same("whole", in, n, &got, &want);
                    result_free(&got);
                    for (size_t cut = 0; cut <= n; cut += 3) {
                        decode_pieces(in, n, 0, &cut, 1, &got);
                        expect_same("two pieces", in, n, &got, &want);
                        result_free(&got);
                    }
                }
                if (with_tail && !want.done)
                    fail_msg("\"%s\": the reference missed the terminator", show(in, n));
                result_free(&want);
            }
        }
    }
}

/* What the session's DATA memory budget relies on: no call stores more than
 * SMTP_DATA_DECODED_MAX of its input, whatever state the call before left (every string of up
 * to 8 bytes over the bytes that matter, cut in two everywhere). */
static void
test_data_decoded_max(void **state)
{
    (void)state;
    static const char alphabet[] = {'\r', '\n', '.', 'a'};
    char in[8];
    for (size_t len = 0; len <= 8; len++) {
        size_t total = 1;
        for (size_t k = 0; k < len; k++)
            total *= 4;
        for (size_t code = 0; code < total; code++) {
            size_t c = code;
            for (size_t k = 0; k < len; k++) {
                in[k] = alphabet[c % 4];
                c /= 4;
            }
            for (size_t cut = 0; cut <= len; cut++) {
                struct smtp_data_decoder d;
                struct buf out = {0};
                smtp_data_init(&d, 0);
                size_t used = smtp_data_decode(&d, in, cut, &out);
                if (out.len > SMTP_DATA_DECODED_MAX(cut))
                    fail_msg("\"%s\" cut at %zu: %zu bytes stored for the first %zu", show(in, len),
                             cut, out.len, cut);
                size_t before = out.len;
                if (used == cut)
                    smtp_data_decode(&d, in + cut, len - cut, &out);
                if (out.len - before > SMTP_DATA_DECODED_MAX(len - cut))
                    fail_msg("\"%s\" cut at %zu: %zu bytes stored for the last %zu", show(in, len),
                             cut, out.len - before, len - cut);
                buf_free(&out);
            }
        }
    }
}

/* ---- the size limit -------------------------------------------------------------------- */

/* Under a limit the decoder still finds the end and counts every decoded byte, but stores at
 * most `limit` bytes, and those are the start of the message. */
static void
check_limited(const char *in, size_t len, size_t limit, const struct decode_result *full,
              const struct decode_result *got)
{
    if (got->consumed != full->consumed || got->done != full->done)
        fail_msg("limit %zu \"%s\": consumed %zu done %d, want %zu %d", limit, show(in, len),
                 got->consumed, got->done, full->consumed, full->done);
    if (got->size != full->size)
        fail_msg("limit %zu \"%s\": size %zu, want %zu", limit, show(in, len), got->size,
                 full->size);
    bool over = full->size > limit;
    if (got->overflow != over)
        fail_msg("limit %zu \"%s\": overflow %d, want %d", limit, show(in, len), got->overflow,
                 over);
    if (got->out.len > limit)
        fail_msg("limit %zu \"%s\": stored %zu bytes", limit, show(in, len), got->out.len);
    if (got->out.len > 0 && memcmp(got->out.data, full->out.data, got->out.len) != 0)
        fail_msg("limit %zu \"%s\": stored bytes are not the message's start", limit,
                 show(in, len));
    if (!over && got->out.len != full->out.len)
        fail_msg("limit %zu \"%s\": stored %zu of %zu bytes under the limit", limit, show(in, len),
                 got->out.len, full->out.len);
}

static void
test_data_limit(void **state)
{
    (void)state;
    static const char *const inputs[] = {
        "abc\r\n.\r\n",
        "abcdefgh\r\nline2\r\n.\r\nQUIT\r\n",
        "..x\n..y\r\n.\n\r\n.\r\nRSET\r\n",
        "a\rb\rc\rd\r\n.\r\n",
        "0123456789\r\n0123456789\r\n0123456789\r\n",
    };
    for (size_t i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
        const char *in = inputs[i];
        size_t len = strlen(in);
        struct decode_result full, got;
        decode_whole(in, len, 0, &full);
        assert_false(full.overflow);
        for (size_t limit = 1; limit <= full.size + 2; limit++) {
            decode_whole(in, len, limit, &got);
            check_limited(in, len, limit, &full, &got);
            result_free(&got);
            for (size_t cut = 0; cut <= len; cut++) {
                decode_pieces(in, len, limit, &cut, 1, &got);
                check_limited(in, len, limit, &full, &got);
                result_free(&got);
            }
            size_t each[64];
            assert_true(len <= 64);
            for (size_t k = 0; k < len; k++)
                each[k] = k + 1;
            decode_pieces(in, len, limit, each, len, &got);
            check_limited(in, len, limit, &full, &got);
            result_free(&got);
        }
        result_free(&full);
    }
}

/* The exact boundary: a message of exactly `limit` decoded bytes is fine, one more is not. */
static void
test_data_limit_boundary(void **state)
{
    (void)state;
    struct decode_result r;
    decode_whole(B("abc\r\n.\r\n"), 5, &r);
    assert_false(r.overflow);
    assert_true(r.done);
    assert_int_equal(r.out.len, 5);
    assert_memory_equal(r.out.data, "abc\r\n", 5);
    result_free(&r);

    decode_whole(B("abc\r\n.\r\n"), 4, &r);
    assert_true(r.overflow);
    assert_true(r.done);
    assert_int_equal(r.consumed, 8);
    assert_int_equal(r.size, 5);
    assert_true(r.out.len <= 4);
    result_free(&r);

    /* stuffed dots and the terminator do not count; added CRs do */
    decode_whole(B("..\r\n.\r\n"), 3, &r);
    assert_false(r.overflow);
    assert_true(r.done);
    assert_int_equal(r.size, 3);
    assert_memory_equal(r.out.data, ".\r\n", 3);
    result_free(&r);
    decode_whole(B("a\nb\n.\r\n"), 8, &r);
    assert_true(r.overflow);
    assert_int_equal(r.size, 9); /* "a\r\nb\r\n.\r\n" */
    assert_false(r.done);        /* "\n.\r\n" is no end */
    result_free(&r);
}

/* 0 means no limit, even for a large message. */
static void
test_data_limit_zero(void **state)
{
    (void)state;
    size_t n = 30000 * 100; /* whole 100-byte lines, about 3 MB */
    char *in = malloc(n + 5);
    assert_non_null(in);
    for (size_t i = 0; i < n; i++)
        in[i] = (i % 100 == 98) ? '\r' : (i % 100 == 99) ? '\n' : 'x';
    memcpy(in + n, ".\r\n", 3);
    struct decode_result r;
    decode_whole(in, n + 3, 0, &r);
    assert_true(r.done);
    assert_false(r.overflow);
    assert_int_equal(r.consumed, n + 3);
    assert_int_equal(r.out.len, n);
    assert_memory_equal(r.out.data, in, n);
    result_free(&r);
    free(in);
}

/* ---- large input in random pieces ------------------------------------------------------ */

static uint64_t
next_random(uint64_t *s)
{
    /* xorshift64*: fixed seeds make a failure reproducible */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ULL;
}

static void
test_data_large_random(void **state)
{
    (void)state;
    static const char alphabet[] = "abcdefghij\r\n.\x00\xff ";
    size_t n = 1024 * 1024;
    char *in = malloc(n + 16);
    assert_non_null(in);
    for (uint64_t seed = 1; seed <= 4; seed++) {
        uint64_t s = seed * 0x9e3779b97f4a7c15ULL;
        for (size_t i = 0; i < n; i++) {
            uint64_t r = next_random(&s);
            /* mostly letters, with runs of line ends and dots so every state is visited; the
             * 'a' in place of "\r\n." keeps a stray terminator out most of the time */
            in[i] = (r % 16 == 0) ? alphabet[(r >> 8) % (sizeof(alphabet) - 1)]
                                  : (char)('a' + (r >> 8) % 26);
        }
        memcpy(in + n, "\r\n.\r\nQUIT\r\n", 11);
        size_t len = n + 11;

        struct decode_result want, whole, got;
        reference_decode(in, len, &want);
        assert_true(want.done);
        decode_whole(in, len, 0, &whole);
        expect_same("whole, large", "", 0, &whole, &want);

        size_t cap = 1024, *cuts = malloc(cap * sizeof(*cuts)), ncuts = 0;
        assert_non_null(cuts);
        for (size_t pos = 0;;) {
            uint64_t r = next_random(&s);
            /* pieces of 0 to 8 KiB, small ones often: a read may return a single byte */
            size_t step = (r % 4 == 0) ? (r >> 8) % 4 : (r >> 8) % 8192;
            pos += step;
            if (pos >= len)
                break;
            if (ncuts == cap) {
                cap *= 2;
                cuts = realloc(cuts, cap * sizeof(*cuts));
                assert_non_null(cuts);
            }
            cuts[ncuts++] = pos;
        }
        decode_pieces(in, len, 0, cuts, ncuts, &got);
        expect_same("random pieces, large", "", 0, &got, &want);
        result_free(&got);

        /* and with a limit: the same end, the same count, a bounded store */
        decode_pieces(in, len, 100000, cuts, ncuts, &got);
        check_limited("", 0, 100000, &whole, &got);
        assert_true(got.overflow);
        result_free(&got);

        free(cuts);
        result_free(&whole);
        result_free(&want);
    }
    free(in);
}

/* ---- the encoder (the relay's direction) ----------------------------------------------- */

/* Encodes `in` fed in pieces cut at `cuts`, then ends the message. */
static void
encode_pieces(const char *in, size_t len, const size_t *cuts, size_t ncuts, struct buf *out)
{
    struct smtp_data_encoder e;
    smtp_data_encoder_init(&e);
    size_t off = 0;
    for (size_t k = 0; k <= ncuts; k++) {
        size_t next = k < ncuts ? cuts[k] : len;
        assert_int_equal(smtp_data_encode(&e, in + off, next - off, out), 0);
        off = next;
    }
    assert_int_equal(smtp_data_encode_end(&e, out), 0);
}

/* What a message should look like after a trip through the encoder and the decoder: every CR,
 * LF or CRLF a CRLF, and a last line end added when it was missing. */
static void
normalise(const char *in, size_t len, struct buf *out)
{
    for (size_t i = 0; i < len; i++) {
        if (in[i] == '\r' || in[i] == '\n') {
            assert_int_equal(buf_append(out, "\r\n", 2), 0);
            if (in[i] == '\r' && i + 1 < len && in[i + 1] == '\n')
                i++;
        } else {
            assert_int_equal(buf_append(out, in + i, 1), 0);
        }
    }
    if (len > 0 && in[len - 1] != '\r' && in[len - 1] != '\n')
        assert_int_equal(buf_append(out, "\r\n", 2), 0);
}

static void
expect_bytes(const char *what, const char *in, size_t len, const struct buf *got, const char *want,
             size_t want_len)
{
    if (got->len != want_len || (want_len > 0 && memcmp(got->data, want, want_len) != 0))
        fail_msg("%s \"%s\": got \"%s\", want \"%s\"", what, show(in, len),
                 show(got->data, got->len), show(want, want_len));
}

/* Encodes every way (whole, two pieces, an empty piece, byte by byte) and checks each gives
 * `want`; then decodes `want` and checks it is the whole message, ending exactly at its end. */
static void
check_encode(const char *in, size_t len, const char *want, size_t want_len)
{
    struct buf out = {0};
    encode_pieces(in, len, NULL, 0, &out);
    expect_bytes("encode whole", in, len, &out, want, want_len);
    for (size_t i = 0; i <= len; i++) {
        size_t cuts[2] = {i, i};
        buf_reset(&out);
        encode_pieces(in, len, cuts, 1, &out);
        expect_bytes("encode in two pieces", in, len, &out, want, want_len);
        buf_reset(&out);
        encode_pieces(in, len, cuts, 2, &out);
        expect_bytes("encode with an empty piece", in, len, &out, want, want_len);
    }
    size_t *each = malloc((len + 1) * sizeof(*each));
    assert_non_null(each);
    for (size_t i = 0; i < len; i++)
        each[i] = i + 1;
    buf_reset(&out);
    encode_pieces(in, len, each, len, &out);
    expect_bytes("encode byte by byte", in, len, &out, want, want_len);
    free(each);
    buf_free(&out);

    /* the round trip: the decoder gets the message back and stops at the encoder's end */
    struct decode_result r;
    decode_whole(want, want_len, 0, &r);
    struct buf norm = {0};
    normalise(in, len, &norm);
    expect_bytes("round trip", in, len, &r.out, norm.data, norm.len);
    if (!r.done || r.consumed != want_len)
        fail_msg("round trip \"%s\": done %d consumed %zu of %zu", show(in, len), r.done,
                 r.consumed, want_len);
    buf_free(&norm);
    result_free(&r);
}

struct encode_case {
    const char *in;
    size_t in_len;
    const char *out; /* with the end of the message */
    size_t out_len;
};

static const struct encode_case encode_cases[] = {
    {B(""), B(".\r\n")},
    {B("a"), B("a\r\n.\r\n")},
    {B("a\r\n"), B("a\r\n.\r\n")},
    {B("a\r\nb"), B("a\r\nb\r\n.\r\n")},
    {B("."), B("..\r\n.\r\n")},
    {B(".\r\n"), B("..\r\n.\r\n")},
    {B("..x"), B("...x\r\n.\r\n")},
    {B("a.b\r\n.c"), B("a.b\r\n..c\r\n.\r\n")},
    /* bare line ends become CRLF, so a script cannot end the message early upstream */
    {B("a\n.\n"), B("a\r\n..\r\n.\r\n")},
    {B("a\r.\r"), B("a\r\n..\r\n.\r\n")},
    {B("\r\n.\r\nMAIL FROM:<x@y>\r\n"), B("\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n")},
    {B("a\r"), B("a\r\n.\r\n")},
    {B("\r"), B("\r\n.\r\n")},
    {B("\n"), B("\r\n.\r\n")},
    {B("\r\r\n\n"), B("\r\n\r\n\r\n.\r\n")},
    {B("a\r\r\n"), B("a\r\n\r\n.\r\n")},
    {B("\r."), B("\r\n..\r\n.\r\n")},
    {B("\x00\xffz"), B("\x00\xffz\r\n.\r\n")},
    {B("\x00.\r\n"), B("\x00.\r\n.\r\n")},
};

static void
test_encode_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(encode_cases) / sizeof(encode_cases[0]); i++) {
        const struct encode_case *tc = &encode_cases[i];
        check_encode(tc->in, tc->in_len, tc->out, tc->out_len);
    }
}

/* Every string of up to 7 bytes over '\r', '\n', '.', 'a': encoded every way it gives the same
 * bytes, and decoding those gives the normalised message back. */
static void
test_encode_exhaustive(void **state)
{
    (void)state;
    static const char alphabet[] = {'\r', '\n', '.', 'a'};
    char in[7];
    for (size_t len = 0; len <= 7; len++) {
        size_t total = 1;
        for (size_t k = 0; k < len; k++)
            total *= 4;
        for (size_t code = 0; code < total; code++) {
            size_t c = code;
            for (size_t k = 0; k < len; k++) {
                in[k] = alphabet[c % 4];
                c /= 4;
            }
            struct buf want = {0};
            encode_pieces(in, len, NULL, 0, &want);
            check_encode(in, len, want.data, want.len);
            buf_free(&want);
        }
    }
}

/* A large message in random pieces: the same bytes as encoding it whole, and a round trip
 * through the decoder in random pieces gives it back. */
static void
test_encode_large_random(void **state)
{
    (void)state;
    static const char alphabet[] = "\r\n.\x00\xff";
    size_t n = 1024 * 1024;
    char *in = malloc(n);
    assert_non_null(in);
    uint64_t s = 0x2545f4914f6cdd1dULL;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = next_random(&s);
        in[i] = (r % 8 == 0) ? alphabet[(r >> 8) % (sizeof(alphabet) - 1)]
                             : (char)('a' + (r >> 8) % 26);
    }
    size_t ncuts = 0, cap = 1024, *cuts = malloc(cap * sizeof(*cuts));
    assert_non_null(cuts);
    for (size_t pos = 0;;) {
        uint64_t r = next_random(&s);
        pos += (r % 4 == 0) ? (r >> 8) % 3 : (r >> 8) % 5000;
        if (pos >= n)
            break;
        if (ncuts == cap) {
            cap *= 2;
            cuts = realloc(cuts, cap * sizeof(*cuts));
            assert_non_null(cuts);
        }
        cuts[ncuts++] = pos;
    }
    struct buf whole = {0}, pieces = {0}, norm = {0};
    encode_pieces(in, n, NULL, 0, &whole);
    encode_pieces(in, n, cuts, ncuts, &pieces);
    assert_int_equal(pieces.len, whole.len);
    assert_memory_equal(pieces.data, whole.data, whole.len);

    struct decode_result r;
    decode_pieces(whole.data, whole.len, 0, cuts, ncuts, &r);
    normalise(in, n, &norm);
    assert_true(r.done);
    assert_int_equal(r.consumed, whole.len);
    assert_int_equal(r.out.len, norm.len);
    assert_memory_equal(r.out.data, norm.data, norm.len);
    result_free(&r);
    buf_free(&norm);
    buf_free(&pieces);
    buf_free(&whole);
    free(cuts);
    free(in);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_data_table),          cmocka_unit_test(test_data_exhaustive),
        cmocka_unit_test(test_data_limit),          cmocka_unit_test(test_data_limit_boundary),
        cmocka_unit_test(test_data_limit_zero),     cmocka_unit_test(test_data_large_random),
        cmocka_unit_test(test_encode_table),        cmocka_unit_test(test_encode_exhaustive),
        cmocka_unit_test(test_encode_large_random), cmocka_unit_test(test_data_decoded_max),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
