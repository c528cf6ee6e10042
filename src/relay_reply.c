/* Reading an upstream's replies (see relay_reply.h). Replies are trusted for nothing: a line
 * that is not a reply line is reported, never guessed at, and text is cleaned before anyone
 * can pass it on as our own reply. */
#include "luasmtpd/relay_reply.h"

#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* What we keep of a reply line: the code, its separator, the longest text we hand on and a
 * CR. The rest of a longer line is skipped as it arrives, so a server cannot make us buffer
 * without bound, and a 2xx with a long text is still a 2xx. */
#define REPLY_LINE_KEEP (4 + RELAY_TEXT_LINE_MAX + 1)

const char *
relay_failure_name(enum relay_failure kind)
{
    switch (kind) {
    case RELAY_OK:
        return "ok";
    case RELAY_CONNECT_FAILED:
        return "could not connect";
    case RELAY_TIMED_OUT:
        return "timed out";
    case RELAY_TEMPFAIL:
        return "refused temporarily";
    case RELAY_PERMFAIL:
        return "refused permanently";
    case RELAY_PROTOCOL:
        return "protocol error";
    case RELAY_UNKNOWN:
        return "upstream's answer after the message was lost: it may have been delivered";
    case RELAY_TLS_FAILED:
        return "TLS failed";
    case RELAY_AUTH_FAILED:
        return "authentication failed";
    }
    return "?";
}

bool
relay_failure_is_fatal(enum relay_failure kind)
{
    return kind != RELAY_OK && kind != RELAY_TEMPFAIL && kind != RELAY_PERMFAIL;
}

enum relay_failure
relay_reply_kind(const struct relay_reply *reply)
{
    if (reply->code >= 200 && reply->code < 400)
        return RELAY_OK;
    if (reply->code >= 400 && reply->code < 500)
        return RELAY_TEMPFAIL;
    if (reply->code >= 500 && reply->code < 600)
        return RELAY_PERMFAIL;
    return RELAY_PROTOCOL;
}

/* The mechanisms of an AUTH keyword's parameters, "PLAIN LOGIN CRAM-MD5" (RFC 4954 3); the
 * "AUTH=LOGIN PLAIN" some old servers also send takes the same. */
static unsigned
relay_reply_auth_mechanisms(const char *s, size_t n)
{
    unsigned ext = 0;
    size_t i = 0;
    while (i < n) {
        size_t start = i;
        while (i < n && s[i] != ' ')
            i++;
        if (i - start == 5 && strncasecmp(s + start, "PLAIN", 5) == 0)
            ext |= RELAY_EXT_AUTH_PLAIN;
        else if (i - start == 5 && strncasecmp(s + start, "LOGIN", 5) == 0)
            ext |= RELAY_EXT_AUTH_LOGIN;
        i++;
    }
    return ext;
}

/* The first line is the server's name; each further line one extension keyword, maybe with
 * parameters (RFC 5321 4.1.1.1). Keywords are matched whole: "8BITMIMEX" is no 8BITMIME. */
unsigned
relay_reply_extensions(const char *text, size_t *size_limit)
{
    unsigned ext = 0;
    *size_limit = 0;
    const char *p = strchr(text, '\n');
    while (p != NULL) {
        const char *line = p + 1;
        p = strchr(line, '\n');
        size_t n = p ? (size_t)(p - line) : strlen(line);
        size_t word = 0;
        while (word < n && line[word] != ' ')
            word++;
        if (word == 10 && strncasecmp(line, "PIPELINING", 10) == 0) {
            ext |= RELAY_EXT_PIPELINING;
        } else if (word == 8 && strncasecmp(line, "8BITMIME", 8) == 0) {
            ext |= RELAY_EXT_8BITMIME;
        } else if (word == 8 && strncasecmp(line, "SMTPUTF8", 8) == 0) {
            ext |= RELAY_EXT_SMTPUTF8;
        } else if (word == 4 && strncasecmp(line, "SIZE", 4) == 0) {
            ext |= RELAY_EXT_SIZE;
            *size_limit = n > 5 ? strtoul(line + 5, NULL, 10) : 0;
        } else if (word == 8 && strncasecmp(line, "STARTTLS", 8) == 0) {
            ext |= RELAY_EXT_STARTTLS;
        } else if (word == 3 && strncasecmp(line, "DSN", 3) == 0) {
            ext |= RELAY_EXT_DSN;
        } else if (word >= 4 && strncasecmp(line, "AUTH", 4) == 0 &&
                   (word == 4 || line[4] == '=')) {
            ext |= relay_reply_auth_mechanisms(line + 5, n > 5 ? n - 5 : 0);
        }
    }
    return ext;
}

/* Appends [s, e) as reply text we can hand on: printable ASCII kept, a tab made a space,
 * every other byte '?', and cut at RELAY_TEXT_LINE_MAX bytes. */
static int
relay_reply_append_clean(struct buf *out, const char *s, const char *e)
{
    if (e - s > RELAY_TEXT_LINE_MAX)
        e = s + RELAY_TEXT_LINE_MAX;
    size_t n = (size_t)(e - s);
    if (buf_reserve(out, n + 1) == -1)
        return -1;
    for (const char *p = s; p < e; p++) {
        unsigned char c = (unsigned char)*p;
        out->data[out->len++] = c == '\t' ? ' ' : (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    out->data[out->len] = '\0';
    return 0;
}

const char *
relay_reply_excerpt(char out[101], const char *s, size_t n)
{
    size_t m = n > 100 ? 100 : n;
    for (size_t i = 0; i < m; i++) {
        unsigned char c = (unsigned char)s[i];
        out[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    out[m] = '\0';
    return out;
}

int
relay_reply_take_line(struct buf *line, struct evbuffer *in)
{
    size_t eol_len = 0;
    struct evbuffer_ptr eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
    size_t avail = eol.pos < 0 ? evbuffer_get_length(in) : (size_t)eol.pos;
    size_t room = REPLY_LINE_KEEP - line->len;
    size_t take = avail < room ? avail : room;
    if (take > 0) {
        if (buf_reserve(line, take) == -1)
            return -1;
        evbuffer_remove(in, line->data + line->len, take);
        line->len += take;
    }
    evbuffer_drain(in, avail - take); /* the part of a long line we do not keep */
    if (eol.pos < 0)
        return 0;
    evbuffer_drain(in, eol_len);
    /* A CR that came in one read and its LF in the next stays on the line: take it off. */
    if (line->len > 0 && line->data[line->len - 1] == '\r')
        line->len--;
    return 1;
}

static bool
relay_reply_is_digit(char c)
{
    return c >= '0' && c <= '9';
}

enum relay_read
relay_reply_read(struct relay_reply_reader *rd, struct evbuffer *in, struct relay_reply *reply)
{
    for (;;) {
        int took = relay_reply_take_line(&rd->line, in);
        if (took <= 0)
            return took == 0 ? RELAY_READ_MORE : RELAY_READ_NOMEM;
        const char *line = rd->line.data;
        size_t n = rd->line.len;
        bool ok = n >= 3 && line[0] >= '1' && line[0] <= '5' && relay_reply_is_digit(line[1]) &&
                  relay_reply_is_digit(line[2]);
        int code = ok ? (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0') : 0;
        if (ok && rd->lines > 0 && code != rd->code)
            ok = false;
        if (!ok)
            return RELAY_READ_MALFORMED;
        if (rd->lines == 0) {
            buf_reset(&rd->text); /* the last reply's text was valid until this call */
            if (rd->text.data != NULL)
                rd->text.data[0] = '\0';
        }
        rd->code = code;
        bool last = n == 3 || line[3] != '-';
        if (++rd->lines <= RELAY_REPLY_LINES_MAX) {
            const char *text = n > 3 && (line[3] == ' ' || line[3] == '-') ? line + 4 : line + 3;
            if ((rd->lines > 1 && buf_append(&rd->text, "\n", 1) == -1) ||
                relay_reply_append_clean(&rd->text, text, line + n) == -1)
                return RELAY_READ_NOMEM;
        }
        rd->line.len = 0;
        if (!last)
            continue;
        *reply = (struct relay_reply){.code = code, .text = rd->text.data};
        rd->lines = 0;
        return RELAY_READ_REPLY;
    }
}

bool
relay_reply_reader_busy(const struct relay_reply_reader *rd)
{
    return rd->line.len != 0 || rd->lines != 0;
}

bool
relay_reply_waiting(const struct relay_reply_reader *rd, struct evbuffer *in, char sample[101])
{
    size_t n = evbuffer_get_length(in);
    if (!relay_reply_reader_busy(rd) && n == 0)
        return false;
    if (rd->line.len != 0) {
        relay_reply_excerpt(sample, rd->line.data, rd->line.len);
    } else {
        size_t m = n > 100 ? 100 : n;
        relay_reply_excerpt(sample, m ? (const char *)evbuffer_pullup(in, (ssize_t)m) : "", m);
    }
    return true;
}

void
relay_reply_reader_free(struct relay_reply_reader *rd)
{
    buf_free(&rd->line);
    buf_free(&rd->text);
}
