/* BDAT (RFC 3030 CHUNKING) in a session: the halves of its row in the command table
 * (commands.c), the end of each chunk the session's DATA reader reaches (session.c), and the
 * refusal of commands that have no place between two chunks. The chunk's bytes are read and
 * decoded by the same reader as DATA's; the message after the last chunk goes to the handler
 * by the same path as after DATA's final dot. */
#ifndef LUASMTPD_BDAT_H
#define LUASMTPD_BDAT_H

#include <stdbool.h>
#include <stddef.h>

struct evbuffer;
struct session;

bool bdat_check(struct session *s, char *arg);
void bdat_proceed(struct session *s, const char *reply, size_t len);
/* What was being read is all in (a BDAT chunk's bytes, or DATA to its final dot). true: the
 * message is complete, or failed, and the caller ends it as it ends a DATA; false: the chunk
 * was answered (or the connection is closing) and commands come next. */
bool bdat_chunk_done(struct session *s, struct evbuffer *in);
/* `verb` (DATA, RCPT) inside a transaction whose message comes in chunks: answered 503. */
bool bdat_refused(struct session *s, const char *verb);

#endif
