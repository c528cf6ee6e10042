/* Loading the handler script and the modules it requires, with the trust checks a server
 * started as root makes on every file before Lua or dlopen reads it. */
#ifndef LUASMTPD_LUA_LOAD_H
#define LUASMTPD_LUA_LOAD_H

#include <stdbool.h>

typedef struct lua_State lua_State;

struct lload_options {
    const char *lua_dir;     /* the bundled scripts and helpers */
    const char *script_path; /* the handler script */
    bool started_as_root;    /* euid 0 at start: files others could write are refused */
    /* Told of every Lua file require loads, so it can be watched. */
    void (*on_file)(void *arg, const char *path);
    void *on_file_arg;
};

/* Sets package.path (the script's directory, then lua_dir, then Lua's defaults) and puts the
 * checked searchers in package.searchers. `opts` must outlive the state. */
void lload_install(lua_State *L, const struct lload_options *opts);
/* luaL_loadfile, with the file checked on the descriptor it is read from when the server was
 * started as root. Pushes the chunk or an error message; `refused`: the check refused it, and
 * that was logged. */
int lload_file(lua_State *L, const struct lload_options *opts, const char *path, bool *refused);

#endif
