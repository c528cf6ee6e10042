/* What a message is answered after its final dot: one reply (SMTP, RFC 5321 4.1.1.4), or on an
 * LMTP listener one reply per recipient accepted, in RCPT order (RFC 2033 4.2); built from the
 * handler's one reply or its replies by recipient. Also which verbs belong to the other protocol.
 * Pure: reply texts in, wire bytes out; the session sends them. */
#ifndef LUASMTPD_LMTP_H
#define LUASMTPD_LMTP_H

#include <stdbool.h>
#include <stddef.h>

#include "luasmtpd/buf.h"
#include "luasmtpd/envelope.h"
#include "luasmtpd/smtp_parse.h"

/* What a recipient the handler did not name gets, and what nil answers. */
#define LMTP_DEFAULT_REPLY "250 2.0.0 OK"
/* The codes of the replies, for the log line: "250" (SMTP), "250 550 250" (LMTP). */
#define LMTP_CODES_MAX 64

struct lmtp_answer {
    struct buf wire; /* whole reply lines, CRLF included, in the order they are sent */
    size_t accepted; /* recipients told 2xx */
    bool mixed;      /* SMTP only: the handler took some recipients and refused others */
    char codes[LMTP_CODES_MAX];
};

/* One reply `text` (as a handler gives it: see smtp_reply_format) for every one of the n
 * recipients: n copies over LMTP, one over SMTP. The message was taken or refused as a whole.
 * -1, leaving `a` as it was: the text is no valid reply (or memory ran out). */
int lmtp_answer_all(struct lmtp_answer *a, bool lmtp, size_t n, const char *text, size_t len);

/* The handler's replies by recipient, `replies` in RCPT order ("": one it did not name, which
 * gets LMTP_DEFAULT_REPLY). Over LMTP each recipient its own. SMTP has one reply for the
 * message, and a 2xx would claim delivery to every recipient: so the first 5xx, else the first
 * 4xx, else the first 2xx the handler gave; `mixed` tells when that reply is a refusal although
 * the handler took some recipients. 0 when done; i + 1 when replies->items[i] is no valid reply
 * (nothing appended then); -1 when memory ran out. */
int lmtp_answer_each(struct lmtp_answer *a, bool lmtp, const struct strv *replies);

void lmtp_answer_free(struct lmtp_answer *a);

/* Whether `verb` is the other protocol's greeting: LHLO to an SMTP listener, HELO and EHLO to
 * an LMTP one (RFC 2033 4.1: never answered 2xx; 500 is recommended). */
bool lmtp_foreign_verb(bool lmtp, enum smtp_verb verb);

#endif
