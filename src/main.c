/* Entry point: the command line, where the bundled scripts are, then the server. */
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "luasmtpd/config.h"
#include "luasmtpd/listener.h"
#include "luasmtpd/log.h"

/* The bundled scripts: $LUASMTPD_LUA_DIR; else the source tree's when this binary is the one
 * in the build tree (a developer runs what they edit); else <prefix>/share/luasmtpd/lua beside
 * the binary, so an install moved to another prefix still finds its scripts; else the
 * configured install directory. */
static const char *
bundled_lua_dir(char *space, size_t size)
{
    const char *env = getenv("LUASMTPD_LUA_DIR");
    if (env != NULL && *env != '\0')
        return env;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    exe[n > 0 ? n : 0] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash == NULL)
        return LUASMTPD_LUA_DIR;
    *slash = '\0';
    char build[PATH_MAX];
    if (realpath(LUASMTPD_BUILD_DIR, build) != NULL && strcmp(exe, build) == 0)
        return LUASMTPD_SOURCE_LUA_DIR;
    struct stat st;
    if (snprintf(space, size, "%s/../share/luasmtpd/lua", exe) < (int)size &&
        stat(space, &st) == 0 && S_ISDIR(st.st_mode))
        return space;
    return LUASMTPD_LUA_DIR;
}

int
main(int argc, char **argv)
{
    /* Descriptors 0-2 must be open, or a socket or pipe could land there and be handed to a
     * child as its stdin or stdout. */
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) == -1 && open("/dev/null", O_RDWR) == -1)
            return 1;
    /* Message buffers past 128 KiB are mapped on their own and go back to the system when
     * freed. glibc would otherwise raise this threshold after the first such free and serve
     * later big buffers from the heap, where a freed one stays in RSS: the DATA budget counts
     * what we hold, and RSS should follow it. */
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
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
    char lua_dir_space[PATH_MAX];
    const char *lua_dir = bundled_lua_dir(lua_dir_space, sizeof(lua_dir_space));
    if (!config_resolve_handler(&cfg, lua_dir, stderr)) {
        config_free(&cfg);
        return 2;
    }
    log_set_debug(cfg.debug);
    if (cfg.check_only) {
        bool good = listener_check_script(&cfg, lua_dir);
        printf("%s: %s\n", cfg.script_path, good ? "ok" : "failed (see the error above)");
        config_free(&cfg);
        return good ? 0 : 1;
    }
    /* A message over a process's share of the DATA budget can never be taken: say so now. */
    size_t share = config_data_budget(&cfg);
    if (share != 0 && (cfg.size_limit == 0 || cfg.size_limit > share))
        log_warn("messages over %zu bytes (a process's share of --data-memory) will get 421 4.3.1",
                 share);
    int status = listener_run(&cfg, lua_dir);
    config_free(&cfg);
    return status;
}
