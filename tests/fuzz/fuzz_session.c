/* Fuzzes a whole SMTP session: the real session code, event loop and Lua runtime (the sink
 * handler), with the fuzz input as what the client sends over a socketpair, then EOF. Whatever
 * the bytes, the session must end without a crash, a leak or a sanitizer report. */
#include <event2/event.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "luasmtpd/config.h"
#include "luasmtpd/log.h"
#include "luasmtpd/lua_runtime.h"
#include "luasmtpd/session.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct event_base *base;
static struct config cfg;
static struct lrt_options opts;
static struct lrt *rt;
static struct session_group group;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN);
    char *args[] = {"fuzz",         "-n",   "-c",          LUASMTPD_SOURCE_LUA_DIR "/sink.lua",
                    "--max-errors", "1000", "127.0.0.1:0", NULL};
    if (config_parse(&cfg, 7, args, stdout, stderr) != CONFIG_RUN ||
        !config_resolve_handler(&cfg, LUASMTPD_SOURCE_LUA_DIR, stderr))
        abort();
    cfg.size_limit = 4096;
    cfg.max_recipients = 5;
    base = event_base_new();
    opts = (struct lrt_options){
        .env = {.base = base,
                .hostname = "fuzz.example",
                .remote_host = cfg.remote_host,
                .remote_port = cfg.remote_port,
                .settings = cfg.settings,
                .n_settings = cfg.n_settings,
                .size_limit = cfg.size_limit,
                .debug = cfg.debug},
        .load = {.lua_dir = LUASMTPD_SOURCE_LUA_DIR,
                 .script_path = cfg.script_path,
                 .started_as_root = cfg.started_as_root},
        .lua_instructions = cfg.lua_instructions,
        .lua_memory_mb = cfg.lua_memory_mb,
        .max_children = cfg.max_children,
    };
    rt = lrt_new(&opts);
    if (rt == NULL || !lrt_load(rt))
        abort();
    group = (struct session_group){.base = base, .cfg = &cfg, .rt = rt, .hostname = "fuzz.example"};
    log_set_quiet(true); /* the log would drown the fuzzer's own output */
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];
    if (size > 1 << 16 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) != 0)
        return 0;
    struct sockaddr_storage peer = {.ss_family = AF_UNIX};
    session_start(&group, sv[0], (struct sockaddr *)&peer, sizeof(sa_family_t), false);
    size_t sent = 0;
    char sink[65536];
    /* Bounded: each round writes what the socket takes, runs the loop once, drains replies. */
    for (int round = 0; round < 10000 && group.count > 0; round++) {
        if (sent < size) {
            ssize_t n = write(sv[1], data + sent, size - sent);
            if (n > 0)
                sent += (size_t)n;
            if (sent == size)
                shutdown(sv[1], SHUT_WR);
        } else if (size == 0 && round == 0) {
            shutdown(sv[1], SHUT_WR);
        }
        event_base_loop(base, EVLOOP_NONBLOCK);
        while (read(sv[1], sink, sizeof(sink)) > 0)
            ;
    }
    session_group_close_all(&group);
    close(sv[1]);
    return 0;
}
