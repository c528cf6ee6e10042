/* Unit tests for BDAT (RFC 3030): the command's argument, the chunk accounting (what a chunk
 * takes of the bytes at hand, the total against the size limit), and the decoder's chunked
 * mode. The property that matters most: a CRLF-clean message gives the handler the same bytes
 * whether it came by DATA (dot-stuffed, ended by CRLF.CRLF) or by BDAT, cut into chunks
 * anywhere. */
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
#include "luasmtpd/smtp_bdat.h"
#include "luasmtpd/smtp_data.h"
#include "luasmtpd/transaction.h"

static void
test_parse_table(void **state)
{
    (void)state;
    static const struct {
        const char *arg;
        enum smtp_bdat_parse want;
        uint64_t size;
        bool last;
    } cases[] = {
        {"0", SMTP_BDAT_OK, 0, false},
        {"86", SMTP_BDAT_OK, 86, false},
        {"86 LAST", SMTP_BDAT_OK, 86, true},
        {"0 LAST", SMTP_BDAT_OK, 0, true},
        {"12 last", SMTP_BDAT_OK, 12, true},
        {"12 \t LaSt", SMTP_BDAT_OK, 12, true},
        {"007", SMTP_BDAT_OK, 7, false},
        {"4000000000", SMTP_BDAT_OK, 4000000000u, false},
        {"18446744073709551615", SMTP_BDAT_OK, UINT64_MAX, false},
        {"12 LASTX", SMTP_BDAT_BAD_MARKER, 12, false},
        {"12 FIRST", SMTP_BDAT_BAD_MARKER, 12, false},
        {"12 LAST x", SMTP_BDAT_BAD_MARKER, 12, false},
        {"", SMTP_BDAT_BAD_SIZE, 0, false},
        {"x", SMTP_BDAT_BAD_SIZE, 0, false},
        {"-1", SMTP_BDAT_BAD_SIZE, 0, false},
        {"+1", SMTP_BDAT_BAD_SIZE, 0, false},
        {"1e3", SMTP_BDAT_BAD_SIZE, 0, false},
        {"12abc LAST", SMTP_BDAT_BAD_SIZE, 0, false},
        {"LAST", SMTP_BDAT_BAD_SIZE, 0, false},
        {"18446744073709551616", SMTP_BDAT_BAD_SIZE, 0, false},
        {"99999999999999999999999", SMTP_BDAT_BAD_SIZE, 0, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct smtp_bdat_command cmd;
        enum smtp_bdat_parse got = smtp_bdat_parse(cases[i].arg, &cmd);
        if (got != cases[i].want)
            fail_msg("BDAT %s: parsed as %d, want %d", cases[i].arg, got, cases[i].want);
        if (got != SMTP_BDAT_BAD_SIZE && (cmd.size != cases[i].size || cmd.last != cases[i].last))
            fail_msg("BDAT %s: size %llu last %d", cases[i].arg, (unsigned long long)cmd.size,
                     cmd.last);
    }
}

static void
test_take_stops_at_the_chunk_end(void **state)
{
    (void)state;
    struct smtp_bdat b = {0};
    struct smtp_bdat_command cmd = {.size = 10, .last = false};
    assert_true(smtp_bdat_begin(&b, &cmd, 0));
    assert_true(b.in_chunk);
    assert_int_equal(smtp_bdat_take(&b, 4), 4);
    assert_int_equal(smtp_bdat_take(&b, 100), 6); /* the rest is the next command's */
    assert_int_equal(b.left, 0);
    assert_int_equal(smtp_bdat_take(&b, 100), 0);
    struct smtp_bdat was = smtp_bdat_end(&b);
    assert_int_equal(was.command.size, 10);
    assert_false(was.command.last);
    assert_false(b.in_chunk);
    assert_int_equal(b.chunks, 1);
    assert_int_equal(b.total, 10);
}

static void
test_limit_across_chunks(void **state)
{
    (void)state;
    struct smtp_bdat b = {0};
    struct smtp_bdat_command three = {.size = 3, .last = false};
    struct smtp_bdat_command four_last = {.size = 4, .last = true};
    assert_true(smtp_bdat_begin(&b, &three, 10)); /* 3 */
    smtp_bdat_end(&b);
    assert_true(smtp_bdat_begin(&b, &three, 10)); /* 6 */
    smtp_bdat_end(&b);
    assert_true(smtp_bdat_begin(&b, &four_last, 10)); /* 10: at the limit is within it */
    smtp_bdat_end(&b);
    assert_false(smtp_bdat_begin(&b, &three, 10)); /* 13 */
    assert_int_equal(b.chunks, 4);
    /* A size no one can send still adds up without wrapping round to a small total. */
    struct smtp_bdat huge = {0};
    struct smtp_bdat_command max = {.size = UINT64_MAX, .last = false};
    assert_true(smtp_bdat_begin(&huge, &max, 0));
    smtp_bdat_end(&huge);
    assert_false(smtp_bdat_begin(&huge, &max, (size_t)1 << 40));
    assert_int_equal(huge.total, UINT64_MAX);
}

static void
test_discard_keeps_the_transaction_chunks(void **state)
{
    (void)state;
    struct smtp_bdat b = {0};
    smtp_bdat_begin_discard(&b, 5, "503 x\r\n");
    assert_true(b.in_chunk);
    assert_true(b.discard);
    assert_int_equal(smtp_bdat_take(&b, 7), 5);
    struct smtp_bdat was = smtp_bdat_end(&b);
    assert_true(was.discard);
    assert_string_equal(was.reply, "503 x\r\n");
    assert_false(b.discard);
    assert_null(b.reply);
    assert_int_equal(b.chunks, 0);
    assert_int_equal(b.total, 0);
}

/* Decodes `msg` as BDAT chunks cut at the offsets in `cuts` (ascending), each chunk fed in
 * pieces of `step` bytes, and ends the message. */
static void
decode_chunked(const char *msg, size_t len, const size_t *cuts, size_t n_cuts, size_t step,
               struct buf *out)
{
    struct smtp_data_decoder d;
    smtp_data_init(&d, 0);
    d.chunked = true;
    size_t from = 0;
    for (size_t c = 0; c <= n_cuts; c++) {
        size_t to = c < n_cuts ? cuts[c] : len;
        for (size_t off = from; off < to;) {
            size_t piece = to - off < step ? to - off : step;
            size_t took = smtp_data_decode(&d, msg + off, piece, out);
            assert_int_equal(took, piece); /* nothing in the bytes ends a chunked message */
            off += took;
        }
        from = to;
    }
    assert_false(smtp_data_done(&d));
    smtp_data_end(&d, out);
    assert_true(smtp_data_done(&d));
}

/* A byte string with its length, NULs included. */
#define BYTES(text) text, sizeof(text) - 1

static void
test_chunked_table(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        size_t in_len;
        const char *want;
        size_t want_len;
    } cases[] = {
        {BYTES(""), BYTES("")},
        {BYTES("a\r\n"), BYTES("a\r\n")},
        {BYTES(".\r\n"), BYTES(".\r\n")},     /* a lone dot ends nothing */
        {BYTES("..x\r\n"), BYTES("..x\r\n")}, /* and is never unstuffed */
        {BYTES("a\r\n.\r\nb\r\n"), BYTES("a\r\n.\r\nb\r\n")},
        {BYTES("no end"), BYTES("no end\r\n")}, /* the last line gets its CRLF */
        {BYTES("cr at end\r"), BYTES("cr at end\r\n")},
        {BYTES("bare\nlf\n"), BYTES("bare\r\nlf\r\n")},
        {BYTES("bare\rcr\r"), BYTES("bare\r\ncr\r\n")},
        {BYTES("\n.\n"), BYTES("\r\n.\r\n")},
        {BYTES("x\r\r\n"), BYTES("x\r\n\r\n")},
        {BYTES("nul\0byte\r\n"), BYTES("nul\0byte\r\n")},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len = cases[i].in_len;
        /* Cut into two chunks at every offset, each fed whole and byte by byte. */
        for (size_t cut = 0; cut <= len; cut++) {
            const size_t steps[] = {1, len + 1};
            for (size_t k = 0; k < 2; k++) {
                struct buf out = {0};
                decode_chunked(cases[i].in, len, &cut, 1, steps[k], &out);
                if (out.len != cases[i].want_len ||
                    memcmp(out.data ? out.data : "", cases[i].want, out.len) != 0)
                    fail_msg("case %zu cut %zu step %zu: got %zu bytes", i, cut, steps[k], out.len);
                buf_free(&out);
            }
        }
    }
}

/* The DATA form of a CRLF-clean message: dot-stuffed, then CRLF.CRLF. */
static void
as_data(const char *msg, size_t len, struct buf *wire)
{
    bool bol = true;
    for (size_t i = 0; i < len; i++) {
        if (bol && msg[i] == '.')
            buf_append(wire, ".", 1);
        buf_append(wire, msg + i, 1);
        bol = msg[i] == '\n';
    }
    buf_append(wire, ".\r\n", 3);
}

static void
test_same_data_as_data(void **state)
{
    (void)state;
    /* Random CRLF-clean messages from a small alphabet rich in dots and line ends. */
    static const char *const atoms[] = {"\r\n", ".", "..", "a", "Subject: x", " ", "\r\n."};
    srand(3030);
    for (int round = 0; round < 400; round++) {
        struct buf msg = {0};
        int atoms_n = rand() % 20;
        for (int k = 0; k < atoms_n; k++)
            buf_append_str(&msg, atoms[rand() % (int)(sizeof(atoms) / sizeof(atoms[0]))]);
        if (msg.len < 2 || memcmp(msg.data + msg.len - 2, "\r\n", 2) != 0)
            buf_append_str(&msg, "\r\n"); /* DATA can only carry whole lines */
        struct buf wire = {0}, by_data = {0}, by_bdat = {0};
        as_data(msg.data, msg.len, &wire);
        struct smtp_data_decoder d;
        smtp_data_init(&d, 0);
        assert_int_equal(smtp_data_decode(&d, wire.data, wire.len, &by_data), wire.len);
        assert_true(smtp_data_done(&d));
        size_t cuts[3];
        for (int c = 0; c < 3; c++)
            cuts[c] = (size_t)rand() % (msg.len + 1);
        for (int a = 0; a < 3; a++) /* ascending */
            for (int b = a + 1; b < 3; b++)
                if (cuts[b] < cuts[a]) {
                    size_t t = cuts[a];
                    cuts[a] = cuts[b];
                    cuts[b] = t;
                }
        decode_chunked(msg.data, msg.len, cuts, 3, 1 + (size_t)rand() % 5, &by_bdat);
        assert_int_equal(by_bdat.len, by_data.len);
        assert_memory_equal(by_bdat.data, by_data.data, by_data.len);
        assert_int_equal(by_bdat.len, msg.len);
        buf_free(&msg);
        buf_free(&wire);
        buf_free(&by_data);
        buf_free(&by_bdat);
    }
}

static void
test_chunked_limit(void **state)
{
    (void)state;
    struct smtp_data_decoder d;
    struct buf out = {0};
    smtp_data_init(&d, 5);
    d.chunked = true;
    smtp_data_decode(&d, "abc\r\n", 5, &out);
    assert_false(d.overflow);
    smtp_data_end(&d, &out); /* complete lines: nothing added */
    assert_false(d.overflow);
    buf_free(&out);
    smtp_data_init(&d, 5);
    d.chunked = true;
    smtp_data_decode(&d, "abcde", 5, &out);
    assert_false(d.overflow);
    smtp_data_end(&d, &out); /* the CRLF added at the end counts too */
    assert_true(d.overflow);
    buf_free(&out);
}

/* The transaction feeds a chunk no further than its end, and drops a refused one. */
static void
test_tx_feed_in_chunks(void **state)
{
    (void)state;
    size_t in_use = 0;
    struct transaction tx = {0};
    tx_init(&tx, &in_use);
    tx_begin_data(&tx, 0);
    tx.decoder.chunked = true;
    struct smtp_bdat_command cmd = {.size = 4, .last = true};
    assert_true(smtp_bdat_begin(&tx.bdat, &cmd, 0));
    assert_false(tx_piece_read(&tx));
    assert_int_equal(tx_feed(&tx, "ab\r\nQUIT\r\n", 10), 4);
    assert_true(tx_piece_read(&tx));
    assert_true(tx_chunked(&tx));
    smtp_bdat_end(&tx.bdat);
    assert_int_equal(tx.message.len, 4);
    assert_memory_equal(tx.message.data, "ab\r\n", 4);
    tx_reset(&tx);
    assert_false(tx_chunked(&tx));
    assert_null(tx.message.data);

    tx_begin_discard(&tx, 6, "503 x\r\n");
    assert_int_equal(tx_feed(&tx, "xxxxxxNOOP\r\n", 12), 6);
    assert_true(tx_piece_read(&tx));
    assert_int_equal(tx.decoder.size, 6); /* seen, for the rate */
    assert_null(tx.message.data);         /* never stored */
    assert_int_equal(in_use, 0);
    assert_false(tx_chunked(&tx));
    tx_reset(&tx);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_table),
        cmocka_unit_test(test_take_stops_at_the_chunk_end),
        cmocka_unit_test(test_limit_across_chunks),
        cmocka_unit_test(test_discard_keeps_the_transaction_chunks),
        cmocka_unit_test(test_chunked_table),
        cmocka_unit_test(test_same_data_as_data),
        cmocka_unit_test(test_chunked_limit),
        cmocka_unit_test(test_tx_feed_in_chunks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
