/* smtpd.pipe: the Lua face of child-process delivery. It yields the handler's coroutine while
 * the child runs; the loop serves everyone else meanwhile. */
#ifndef LUASMTPD_LUA_PIPE_H
#define LUASMTPD_LUA_PIPE_H

#include <lua.h>

#include "luasmtpd/lua_wait.h"

/* Adds pipe to the module table on the top of the stack. */
void lpipe_add(lua_State *L, const struct lrt_env *env);

#endif
