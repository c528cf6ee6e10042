/* The relay bindings of the `smtpd` module: smtpd.relay{...} (one whole transaction) and
 * smtpd.connect{...} (an upstream object driven command by command). Both yield the handler's
 * coroutine while the relay client works; the loop serves everyone else meanwhile. */
#ifndef LUASMTPD_LUA_RELAY_H
#define LUASMTPD_LUA_RELAY_H

#include <lua.h>

#include "luasmtpd/lua_wait.h"

/* Adds relay and connect to the module table on the top of the stack. */
void lrelay_add(lua_State *L, const struct lrt_env *env);

#endif
