/* smtpd.relay and smtpd.connect: Lua faces of the relay client. Arguments are checked first
 * and misuse raises, naming the field; what the script should handle (an upstream that is
 * down, slow, refuses or breaks the protocol) returns nil, message, code, where code is only
 * ever the upstream's 4xx/5xx refusal, never a code that could pass for success. While a relay
 * works, the message string stays anchored in the registry: Lua never moves a string, so the
 * relay may read it in place without a copy.
 *
 * Options of both (fields of the argument table): host, port (default: the command line's
 * remotehost:remoteport), helo (default: our hostname), lmtp (false), timeout (seconds for the
 * connect, the greeting and each command's reply; default 60) and data_timeout (seconds for the
 * reply after the end of the message, each reply over LMTP; default 600, RFC 5321 4.5.3.2.6),
 * and TLS and AUTH (check_security): starttls ("try" | "require"), tls (true: implicit),
 * verify, cafile, servername, auth = {user=, password=}, auth_plaintext.
 * When the answer after the end of the message is lost (timeout, close), the message returned
 * starts "upstream's answer after the message was lost: it may have been delivered" and the
 * same is logged at warn: the one failure that may leave a copy upstream. */
#include "luasmtpd/lua_relay.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "luasmtpd/log.h"
#include "luasmtpd/lua_bind.h"
#include "luasmtpd/lua_dsn.h"
#include "luasmtpd/relay.h"

#define UPSTREAM_META "smtpd.upstream"

static const struct lrt_env *
env_of(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
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

/* Raises, naming the field, when `s` is unfit for a command line (line_problem). */
static void
check_line_field(lua_State *L, const char *what, const char *name, const char *s, size_t len)
{
    const char *why = line_problem(s, len);
    if (why != NULL)
        lbind_field_error(L, what, name, "%s", why);
}

static double
check_seconds(lua_State *L, const char *what, const char *name, double dflt)
{
    double value = lbind_number(L, 1, what, name, dflt);
    if (!(value > 0))
        lbind_field_error(L, what, name, "must be positive");
    return value;
}

/* RFC 4954 4: an AUTH line may be 12,288 bytes; PLAIN's base64 of both must fit in one. */
#define AUTH_CREDENTIALS_MAX 4096

/* A string field for the TLS or AUTH options: no NUL (it would cut the value short in C, and
 * PLAIN separates user and password with one), not empty. */
static const char *
check_secure_string(lua_State *L, int t, const char *what, const char *name)
{
    size_t len;
    const char *s = lbind_string(L, t, what, name, false, &len);
    if (s != NULL && (len == 0 || strlen(s) != len))
        lbind_field_error(L, what, name, "must be a non-empty string without NUL bytes");
    return s;
}

/* starttls = "try" | "require", tls = true (implicit), verify (default: true unless "try" without
 * auth), cafile, servername, auth = {user=, password=}, auth_plaintext (false). */
static void
check_security(lua_State *L, const char *what, struct relay_security *sec)
{
    /* Every string read stays on the stack until the binding returns: room for them all. */
    luaL_checkstack(L, 12, what);
    memset(sec, 0, sizeof(*sec));
    const char *starttls = lbind_string(L, 1, what, "starttls", false, NULL);
    if (starttls == NULL)
        sec->tls = RELAY_TLS_OFF;
    else if (strcmp(starttls, "try") == 0)
        sec->tls = RELAY_TLS_TRY;
    else if (strcmp(starttls, "require") == 0)
        sec->tls = RELAY_TLS_REQUIRE;
    else
        lbind_field_error(L, what, "starttls", "must be \"try\" or \"require\"");
    if (lbind_boolean(L, 1, what, "tls", false)) {
        if (starttls != NULL)
            lbind_field_error(L, what, "starttls", "cannot go with tls = true (implicit TLS)");
        sec->tls = RELAY_TLS_IMPLICIT;
    }
    sec->cafile = check_secure_string(L, 1, what, "cafile");
    sec->servername = check_secure_string(L, 1, what, "servername");
    if (sec->servername != NULL)
        check_line_field(L, what, "servername", sec->servername, strlen(sec->servername));
    sec->auth_plaintext = lbind_boolean(L, 1, what, "auth_plaintext", false);
    bool auth = lbind_field(L, 1, what, "auth", LUA_TTABLE, false) != LUA_TNIL;
    /* Opportunistic TLS does not verify by default (RFC 7435 5.1): an upstream with a
     * self-signed certificate still gets encrypted mail, not plaintext. Not with a password:
     * an unchecked certificate hands it to whoever sits in the path, as plaintext would. */
    sec->verify = lbind_boolean(L, 1, what, "verify", sec->tls != RELAY_TLS_TRY || auth);
    if (!auth) {
        lua_pop(L, 1);
        return;
    }
    int t = lua_gettop(L); /* stays on the stack, with the strings read from it */
    lua_pushfstring(L, "%s: field 'auth'", what);
    const char *auth_what = lua_tostring(L, -1);
    sec->user = check_secure_string(L, t, auth_what, "user");
    sec->password = check_secure_string(L, t, auth_what, "password");
    if (sec->user == NULL || sec->password == NULL)
        lbind_field_error(L, what, "auth", "needs user and password strings");
    if (strlen(sec->user) + strlen(sec->password) > AUTH_CREDENTIALS_MAX)
        lbind_field_error(L, what, "auth", "user and password are over %d bytes",
                          AUTH_CREDENTIALS_MAX);
}

/* Checks what relay{} and connect{} share: the options table, a call that may wait, and the
 * connection fields (defaults from the command line's remotehost:remoteport). */
static struct lrt_call *
check_conn_options(lua_State *L, const char *what, const struct lrt_env *env,
                   struct relay_conn_options *co)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    struct lrt_call *call = lbind_call(L, what);
    size_t len;
    co->host = lbind_string(L, 1, what, "host", false, &len);
    if (co->host == NULL)
        co->host = env->remote_host;
    else if (line_problem(co->host, len) != NULL || len == 0)
        lbind_field_error(L, what, "host", "is not a host name");
    lua_Integer port = env->remote_port;
    port = lbind_integer(L, 1, what, "port", port);
    if (port <= 0 || port >= 65536)
        lbind_field_error(L, what, "port", "must be 1-65535");
    co->port = (unsigned short)port;
    co->timeout = check_seconds(L, what, "timeout", RELAY_DEFAULT_TIMEOUT);
    co->data_timeout = check_seconds(L, what, "data_timeout", RELAY_DEFAULT_DATA_TIMEOUT);
    co->lmtp = lbind_boolean(L, 1, what, "lmtp", false);
    co->helo = lbind_string(L, 1, what, "helo", false, &len);
    if (co->helo == NULL)
        co->helo = env->hostname;
    else
        check_line_field(L, what, "helo", co->helo, len);
    check_security(L, what, &co->sec);
    return call;
}

/* nil, message, code: the code only for a refusal the upstream gave (4xx/5xx), nil when there
 * was no reply (or one of the wrong class, which must never be passed on as ours). */
static int
lrelay_push_failure(lua_State *L, const char *what, enum relay_failure kind,
                    const struct relay_reply *reply)
{
    const char *text = reply->text ? reply->text : "";
    if (!relay_failure_is_fatal(kind) && reply->code >= 400)
        return lbind_fail(L, reply->code, "%s: %d %s", relay_failure_name(kind), reply->code, text);
    if (kind == RELAY_OK)
        kind = RELAY_PROTOCOL; /* a failure must never read as a success */
    int n = lbind_fail(L, 0, "%s: %s", relay_failure_name(kind), text);
    if (kind == RELAY_UNKNOWN)
        log_warn("%s: %s", what, lua_tostring(L, -2));
    return n;
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
    struct lbind_hold hold; /* the call, and the message the relay reads in place */
    char **rcpts;
    size_t n_rcpts;
};

static void
lrelay_free(void *arg)
{
    struct lrelay *lr = arg;
    for (size_t i = 0; i < lr->n_rcpts; i++)
        free(lr->rcpts[i]);
    free(lr->rcpts);
    free(lr);
}

static void
lrelay_stop(void *arg)
{
    relay_cancel(((struct lrelay *)arg)->relay);
}

static void
lrelay_on_done(void *arg, const struct relay_result *result)
{
    struct lrelay *lr = arg;
    lua_State *co = lbind_thread(&lr->hold);
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
        n = lrelay_push_failure(co, "smtpd.relay", result->kind, &result->reply);
    }
    lbind_resume(&lr->hold, n);
}

/* Checks field 'to' (a recipient or a list of them) and leaves it on the stack as a list. */
static size_t
check_rcpts(lua_State *L, const char *what)
{
    int type = lua_getfield(L, 1, "to");
    if (type == LUA_TSTRING) {
        lua_createtable(L, 1, 0);
        lua_insert(L, -2);
        lua_rawseti(L, -2, 1);
    } else if (type != LUA_TTABLE) {
        lbind_field_error(L, what, "to", "must be a string or a list of strings, not %s",
                          luaL_typename(L, -1));
    }
    size_t n = (size_t)luaL_len(L, -1);
    if (n == 0)
        lbind_field_error(L, what, "to", "names no recipient");
    for (size_t i = 1; i <= n; i++) {
        size_t len;
        if (lua_rawgeti(L, -1, (lua_Integer)i) != LUA_TSTRING)
            lbind_field_error(L, what, "to", "[%d] must be a string, not %s", (int)i,
                              luaL_typename(L, -1));
        const char *rcpt = lua_tolstring(L, -1, &len);
        const char *why = address_problem(rcpt, len);
        if (why == NULL && len == 0)
            why = "is empty";
        if (why != NULL)
            lbind_field_error(L, what, "to", "[%d] %s", (int)i, why);
        lua_pop(L, 1);
    }
    return n;
}

/* smtpd.relay{host=, port=, from=, to=, data=, timeout=, data_timeout=, lmtp=, helo=,
 *             smtputf8=, dsn=, rcpt_dsn=, starttls=, tls=, verify=, cafile=, servername=,
 *             auth=, auth_plaintext=}
 *   -> refused (recipient -> {code, text}; empty when all were accepted) | nil, err, code */
static int
l_smtpd_relay(lua_State *L)
{
    static const char what[] = "smtpd.relay";
    const struct lrt_env *env = env_of(L);
    struct relay_request req = {0};
    struct lrt_call *call = check_conn_options(L, what, env, &req.conn);

    size_t len;
    req.mailfrom = lbind_string(L, 1, what, "from", true, &len);
    const char *why = address_problem(req.mailfrom, len);
    if (why != NULL)
        return lbind_field_error(L, what, "from", "%s", why);
    req.data = lbind_string(L, 1, what, "data", true, &req.len);
    int data_index = lua_gettop(L);
    req.smtputf8 = lbind_boolean(L, 1, what, "smtputf8", false);
    size_t n = check_rcpts(L, what);
    int list = lua_gettop(L);
    ldsn_check(L, 1, what, n, &req.dsn, &req.rcpt_dsn);
    lua_pushvalue(L, list); /* on top again, where the loop below reads it */

    struct lrelay *lr = calloc(1, sizeof(*lr));
    char **rcpts = calloc(n, sizeof(char *));
    if (lr == NULL || rcpts == NULL) {
        free(lr);
        free(rcpts);
        return luaL_error(L, "%s: out of memory", what);
    }
    lr->rcpts = rcpts;
    lbind_hold_init(&lr->hold, lr, lrelay_stop, lrelay_free);
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i + 1);
        rcpts[i] = strdup(lua_tostring(L, -1));
        lua_pop(L, 1);
        lr->n_rcpts = i + 1;
        if (rcpts[i] == NULL) {
            lbind_release(&lr->hold);
            return luaL_error(L, "%s: out of memory", what);
        }
    }
    req.rcpts = (const char *const *)rcpts;
    req.n_rcpts = n;
    lbind_anchor(L, &lr->hold, 0, data_index);
    lr->relay = relay_start(env->base, env->dns, &req, lrelay_on_done, lr);
    if (lr->relay == NULL) {
        lbind_release(&lr->hold);
        return lbind_fail(L, 0, "%s: cannot start (out of memory)", what);
    }
    return lbind_wait(L, &lr->hold, call);
}

/* ---- smtpd.connect{...} and the upstream object ---- */

/* What an upstream's hold anchors while a method waits. */
enum { UPSTREAM_SELF, UPSTREAM_DATA, UPSTREAM_RESULTS };

struct upstream {
    struct relay_conn *conn;
    struct lbind_hold hold; /* the call suspended in one of our methods; UPSTREAM_* refs */
    unsigned accepted;
    unsigned expected; /* LMTP: replies due after the message */
    unsigned gathered; /* LMTP: replies gathered so far, in the UPSTREAM_RESULTS table */
    bool lmtp;
    bool closed;
};

static void
upstream_close(struct upstream *up)
{
    if (up->conn != NULL)
        relay_conn_close(up->conn);
    up->conn = NULL;
    up->closed = true;
}

static void
upstream_stop(void *arg)
{
    upstream_close(arg);
}

static int
upstream_wait(lua_State *L, struct upstream *up, struct lrt_call *call)
{
    lbind_anchor(L, &up->hold, UPSTREAM_SELF, 1);
    return lbind_wait(L, &up->hold, call);
}

/* The fields a script reads as up.NAME, in the uservalue: extensions, tls (whether the
 * connection is encrypted). */
static void
push_fields(lua_State *L, struct relay_conn *conn)
{
    unsigned ext = relay_conn_extensions(conn);
    lua_createtable(L, 0, 2);
    lua_pushboolean(L, relay_conn_tls(conn));
    lua_setfield(L, -2, "tls");
    lua_createtable(L, 0, 5);
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
    if (ext & RELAY_EXT_DSN) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "DSN");
    }
    lua_setfield(L, -2, "extensions");
}

static void
upstream_on_ready(void *arg, struct relay_conn *conn, enum relay_failure kind,
                  const struct relay_reply *reply)
{
    struct upstream *up = arg;
    lua_State *co = lbind_thread(&up->hold);
    if (kind != RELAY_OK) {
        up->conn = NULL; /* the relay client already let it go */
        up->closed = true;
        lbind_resume(&up->hold, lrelay_push_failure(co, "smtpd.connect", kind, reply));
        return;
    }
    up->conn = conn;
    lua_rawgeti(co, LUA_REGISTRYINDEX, up->hold.refs[UPSTREAM_SELF]);
    push_fields(co, conn);
    lua_setiuservalue(co, -2, 1);
    lbind_resume(&up->hold, 1);
}

/* smtpd.connect{host=, port=, timeout=, data_timeout=, lmtp=, helo=, starttls=, tls=, verify=,
 *               cafile=, servername=, auth=, auth_plaintext=}
 *   -> upstream | nil, err, code */
static int
l_smtpd_connect(lua_State *L)
{
    static const char what[] = "smtpd.connect";
    const struct lrt_env *env = env_of(L);
    struct relay_conn_options co;
    struct lrt_call *call = check_conn_options(L, what, env, &co);
    struct upstream *up = lua_newuserdatauv(L, sizeof(*up), 1);
    memset(up, 0, sizeof(*up));
    lbind_hold_init(&up->hold, up, upstream_stop, NULL);
    up->lmtp = co.lmtp;
    luaL_setmetatable(L, UPSTREAM_META);
    lua_replace(L, 1); /* upstream_wait anchors argument 1 */
    struct relay_conn *conn = relay_conn_open(env->base, env->dns, &co, upstream_on_ready, up);
    if (conn == NULL) {
        up->closed = true;
        return lbind_fail(L, 0, "%s: cannot start (out of memory)", what);
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
    *call = lbind_call(L, method);
    if (up->hold.call != NULL)
        luaL_error(L, "%s: the upstream is busy with another command", method);
    return up;
}

/* code, text for a reply (a refusal included); nil, message, nil when the connection is gone,
 * which closes the upstream object: nothing more can be asked of it. */
static void
upstream_on_reply(void *arg, enum relay_failure kind, const struct relay_reply *reply)
{
    struct upstream *up = arg;
    lua_State *co = lbind_thread(&up->hold);
    if (relay_failure_is_fatal(kind)) {
        upstream_close(up);
        lbind_resume(&up->hold, lrelay_push_failure(co, "smtpd.connect", kind, reply));
        return;
    }
    lua_pushinteger(co, reply->code);
    lua_pushstring(co, reply->text);
    lbind_resume(&up->hold, 2);
}

/* Sends one command line; the reply comes back as code, text. */
static int
upstream_send(lua_State *L, struct upstream *up, struct lrt_call *call, const char *line,
              size_t len, enum relay_expect expect, relay_reply_fn done)
{
    if (up->closed || up->conn == NULL)
        return lbind_fail(L, 0, "the upstream connection is closed");
    if (relay_conn_command(up->conn, line, len, expect, done, up) == -1)
        return lbind_fail(L, 0, "out of memory");
    return upstream_wait(L, up, call);
}

static void
upstream_on_rcpt(void *arg, enum relay_failure kind, const struct relay_reply *reply)
{
    struct upstream *up = arg;
    if (kind == RELAY_OK)
        up->accepted++;
    upstream_on_reply(arg, kind, reply);
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

/* up:mail and up:rcpt: "VERB:<address> params"; MAIL starts a new transaction. */
static int
upstream_path(lua_State *L, const char *method, const char *verb, relay_reply_fn done)
{
    struct lrt_call *call;
    struct upstream *up = check_upstream(L, method, &call);
    size_t len;
    const char *line = path_command(L, verb, &len);
    if (done != upstream_on_rcpt)
        up->accepted = 0;
    return upstream_send(L, up, call, line, len, RELAY_EXPECT_2XX, done);
}

/* up:mail(from [, params]) -> code, text | nil, err, nil */
static int
l_upstream_mail(lua_State *L)
{
    return upstream_path(L, "mail", "MAIL FROM", upstream_on_reply);
}

/* up:rcpt(to [, params]) -> code, text | nil, err, nil */
static int
l_upstream_rcpt(lua_State *L)
{
    return upstream_path(L, "rcpt", "RCPT TO", upstream_on_rcpt);
}

/* up:rset() -> code, text | nil, err, nil */
static int
l_upstream_rset(lua_State *L)
{
    struct lrt_call *call;
    struct upstream *up = check_upstream(L, "rset", &call);
    up->accepted = 0;
    return upstream_send(L, up, call, "RSET", 4, RELAY_EXPECT_2XX, upstream_on_reply);
}

/* Argument 2 of up:command: one line that is not DATA or BDAT (the message goes with up:data). */
static const char *
command_line(lua_State *L, size_t *len)
{
    const char *line = luaL_checklstring(L, 2, len);
    const char *why = line_problem(line, *len);
    if (why != NULL)
        luaL_argerror(L, 2, lua_pushfstring(L, "a command is one line: it %s", why));
    size_t verb = strcspn(line, " ");
    if ((verb == 4 && strncasecmp(line, "DATA", 4) == 0) ||
        (verb == 4 && strncasecmp(line, "BDAT", 4) == 0))
        luaL_argerror(L, 2, "send the message with up:data");
    return line;
}

/* up:command(line) -> code, text | nil, err, nil: any other command (NOOP, VRFY, AUTH...); a
 * 3xx counts as an answer here. */
static int
l_upstream_command(lua_State *L)
{
    struct lrt_call *call;
    struct upstream *up = check_upstream(L, "command", &call);
    size_t len;
    const char *line = command_line(L, &len);
    return upstream_send(L, up, call, line, len, RELAY_EXPECT_2XX_3XX, upstream_on_reply);
}

static void
upstream_on_quit(void *arg, enum relay_failure kind, const struct relay_reply *reply)
{
    struct upstream *up = arg;
    upstream_close(up);
    upstream_on_reply(arg, kind, reply);
}

/* up:quit() -> code, text | nil, err, nil; waits for the reply, and the connection is closed
 * either way */
static int
l_upstream_quit(lua_State *L)
{
    struct lrt_call *call;
    struct upstream *up = check_upstream(L, "quit", &call);
    return upstream_send(L, up, call, "QUIT", 4, RELAY_EXPECT_2XX, upstream_on_quit);
}

static void
upstream_on_data(void *arg, enum relay_failure kind, const struct relay_reply *reply)
{
    struct upstream *up = arg;
    if (!up->lmtp || relay_failure_is_fatal(kind)) {
        upstream_on_reply(arg, kind, reply);
        return;
    }
    lua_State *co = lbind_thread(&up->hold);
    if (!reply->end_of_data) {
        /* DATA refused: no message went, so there are no per-recipient replies to give. */
        lbind_resume(&up->hold, lrelay_push_failure(co, "smtpd.connect", kind, reply));
        return;
    }
    lua_rawgeti(co, LUA_REGISTRYINDEX, up->hold.refs[UPSTREAM_RESULTS]);
    push_reply_pair(co, reply);
    lua_rawseti(co, -2, ++up->gathered);
    if (up->gathered < up->expected) {
        lua_pop(co, 1);
        return;
    }
    lbind_resume(&up->hold, 1);
}

/* up:data(message) -> code, text (the reply to DATA or after the message) | nil, err, nil;
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
        return lbind_fail(L, 0, "the upstream connection is closed");
    if (up->lmtp && up->accepted == 0)
        return lbind_fail(L, 0, "no recipient was accepted");
    if (relay_conn_data(up->conn, data, len, up->lmtp ? up->accepted : 1, upstream_on_data, up) ==
        -1)
        return lbind_fail(L, 0, "out of memory");
    lbind_anchor(L, &up->hold, UPSTREAM_DATA, 2);
    if (up->lmtp) {
        lua_newtable(L);
        lbind_anchor(L, &up->hold, UPSTREAM_RESULTS, -1);
        lua_pop(L, 1);
        up->expected = up->accepted;
        up->gathered = 0;
    }
    up->accepted = 0;
    return upstream_wait(L, up, call);
}

/* up:close() -> nothing; does not wait: an idle connection says QUIT and waits for the 221
 * in the background. Also the upstream's __close: a to-be-closed variable in one coroutine
 * may name an upstream another one waits on, and closing it then would leave that call
 * waiting for a callback that never comes (and the client for a reply). */
static int
l_upstream_close(lua_State *L)
{
    struct upstream *up = luaL_checkudata(L, 1, UPSTREAM_META);
    if (up->hold.call != NULL)
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

/* up.NAME: the connection's own fields (its uservalue, see push_fields), then the methods (the
 * upvalue). liolib sets its method table as __index itself; an upstream also has a field of
 * its own, so this looks in both, and nothing else. */
static int
l_upstream_index(lua_State *L)
{
    if (lua_getiuservalue(L, 1, 1) == LUA_TTABLE) {
        lua_pushvalue(L, 2);
        if (lua_rawget(L, -2) != LUA_TNIL)
            return 1;
    }
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
    return 1;
}

static const luaL_Reg upstream_methods[] = {
    {"mail", l_upstream_mail},   {"rcpt", l_upstream_rcpt},
    {"data", l_upstream_data},   {"rset", l_upstream_rset},
    {"quit", l_upstream_quit},   {"command", l_upstream_command},
    {"close", l_upstream_close}, {NULL, NULL},
};

static const luaL_Reg upstream_metamethods[] = {
    {"__index", NULL}, /* placeholder: a closure over the method table, below */
    {"__gc", l_upstream_gc},
    {"__close", l_upstream_close},
    {NULL, NULL},
};

void
lrelay_add(lua_State *L, const struct lrt_env *env)
{
    if (luaL_newmetatable(L, UPSTREAM_META)) {
        luaL_setfuncs(L, upstream_metamethods, 0);
        luaL_newlib(L, upstream_methods);
        lua_pushcclosure(L, l_upstream_index, 1);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lua_pushlightuserdata(L, (void *)env);
    lua_pushcclosure(L, l_smtpd_relay, 1);
    lua_setfield(L, -2, "relay");
    lua_pushlightuserdata(L, (void *)env);
    lua_pushcclosure(L, l_smtpd_connect, 1);
    lua_setfield(L, -2, "connect");
}
