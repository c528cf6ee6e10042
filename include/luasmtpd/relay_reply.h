/* An upstream's replies as the relay client reads them: the failure kinds, the reply, and a
 * reader that frames reply lines out of an input buffer, checks their codes and cleans their
 * text. No sockets and no timers here: the connection (relay_conn.c) decides what a reply
 * means for the command it answers. */
#ifndef LUASMTPD_RELAY_REPLY_H
#define LUASMTPD_RELAY_REPLY_H

#include <stdbool.h>
#include <stddef.h>

#include "luasmtpd/buf.h"

struct evbuffer;

enum relay_failure {
    RELAY_OK = 0,
    RELAY_CONNECT_FAILED, /* could not resolve or connect */
    RELAY_TIMED_OUT,
    RELAY_TEMPFAIL, /* the server answered 4xx */
    RELAY_PERMFAIL, /* the server answered 5xx */
    RELAY_PROTOCOL, /* a malformed, unsolicited or wrong-class reply, or a close */
    /* The connection failed (timeout, close, nonsense) after the end of the message had left
     * us and before its reply came: the server may have delivered it. The one outcome where a
     * failure may leave a copy behind; callers must say so. */
    RELAY_UNKNOWN,
    /* TLS was asked for and could not be had: STARTTLS not offered, the handshake or the
     * certificate check failed. No reply code: nothing the server refused. */
    RELAY_TLS_FAILED,
    /* AUTH was asked for and could not be tried: no mechanism we speak offered, or the
     * connection is not encrypted and the script did not allow that. (A refused AUTH is a
     * refusal: RELAY_TEMPFAIL or RELAY_PERMFAIL with the server's code.) */
    RELAY_AUTH_FAILED,
};

const char *relay_failure_name(enum relay_failure kind);

/* True for the kinds that mean the connection is gone (no reply, no code), as opposed to a
 * reply (RELAY_OK) or a refusal the server gave (RELAY_TEMPFAIL, RELAY_PERMFAIL). */
bool relay_failure_is_fatal(enum relay_failure kind);

/* Longest line of reply text we hand on (without the code and its separator): short enough
 * that the text, passed on as our own reply even with an enhanced status code put in front
 * of it, stays within RFC 5321's 512 bytes a line (smtp_reply.c's limit). */
#define RELAY_TEXT_LINE_MAX 480
/* Lines of one reply we keep; further lines are read and dropped. */
#define RELAY_REPLY_LINES_MAX 100

/* A server reply. `text` holds the lines' texts joined by "\n", without their codes, each
 * line cut to RELAY_TEXT_LINE_MAX bytes and every byte outside printable ASCII replaced by
 * '?' (a tab by a space). `code` is 0 when there was no reply: then `text` says what failed.
 * `end_of_data` is true for a reply (or the failure) that answers the end of a message, as
 * opposed to a command (DATA itself included). */
struct relay_reply {
    int code;
    char *text;
    bool end_of_data;
};

/* Sorts a reply code into a kind: 2xx/3xx ok, 4xx, 5xx; anything else is a protocol error.
 * It does not know which class a command calls for; the connection checks that. */
enum relay_failure relay_reply_kind(const struct relay_reply *reply);

/* Which reply class counts as success for a command: 2xx for every command we know (MAIL,
 * RCPT, RSET, NOOP, QUIT, ...); 2xx or 3xx for a command the caller passes through. */
enum relay_expect {
    RELAY_EXPECT_2XX,
    RELAY_EXPECT_2XX_3XX,
};

/* Gets the reply to one command, or the failure that stands for it. */
typedef void (*relay_reply_fn)(void *arg, enum relay_failure kind, const struct relay_reply *reply);

enum relay_ext {
    RELAY_EXT_PIPELINING = 1 << 0,
    RELAY_EXT_SIZE = 1 << 1,
    RELAY_EXT_8BITMIME = 1 << 2,
    RELAY_EXT_SMTPUTF8 = 1 << 3,
    RELAY_EXT_STARTTLS = 1 << 4,
    RELAY_EXT_AUTH_PLAIN = 1 << 5, /* AUTH offering PLAIN (RFC 4954, RFC 4616) */
    RELAY_EXT_AUTH_LOGIN = 1 << 6, /* AUTH offering LOGIN */
    RELAY_EXT_DSN = 1 << 7,        /* RFC 3461 */
};

/* The extensions an EHLO (LHLO) reply's text offers, and SIZE's limit in *size_limit (0 when
 * SIZE is absent or has none). */
unsigned relay_reply_extensions(const char *text, size_t *size_limit);

/* A short copy of s[0, n) for a failure message: at most 100 bytes, each byte outside
 * printable ASCII made '?'. Returns out. */
const char *relay_reply_excerpt(char out[101], const char *s, size_t n);

/* Moves the next line of `in` into `line`: 1 when a whole line is there (its line end taken
 * off), 0 when more bytes are needed, -1 when memory ran out. Only the head of a long line
 * is kept (a code, its separator, RELAY_TEXT_LINE_MAX bytes of text); the rest is skipped as
 * it arrives, so a server cannot make us buffer without bound. */
int relay_reply_take_line(struct buf *line, struct evbuffer *in);

/* A reply being read, line by line; zeroed to start. */
struct relay_reply_reader {
    struct buf line; /* the line being read (its head, when it is long) */
    int code;
    unsigned lines; /* of the reply being read */
    struct buf text;
};

enum relay_read {
    RELAY_READ_MORE,      /* no whole reply yet: wait for more input */
    RELAY_READ_REPLY,     /* *reply is one, its text valid until the next call */
    RELAY_READ_MALFORMED, /* rd->line holds the line that is not a reply line */
    RELAY_READ_NOMEM,
};

/* Reads the next reply from `in`; a reply ends at a line whose fourth byte is not '-'. Any
 * three digits from 1 to 5 make a code, the same on every line of a reply; what follows is
 * text, whatever it holds (it is cleaned). After MALFORMED or NOMEM the reader is done. */
enum relay_read relay_reply_read(struct relay_reply_reader *rd, struct evbuffer *in,
                                 struct relay_reply *reply);
/* Whether part of a reply has been read. */
bool relay_reply_reader_busy(const struct relay_reply_reader *rd);
/* Whether anything of a reply is there, read or waiting in `in`: a short excerpt of it in
 * `sample` (see relay_reply_excerpt) when so. */
bool relay_reply_waiting(const struct relay_reply_reader *rd, struct evbuffer *in,
                         char sample[101]);
void relay_reply_reader_free(struct relay_reply_reader *rd);

#endif
