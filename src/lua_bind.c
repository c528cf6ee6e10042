/* The pieces every binding shares (see lua_bind.h): reading an options table so that a
 * misuse names its field, the nil, message, code triple, and the hold a waiting binding keeps.
 * It knows no binding; the bindings know it. */
#include "luasmtpd/lua_bind.h"

#include <lauxlib.h>
#include <stdarg.h>

int
lbind_field(lua_State *L, int t, const char *what, const char *name, int type, bool required)
{
    int got = lua_getfield(L, t, name);
    if (got == LUA_TNIL && !required)
        return LUA_TNIL;
    if (got == type || (type == LUA_TNUMBER && lua_isnumber(L, -1)))
        return type;
    return luaL_error(L, "%s: field '%s' must be a %s, not %s", what, name, lua_typename(L, type),
                      luaL_typename(L, -1));
}

const char *
lbind_string(lua_State *L, int t, const char *what, const char *name, bool required, size_t *len)
{
    if (lbind_field(L, t, what, name, LUA_TSTRING, required) == LUA_TNIL) {
        lua_pop(L, 1);
        return NULL;
    }
    return lua_tolstring(L, -1, len);
}

lua_Number
lbind_number(lua_State *L, int t, const char *what, const char *name, lua_Number dflt)
{
    lua_Number value = dflt;
    if (lbind_field(L, t, what, name, LUA_TNUMBER, false) != LUA_TNIL)
        value = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return value;
}

lua_Integer
lbind_integer(lua_State *L, int t, const char *what, const char *name, lua_Integer dflt)
{
    lua_Integer value = dflt;
    if (lbind_field(L, t, what, name, LUA_TNUMBER, false) != LUA_TNIL) {
        int exact;
        value = lua_tointegerx(L, -1, &exact);
        if (!exact)
            lbind_field_error(L, what, name, "must be an integer");
    }
    lua_pop(L, 1);
    return value;
}

bool
lbind_boolean(lua_State *L, int t, const char *what, const char *name, bool dflt)
{
    bool absent = lbind_field(L, t, what, name, LUA_TBOOLEAN, false) == LUA_TNIL;
    bool value = absent ? dflt : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return value;
}

int
lbind_field_error(lua_State *L, const char *what, const char *name, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    return luaL_error(L, "%s: field '%s' %s", what, name, lua_tostring(L, -1));
}

int
lbind_fail(lua_State *L, int code, const char *fmt, ...)
{
    lua_pushnil(L);
    va_list ap;
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    if (code != 0)
        lua_pushinteger(L, code);
    else
        lua_pushnil(L);
    return 3;
}

struct lrt_call *
lbind_call(lua_State *L, const char *what)
{
    struct lrt_call *call = lrt_call_of(L);
    if (call == NULL)
        luaL_error(L,
                   "%s: can only be used inside a handler or hook, not while loading the "
                   "script or from a coroutine the script made",
                   what);
    if (!lua_isyieldable(L))
        luaL_error(L,
                   "%s: cannot wait here: the handler is inside a function Lua calls without "
                   "letting it yield (a table.sort comparator, a string.gsub function, a "
                   "finalizer)",
                   what);
    return call;
}

void
lbind_hold_init(struct lbind_hold *h, void *owner, lbind_owner_fn stop, lbind_owner_fn free)
{
    h->call = NULL;
    h->L = NULL;
    for (int i = 0; i < LBIND_REFS; i++)
        h->refs[i] = LUA_NOREF;
    h->stop = stop;
    h->free = free;
    h->owner = owner;
}

void
lbind_anchor(lua_State *L, struct lbind_hold *h, int slot, int index)
{
    lua_pushvalue(L, index);
    h->refs[slot] = luaL_ref(L, LUA_REGISTRYINDEX);
    h->L = L;
}

lua_State *
lbind_thread(const struct lbind_hold *h)
{
    return lrt_call_thread(h->call);
}

void
lbind_release(struct lbind_hold *h)
{
    for (int i = 0; i < LBIND_REFS; i++) {
        if (h->L != NULL)
            luaL_unref(h->L, LUA_REGISTRYINDEX, h->refs[i]);
        h->refs[i] = LUA_NOREF;
    }
    h->call = NULL;
    if (h->free != NULL)
        h->free(h->owner); /* the hold may be part of the owner: the last use of it */
}

/* The cancel lrt_wait runs: the work stops before the anchors go (the rule above lrt_wait). */
static void
lbind_cancel(void *arg)
{
    struct lbind_hold *h = arg;
    h->stop(h->owner);
    lbind_release(h);
}

int
lbind_wait(lua_State *L, struct lbind_hold *h, struct lrt_call *call)
{
    h->call = call;
    h->L = L;
    return lrt_wait(L, call, lbind_cancel, h);
}

void
lbind_resume(struct lbind_hold *h, int n)
{
    struct lrt_call *call = h->call;
    lbind_release(h);
    lrt_call_resume(call, n);
}
