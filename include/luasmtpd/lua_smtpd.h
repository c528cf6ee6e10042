/* The `smtpd` module that scripts `require`: what C offers Lua. */
#ifndef LUASMTPD_LUA_SMTPD_H
#define LUASMTPD_LUA_SMTPD_H

#include <lua.h>

#include "luasmtpd/lua_wait.h"

/* Registers `smtpd` in package.preload; `env` must outlive the state. */
void lsmtpd_register(lua_State *L, const struct lrt_env *env);

#endif
