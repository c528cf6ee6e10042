/* Fuzzes the DATA decoder and encoder. The first byte picks where the input is split (the
 * decoder must not care) and a size limit. Checks: whole and split decoding agree; the output
 * holds CR and LF only as CRLF pairs; the limit holds; and encoding the decoded message, then
 * decoding that, gives the message back: what we relay is what we received. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "luasmtpd/smtp_data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t
decode(const char *in, size_t len, size_t cut, size_t limit, struct buf *out, bool *done,
       struct smtp_data_decoder *d)
{
    smtp_data_init(d, limit);
    size_t used = smtp_data_decode(d, in, cut, out);
    if (!smtp_data_done(d))
        used += smtp_data_decode(d, in + cut, len - cut, out);
    *done = smtp_data_done(d);
    return used;
}

static void
check_line_ends(const struct buf *b)
{
    for (size_t i = 0; i < b->len; i++) {
        if (b->data[i] == '\r' && (i + 1 == b->len || b->data[i + 1] != '\n'))
            abort();
        if (b->data[i] == '\n' && (i == 0 || b->data[i - 1] != '\r'))
            abort();
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 1 << 16)
        return 0;
    const char *in = (const char *)data + 1;
    size_t len = size - 1;
    size_t cut = len ? data[0] % (len + 1) : 0;
    size_t limit = (data[0] & 0x80) ? (size_t)(data[0] & 0x3f) * 8 : 0;

    struct buf whole = {0}, split = {0};
    struct smtp_data_decoder d1, d2;
    bool done1, done2;
    size_t used1 = decode(in, len, len, limit, &whole, &done1, &d1);
    size_t used2 = decode(in, len, cut, limit, &split, &done2, &d2);
    if (used1 != used2 || done1 != done2 || d1.overflow != d2.overflow || d1.size != d2.size ||
        used1 > len)
        abort();
    /* Over the limit what was stored is thrown away (552), so only then may it differ. */
    if (!d1.overflow &&
        (whole.len != split.len || (whole.len && memcmp(whole.data, split.data, whole.len) != 0)))
        abort();
    if (limit && whole.len > limit)
        abort();
    check_line_ends(&whole);

    if (!d1.overflow) {
        struct smtp_data_encoder e;
        struct buf wire = {0}, back = {0};
        smtp_data_encoder_init(&e);
        smtp_data_encode(&e, whole.data ? whole.data : "", whole.len, &wire);
        smtp_data_encode_end(&e, &wire);
        struct smtp_data_decoder d3;
        smtp_data_init(&d3, 0);
        size_t used3 = smtp_data_decode(&d3, wire.data, wire.len, &back);
        /* The decoded message always ends a line, except an empty one. */
        if (!smtp_data_done(&d3) || used3 != wire.len || back.len != whole.len ||
            (whole.len && memcmp(back.data, whole.data, whole.len) != 0)) {
            if (!(whole.len > 0 && whole.data[whole.len - 1] != '\n'))
                abort();
        }
        buf_free(&wire);
        buf_free(&back);
    }
    buf_free(&whole);
    buf_free(&split);
    return 0;
}
