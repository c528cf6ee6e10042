/* The decoded DSN parameters (RFC 3461) of a transaction, as process_message's options show
 * them: options.dsn (MAIL's RET and ENVID) and options.rcpt_dsn (one table per recipient,
 * NOTIFY and ORCPT). Reads the envelope; decoding is dsn.c's. */
#ifndef LUASMTPD_LUA_DSN_H
#define LUASMTPD_LUA_DSN_H

#include <lua.h>

#include "luasmtpd/envelope.h"

/* Sets fields `dsn` and `rcpt_dsn` of the table on top of L's stack. */
void ldsn_push(lua_State *L, const struct envelope *env);

#endif
