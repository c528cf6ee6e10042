/* options.dsn and options.rcpt_dsn: what the client asked of delivery notices, decoded (xtext
 * undone), with absent parameters absent, so `options.dsn.ret == nil` reads as "not given". */
#include "luasmtpd/lua_dsn.h"

#include "luasmtpd/dsn.h"

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
