/* Unit tests for the growable buffer: appends of every size keep every byte, printf appends
 * and leaves a NUL after the text, growth is amortised (the capacity doubles), and reset and
 * free leave a buffer that works again. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "luasmtpd/buf.h"

static void
test_append(void **state)
{
    (void)state;
    struct buf b = {0};
    assert_int_equal(buf_append(&b, "abc", 3), 0);
    assert_int_equal(b.len, 3);
    assert_true(b.cap >= 3);
    assert_memory_equal(b.data, "abc", 3);
    assert_int_equal(buf_append(&b, "\0\r\n\xff", 4), 0);
    assert_int_equal(b.len, 7);
    assert_memory_equal(b.data, "abc\0\r\n\xff", 7);
    assert_int_equal(buf_append_str(&b, "xyz"), 0);
    assert_int_equal(b.len, 10);
    assert_memory_equal(b.data, "abc\0\r\n\xffxyz", 10);
    /* nothing to add is not an error and changes nothing */
    assert_int_equal(buf_append(&b, NULL, 0), 0);
    assert_int_equal(buf_append_str(&b, ""), 0);
    assert_int_equal(b.len, 10);
    buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
}

static void
test_empty(void **state)
{
    (void)state;
    struct buf b = {0};
    assert_int_equal(buf_append(&b, "", 0), 0);
    assert_int_equal(b.len, 0);
    assert_int_equal(buf_reserve(&b, 0), 0);
    assert_int_equal(b.len, 0);
    buf_free(&b); /* freeing a buffer that never grew is fine */
    buf_free(&b); /* and freeing twice is too */
    assert_null(b.data);
}

static void
test_printf(void **state)
{
    (void)state;
    struct buf b = {0};
    assert_int_equal(buf_printf(&b, "%d %s", 250, "OK"), 0);
    assert_int_equal(b.len, 6);
    assert_memory_equal(b.data, "250 OK", 6);
    /* room for the NUL is reserved and it is written, but not counted */
    assert_true(b.cap > b.len);
    assert_int_equal(b.data[b.len], '\0');
    assert_int_equal(buf_printf(&b, "-%05.1f|%x|%c", 2.25, 255u, 'z'), 0);
    assert_string_equal(b.data, "250 OK-002.2|ff|z");
    assert_int_equal(b.len, strlen("250 OK-002.2|ff|z"));
    /* an empty format appends nothing */
    size_t before = b.len;
    assert_int_equal(buf_printf(&b, "%s", ""), 0);
    assert_int_equal(b.len, before);
    assert_int_equal(b.data[b.len], '\0');
    /* appending after printf overwrites the NUL, not the text */
    assert_int_equal(buf_append(&b, "!", 1), 0);
    assert_memory_equal(b.data, "250 OK-002.2|ff|z!", 18);
    buf_free(&b);
}

/* A printf much longer than the capacity grows the buffer once and fills it exactly. */
static void
test_printf_large(void **state)
{
    (void)state;
    struct buf b = {0};
    assert_int_equal(buf_append_str(&b, "head:"), 0);
    char *big = malloc(100001);
    assert_non_null(big);
    memset(big, 'q', 100000);
    big[100000] = '\0';
    assert_int_equal(buf_printf(&b, "%s:%s", big, "tail"), 0);
    assert_int_equal(b.len, 5 + 100000 + 5);
    assert_memory_equal(b.data, "head:", 5);
    assert_memory_equal(b.data + 5, big, 100000);
    assert_memory_equal(b.data + 100005, ":tail", 5);
    assert_int_equal(b.data[b.len], '\0');
    free(big);
    buf_free(&b);
}

/* Many small appends: every byte is where it belongs, and the capacity only ever doubles, so
 * n bytes cost O(n) copying and O(log n) reallocations. */
static void
test_growth(void **state)
{
    (void)state;
    struct buf b = {0};
    size_t total = 0, growths = 0, last_cap = 0;
    for (size_t i = 0; i < 100000; i++) {
        char piece[8];
        size_t n = i % 7 + 1;
        for (size_t k = 0; k < n; k++)
            piece[k] = (char)('a' + (total + k) % 26);
        assert_int_equal(buf_append(&b, piece, n), 0);
        total += n;
        assert_int_equal(b.len, total);
        assert_true(b.cap >= b.len);
        if (b.cap != last_cap) {
            if (last_cap != 0 && b.cap < 2 * last_cap)
                fail_msg("capacity grew from %zu to %zu: not geometric", last_cap, b.cap);
            last_cap = b.cap;
            growths++;
        }
    }
    for (size_t i = 0; i < total; i++)
        if (b.data[i] != (char)('a' + i % 26))
            fail_msg("byte %zu is '%c', want '%c'", i, b.data[i], (char)('a' + i % 26));
    /* 400000 bytes from 256: about 11 doublings */
    assert_true(growths <= 16);
    buf_free(&b);
}

static void
test_reserve(void **state)
{
    (void)state;
    struct buf b = {0};
    assert_int_equal(buf_reserve(&b, 1000), 0);
    assert_true(b.cap >= 1000);
    assert_int_equal(b.len, 0);
    char *data = b.data;
    size_t cap = b.cap;
    /* with room reserved, appends up to it do not move the data */
    for (size_t i = 0; i < 1000; i++)
        assert_int_equal(buf_append(&b, "x", 1), 0);
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.cap, cap);
    assert_int_equal(b.len, 1000);

    /* a request too large to ever satisfy fails cleanly with ENOMEM and leaves the buffer */
    errno = 0;
    assert_int_equal(buf_reserve(&b, SIZE_MAX), -1);
    assert_int_equal(errno, ENOMEM);
    assert_int_equal(buf_reserve(&b, SIZE_MAX - b.len), -1);
    assert_int_equal(buf_reserve(&b, SIZE_MAX / 2), -1);
    assert_int_equal(b.len, 1000);
    assert_int_equal(b.cap, cap);
    assert_ptr_equal(b.data, data);
    assert_int_equal(buf_append(&b, "y", 1), 0);
    assert_int_equal(b.data[1000], 'y');
    buf_free(&b);
}

static void
test_reset(void **state)
{
    (void)state;
    struct buf b = {0};
    assert_int_equal(buf_append_str(&b, "first message"), 0);
    size_t cap = b.cap;
    buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, cap); /* kept for the next message */
    assert_int_equal(buf_append_str(&b, "second"), 0);
    assert_int_equal(b.len, 6);
    assert_memory_equal(b.data, "second", 6);
    buf_free(&b);
    /* usable again after free */
    assert_int_equal(buf_printf(&b, "%s", "third"), 0);
    assert_string_equal(b.data, "third");
    buf_free(&b);
}

/* An exact capacity: what the DATA budget charges is what is allocated. */
static void
test_set_capacity(void **state)
{
    (void)state;
    struct buf b = {0};
    assert_int_equal(buf_set_capacity(&b, 1000), 0);
    assert_int_equal(b.cap, 1000);
    assert_int_equal(b.len, 0);
    assert_int_equal(buf_append(&b, "abcdef", 6), 0);
    assert_int_equal(b.cap, 1000); /* room was there: no growth */
    assert_int_equal(buf_set_capacity(&b, 1250), 0);
    assert_int_equal(b.cap, 1250);
    assert_memory_equal(b.data, "abcdef", 6);
    /* never below the length: the buffer is left as it was */
    errno = 0;
    assert_int_equal(buf_set_capacity(&b, 5), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(b.cap, 1250);
    assert_int_equal(buf_set_capacity(&b, 6), 0);
    assert_int_equal(b.cap, 6);
    assert_memory_equal(b.data, "abcdef", 6);
    buf_reset(&b);
    assert_int_equal(buf_set_capacity(&b, 0), 0);
    assert_null(b.data);
    assert_int_equal(b.cap, 0);
    buf_free(&b);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append), cmocka_unit_test(test_empty),
        cmocka_unit_test(test_printf), cmocka_unit_test(test_printf_large),
        cmocka_unit_test(test_growth), cmocka_unit_test(test_reserve),
        cmocka_unit_test(test_reset),  cmocka_unit_test(test_set_capacity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
