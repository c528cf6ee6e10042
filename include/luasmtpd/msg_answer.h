/* The answer to a message after its final dot, for the session: the handler's outcome made
 * wire replies (one, or one per recipient over LMTP: lmtp.h), and a message refused as a
 * whole. Below the session, above the connection primitives (conn.h). */
#ifndef LUASMTPD_MSG_ANSWER_H
#define LUASMTPD_MSG_ANSWER_H

#include <stddef.h>

#include "luasmtpd/lmtp.h"
#include "luasmtpd/lua_runtime.h"

struct session;

/* Sends `reply` (one line) as the answer to the whole message: to every recipient over LMTP. */
void msg_answer_refuse(struct session *s, const char *reply);
/* Builds in `a` (zeroed) the answer to process_message's outcome; one that is no valid reply
 * (logged) is answered 451 4.3.0. */
void msg_answer_handler(struct session *s, enum lrt_outcome outcome, const char *text, size_t len,
                        struct lmtp_answer *a);

#endif
