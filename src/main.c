/* Entry point: the command line, where the bundled scripts are, then the server. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "luasmtpd/config.h"
#include "luasmtpd/listener.h"
#include "luasmtpd/log.h"

/* The bundled scripts: $LUASMTPD_LUA_DIR, else the source tree's when this binary is the one
 * in the build tree (so a developer runs what they edit), else the installed copy. */
static const char *
bundled_lua_dir(void)
{
    const char *env = getenv("LUASMTPD_LUA_DIR");
    if (env != NULL && *env != '\0')
        return env;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash != NULL) {
            *slash = '\0';
            char build[PATH_MAX];
            if (realpath(LUASMTPD_BUILD_DIR, build) != NULL && strcmp(exe, build) == 0)
                return LUASMTPD_SOURCE_LUA_DIR;
        }
    }
    return LUASMTPD_LUA_DIR;
}

int
main(int argc, char **argv)
{
    struct config cfg;
    switch (config_parse(&cfg, argc, argv, stdout, stderr)) {
    case CONFIG_RUN:
        break;
    case CONFIG_EXIT_OK:
        config_free(&cfg);
        return 0;
    case CONFIG_EXIT_USAGE:
        config_free(&cfg);
        return 2;
    }
    const char *lua_dir = bundled_lua_dir();
    if (!config_resolve_handler(&cfg, lua_dir, stderr)) {
        config_free(&cfg);
        return 2;
    }
    log_set_debug(cfg.debug);
    int status = listener_run(&cfg, lua_dir);
    config_free(&cfg);
    return status;
}
