/* The command line: Python smtpd's flags first (-n -c -s -d -u -V -h, local and remote
 * host:port), then our own long options. Parsing is pure: it writes a struct config and the
 * messages it prints go to the streams it is given. It never talks SMTP or opens a socket. */
#ifndef LUASMTPD_CONFIG_H
#define LUASMTPD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "luasmtpd/networks.h"

#define LUASMTPD_VERSION "0.1.0"
#define CONFIG_DEFAULT_SIZE 33554432UL
/* --data-memory's default: a quarter of physical memory, at most this many MiB. */
#define CONFIG_DATA_MEMORY_CAP 1024
/* --trusted-networks' default: loopback, as Postfix's mynetworks_style = host at the least. */
#define CONFIG_TRUSTED_NETWORKS "127.0.0.0/8,::1/128"

struct config_setting {
    char *key;
    char *value;
};

struct config {
    char *local_host; /* without brackets for IPv6 */
    unsigned short local_port;
    char *remote_host;
    unsigned short remote_port;
    char *handler;     /* as given to -c */
    char *script_path; /* the file it resolved to; set by config_resolve_handler() */
    size_t size_limit; /* 0: none */
    bool debug;
    bool smtputf8;
    bool nosetuid;
    bool started_as_root; /* euid 0 at start: scripts others could write are refused */
    char *hostname;       /* for the greeting and EHLO; NULL: ask the system */
    /* Limits and timeouts: each one a --long-option; see the table in config.c. */
    /* A limit given as 0 for none is UINT_MAX here where the table in config.c says so. */
    unsigned max_recipients;   /* per message, then 452 */
    unsigned timeout;          /* seconds for a whole command line, then 421 */
    unsigned data_timeout;     /* seconds between two pieces of DATA, then 421 */
    unsigned min_data_rate;    /* bytes/s over the last 30 s of a DATA, from 30 s in; 0: off */
    unsigned data_memory_mb;   /* MiB of message data all sessions may hold, split among the
                                * workers; 0: no limit */
    unsigned shutdown_timeout; /* seconds transactions in flight get after SIGTERM */
    unsigned workers;          /* processes sharing the port; 1: this process serves */
    unsigned max_connections;  /* at once; lowered to what the descriptor limit fits */
    unsigned max_per_client;   /* at once from one address, then 421; UINT_MAX: none */
    unsigned max_messages;     /* per connection, then 421; 0: none */
    struct networks trusted;   /* clients exempt from the two above (--trusted-networks) */
    unsigned max_errors;       /* error replies per connection, then 421 */
    unsigned max_junk;         /* junk commands until a message is accepted; past: errors */
    unsigned greet_delay_ms;   /* wait before the greeting; a client talking first is refused */
    unsigned lua_instructions; /* per handler or hook call, then it fails; 0: no limit */
    unsigned lua_memory_mb;    /* per Lua state; 0: no limit */
    unsigned max_children;     /* smtpd.pipe children at once; the rest queue */
    unsigned watchdog;         /* seconds one loop turn may take, then exit 70; 0: off */
    bool no_reload;            /* do not watch the script files (SIGHUP still reloads) */
    bool check_only;           /* --check: load the script as a reload would, report, exit */
    /* TLS (tls.c); each NULL when not given. See the tls_options table in config.c. */
    char *tls_cert, *tls_key;     /* STARTTLS offered after EHLO (RFC 3207) */
    char *smtps_cert, *smtps_key; /* implicit TLS (RFC 8314) */
    char *smtps_host;             /* --smtps: the implicit-TLS listener; NULL: the main one is */
    unsigned short smtps_port;
    bool require_starttls; /* 530 before STARTTLS, but for EHLO HELO STARTTLS NOOP RSET QUIT */
    bool auth_plaintext;   /* AUTH offered outside TLS too (--no-requiretls) */
    bool auth_required;    /* 530 to MAIL before a successful AUTH */
    struct config_setting *settings;
    size_t n_settings;
};

enum config_result {
    CONFIG_RUN = 0,    /* go on and serve */
    CONFIG_EXIT_OK,    /* --help or --version was printed */
    CONFIG_EXIT_USAGE, /* the arguments were wrong; usage was printed */
};

enum config_result config_parse(struct config *cfg, int argc, char **argv, FILE *out, FILE *err);

/* Splits "host:port" or "[v6]:port". The host is copied into a new string. */
bool config_parse_hostport(const char *spec, char **host, unsigned short *port);

/* Turns -c's value into a script path: a path to a .lua file as it is, or a bundled handler's
 * name (Python's class names too) looked up in `lua_dir`. Returns false and prints why. */
bool config_resolve_handler(struct config *cfg, const char *lua_dir, FILE *err);

/* --data-memory's default on this machine: min(CONFIG_DATA_MEMORY_CAP, physical RAM / 4). */
unsigned config_default_data_memory(void);

/* The bytes of message data one serving process may hold: its share of --data-memory (0: no
 * limit). */
size_t config_data_budget(const struct config *cfg);

void config_free(struct config *cfg);

#endif
