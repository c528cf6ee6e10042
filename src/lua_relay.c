/* smtpd.relay and smtpd.connect: Lua faces of the relay client. Arguments are checked first
 * and misuse raises, naming the field; what the script should handle (an upstream that is
 * down, slow, refuses or breaks the protocol) returns nil, message[, code], where code is only
 * ever the upstream's 4xx/5xx refusal, never a code that could pass for success. While a relay
 * works, the message string stays anchored in the registry: Lua never moves a string, so the
 * relay may read it in place without a copy.
 *
 * Options of both (fields of the argument table): host, port (default: the command line's
 * remotehost:remoteport), helo (default: our hostname), lmtp (false), timeout (seconds for the
 * connect, the greeting and each command's reply; default 60) and data_timeout (seconds for the
 * reply after the end of the message, each reply over LMTP; default 600, RFC 5321 4.5.3.2.6).
 * When the answer after the end of the message is lost (timeout, close), the message returned
 * starts "upstream's answer after the message was lost: it may have been delivered" and the
 * same is logged at warn: the one failure that may leave a copy upstream. */
#include "luasmtpd/lua_relay.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "luasmtpd/log.h"
#include "luasmtpd/relay.h"

#define UPSTREAM_META "smtpd.upstream"

static const struct lrt_env *
env_of(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
}

static struct lrt_call *
waiting_call(lua_State *L, const char *what)
{
    struct lrt_call *call = lrt_call_of(L);
    if (call == NULL)
        luaL_error(L,
                   "%s: can only be used inside a handler or hook, not while loading the "
                   "script or from a coroutine the script made",
                   what);
    return call;
}

/* What makes `s` unfit for a command line: a CR or LF would end it and start another
 * command, a NUL cut it short, other control bytes no address has. NULL when it is fine. */
static const char *
line_problem(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\r' || c == '\n')
            return "contains a line break";
        if (c == '\0')
            return "contains a NUL byte";
        if (c < 0x20 || c == 0x7f)
            return "contains a control byte";
    }
    return NULL;
}

/* line_problem, and for an address in <...>: '<', '>' or a space outside a quoted local part
 * or a domain literal would end the path early and turn the rest into ESMTP parameters. Every
 * address our parser accepts passes: quoted local parts may hold all of them. */
static const char *
address_problem(const char *s, size_t len)
{
    const char *why = line_problem(s, len);
    if (why != NULL)
        return why;
    bool quoted = false, literal = false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (quoted) {
            if (c == '\\')
                i++;
            else if (c == '"')
                quoted = false;
        } else if (literal) {
            if (c == ']')
                literal = false;
        } else if (c == '"') {
            quoted = true;
        } else if (c == '[') {
            literal = true;
        } else if (c == '<' || c == '>' || c == ' ') {
            return "holds '<', '>' or a space outside quotes";
        }
    }
    return NULL;
}

/* The string field `name` of the table at index 1 (NULL when absent and optional). The
 * string is left on the stack, which keeps it alive until the binding returns (a field an
 * __index made up is held by nothing else); the relay copies what it keeps at once. */
static const char *
string_field(lua_State *L, const char *what, const char *name, bool required, size_t *len)
{
    int type = lua_getfield(L, 1, name);
    if (type == LUA_TNIL && !required) {
        lua_pop(L, 1);
        return NULL;
    }
    if (type != LUA_TSTRING)
        luaL_error(L, "%s: field '%s' must be a string, not %s", what, name, luaL_typename(L, -1));
    return lua_tolstring(L, -1, len);
}

static double
number_field(lua_State *L, const char *what, const char *name, double dflt)
{
    int type = lua_getfield(L, 1, name);
    double value = dflt;
    if (type != LUA_TNIL) {
        if (!lua_isnumber(L, -1))
            luaL_error(L, "%s: field '%s' must be a number", what, name);
        value = lua_tonumber(L, -1);
        if (!(value > 0))
            luaL_error(L, "%s: %s must be positive", what, name);
    }
    lua_pop(L, 1);
    return value;
}

/* Reads the connection fields shared by relay{} and connect{}; defaults come from the command
 * line's remotehost:remoteport. */
static void
check_conn_options(lua_State *L, const char *what, const struct lrt_env *env,
                   struct relay_conn_options *co)
{
    size_t len;
    co->host = string_field(L, what, "host", false, &len);
    if (co->host == NULL)
        co->host = env->remote_host;
    else if (line_problem(co->host, len) != NULL || len == 0)
        luaL_error(L, "%s: field 'host' is not a host name", what);
    lua_Integer port = env->remote_port;
    if (lua_getfield(L, 1, "port") != LUA_TNIL) {
        if (!lua_isinteger(L, -1))
            luaL_error(L, "%s: field 'port' must be an integer", what);
        port = lua_tointeger(L, -1);
    }
    lua_pop(L, 1);
    luaL_argcheck(L, port > 0 && port < 65536, 1, "port must be 1-65535");
    co->port = (unsigned short)port;
    co->timeout = number_field(L, what, "timeout", RELAY_DEFAULT_TIMEOUT);
    co->data_timeout = number_field(L, what, "data_timeout", RELAY_DEFAULT_DATA_TIMEOUT);
    co->lmtp = lua_getfield(L, 1, "lmtp") != LUA_TNIL && lua_toboolean(L, -1);
    lua_pop(L, 1);
    co->helo = string_field(L, what, "helo", false, &len);
    if (co->helo == NULL) {
        co->helo = env->hostname;
    } else {
        const char *why = line_problem(co->helo, len);
        if (why != NULL)
            luaL_error(L, "%s: field 'helo' %s", what, why);
    }
}

/* nil, message[, code]: the code only for a refusal the upstream gave (4xx/5xx). */
static int
push_failure(lua_State *L, const char *what, enum relay_failure kind,
             const struct relay_reply *reply)
{
    const char *text = reply->text ? reply->text : "";
    lua_pushnil(L);
    if (!relay_failure_is_fatal(kind) && reply->code >= 400) {
        lua_pushfstring(L, "%s: %d %s", relay_failure_name(kind), reply->code, text);
        lua_pushinteger(L, reply->code);
        return 3;
    }
    if (kind == RELAY_OK)
        kind = RELAY_PROTOCOL; /* a failure must never read as a success */
    lua_pushfstring(L, "%s: %s", relay_failure_name(kind), text);
    if (kind == RELAY_UNKNOWN)
        log_warn("%s: %s", what, lua_tostring(L, -1));
    return 2;
}

static void
push_reply_pair(lua_State *L, const struct relay_reply *reply)
{
    lua_createtable(L, 2, 0);
    lua_pushinteger(L, reply->code);
    lua_rawseti(L, -2, 1);
    lua_pushstring(L, reply->text ? reply->text : "");
    lua_rawseti(L, -2, 2);
}

/* ---- smtpd.relay{...} ---- */

struct lrelay {
    struct relay *relay;
    struct lrt_call *call;
    lua_State *L; /* any thread of the state, for unref */
    int data_ref;
    char **rcpts;
    size_t n_rcpts;
};

static void
lrelay_free(struct lrelay *lr)
{
    luaL_unref(lr->L, LUA_REGISTRYINDEX, lr->data_ref);
    free(lr);
}

static void
free_rcpts(struct lrelay *lr)
{
    for (size_t i = 0; i < lr->n_rcpts; i++)
        free(lr->rcpts[i]);
    free(lr->rcpts);
}

static void
on_relay_done(void *arg, const struct relay_result *result)
{
    struct lrelay *lr = arg;
    struct lrt_call *call = lr->call;
    lua_State *co = lrt_call_thread(call);
    int n = 1;
    if (result->kind == RELAY_OK) {
        lua_newtable(co);
        for (size_t i = 0; i < result->n_rcpts; i++) {
            const struct relay_reply *r = &result->rcpt_replies[i];
            if (r->code >= 200 && r->code < 400)
                continue;
            push_reply_pair(co, r);
            lua_setfield(co, -2, lr->rcpts[i]);
        }
    } else {
        n = push_failure(co, "smtpd.relay", result->kind, &result->reply);
    }
    free_rcpts(lr);
    lr->L = co;
    lrelay_free(lr);
    lrt_call_resume(call, n);
}

static void
cancel_relay(void *arg)
{
    struct lrelay *lr = arg;
    relay_cancel(lr->relay);
    free_rcpts(lr);
    lrelay_free(lr);
}

/* smtpd.relay{host=, port=, from=, to=, data=, timeout=, data_timeout=, lmtp=, helo=,
 *             smtputf8=}
 *   -> refused (recipient -> {code, text}; empty when all were accepted) | nil, err[, code] */
static int
l_smtpd_relay(lua_State *L)
{
    static const char what[] = "smtpd.relay";
    const struct lrt_env *env = env_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    struct lrt_call *call = waiting_call(L, what);
    struct relay_request req = {0};
    check_conn_options(L, what, env, &req.conn);

    size_t len;
    req.mailfrom = string_field(L, what, "from", true, &len);
    const char *why = address_problem(req.mailfrom, len);
    if (why != NULL)
        return luaL_error(L, "%s: field 'from' %s", what, why);
    if (lua_getfield(L, 1, "data") != LUA_TSTRING)
        return luaL_error(L, "%s: field 'data' must be a string, not %s", what,
                          luaL_typename(L, -1));
    req.data = lua_tolstring(L, -1, &len);
    req.len = len;
    int data_index = lua_gettop(L);
    lua_getfield(L, 1, "smtputf8");
    req.smtputf8 = lua_toboolean(L, -1);
    lua_pop(L, 1);

    int to_type = lua_getfield(L, 1, "to");
    if (to_type == LUA_TSTRING) {
        lua_createtable(L, 1, 0);
        lua_insert(L, -2);
        lua_rawseti(L, -2, 1);
    } else if (to_type != LUA_TTABLE) {
        return luaL_error(L, "%s: 'to' must be a recipient or a list of them", what);
    }
    size_t n = (size_t)luaL_len(L, -1);
    if (n == 0)
        return luaL_error(L, "%s: 'to' names no recipient", what);
    for (size_t i = 1; i <= n; i++) {
        if (lua_rawgeti(L, -1, (lua_Integer)i) != LUA_TSTRING)
            return luaL_error(L, "%s: recipient #%d is not a string", what, (int)i);
        const char *rcpt = lua_tolstring(L, -1, &len);
        why = address_problem(rcpt, len);
        if (why == NULL && len == 0)
            why = "is empty";
        if (why != NULL)
            return luaL_error(L, "%s: field 'to' [%d] %s", what, (int)i, why);
        lua_pop(L, 1);
    }

    struct lrelay *lr = calloc(1, sizeof(*lr));
    char **rcpts = calloc(n, sizeof(char *));
    if (lr == NULL || rcpts == NULL) {
        free(lr);
        free(rcpts);
        return luaL_error(L, "%s: out of memory", what);
    }
    lr->rcpts = rcpts;
    lr->data_ref = LUA_NOREF;
    lr->L = L;
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i + 1);
        rcpts[i] = strdup(lua_tostring(L, -1));
        lua_pop(L, 1);
        lr->n_rcpts = i + 1;
        if (rcpts[i] == NULL) {
            free_rcpts(lr);
            lrelay_free(lr);
            return luaL_error(L, "%s: out of memory", what);
        }
    }
    req.rcpts = (const char *const *)rcpts;
    req.n_rcpts = n;
    lr->call = call;
    lua_pushvalue(L, data_index);
    lr->data_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lr->relay = relay_start(env->base, env->dns, &req, on_relay_done, lr);
    if (lr->relay == NULL) {
        free_rcpts(lr);
        lrelay_free(lr);
        lua_pushnil(L);
        lua_pushfstring(L, "%s: cannot start (out of memory)", what);
        return 2;
    }
    return lrt_wait(L, call, cancel_relay, lr);
}

/* ---- smtpd.connect{...} and the upstream object ---- */

struct upstream {
    struct relay_conn *conn;
    struct lrt_call *waiting; /* the call suspended in one of our methods */
    lua_State *L;
    int self_ref;    /* anchors the userdata while a method waits */
    int data_ref;    /* anchors a message being sent */
    int results_ref; /* LMTP: the per-recipient replies gathered so far */
    unsigned accepted;
    unsigned expected;
    unsigned gathered;
    bool lmtp;
    bool closed;
};

static void
upstream_unanchor(struct upstream *up)
{
    luaL_unref(up->L, LUA_REGISTRYINDEX, up->self_ref);
    luaL_unref(up->L, LUA_REGISTRYINDEX, up->data_ref);
    luaL_unref(up->L, LUA_REGISTRYINDEX, up->results_ref);
    up->self_ref = up->data_ref = up->results_ref = LUA_NOREF;
}

static void
upstream_close(struct upstream *up)
{
    if (up->conn != NULL)
        relay_conn_close(up->conn);
    up->conn = NULL;
    up->closed = true;
}

/* Resumes the waiting call with `n` values already pushed on its thread. */
static void
upstream_resume(struct upstream *up, int n)
{
    struct lrt_call *call = up->waiting;
    up->waiting = NULL;
    upstream_unanchor(up);
    lrt_call_resume(call, n);
}

static void
cancel_upstream(void *arg)
{
    struct upstream *up = arg;
    up->waiting = NULL;
    upstream_close(up);
    upstream_unanchor(up);
}

static int
upstream_wait(lua_State *L, struct upstream *up, struct lrt_call *call)
{
    up->waiting = call;
    up->L = L;
    lua_pushvalue(L, 1);
    up->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return lrt_wait(L, call, cancel_upstream, up);
}

static void
push_extensions(lua_State *L, struct relay_conn *conn)
{
    unsigned ext = relay_conn_extensions(conn);
    lua_createtable(L, 0, 4);
    if (ext & RELAY_EXT_PIPELINING) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "PIPELINING");
    }
    if (ext & RELAY_EXT_8BITMIME) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "8BITMIME");
    }
    if (ext & RELAY_EXT_SMTPUTF8) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "SMTPUTF8");
    }
    if (ext & RELAY_EXT_SIZE) {
        lua_pushinteger(L, (lua_Integer)relay_conn_size_limit(conn));
        lua_setfield(L, -2, "SIZE");
    }
}

static void
on_upstream_ready(void *arg, struct relay_conn *conn, enum relay_failure kind,
                  const struct relay_reply *reply)
{
    struct upstream *up = arg;
    lua_State *co = lrt_call_thread(up->waiting);
    if (kind != RELAY_OK) {
        up->conn = NULL; /* the relay client already let it go */
        up->closed = true;
        upstream_resume(up, push_failure(co, "smtpd.connect", kind, reply));
        return;
    }
    up->conn = conn;
    lua_rawgeti(co, LUA_REGISTRYINDEX, up->self_ref);
    push_extensions(co, conn);
    lua_setiuservalue(co, -2, 1);
    upstream_resume(up, 1);
}

/* smtpd.connect{host=, port=, timeout=, data_timeout=, lmtp=, helo=}
 *   -> upstream | nil, err[, code] */
static int
l_smtpd_connect(lua_State *L)
{
    static const char what[] = "smtpd.connect";
    const struct lrt_env *env = env_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    struct lrt_call *call = waiting_call(L, what);
    struct relay_conn_options co;
    check_conn_options(L, what, env, &co);
    struct upstream *up = lua_newuserdatauv(L, sizeof(*up), 1);
    memset(up, 0, sizeof(*up));
    up->self_ref = up->data_ref = up->results_ref = LUA_NOREF;
    up->lmtp = co.lmtp;
    luaL_setmetatable(L, UPSTREAM_META);
    lua_replace(L, 1); /* upstream_wait anchors argument 1 */
    up->waiting = call;
    up->L = L;
    struct relay_conn *conn = relay_conn_open(env->base, env->dns, &co, on_upstream_ready, up);
    if (conn == NULL) {
        up->waiting = NULL;
        up->closed = true;
        lua_pushnil(L);
        lua_pushfstring(L, "%s: cannot start (out of memory)", what);
        return 2;
    }
    /* relay_conn_open hands the connection back in the ready callback; until then it is
     * reachable only there, so a cancel must be able to close it. */
    up->conn = conn;
    return upstream_wait(L, up, call);
}

static struct upstream *
check_upstream(lua_State *L, const char *method, struct lrt_call **call)
{
    struct upstream *up = luaL_checkudata(L, 1, UPSTREAM_META);
    *call = waiting_call(L, method);
    if (up->waiting != NULL)
        luaL_error(L, "%s: the upstream is busy with another command", method);
    return up;
}

/* code, text for a reply (a refusal included); nil, message when the connection is gone,
 * which closes the upstream object: nothing more can be asked of it. */
static void
on_upstream_reply(void *arg, enum relay_failure kind, const struct relay_reply *reply)
{
    struct upstream *up = arg;
    lua_State *co = lrt_call_thread(up->waiting);
    if (relay_failure_is_fatal(kind)) {
        upstream_close(up);
        upstream_resume(up, push_failure(co, "smtpd.connect", kind, reply));
        return;
    }
    lua_pushinteger(co, reply->code);
    lua_pushstring(co, reply->text);
    upstream_resume(up, 2);
}

static int
closed_result(lua_State *L)
{
    lua_pushnil(L);
    lua_pushliteral(L, "the upstream connection is closed");
    return 2;
}

/* Sends one command line; the reply comes back as code, text. */
static int
send_command(lua_State *L, struct upstream *up, struct lrt_call *call, const char *line, size_t len,
             enum relay_expect expect, relay_reply_fn done)
{
    if (up->closed || up->conn == NULL)
        return closed_result(L);
    if (relay_conn_command(up->conn, line, len, expect, done, up) == -1) {
        lua_pushnil(L);
        lua_pushliteral(L, "out of memory");
        return 2;
    }
    return upstream_wait(L, up, call);
}

static void
on_rcpt_reply(void *arg, enum relay_failure kind, const struct relay_reply *reply)
{
    struct upstream *up = arg;
    if (kind == RELAY_OK)
        up->accepted++;
    on_upstream_reply(arg, kind, reply);
}

/* Builds "VERB:<address> params" after checking that nothing in it can break the line. */
static const char *
path_command(lua_State *L, const char *verb, size_t *line_len)
{
    size_t len, params_len = 0;
    const char *address = luaL_checklstring(L, 2, &len);
    const char *params = luaL_optlstring(L, 3, "", &params_len);
    const char *why = address_problem(address, len);
    if (why != NULL)
        luaL_argerror(L, 2, lua_pushfstring(L, "not an address: %s", why));
    why = line_problem(params, params_len);
    if (why != NULL)
        luaL_argerror(L, 3, lua_pushfstring(L, "the parameter string %s", why));
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, verb);
    luaL_addstring(&b, ":<");
    luaL_addlstring(&b, address, len);
    luaL_addchar(&b, '>');
    if (params_len > 0) {
        luaL_addchar(&b, ' ');
        luaL_addlstring(&b, params, params_len);
    }
    luaL_pushresult(&b);
    return lua_tolstring(L, -1, line_len);
}

/* up:mail(from [, params]) -> code, text | nil, err */
static int
l_upstream_mail(lua_State *L)
{
    struct lrt_call *call;
    struct upstream *up = check_upstream(L, "mail", &call);
    size_t len;
    const char *line = path_command(L, "MAIL FROM", &len);
    up->accepted = 0;
    return send_command(L, up, call, line, len, RELAY_EXPECT_2XX, on_upstream_reply);
}

/* up:rcpt(to [, params]) -> code, text | nil, err */
static int
l_upstream_rcpt(lua_State *L)
{
    struct lrt_call *call;
    struct upstream *up = check_upstream(L, "rcpt", &call);
    size_t len;
    const char *line = path_command(L, "RCPT TO", &len);
    return send_command(L, up, call, line, len, RELAY_EXPECT_2XX, on_rcpt_reply);
}

/* up:rset() -> code, text | nil, err */
static int
l_upstream_rset(lua_State *L)
{
    struct lrt_call *call;
    struct upstream *up = check_upstream(L, "rset", &call);
    up->accepted = 0;
    return send_command(L, up, call, "RSET", 4, RELAY_EXPECT_2XX, on_upstream_reply);
}

/* up:command(line) -> code, text | nil, err: any other command (NOOP, VRFY, AUTH...); a 3xx
 * counts as an answer here. DATA and BDAT are refused: the message goes with up:data. */
static int
l_upstream_command(lua_State *L)
{
    struct lrt_call *call;
    struct upstream *up = check_upstream(L, "command", &call);
    size_t len;
    const char *line = luaL_checklstring(L, 2, &len);
    const char *why = line_problem(line, len);
    if (why != NULL)
        luaL_argerror(L, 2, lua_pushfstring(L, "a command is one line: it %s", why));
    size_t verb = strcspn(line, " ");
    if ((verb == 4 && strncasecmp(line, "DATA", 4) == 0) ||
        (verb == 4 && strncasecmp(line, "BDAT", 4) == 0))
        luaL_argerror(L, 2, "send the message with up:data");
    return send_command(L, up, call, line, len, RELAY_EXPECT_2XX_3XX, on_upstream_reply);
}

static void
on_quit_reply(void *arg, enum relay_failure kind, const struct relay_reply *reply)
{
    struct upstream *up = arg;
    upstream_close(up);
    on_upstream_reply(arg, kind, reply);
}

/* up:quit() -> code, text | nil, err; waits for the reply, and the connection is closed
 * either way */
static int
l_upstream_quit(lua_State *L)
{
    struct lrt_call *call;
    struct upstream *up = check_upstream(L, "quit", &call);
    return send_command(L, up, call, "QUIT", 4, RELAY_EXPECT_2XX, on_quit_reply);
}

static void
on_data_reply(void *arg, enum relay_failure kind, const struct relay_reply *reply)
{
    struct upstream *up = arg;
    if (!up->lmtp || relay_failure_is_fatal(kind)) {
        on_upstream_reply(arg, kind, reply);
        return;
    }
    lua_State *co = lrt_call_thread(up->waiting);
    if (!reply->end_of_data) {
        /* DATA refused: no message went, so there are no per-recipient replies to give. */
        upstream_resume(up, push_failure(co, "smtpd.connect", kind, reply));
        return;
    }
    lua_rawgeti(co, LUA_REGISTRYINDEX, up->results_ref);
    push_reply_pair(co, reply);
    lua_rawseti(co, -2, ++up->gathered);
    lua_pop(co, 1);
    if (up->gathered < up->expected)
        return;
    lua_rawgeti(co, LUA_REGISTRYINDEX, up->results_ref);
    upstream_resume(up, 1);
}

/* up:data(message) -> code, text (the reply to DATA or after the message) | nil, err;
 * over LMTP -> {{code, text}, ...}, one per accepted recipient in RCPT order (RFC 2033 4.2),
 * only when the message went and every reply came back; a refused DATA is nil, err, code */
static int
l_upstream_data(lua_State *L)
{
    struct lrt_call *call;
    struct upstream *up = check_upstream(L, "data", &call);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    if (up->closed || up->conn == NULL)
        return closed_result(L);
    if (up->lmtp && up->accepted == 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "no recipient was accepted");
        return 2;
    }
    if (relay_conn_data(up->conn, data, len, up->lmtp ? up->accepted : 1, on_data_reply, up) ==
        -1) {
        lua_pushnil(L);
        lua_pushliteral(L, "out of memory");
        return 2;
    }
    lua_pushvalue(L, 2);
    up->data_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (up->lmtp) {
        lua_newtable(L);
        up->results_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        up->expected = up->accepted;
        up->gathered = 0;
    }
    up->accepted = 0;
    return upstream_wait(L, up, call);
}

/* up:close() -> nothing; does not wait: an idle connection says QUIT and waits for the 221
 * in the background */
static int
l_upstream_close(lua_State *L)
{
    struct upstream *up = luaL_checkudata(L, 1, UPSTREAM_META);
    if (up->waiting != NULL)
        return luaL_error(L, "close: the upstream is busy with another command");
    upstream_close(up);
    return 0;
}

static int
l_upstream_gc(lua_State *L)
{
    struct upstream *up = luaL_checkudata(L, 1, UPSTREAM_META);
    upstream_close(up);
    return 0;
}

static int
l_upstream_index(lua_State *L)
{
    luaL_checkudata(L, 1, UPSTREAM_META);
    const char *key = luaL_checkstring(L, 2);
    if (strcmp(key, "extensions") == 0) {
        lua_getiuservalue(L, 1, 1);
        return 1;
    }
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "methods");
    lua_getfield(L, -1, key);
    return 1;
}

static const luaL_Reg upstream_methods[] = {
    {"mail", l_upstream_mail},   {"rcpt", l_upstream_rcpt},
    {"data", l_upstream_data},   {"rset", l_upstream_rset},
    {"quit", l_upstream_quit},   {"command", l_upstream_command},
    {"close", l_upstream_close}, {NULL, NULL},
};

void
lrelay_add(lua_State *L, const struct lrt_env *env)
{
    if (luaL_newmetatable(L, UPSTREAM_META)) {
        luaL_newlib(L, upstream_methods);
        lua_setfield(L, -2, "methods");
        lua_pushcfunction(L, l_upstream_index);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_upstream_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_upstream_gc);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
    lua_pushlightuserdata(L, (void *)env);
    lua_pushcclosure(L, l_smtpd_relay, 1);
    lua_setfield(L, -2, "relay");
    lua_pushlightuserdata(L, (void *)env);
    lua_pushcclosure(L, l_smtpd_connect, 1);
    lua_setfield(L, -2, "connect");
}
