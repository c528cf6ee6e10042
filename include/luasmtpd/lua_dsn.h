/* The decoded DSN parameters (RFC 3461) of a transaction, as process_message's options show
 * them: options.dsn (MAIL's RET and ENVID) and options.rcpt_dsn (one table per recipient,
 * NOTIFY and ORCPT); and the same shape read back from smtpd.relay's fields. Decoding and
 * checking are dsn.c's. */
#ifndef LUASMTPD_LUA_DSN_H
#define LUASMTPD_LUA_DSN_H

#include <lua.h>

#include "luasmtpd/dsn.h"
#include "luasmtpd/envelope.h"

/* Sets fields `dsn` and `rcpt_dsn` of the table on top of L's stack. */
void ldsn_push(lua_State *L, const struct envelope *env);

/* Reads fields `dsn` and `rcpt_dsn` (n_rcpts entries at most) of the options table at `t`,
 * raising, naming the field, for a wrong one. *mail and *rcpts are NULL when the field is
 * absent, else point into userdata this pushes (alive until the caller returns). */
void ldsn_check(lua_State *L, int t, const char *what, size_t n_rcpts, const struct dsn_mail **mail,
                const struct dsn_rcpt **rcpts);

#endif
