/* A handler's replies by recipient, `{["a@x"] = "250 ...", ["b@x"] = "550 ..."}`, checked whole
 * and copied out of Lua in RCPT order. Keys match the addresses byte for byte, as the handler
 * got them in rcpttos: only the recipient's own server knows whether `Bob` and `bob` are one
 * mailbox, and a key that matches nobody is refused rather than taken for a 250 the handler
 * never meant. It reads with raw access, so no metamethod runs outside the handler's call. */
#include "luasmtpd/lua_replies.h"

#include <stdio.h>
#include <string.h>

/* The start of a key for an error message: the log escapes what it must. */
#define KEY_SHOWN 80

static bool
check_entries(lua_State *L, int t, int set, char *err, size_t errlen)
{
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        /* lua_tostring is only called on strings: converting a key in place would derail
         * lua_next. */
        if (lua_type(L, -2) != LUA_TSTRING) {
            snprintf(err, errlen, "a table with a %s key: keys are recipient addresses",
                     lua_typename(L, lua_type(L, -2)));
            lua_pop(L, 2);
            return false;
        }
        const char *key = lua_tostring(L, -2);
        if (lua_type(L, -1) != LUA_TSTRING) {
            snprintf(err, errlen, "a table whose field '%.*s' is a %s, not a reply string",
                     KEY_SHOWN, key, lua_typename(L, lua_type(L, -1)));
            lua_pop(L, 2);
            return false;
        }
        size_t len;
        const char *reply = lua_tolstring(L, -1, &len);
        if (strlen(reply) != len) {
            snprintf(err, errlen, "a table whose field '%.*s' holds a NUL byte", KEY_SHOWN, key);
            lua_pop(L, 2);
            return false;
        }
        lua_pushvalue(L, -2);
        bool known = lua_rawget(L, set) != LUA_TNIL;
        lua_pop(L, 2);
        if (!known) {
            snprintf(err, errlen,
                     "a reply for '%.*s', which is no recipient of this message (keys are the "
                     "addresses exactly as given to RCPT)",
                     KEY_SHOWN, key);
            lua_pop(L, 1);
            return false;
        }
    }
    return true;
}

bool
lreplies_read(lua_State *L, int idx, const struct strv *rcpts, struct strv *out, char *err,
              size_t errlen)
{
    int t = lua_absindex(L, idx);
    if (!lua_checkstack(L, 6)) {
        snprintf(err, errlen, "a table (no stack space to read it)");
        return false;
    }
    lua_createtable(L, 0, (int)rcpts->n);
    int set = lua_gettop(L);
    for (size_t i = 0; i < rcpts->n; i++) {
        lua_pushboolean(L, 1);
        lua_setfield(L, set, rcpts->items[i]);
    }
    bool ok = check_entries(L, t, set, err, errlen);
    for (size_t i = 0; ok && i < rcpts->n; i++) {
        lua_pushstring(L, rcpts->items[i]);
        lua_rawget(L, t);
        const char *reply = lua_tostring(L, -1);
        ok = strv_push(out, reply != NULL ? reply : "") == 0;
        lua_pop(L, 1);
        if (!ok)
            snprintf(err, errlen, "a table (out of memory copying it)");
    }
    lua_pop(L, 1);
    if (!ok)
        strv_clear(out);
    return ok;
}
