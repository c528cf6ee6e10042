/* The `smtpd` module scripts `require`: logging, the settings given on the command line, the
 * upstream, the version. Every binding checks its arguments first and raises on misuse, as
 * Lua's own libraries do; a failure the script should handle returns nil, message, code
 * (lua_bind.h); nothing here blocks the loop. */
#include "luasmtpd/lua_smtpd.h"

#include <lauxlib.h>
#include <stdbool.h>
#include <string.h>

#include "luasmtpd/config.h"
#include "luasmtpd/log.h"
#include "luasmtpd/lua_networks.h"
#include "luasmtpd/lua_pipe.h"
#include "luasmtpd/lua_relay.h"
#include "luasmtpd/smtp_reply.h"

/* Joins arguments from `first` on with spaces, each through tostring(). */
static void
lsmtpd_push_joined(lua_State *L, int first)
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
    lsmtpd_push_joined(L, 2);
    log_msg((enum log_level)level, "script: %s", lua_tostring(L, -1));
    return 0;
}

/* smtpd.debug(...) -> nothing; only with -d, as Python's DEBUGSTREAM */
static int
l_smtpd_debug(lua_State *L)
{
    if (!log_debug_enabled())
        return 0;
    lsmtpd_push_joined(L, 1);
    log_msg(LOG_DEBUG, "script: %s", lua_tostring(L, -1));
    return 0;
}

/* What one line of smtpd.reply's text may hold, so the core never refuses what it builds: the
 * line "554-" text CRLF within RFC 5321 4.5.3.1.5's 512 bytes, and at most as many lines as the
 * relay client keeps from an upstream's reply. */
#define REPLY_TEXT_MAX (SMTP_REPLY_LINE_MAX - 6)
#define REPLY_LINES_MAX 100

/* The length of the enhanced status code (RFC 3463: class "." subject "." detail, 1-3 digits
 * each) that starts s[0, n) and is followed by a space or the end, or 0. */
static size_t
enhanced_code_len(const char *s, size_t n)
{
    if (n < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
        return 0;
    size_t i = 2;
    for (int part = 0; part < 2; part++) {
        size_t digits = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9' && digits < 4) {
            i++;
            digits++;
        }
        if (digits == 0 || digits > 3)
            return 0;
        if (part == 0) {
            if (i >= n || s[i] != '.')
                return 0;
            i++;
        }
    }
    return i == n || s[i] == ' ' ? i : 0;
}

/* Appends `n` bytes of reply text as RFC 5321 4.2's textstring allows (printable ASCII and
 * space): a tab becomes a space, anything else outside it '?'. Stops at `room`; returns what
 * is left of it. */
static size_t
add_clean_text(luaL_Buffer *b, const char *s, size_t n, size_t room)
{
    for (size_t i = 0; i < n && room > 0; i++, room--) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\t')
            c = ' ';
        else if (c < 0x20 || c > 0x7e)
            c = '?';
        luaL_addchar(b, (char)c);
    }
    return room;
}

/* smtpd.reply(code, text) -> a reply string, one line per line of text, each with the code
 * ("550-first\n550 last"), as process_message and the hooks may return. Any text makes a reply
 * the core sends (an upstream's text may hold control bytes or lines of any length, and a
 * refused reply would turn a delivered message into a 451 and a duplicate): bytes outside
 * printable ASCII become '?', lines are cut to fit 512 bytes, and lines past 100 are dropped.
 * In a 4xx/5xx reply the enhanced status code of the first line is put on every line that has
 * none, as RFC 2034 asks and as DSN writers read it (Postfix logged dsn=5.0.0 for a second
 * line without one). */
static int
l_smtpd_reply(lua_State *L)
{
    lua_Integer code = luaL_checkinteger(L, 1);
    size_t len;
    const char *text = luaL_optlstring(L, 2, "", &len);
    luaL_argcheck(L, code >= 200 && code <= 599, 1, "a reply code is 200-599");
    const char *end = text + len;
    /* One trailing line end is how people write a reply; it is not an empty last line. */
    if (end > text && end[-1] == '\n')
        end--;
    if (end > text && end[-1] == '\r')
        end--;

    const char *first_nl = memchr(text, '\n', (size_t)(end - text));
    size_t first_len = (size_t)((first_nl ? first_nl : end) - text);
    size_t ecode_len = code >= 400 ? enhanced_code_len(text, first_len) : 0;
    if (ecode_len > 0 && text[0] != '0' + (char)(code / 100))
        ecode_len = 0; /* a class that contradicts the reply code is not repeated */

    luaL_Buffer b;
    luaL_buffinit(L, &b);
    const char *p = text;
    for (int lines = 1;; lines++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = nl ? nl : end;
        bool last = nl == NULL || lines == REPLY_LINES_MAX;
        if (line_end > p && line_end[-1] == '\r')
            line_end--;
        size_t n = (size_t)(line_end - p);
        lua_pushfstring(L, "%d%c", (int)code, last ? ' ' : '-');
        luaL_addvalue(&b);
        size_t room = REPLY_TEXT_MAX;
        if (p != text && ecode_len > 0 && enhanced_code_len(p, n) == 0) {
            room = add_clean_text(&b, text, ecode_len, room);
            if (n > 0 && room > 0) {
                luaL_addchar(&b, ' ');
                room--;
            }
        }
        add_clean_text(&b, p, n, room);
        if (last)
            break;
        luaL_addchar(&b, '\n');
        p = nl + 1;
    }
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
lsmtpd_open(lua_State *L)
{
    const struct lrt_env *env = lua_touserdata(L, lua_upvalueindex(1));

    luaL_newlib(L, smtpd_functions);

    lua_pushliteral(L, LUASMTPD_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushstring(L, env->hostname);
    lua_setfield(L, -2, "hostname");
    lua_pushboolean(L, env->debug);
    lua_setfield(L, -2, "debugging");

    lua_createtable(L, 0, 2);
    lua_pushstring(L, env->remote_host);
    lua_setfield(L, -2, "host");
    lua_pushinteger(L, env->remote_port);
    lua_setfield(L, -2, "port");
    lua_setfield(L, -2, "remote");

    lua_createtable(L, 0, (int)env->n_settings);
    for (size_t i = 0; i < env->n_settings; i++) {
        lua_pushstring(L, env->settings[i].value);
        lua_setfield(L, -2, env->settings[i].key);
    }
    lua_setfield(L, -2, "settings");

    lua_pushinteger(L, (lua_Integer)env->size_limit);
    lua_setfield(L, -2, "size_limit");
    lrelay_add(L, env);
    lpipe_add(L, env);
    lnetworks_add(L);
    return 1;
}

void
lsmtpd_register(lua_State *L, const struct lrt_env *env)
{
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushlightuserdata(L, (void *)env);
    lua_pushcclosure(L, lsmtpd_open, 1);
    lua_setfield(L, -2, "smtpd");
    lua_pop(L, 1);
}
