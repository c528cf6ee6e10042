/* The `smtpd` module scripts `require`: logging, the settings given on the command line, the
 * upstream, the version. Every binding checks its arguments first and raises on misuse, as
 * Lua's own libraries do; nothing here blocks the loop. */
#include "luasmtpd/lua_smtpd.h"

#include <lauxlib.h>
#include <string.h>

#include "luasmtpd/log.h"
#include "luasmtpd/lua_pipe.h"
#include "luasmtpd/lua_relay.h"

/* Joins arguments from `first` on with spaces, each through tostring(). */
static void
push_joined(lua_State *L, int first)
{
    int top = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = first; i <= top; i++) {
        if (i > first)
            luaL_addchar(&b, ' ');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
}

/* smtpd.log(level, ...) -> nothing; level is "error", "warn", "info" or "debug" */
static int
l_smtpd_log(lua_State *L)
{
    static const char *const levels[] = {"error", "warn", "info", "debug", NULL};
    int level = luaL_checkoption(L, 1, NULL, levels);
    if (level == LOG_DEBUG && !log_debug_enabled())
        return 0;
    push_joined(L, 2);
    log_msg((enum log_level)level, "script: %s", lua_tostring(L, -1));
    return 0;
}

/* smtpd.debug(...) -> nothing; only with -d, as Python's DEBUGSTREAM */
static int
l_smtpd_debug(lua_State *L)
{
    if (!log_debug_enabled())
        return 0;
    push_joined(L, 1);
    log_msg(LOG_DEBUG, "script: %s", lua_tostring(L, -1));
    return 0;
}

/* smtpd.reply(code, text) -> a reply string, one line per line of text, each with the code
 * ("550-first\n550 last"), as process_message and the hooks may return */
static int
l_smtpd_reply(lua_State *L)
{
    lua_Integer code = luaL_checkinteger(L, 1);
    size_t len;
    const char *text = luaL_optlstring(L, 2, "", &len);
    luaL_argcheck(L, code >= 200 && code <= 599, 1, "a reply code is 200-599");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    const char *p = text, *end = text + len;
    do {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = nl ? nl : end;
        if (line_end > p && line_end[-1] == '\r')
            line_end--;
        lua_pushfstring(L, "%d%c", (int)code, nl ? '-' : ' ');
        luaL_addvalue(&b);
        luaL_addlstring(&b, p, (size_t)(line_end - p));
        if (nl)
            luaL_addchar(&b, '\n');
        p = nl ? nl + 1 : end;
    } while (p < end);
    luaL_pushresult(&b);
    return 1;
}

static const luaL_Reg smtpd_functions[] = {
    {"log", l_smtpd_log},
    {"debug", l_smtpd_debug},
    {"reply", l_smtpd_reply},
    {NULL, NULL},
};

static int
open_smtpd(lua_State *L)
{
    const struct lrt_options *opts = lua_touserdata(L, lua_upvalueindex(1));
    const struct config *cfg = opts->cfg;

    luaL_newlib(L, smtpd_functions);

    lua_pushliteral(L, LUASMTPD_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushstring(L, opts->hostname);
    lua_setfield(L, -2, "hostname");
    lua_pushboolean(L, cfg->debug);
    lua_setfield(L, -2, "debugging");

    lua_createtable(L, 0, 2);
    lua_pushstring(L, cfg->remote_host);
    lua_setfield(L, -2, "host");
    lua_pushinteger(L, cfg->remote_port);
    lua_setfield(L, -2, "port");
    lua_setfield(L, -2, "remote");

    lua_createtable(L, 0, (int)cfg->n_settings);
    for (size_t i = 0; i < cfg->n_settings; i++) {
        lua_pushstring(L, cfg->settings[i].value);
        lua_setfield(L, -2, cfg->settings[i].key);
    }
    lua_setfield(L, -2, "settings");

    lua_pushinteger(L, (lua_Integer)cfg->size_limit);
    lua_setfield(L, -2, "size_limit");
    lrelay_add(L, opts);
    lpipe_add(L, opts);
    return 1;
}

void
lsmtpd_register(lua_State *L, const struct lrt_options *opts)
{
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushlightuserdata(L, (void *)opts);
    lua_pushcclosure(L, open_smtpd, 1);
    lua_setfield(L, -2, "smtpd");
    lua_pop(L, 1);
}
