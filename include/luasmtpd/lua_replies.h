/* process_message's table of replies by recipient, read into C for the session: the runtime
 * calls it on a finished handler's results. Part of the runtime's side of Lua; it knows no reply
 * grammar (the session checks each string). */
#ifndef LUASMTPD_LUA_REPLIES_H
#define LUASMTPD_LUA_REPLIES_H

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>

#include "luasmtpd/envelope.h"

/* Reads the table at `idx` of `L`: each key a recipient of the message exactly as RCPT gave it
 * (as in rcpttos), each value a string. Appends to `out` one entry per address of `rcpts`, in
 * order ("" for one the table does not name). false, with `out` empty and the reason in `err`:
 * a key that is no recipient or no string, a value that is no string, or no memory. Runs no
 * Lua code (raw access only), so it neither raises nor yields. */
bool lreplies_read(lua_State *L, int idx, const struct strv *rcpts, struct strv *out, char *err,
                   size_t errlen);

#endif
