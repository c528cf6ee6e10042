/* smtpd.pipe(argv, data [, opts]). The child gets an explicit environment: a safe PATH and
 * what opts.env adds, nothing of the server's. The message stays anchored in the registry while
 * the child reads it, so it is fed in place without a copy; pipe_cancel stops the feed before
 * the cancel drops the anchor (the rule above lrt_wait). */
#include "luasmtpd/lua_pipe.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "luasmtpd/lua_bind.h"
#include "luasmtpd/pipe.h"

#define DEFAULT_TIMEOUT 60.0
#define DEFAULT_OUTPUT_LIMIT (64 * 1024)

static const char WHAT[] = "smtpd.pipe";

/* A failed child asks for 451 whatever the cause: a signal or a timeout may have cut the delivery
 * short and a command that could not run may run next time, so the client keeps the message
 * and retries (delivery.lua answers the same). */
#define LPIPE_FAILURE_CODE 451

struct lpipe {
    struct pipe_job *job;
    struct lbind_hold hold; /* the call, and the message fed in place */
    double timeout;
};

static void
lpipe_on_done(void *arg, const struct pipe_result *result)
{
    struct lpipe *lp = arg;
    lua_State *co = lbind_thread(&lp->hold);
    int n = 2;
    if (result->outcome == PIPE_EXITED) {
        lua_pushinteger(co, result->status);
        lua_pushlstring(co, result->output, result->output_len);
    } else if (result->outcome == PIPE_SIGNALED) {
        n = lbind_fail(co, LPIPE_FAILURE_CODE, "killed by signal %d", result->status);
    } else if (result->outcome == PIPE_TIMED_OUT) {
        char seconds[32]; /* "1", "0.5": %g, where Lua's own %f would say "1.0" */
        snprintf(seconds, sizeof(seconds), "%g", lp->timeout);
        n = lbind_fail(co, LPIPE_FAILURE_CODE, "timed out after %s s", seconds);
    } else {
        n = lbind_fail(co, LPIPE_FAILURE_CODE, "%s", result->error);
    }
    lbind_resume(&lp->hold, n);
}

static void
lpipe_stop(void *arg)
{
    pipe_cancel(((struct lpipe *)arg)->job);
}

/* Collects a NULL-terminated array of "a" strings from the list at `index`, as a userdata on
 * the stack (so Lua frees it, even when a later check raises). */
static char **
check_argv(lua_State *L, int index)
{
    luaL_checktype(L, index, LUA_TTABLE);
    lua_Integer n = luaL_len(L, index);
    luaL_argcheck(L, n > 0, index, "argv names no command");
    char **argv = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof(char *), 0);
    for (lua_Integer i = 1; i <= n; i++) {
        if (lua_rawgeti(L, index, i) != LUA_TSTRING)
            luaL_error(L, "bad argument #%d to 'pipe' (argv[%d] is not a string)", index, (int)i);
        argv[i - 1] = (char *)lua_tostring(L, -1);
        lua_pop(L, 1); /* still referenced by the table, which the caller's stack holds */
    }
    argv[n] = NULL;
    return argv;
}

/* The child's environment: PATH, then opts.env's KEY=VALUE pairs (which may replace it). */
static char **
build_env(lua_State *L, int options)
{
    lua_newtable(L);
    int list = lua_gettop(L);
    int n = 0;
    bool has_path = false;
    if (lbind_field(L, options, WHAT, "env", LUA_TTABLE, false) != LUA_TNIL) {
        lua_pushnil(L);
        while (lua_next(L, -2) != 0) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
                lbind_field_error(L, WHAT, "env", "holds a non-string");
            const char *key = lua_tostring(L, -2);
            if (*key == '\0' || strchr(key, '=') != NULL)
                lbind_field_error(L, WHAT, "env", "holds a bad name '%s'", key);
            has_path = has_path || strcmp(key, "PATH") == 0;
            lua_pushfstring(L, "%s=%s", key, lua_tostring(L, -1));
            lua_rawseti(L, list, ++n);
            lua_pop(L, 1);
        }
    }
    lua_settop(L, list);
    if (!has_path) {
        lua_pushliteral(L, "PATH=/usr/local/bin:/usr/bin:/bin");
        lua_rawseti(L, list, ++n);
    }
    char **envp = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof(char *), 0);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, list, i);
        envp[i - 1] = (char *)lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    envp[n] = NULL;
    return envp;
}

/* smtpd.pipe(argv, data [, {timeout=, env=, output_limit=}])
 *   -> status, output | nil, err, 451 (killed by a signal, timed out, could not run) */
static int
l_smtpd_pipe(lua_State *L)
{
    const struct lrt_env *env = lua_touserdata(L, lua_upvalueindex(1));
    size_t len;
    lua_settop(L, 3); /* what follows pushes scratch values above the arguments */
    char **argv = check_argv(L, 1);
    const char *data = luaL_checklstring(L, 2, &len);
    if (lua_isnoneornil(L, 3)) {
        lua_newtable(L); /* no options: every field takes its default */
        lua_replace(L, 3);
    }
    luaL_checktype(L, 3, LUA_TTABLE);
    double timeout = lbind_number(L, 3, WHAT, "timeout", DEFAULT_TIMEOUT);
    lua_Integer output_limit = lbind_integer(L, 3, WHAT, "output_limit", DEFAULT_OUTPUT_LIMIT);
    if (!(timeout > 0))
        lbind_field_error(L, WHAT, "timeout", "must be positive");
    if (output_limit < 0)
        lbind_field_error(L, WHAT, "output_limit", "must not be negative");
    char **envp = build_env(L, 3);
    struct lrt_call *call = lbind_call(L, WHAT);

    struct lpipe *lp = calloc(1, sizeof(*lp));
    if (lp == NULL)
        return luaL_error(L, "smtpd.pipe: out of memory");
    lbind_hold_init(&lp->hold, lp, lpipe_stop, free);
    lp->timeout = timeout;
    lbind_anchor(L, &lp->hold, 0, 2);
    struct pipe_request req = {.argv = argv,
                               .envp = envp,
                               .data = data,
                               .len = len,
                               .timeout = timeout,
                               .output_cap = (size_t)output_limit};
    /* pipe_spawn copies argv and envp: the userdata above may go once this returns. */
    lp->job = pipe_spawn(env->pipes, &req, lpipe_on_done, lp);
    if (lp->job == NULL) {
        lbind_release(&lp->hold);
        return lbind_fail(L, LPIPE_FAILURE_CODE, "cannot run %s: out of memory", argv[0]);
    }
    return lbind_wait(L, &lp->hold, call);
}

void
lpipe_add(lua_State *L, const struct lrt_env *env)
{
    lua_pushlightuserdata(L, (void *)env);
    lua_pushcclosure(L, l_smtpd_pipe, 1);
    lua_setfield(L, -2, "pipe");
}
