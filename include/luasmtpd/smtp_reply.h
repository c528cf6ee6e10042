/* Reply lines: checks a reply a handler returned and puts it in wire form (RFC 5321 4.2).
 * Pure: text in, text out. */
#ifndef LUASMTPD_SMTP_REPLY_H
#define LUASMTPD_SMTP_REPLY_H

#include <stddef.h>

#include "luasmtpd/buf.h"

/* Longest reply line we send, CRLF included (RFC 5321 4.5.3.1.5). */
#define SMTP_REPLY_LINE_MAX 512

/* A handler may return "550 5.7.1 No", or several lines separated by "\n" or "\r\n", each
 * starting with the same code (with or without the "-" continuation mark). Only 2xx, 4xx and
 * 5xx codes are final answers. Appends the wire form (CRLF line ends, "-" on every line but the
 * last) to `out` and returns the code, or returns -1 leaving `out` as it was when the text is
 * not a valid reply. */
int smtp_reply_format(const char *text, size_t len, struct buf *out);

/* Client input quoted in a reply of ours (an unknown verb, VRFY's argument): reply text is
 * printable US-ASCII (RFC 5321 4.2), so every byte outside 0x20-0x7e, and the backslash that
 * would make the form ambiguous, is written as \xNN (lower-case hex). At most size - 1 chars
 * and a NUL go to `out` (size > 0); input that does not fit ends in "..." and no escape is
 * cut. Returns the length written. */
size_t smtp_reply_quote(const char *in, size_t len, char *out, size_t size);

#endif
