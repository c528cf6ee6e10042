/* options.dsn and options.rcpt_dsn: what the client asked of delivery notices, decoded (xtext
 * undone), with absent parameters absent, so `options.dsn.ret == nil` reads as "not given";
 * and smtpd.relay's fields of the same names, so a script passes them on as it got them. */
#include "luasmtpd/lua_dsn.h"

#include <lauxlib.h>
#include <string.h>

#include "luasmtpd/lua_bind.h"

static void
push_rcpt(lua_State *L, const char *params)
{
    struct dsn_rcpt d;
    dsn_rcpt_decode(&d, params);
    lua_createtable(L, 0, 2);
    if (d.notify != 0) {
        const char *names[4];
        size_t n = dsn_notify_names(d.notify, names);
        lua_createtable(L, (int)n, 0);
        for (size_t i = 0; i < n; i++) {
            lua_pushstring(L, names[i]);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        lua_setfield(L, -2, "notify");
    }
    if (d.has_orcpt) {
        lua_pushstring(L, d.orcpt);
        lua_setfield(L, -2, "orcpt");
    }
}

void
ldsn_push(lua_State *L, const struct envelope *env)
{
    struct dsn_mail m;
    dsn_mail_decode(&m, (const char *const *)env->mail_options.items, env->mail_options.n);
    lua_createtable(L, 0, 2);
    if (m.ret != DSN_RET_UNSET) {
        lua_pushstring(L, m.ret == DSN_RET_FULL ? "FULL" : "HDRS");
        lua_setfield(L, -2, "ret");
    }
    if (m.has_envid) {
        lua_pushstring(L, m.envid);
        lua_setfield(L, -2, "envid");
    }
    lua_setfield(L, -2, "dsn");
    lua_createtable(L, (int)env->rcpt_params.n, 0);
    for (size_t i = 0; i < env->rcpt_params.n; i++) {
        push_rcpt(L, env->rcpt_params.items[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "rcpt_dsn");
}

/* Field `key` of the table on top: a string without NUL, or NULL when absent. Read raw, so
 * the string stays anchored in the table once popped (an __index could make one up that
 * nothing holds). */
static const char *
sub_string(lua_State *L, const char *what, const char *field, const char *key)
{
    lua_pushstring(L, key);
    int type = lua_rawget(L, -2);
    size_t len = 0;
    const char *s = type == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
    if (type != LUA_TNIL && (s == NULL || strlen(s) != len))
        lbind_field_error(L, what, field, "%s must be a string without NUL, not %s", key,
                          luaL_typename(L, -1));
    lua_pop(L, 1); /* the table above still holds it */
    return s;
}

/* One rcpt_dsn entry, the table on top, into `d`. */
static void
check_rcpt(lua_State *L, const char *what, size_t i, struct dsn_rcpt *d)
{
    const char *names[4];
    size_t n = 0;
    lua_pushliteral(L, "notify");
    int type = lua_rawget(L, -2);
    if (type != LUA_TNIL && type != LUA_TTABLE)
        lbind_field_error(L, what, "rcpt_dsn", "[%d] notify must be a list, not %s", (int)i,
                          luaL_typename(L, -1));
    size_t len = type == LUA_TTABLE ? lua_rawlen(L, -1) : 0;
    for (size_t k = 1; k <= len; k++) {
        /* Only strings: a number lua_tostring made one of would be anchored nowhere. */
        bool is_string = lua_rawgeti(L, -1, (lua_Integer)k) == LUA_TSTRING;
        if (!is_string)
            lbind_field_error(L, what, "rcpt_dsn", "[%d] notify[%d] must be a string, not %s",
                              (int)i, (int)k, luaL_typename(L, -1));
        if (n == 4)
            lbind_field_error(L, what, "rcpt_dsn", "[%d] notify lists more than 4 names", (int)i);
        names[n++] = lua_tostring(L, -1);
        lua_pop(L, 1); /* the list still holds it */
    }
    lua_pop(L, 1);
    const char *why = dsn_rcpt_set(d, names, n, sub_string(L, what, "rcpt_dsn", "orcpt"));
    if (why != NULL)
        lbind_field_error(L, what, "rcpt_dsn", "[%d] %s", (int)i, why);
}

void
ldsn_check(lua_State *L, int t, const char *what, size_t n_rcpts, const struct dsn_mail **mail,
           const struct dsn_rcpt **rcpts)
{
    *mail = NULL;
    *rcpts = NULL;
    if (lbind_field(L, t, what, "dsn", LUA_TTABLE, false) == LUA_TTABLE) {
        struct dsn_mail *m = lua_newuserdatauv(L, sizeof(*m), 0);
        lua_insert(L, -2);
        const char *ret = sub_string(L, what, "dsn", "ret");
        const char *why = dsn_mail_set(m, ret, sub_string(L, what, "dsn", "envid"));
        if (why != NULL)
            lbind_field_error(L, what, "dsn", "%s", why);
        *mail = m;
    }
    lua_pop(L, 1);
    if (lbind_field(L, t, what, "rcpt_dsn", LUA_TTABLE, false) == LUA_TTABLE) {
        struct dsn_rcpt *r = lua_newuserdatauv(L, n_rcpts * sizeof(*r), 0);
        lua_insert(L, -2);
        if (lua_rawlen(L, -1) > n_rcpts)
            lbind_field_error(L, what, "rcpt_dsn", "has more entries than 'to' has recipients");
        for (size_t i = 0; i < n_rcpts; i++) {
            int type = lua_rawgeti(L, -1, (lua_Integer)i + 1);
            if (type != LUA_TNIL && type != LUA_TTABLE)
                lbind_field_error(L, what, "rcpt_dsn", "[%d] must be a table, not %s", (int)i + 1,
                                  luaL_typename(L, -1));
            if (type == LUA_TTABLE)
                check_rcpt(L, what, i + 1, &r[i]);
            else
                memset(&r[i], 0, sizeof(r[i]));
            lua_pop(L, 1);
        }
        *rcpts = r;
    }
    lua_pop(L, 1);
}
