/* Checks a handler's reply text and writes its wire form. A reply is only sent when every line
 * carries the same final code and nothing in it could be read as a second reply or command
 * (no bare CR, no NUL), so a script can never desynchronise the client. */
#include "luasmtpd/smtp_reply.h"

#include <stdbool.h>
#include <string.h>

static bool
is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Checks one line [s, e) against `code` (the first line sets it) and appends it. */
static bool
format_line(const char *s, const char *e, char code[3], bool last, struct buf *out)
{
    size_t n = (size_t)(e - s);
    if (n < 3 || !is_digit(s[0]) || !is_digit(s[1]) || !is_digit(s[2]))
        return false;
    if (code[0] == '\0') {
        if (s[0] != '2' && s[0] != '4' && s[0] != '5')
            return false;
        memcpy(code, s, 3);
    } else if (memcmp(code, s, 3) != 0) {
        return false;
    }
    const char *text = s + 3;
    if (text < e && *text != ' ' && *text != '-')
        return false;
    if (text < e)
        text++;
    for (const char *p = text; p < e; p++) {
        unsigned char c = (unsigned char)*p;
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return false;
    }
    size_t text_len = (size_t)(e - text);
    if (3 + 1 + text_len + 2 > SMTP_REPLY_LINE_MAX)
        return false;
    char sep = last ? ' ' : '-';
    /* The last line is Reply-code [ SP textstring ] CRLF and textstring is never empty
     * (RFC 5321 4.2), so a bare code goes out as "250" CRLF, not with a dangling space. */
    size_t sep_len = last && text_len == 0 ? 0 : 1;
    if (buf_append(out, code, 3) == -1 || buf_append(out, &sep, sep_len) == -1 ||
        buf_append(out, text, text_len) == -1 || buf_append(out, "\r\n", 2) == -1)
        return false;
    return true;
}

int
smtp_reply_format(const char *text, size_t len, struct buf *out)
{
    size_t start_len = out->len;
    char code[3] = {0};
    const char *p = text, *end = text + len;

    /* One trailing line end is how people write a reply; it is not an empty last line. */
    if (end > p && end[-1] == '\n')
        end--;
    if (end > p && end[-1] == '\r')
        end--;
    if (p == end)
        return -1;
    /* Runs until the line with no "\n" after it has been sent as the last one: text ending in
     * an empty line ("250 a\n\n") fails on that empty line instead of leaving "250-a" as a
     * reply that never ends. */
    for (;;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = nl ? nl : end;
        if (line_end > p && line_end[-1] == '\r' && nl != NULL)
            line_end--;
        if (!format_line(p, line_end, code, nl == NULL, out)) {
            out->len = start_len;
            return -1;
        }
        if (nl == NULL)
            break;
        p = nl + 1;
    }
    return (code[0] - '0') * 100 + (code[1] - '0') * 10 + (code[2] - '0');
}

static bool
quote_plain(unsigned char c)
{
    return c >= 0x20 && c <= 0x7e && c != '\\';
}

size_t
smtp_reply_quote(const char *in, size_t len, char *out, size_t size)
{
    static const char hex[] = "0123456789abcdef";
    static const char more[] = "...";
    size_t whole = 0;
    for (size_t i = 0; i < len; i++)
        whole += quote_plain((unsigned char)in[i]) ? 1 : 4;
    /* What does not fit leaves room for "..." after the last whole piece. */
    size_t room = whole < size ? whole : size - 1 >= sizeof(more) - 1 ? size - sizeof(more) : 0;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        bool plain = quote_plain(c);
        if (n + (plain ? 1 : 4) > room)
            break;
        if (plain) {
            out[n++] = (char)c;
        } else {
            out[n++] = '\\';
            out[n++] = 'x';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 15];
        }
    }
    if (whole >= size && size >= sizeof(more)) {
        memcpy(out + n, more, sizeof(more) - 1);
        n += sizeof(more) - 1;
    }
    out[n] = '\0';
    return n;
}
