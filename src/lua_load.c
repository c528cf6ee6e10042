/* Loading Lua files into a state: package.path with the script's directory and the bundled
 * helpers first, and every file (the script, a required module, a C library) refused when a
 * server started as root could run code someone else wrote. It runs no handler and keeps no
 * state of its own beyond the options it is given. */
#include "luasmtpd/lua_load.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "luasmtpd/log.h"

static void
set_package_path(lua_State *L, const struct lload_options *opts)
{
    /* The script's own directory first, so a handler can keep its modules beside it; then the
     * bundled helpers; then Lua's defaults. */
    const char *script = opts->script_path;
    const char *slash = strrchr(script, '/');
    size_t dir_len = slash ? (size_t)(slash - script) : 1;
    const char *dirs[2] = {slash ? script : ".", opts->lua_dir};
    size_t lens[2] = {dir_len, strlen(opts->lua_dir)};

    lua_getglobal(L, "package");
    int package = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 0; i < 2; i++) {
        luaL_addlstring(&b, dirs[i], lens[i]);
        luaL_addstring(&b, "/?.lua;");
        luaL_addlstring(&b, dirs[i], lens[i]);
        luaL_addstring(&b, "/?/init.lua;");
    }
    lua_getfield(L, package, "path");
    luaL_addvalue(&b);
    luaL_pushresult(&b);
    lua_setfield(L, package, "path");
    lua_pop(L, 1);
}

/* Why a server started as root must not run the file open on `fd` (or NULL when it may): a
 * user other than root and the one we run as could have written it or replaced it, so their
 * code would run with our privileges (sshd's StrictModes, Exim's and `postfix check`'s rules).
 * The file's own directory counts too, unless sticky: whoever may write there may rename
 * another file over ours. Group root is root's. The reason goes in `why`. */
static const char *
untrusted_because(int fd, const char *path, char *why, size_t size)
{
    struct stat st;
    char dir[PATH_MAX];
    uid_t me = geteuid();
    if (fstat(fd, &st) != 0) {
        snprintf(why, size, "cannot stat it: %s", strerror(errno));
        return why;
    }
    bool others = (st.st_mode & S_IWOTH) || ((st.st_mode & S_IWGRP) && st.st_gid != 0);
    if (st.st_uid != 0 && st.st_uid != me) {
        snprintf(why, size,
                 "owned by uid %u, neither root nor the uid we run as (%u); fix with "
                 "chown root %s",
                 (unsigned)st.st_uid, (unsigned)me, path);
        return why;
    }
    if (others) {
        snprintf(why, size, "writable by others (mode %04o); fix with chmod go-w %s",
                 (unsigned)(st.st_mode & 07777), path);
        return why;
    }
    /* The directory the file really is in, past any symlink. */
    if (realpath(path, dir) == NULL) {
        snprintf(why, size, "cannot resolve its path: %s", strerror(errno));
        return why;
    }
    char *slash = strrchr(dir, '/');
    slash[slash == dir ? 1 : 0] = '\0';
    if (stat(dir, &st) != 0) {
        snprintf(why, size, "cannot stat its directory %s: %s", dir, strerror(errno));
        return why;
    }
    others = (st.st_mode & S_IWOTH) || ((st.st_mode & S_IWGRP) && st.st_gid != 0);
    if (st.st_uid != 0 && st.st_uid != me) {
        snprintf(why, size,
                 "its directory %s is owned by uid %u, neither root nor the uid we "
                 "run as (%u); fix with chown root %s",
                 dir, (unsigned)st.st_uid, (unsigned)me, dir);
        return why;
    }
    if (others && !(st.st_mode & S_ISVTX)) {
        snprintf(why, size,
                 "its directory %s is writable by others (mode %04o); fix with "
                 "chmod go-w %s",
                 dir, (unsigned)(st.st_mode & 07777), dir);
        return why;
    }
    return NULL;
}

struct chunk_reader {
    FILE *f;
    size_t start; /* bytes already in buf: what was read to look for a BOM or a "#" line */
    char buf[4096];
};

static const char *
chunk_read(lua_State *L, void *ud, size_t *size)
{
    (void)L;
    struct chunk_reader *r = ud;
    if (r->start > 0) {
        *size = r->start;
        r->start = 0;
        return r->buf;
    }
    *size = fread(r->buf, 1, sizeof(r->buf), r->f);
    return *size > 0 ? r->buf : NULL;
}

/* luaL_loadfile, with the file checked on the descriptor it is read from (no window between
 * the check and the read) when the server was started as root. Pushes the chunk, or an error
 * message; `refused` says the check refused it (and that was logged). */
int
lload_file(lua_State *L, const struct lload_options *opts, const char *path, bool *refused)
{
    *refused = false;
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        lua_pushfstring(L, "cannot open %s: %s", path, strerror(errno));
        return LUA_ERRFILE;
    }
    char why[3 * PATH_MAX + 256];
    if (opts->started_as_root && untrusted_because(fileno(f), path, why, sizeof(why))) {
        fclose(f);
        *refused = true;
        log_error("refusing to load %s: %s", path, why);
        lua_pushfstring(L, "refusing to load %s: %s", path, why);
        return LUA_ERRFILE;
    }
    /* As luaL_loadfile: a UTF-8 BOM is dropped, a first line starting with '#' (#!) is
     * skipped but its line end kept, so line numbers stay right. */
    struct chunk_reader r = {.f = f};
    r.start = fread(r.buf, 1, 3, f);
    if (r.start == 3 && memcmp(r.buf, "\xEF\xBB\xBF", 3) == 0)
        r.start = fread(r.buf, 1, 1, f);
    if (r.start > 0 && r.buf[0] == '#') {
        char *nl = memchr(r.buf, '\n', r.start);
        if (nl != NULL) {
            r.start -= (size_t)(nl - r.buf);
            memmove(r.buf, nl, r.start);
        } else {
            int c;
            while ((c = getc(f)) != EOF && c != '\n')
                ;
            r.buf[0] = '\n';
            r.start = c == '\n' ? 1 : 0;
        }
    }
    lua_pushfstring(L, "@%s", path);
    int status = lua_load(L, chunk_read, &r, lua_tostring(L, -1), NULL);
    lua_remove(L, -2);
    if (ferror(f) && status == LUA_OK) {
        lua_pop(L, 1);
        lua_pushfstring(L, "cannot read %s", path);
        status = LUA_ERRFILE;
    }
    fclose(f);
    return status;
}

/* package.searchers[2], Lua files on package.path, as Lua's own but loading through
 * lload_file, and telling on_file which file each module came from, so an edit to a
 * required module reloads too. Upvalues: the options, package, package.searchpath. */
static int
checked_searcher(lua_State *L)
{
    const struct lload_options *opts = lua_touserdata(L, lua_upvalueindex(1));
    const char *name = luaL_checkstring(L, 1);
    lua_pushvalue(L, lua_upvalueindex(3));
    lua_pushvalue(L, 1);
    if (lua_getfield(L, lua_upvalueindex(2), "path") != LUA_TSTRING)
        return luaL_error(L, "'package.path' must be a string");
    lua_call(L, 2, 2);
    if (lua_isnil(L, -2))
        return 1; /* the files it tried, for require's message */
    lua_pop(L, 1);
    const char *filename = lua_tostring(L, -1);
    bool refused;
    if (lload_file(L, opts, filename, &refused) != LUA_OK)
        return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s", name, filename,
                          lua_tostring(L, -1));
    if (opts->on_file != NULL)
        opts->on_file(opts->on_file_arg, filename);
    lua_insert(L, -2);
    return 2;
}

/* package.searchers[3] and [4], C libraries on package.cpath, wrapped: dlopen runs a
 * library's constructors, so the file is checked before the searcher it wraps opens it (a
 * window the directory check closes: only root or we may replace it there). Upvalues: the
 * options, package, package.searchpath, the wrapped searcher, and whether it looks for the
 * root of a dotted name ([4]: "a" of "a.b"). */
static int
checked_c_searcher(lua_State *L)
{
    const struct lload_options *opts = lua_touserdata(L, lua_upvalueindex(1));
    const char *name = luaL_checkstring(L, 1);
    const char *dot = strchr(name, '.');
    if (opts->started_as_root && (!lua_toboolean(L, lua_upvalueindex(5)) || dot != NULL)) {
        lua_pushvalue(L, lua_upvalueindex(3));
        if (lua_toboolean(L, lua_upvalueindex(5)))
            lua_pushlstring(L, name, (size_t)(dot - name));
        else
            lua_pushvalue(L, 1);
        if (lua_getfield(L, lua_upvalueindex(2), "cpath") != LUA_TSTRING)
            return luaL_error(L, "'package.cpath' must be a string");
        lua_call(L, 2, 1);
        const char *filename = lua_tostring(L, -1);
        int fd = filename != NULL ? open(filename, O_RDONLY | O_CLOEXEC) : -1;
        if (fd != -1) {
            char why[3 * PATH_MAX + 256];
            bool bad = untrusted_because(fd, filename, why, sizeof(why)) != NULL;
            close(fd);
            if (bad) {
                log_error("refusing to load %s: %s", filename, why);
                return luaL_error(L,
                                  "error loading module '%s' from file '%s':\n\trefusing to "
                                  "load %s: %s",
                                  name, filename, filename, why);
            }
        }
        lua_settop(L, 1);
    }
    lua_pushvalue(L, lua_upvalueindex(4));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

static void
install_searchers(lua_State *L, const struct lload_options *opts)
{
    lua_getglobal(L, "package");
    int package = lua_gettop(L);
    lua_getfield(L, package, "searchers");
    int searchers = lua_gettop(L);
    lua_pushlightuserdata(L, (void *)opts);
    lua_pushvalue(L, package);
    lua_getfield(L, package, "searchpath");
    lua_pushcclosure(L, checked_searcher, 3);
    lua_rawseti(L, searchers, 2);
    for (int i = 3; i <= 4; i++) {
        lua_pushlightuserdata(L, (void *)opts);
        lua_pushvalue(L, package);
        lua_getfield(L, package, "searchpath");
        lua_rawgeti(L, searchers, i);
        lua_pushboolean(L, i == 4);
        lua_pushcclosure(L, checked_c_searcher, 5);
        lua_rawseti(L, searchers, i);
    }
    lua_settop(L, package - 1);
}

void
lload_install(lua_State *L, const struct lload_options *opts)
{
    set_package_path(L, opts);
    install_searchers(L, opts);
}
