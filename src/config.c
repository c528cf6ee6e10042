/* The command line, compatible with `python -m smtpd` (Lib/smtpd.py's getopt flags and
 * positional host:port pair), plus long options of our own. Errors print usage and return
 * CONFIG_EXIT_USAGE; main() turns that into exit status 2. */
#include "luasmtpd/config.h"

#include <ctype.h>
#include <stddef.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static const char usage_text[] =
    "Usage: %s [options] [localhost:localport [remotehost:remoteport]]\n"
    "\n"
    "A scriptable SMTP server: every message goes to a Lua handler's process_message.\n"
    "\n"
    "Options (those of `python -m smtpd`):\n"
    "  -n, --nosetuid        do not drop to user nobody (done when started as root)\n"
    "  -c, --class NAME      handler: a bundled one (debugging, sink, pureproxy, mailman;\n"
    "                        Python's DebuggingServer, PureProxy, MailmanProxy too) or a\n"
    "                        path to a .lua script (default: debugging)\n"
    "  -s, --size BYTES      largest message accepted, advertised as SIZE (default %lu;\n"
    "                        0: no limit)\n"
    "  -d, --debug           debug lines on stderr\n"
    "  -u, --smtputf8        offer SMTPUTF8 (RFC 6531); the default, kept for Python's flag\n"
    "  -V, --version         print the version and exit\n"
    "  -h, --help            print this and exit\n"
    "Options of our own:\n"
    "  --set KEY=VALUE       a setting for the script: smtpd.settings.KEY (repeatable)\n"
    "  --no-smtputf8         do not offer SMTPUTF8\n"
    "  --trusted-networks LIST\n"
    "                        clients exempt from --max-per-client and --max-messages, and\n"
    "                        the relay handlers' default relay_clients: IPv4 and IPv6 CIDR,\n"
    "                        comma-separated (default " CONFIG_TRUSTED_NETWORKS "; '': none)\n"
    "  --hostname NAME       the name in the greeting and EHLO (default: this host's fully\n"
    "                        qualified name, as Python's socket.getfqdn())\n"
    "  --no-reload           do not reload when the script files change (SIGHUP still does)\n"
    "  --check SCRIPT        load SCRIPT as a reload would, say whether it is good, exit 0/1\n"
    "%s"
    "TLS (OpenSSL; TLS 1.2 and 1.3; certificates and keys reload on SIGHUP):\n"
    "%s"
    "\n"
    "localhost:localport defaults to localhost:8025 (port 0 picks a free one; the bound\n"
    "address is logged), remotehost:remoteport to localhost:25 (the relay handlers'\n"
    "upstream, smtpd.remote). IPv6 addresses go in brackets: [::1]:8025.\n";

/* A default that depends on the machine, computed at parse time by numeric_default() (one
 * such option so far: --data-memory). */
#define DEFAULT_COMPUTED UINT_MAX
#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

/* The numeric options: limits and timeouts, each with its default and range. A limit whose 0
 * means none is either read as 0 by the code that applies it (help says what 0 does), or, when
 * `none` is set, stored as UINT_MAX, which no count reaches. Those that take no 0: the
 * timeouts (a client that never finishes a line would hold its slot for ever; they are the
 * defence against slow clients), --workers (no process would serve) and --max-children (its
 * count sizes the descriptors kept for children). */
static const struct {
    const char *name;
    size_t field;
    unsigned def, min, max;
    bool none; /* 0 given: stored as UINT_MAX */
    const char *help;
} numeric_options[] = {
    {"max-recipients", offsetof(struct config, max_recipients), 1000, 0, UINT_MAX, true,
     "recipients per message, then 452 (0: no limit)"},
    {"timeout", offsetof(struct config, timeout), 300, 1, 86400, false,
     "seconds for a whole command line, from its prompt (RFC 5321 4.5.3.2.7), then 421"},
    {"data-timeout", offsetof(struct config, data_timeout), 180, 1, 86400, false,
     "seconds between two pieces of DATA (RFC 5321 4.5.3.2.6), then 421"},
    {"min-data-rate", offsetof(struct config, min_data_rate), 500, 0, UINT_MAX, false,
     "bytes/s a DATA must keep up over its last 30 s, from 30 s into it (0: off)"},
    {"data-memory", offsetof(struct config, data_memory_mb), DEFAULT_COMPUTED, 0, 1048576, false,
     "MiB all DATA in flight may hold, split among the workers, then 452/421 4.3.1 (0: no limit)"},
    {"shutdown-timeout", offsetof(struct config, shutdown_timeout), 30, 0, 86400, false,
     "seconds transactions in flight get after SIGTERM (0: none, they are cut at once)"},
    {"workers", offsetof(struct config, workers), 1, 1, 64, false,
     "processes sharing the port (SO_REUSEPORT), each with its own loop and Lua state"},
    {"max-connections", offsetof(struct config, max_connections), 10000, 0, UINT_MAX, true,
     "connections at once, then 421 before any Lua runs (0: as many as the descriptors fit)"},
    {"max-per-client", offsetof(struct config, max_per_client), 128, 0, UINT_MAX, true,
     "connections at once from one address not in --trusted-networks, then 421 (0: no limit)"},
    {"max-messages", offsetof(struct config, max_messages), 1000, 0, UINT_MAX, false,
     "messages per connection, then 421 (as Exim's default; 0: no limit)"},
    {"max-errors", offsetof(struct config, max_errors), 20, 0, UINT_MAX, true,
     "error replies per connection, then 421 (Postfix's hard error limit; 0: no limit)"},
    {"max-junk", offsetof(struct config, max_junk), 100, 0, UINT_MAX, false,
     "NOOP RSET HELP VRFY EXPN HELO EHLO until a message is accepted, then errors (0: no limit)"},
    {"greet-delay", offsetof(struct config, greet_delay_ms), 0, 0, 60000, false,
     "ms to wait before the greeting; a client that talks first is refused (0: none)"},
    {"lua-instructions", offsetof(struct config, lua_instructions), 50000000, 0, UINT_MAX, false,
     "Lua instructions per handler or hook call, then it fails with 451 (0: no limit)"},
    {"lua-memory", offsetof(struct config, lua_memory_mb), 1024, 0, 1048576, false,
     "MiB a Lua state may use (0: no limit)"},
    {"max-children", offsetof(struct config, max_children), 32, 1, 4096, false,
     "smtpd.pipe children at once; the rest wait their turn"},
    {"watchdog", offsetof(struct config, watchdog), 60, 0, 86400, false,
     "seconds one event-loop turn may take (a looping Lua __gc), then exit 70 (0: off)"},
};
#define N_NUMERIC (sizeof(numeric_options) / sizeof(numeric_options[0]))

/* The TLS options: files (PEM), a listen address, a flag. aiosmtpd's names first; the
 * hyphenated spellings name the same fields. */
enum tls_option_kind { TLS_OPT_FILE, TLS_OPT_HOSTPORT, TLS_OPT_FLAG };
static const struct {
    const char *name;
    enum tls_option_kind kind;
    size_t field; /* char * (FILE), char * host beside its port (HOSTPORT), bool (FLAG) */
    const char *help;
} tls_options[] = {
    {"tlscert", TLS_OPT_FILE, offsetof(struct config, tls_cert),
     "certificate chain for STARTTLS, offered after EHLO (also --tls-cert)"},
    {"tls-cert", TLS_OPT_FILE, offsetof(struct config, tls_cert), NULL},
    {"tlskey", TLS_OPT_FILE, offsetof(struct config, tls_key), "its private key (also --tls-key)"},
    {"tls-key", TLS_OPT_FILE, offsetof(struct config, tls_key), NULL},
    {"smtpscert", TLS_OPT_FILE, offsetof(struct config, smtps_cert),
     "certificate chain for implicit TLS from the first byte (RFC 8314)"},
    {"smtpskey", TLS_OPT_FILE, offsetof(struct config, smtps_key), "its private key"},
    {"smtps", TLS_OPT_HOSTPORT, offsetof(struct config, smtps_host),
     "listen for implicit TLS here too (default: the main listener speaks it)"},
    {"require-starttls", TLS_OPT_FLAG, offsetof(struct config, require_starttls),
     "530 to every command but EHLO HELO STARTTLS NOOP RSET QUIT before STARTTLS"},
    {"no-requiretls", TLS_OPT_FLAG, offsetof(struct config, auth_plaintext),
     "offer AUTH outside TLS too, for test rigs (also --auth-plaintext)"},
    {"auth-plaintext", TLS_OPT_FLAG, offsetof(struct config, auth_plaintext), NULL},
    {"auth-required", TLS_OPT_FLAG, offsetof(struct config, auth_required),
     "530 to MAIL before a successful AUTH"},
};
#define N_TLS (sizeof(tls_options) / sizeof(tls_options[0]))

static unsigned *
numeric_field(struct config *cfg, size_t i)
{
    return (unsigned *)((char *)cfg + numeric_options[i].field);
}

/* The memory limit of this process's cgroup (v2: memory.max, "max" when there is none), or 0.
 * In a container the host's RAM says nothing about what we may use before the OOM killer. */
static unsigned long long
cgroup_memory_max(void)
{
    FILE *f = fopen("/sys/fs/cgroup/memory.max", "re");
    if (f == NULL)
        return 0;
    unsigned long long max = 0;
    if (fscanf(f, "%llu", &max) != 1)
        max = 0;
    fclose(f);
    return max;
}

/* Physical memory is what the DATA budget protects (or the cgroup's limit, when lower); a
 * machine that will not say gets the cap. */
unsigned
config_default_data_memory(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page_size <= 0)
        return CONFIG_DATA_MEMORY_CAP;
    unsigned long long memory = (unsigned long long)pages * (unsigned long long)page_size;
    unsigned long long limit = cgroup_memory_max();
    if (limit > 0 && limit < memory)
        memory = limit;
    unsigned long long quarter_mb = memory / 4 / (1024 * 1024);
    if (quarter_mb < 1)
        return 1;
    return quarter_mb < CONFIG_DATA_MEMORY_CAP ? (unsigned)quarter_mb : CONFIG_DATA_MEMORY_CAP;
}

size_t
config_data_budget(const struct config *cfg)
{
    unsigned workers = cfg->workers > 1 ? cfg->workers : 1;
    return (size_t)cfg->data_memory_mb * 1024 * 1024 / workers;
}

/* The default of numeric_options[i], and how the help describes it when it is computed. */
static unsigned
numeric_default(size_t i, const char **formula)
{
    *formula = NULL;
    if (numeric_options[i].def != DEFAULT_COMPUTED)
        return numeric_options[i].def;
    *formula = "min(" STRINGIFY(CONFIG_DATA_MEMORY_CAP) ", RAM/4)";
    return config_default_data_memory();
}

static void
usage(FILE *f, const char *prog)
{
    char table[4096];
    size_t used = 0;
    for (size_t i = 0; i < N_NUMERIC && used < sizeof(table); i++) {
        char flag[40];
        snprintf(flag, sizeof(flag), "--%s N", numeric_options[i].name);
        const char *formula;
        unsigned def = numeric_default(i, &formula);
        if (formula != NULL)
            used += (size_t)snprintf(table + used, sizeof(table) - used,
                                     "  %-20s  %s (default %s, here %u)\n", flag,
                                     numeric_options[i].help, formula, def);
        else
            used +=
                (size_t)snprintf(table + used, sizeof(table) - used, "  %-20s  %s (default %u)\n",
                                 flag, numeric_options[i].help, def);
    }
    char tls[2048];
    used = 0;
    for (size_t i = 0; i < N_TLS && used < sizeof(tls); i++) {
        if (tls_options[i].help == NULL)
            continue;
        char flag[40];
        static const char *const metavar[] = {" FILE", " HOST:PORT", ""};
        snprintf(flag, sizeof(flag), "--%s%s", tls_options[i].name, metavar[tls_options[i].kind]);
        used += (size_t)snprintf(tls + used, sizeof(tls) - used, "  %-20s  %s\n", flag,
                                 tls_options[i].help);
    }
    fprintf(f, usage_text, prog, CONFIG_DEFAULT_SIZE, table, tls);
}

/* The TLS options' values: a FILE must be readable now, so a typo is a usage error at start;
 * its contents are tls.c's to judge. */
static bool
tls_option_set(struct config *cfg, size_t i, const char *value, const char *prog, FILE *err)
{
    char *base = (char *)cfg + tls_options[i].field;
    switch (tls_options[i].kind) {
    case TLS_OPT_FLAG:
        *(bool *)base = true;
        return true;
    case TLS_OPT_HOSTPORT:
        free(cfg->smtps_host);
        cfg->smtps_host = NULL;
        if (config_parse_hostport(value, &cfg->smtps_host, &cfg->smtps_port))
            return true;
        fprintf(err, "%s: bad --%s address: %s\n", prog, tls_options[i].name, value);
        return false;
    case TLS_OPT_FILE:
        if (access(value, R_OK) != 0) {
            fprintf(err, "%s: cannot read --%s %s: %s\n", prog, tls_options[i].name, value,
                    strerror(errno));
            return false;
        }
        free(*(char **)base);
        *(char **)base = strdup(value);
        return true;
    }
    return false;
}

/* A certificate needs its key and a key its certificate; --smtps needs both of SMTPS's. */
static bool
tls_options_complete(const struct config *cfg, const char *prog, FILE *err)
{
    if ((cfg->tls_cert == NULL) != (cfg->tls_key == NULL)) {
        fprintf(err, "%s: --tlscert and --tlskey go together\n", prog);
        return false;
    }
    if ((cfg->smtps_cert == NULL) != (cfg->smtps_key == NULL)) {
        fprintf(err, "%s: --smtpscert and --smtpskey go together\n", prog);
        return false;
    }
    if (cfg->smtps_host != NULL && cfg->smtps_cert == NULL) {
        fprintf(err, "%s: --smtps needs --smtpscert and --smtpskey\n", prog);
        return false;
    }
    if (cfg->require_starttls && cfg->tls_cert == NULL) {
        fprintf(err, "%s: --require-starttls needs --tlscert and --tlskey\n", prog);
        return false;
    }
    return true;
}

static bool
parse_number(const char *s, unsigned long max, unsigned long *out)
{
    if (*s == '\0' || !isdigit((unsigned char)*s))
        return false;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v > max)
        return false;
    *out = (unsigned long)v;
    return true;
}

bool
config_parse_hostport(const char *spec, char **host, unsigned short *port)
{
    const char *colon;
    const char *h = spec;
    size_t hlen;
    if (*spec == '[') {
        const char *close = strchr(spec, ']');
        if (close == NULL || close[1] != ':')
            return false;
        h = spec + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strchr(spec, ':');
        if (colon == NULL || strchr(colon + 1, ':') != NULL)
            return false;
        hlen = (size_t)(colon - spec);
    }
    unsigned long p;
    if (hlen == 0 || !parse_number(colon + 1, 65535, &p))
        return false;
    *host = strndup(h, hlen);
    if (*host == NULL)
        return false;
    *port = (unsigned short)p;
    return true;
}

static bool
add_setting(struct config *cfg, const char *arg)
{
    const char *eq = strchr(arg, '=');
    if (eq == NULL || eq == arg)
        return false;
    struct config_setting *s = realloc(cfg->settings, (cfg->n_settings + 1) * sizeof(*s));
    if (s == NULL)
        return false;
    cfg->settings = s;
    s[cfg->n_settings].key = strndup(arg, (size_t)(eq - arg));
    s[cfg->n_settings].value = strdup(eq + 1);
    cfg->n_settings++;
    return true;
}

static void
set_string(char **field, const char *value)
{
    free(*field);
    *field = strdup(value);
}

enum {
    OPT_SET = 256,
    OPT_HOSTNAME,
    OPT_NO_RELOAD,
    OPT_CHECK,
    OPT_NO_SMTPUTF8,
    OPT_TRUSTED,
    OPT_TLS,            /* OPT_TLS + i: tls_options[i] */
    OPT_NUMERIC = 1024, /* OPT_NUMERIC + i: numeric_options[i] */
};

enum config_result
config_parse(struct config *cfg, int argc, char **argv, FILE *out, FILE *err)
{
    static const struct option fixed_options[] = {
        {"nosetuid", no_argument, NULL, 'n'},
        {"class", required_argument, NULL, 'c'},
        {"size", required_argument, NULL, 's'},
        {"debug", no_argument, NULL, 'd'},
        {"smtputf8", no_argument, NULL, 'u'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {"set", required_argument, NULL, OPT_SET},
        {"hostname", required_argument, NULL, OPT_HOSTNAME},
        {"no-reload", no_argument, NULL, OPT_NO_RELOAD},
        {"check", required_argument, NULL, OPT_CHECK},
        {"no-smtputf8", no_argument, NULL, OPT_NO_SMTPUTF8},
        {"trusted-networks", required_argument, NULL, OPT_TRUSTED},
    };
    enum { N_FIXED = sizeof(fixed_options) / sizeof(fixed_options[0]) };
    struct option long_options[N_FIXED + N_NUMERIC + N_TLS + 1];
    memcpy(long_options, fixed_options, sizeof(fixed_options));
    for (size_t i = 0; i < N_NUMERIC; i++)
        long_options[N_FIXED + i] =
            (struct option){numeric_options[i].name, required_argument, NULL, OPT_NUMERIC + (int)i};
    for (size_t i = 0; i < N_TLS; i++)
        long_options[N_FIXED + N_NUMERIC + i] =
            (struct option){tls_options[i].name,
                            tls_options[i].kind == TLS_OPT_FLAG ? no_argument : required_argument,
                            NULL, OPT_TLS + (int)i};
    long_options[N_FIXED + N_NUMERIC + N_TLS] = (struct option){NULL, 0, NULL, 0};
    const char *prog = argc > 0 ? argv[0] : "luasmtpd";

    memset(cfg, 0, sizeof(*cfg));
    /* Read here, before the listener drops to nobody: what a root-started server loads must
     * be root's (or ours), whoever it runs as by the time it loads. */
    cfg->started_as_root = geteuid() == 0;
    cfg->handler = strdup("debugging");
    cfg->size_limit = CONFIG_DEFAULT_SIZE;
    /* On unless --no-smtputf8, as Postfix's smtputf8_enable: a client with UTF-8 mail for a
     * server that does not offer it can only bounce it. */
    cfg->smtputf8 = true;
    char why[160];
    networks_parse(&cfg->trusted, CONFIG_TRUSTED_NETWORKS, why, sizeof(why));
    for (size_t i = 0; i < N_NUMERIC; i++) {
        const char *formula;
        *numeric_field(cfg, i) = numeric_default(i, &formula);
    }

    opterr = 0;
    /* 0, not 1: glibc and musl then forget all their state, including the pointer into the
     * argv of an earlier call, so config_parse can run more than once in a process. */
    optind = 0;
    int c;
    unsigned long n;
    while ((c = getopt_long(argc, argv, ":nc:s:duVh", long_options, NULL)) != -1) {
        switch (c) {
        case 'n':
            cfg->nosetuid = true;
            break;
        case 'c':
            set_string(&cfg->handler, optarg);
            break;
        case 's':
            if (!parse_number(optarg, SIZE_MAX, &n)) {
                fprintf(err, "%s: invalid size: %s\n", prog, optarg);
                goto bad;
            }
            cfg->size_limit = n;
            break;
        case 'd':
            cfg->debug = true;
            break;
        case 'u':
            cfg->smtputf8 = true;
            break;
        case OPT_NO_SMTPUTF8:
            cfg->smtputf8 = false;
            break;
        case OPT_TRUSTED:
            networks_free(&cfg->trusted);
            if (networks_parse(&cfg->trusted, optarg, why, sizeof(why)) != 0) {
                fprintf(err, "%s: --trusted-networks: %s\n", prog, why);
                goto bad;
            }
            break;
        case 'V':
            fprintf(out, "luasmtpd %s\n", LUASMTPD_VERSION);
            return CONFIG_EXIT_OK;
        case 'h':
            usage(out, prog);
            return CONFIG_EXIT_OK;
        case OPT_SET:
            if (!add_setting(cfg, optarg)) {
                fprintf(err, "%s: --set takes KEY=VALUE, got: %s\n", prog, optarg);
                goto bad;
            }
            break;
        case OPT_HOSTNAME:
            if (optarg[0] == '\0' || strpbrk(optarg, " \t\r\n") != NULL) {
                fprintf(err, "%s: invalid hostname: %s\n", prog, optarg);
                goto bad;
            }
            set_string(&cfg->hostname, optarg);
            break;
        case OPT_NO_RELOAD:
            cfg->no_reload = true;
            break;
        case OPT_CHECK:
            set_string(&cfg->handler, optarg);
            cfg->check_only = true;
            break;
        case ':':
            fprintf(err, "%s: option requires an argument: %s\n", prog, argv[optind - 1]);
            goto bad;
        default:
            if (c >= OPT_TLS && c < OPT_TLS + (int)N_TLS) {
                if (!tls_option_set(cfg, (size_t)(c - OPT_TLS), optarg, prog, err))
                    goto bad;
                break;
            }
            if (c >= OPT_NUMERIC && c < OPT_NUMERIC + (int)N_NUMERIC) {
                size_t i = (size_t)(c - OPT_NUMERIC);
                if (!parse_number(optarg, numeric_options[i].max, &n) ||
                    n < numeric_options[i].min) {
                    fprintf(err, "%s: invalid number for --%s: %s (%u to %u)\n", prog,
                            numeric_options[i].name, optarg, numeric_options[i].min,
                            numeric_options[i].max);
                    goto bad;
                }
                *numeric_field(cfg, i) = n == 0 && numeric_options[i].none ? UINT_MAX : (unsigned)n;
                break;
            }
            /* An unknown letter is named by optopt: inside a group ("-xd") optind has not moved
             * past it yet, so argv[optind - 1] would be the wrong word. A long option (optopt 0,
             * or a known letter given "=value") is named by its argv word. */
            if (optopt != 0 && strchr("ncsduVh", optopt) == NULL)
                fprintf(err, "%s: unknown option: -%c\n", prog, optopt);
            else
                fprintf(err, "%s: unknown option: %s\n", prog, argv[optind - 1]);
            goto bad;
        }
    }

    if (!tls_options_complete(cfg, prog, err))
        goto bad;
    int positional = argc - optind;
    if (positional > 2) {
        fprintf(err, "%s: invalid arguments:", prog);
        for (int i = optind + 2; i < argc; i++)
            fprintf(err, " %s", argv[i]);
        fputc('\n', err);
        goto bad;
    }
    const char *local = positional >= 1 ? argv[optind] : "localhost:8025";
    const char *remote = positional >= 2 ? argv[optind + 1] : "localhost:25";
    if (!config_parse_hostport(local, &cfg->local_host, &cfg->local_port)) {
        fprintf(err, "%s: bad local spec: %s\n", prog, local);
        goto bad;
    }
    if (!config_parse_hostport(remote, &cfg->remote_host, &cfg->remote_port)) {
        fprintf(err, "%s: bad remote spec: %s\n", prog, remote);
        goto bad;
    }
    return CONFIG_RUN;

bad:
    usage(err, prog);
    return CONFIG_EXIT_USAGE;
}

static const struct {
    const char *alias;
    const char *name;
} handler_aliases[] = {
    {"DebuggingServer", "debugging"},
    {"PureProxy", "pureproxy"},
    {"MailmanProxy", "mailman"},
    {"SinkServer", "sink"},
};

/* Python's classes that a bundled handler stands for; naming one whose script is missing gets
 * a clear answer, not a lookup failure. */
static const char *const coming_handlers[] = {"pureproxy", "mailman"};

bool
config_resolve_handler(struct config *cfg, const char *lua_dir, FILE *err)
{
    const char *name = cfg->handler;
    size_t len = strlen(name);
    if (strchr(name, '/') != NULL || (len > 4 && strcmp(name + len - 4, ".lua") == 0)) {
        if (access(name, R_OK) != 0) {
            fprintf(err, "luasmtpd: cannot read handler script %s: %s\n", name, strerror(errno));
            return false;
        }
        set_string(&cfg->script_path, name);
        return cfg->script_path != NULL;
    }
    /* Python's -c takes module.Class; "smtpd.DebuggingServer" names the same class. */
    if (strncmp(name, "smtpd.", 6) == 0)
        name += 6;
    for (size_t i = 0; i < sizeof(handler_aliases) / sizeof(handler_aliases[0]); i++)
        if (strcasecmp(name, handler_aliases[i].alias) == 0)
            name = handler_aliases[i].name;

    bool plain = name[0] != '\0';
    for (const char *p = name; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-')
            plain = false;
    char path[PATH_MAX];
    if (plain && snprintf(path, sizeof(path), "%s/%s.lua", lua_dir, name) < (int)sizeof(path) &&
        access(path, R_OK) == 0) {
        set_string(&cfg->script_path, path);
        return cfg->script_path != NULL;
    }
    for (size_t i = 0; i < sizeof(coming_handlers) / sizeof(coming_handlers[0]); i++) {
        if (strcasecmp(name, coming_handlers[i]) == 0) {
            fprintf(err,
                    "luasmtpd: the %s handler is not available in this version (no %s.lua "
                    "in %s)\n",
                    coming_handlers[i], coming_handlers[i], lua_dir);
            return false;
        }
    }
    fprintf(err,
            "luasmtpd: unknown handler '%s': name a bundled one (debugging, sink, pureproxy) "
            "or a path to a .lua script\n",
            cfg->handler);
    return false;
}

void
config_free(struct config *cfg)
{
    free(cfg->local_host);
    free(cfg->remote_host);
    free(cfg->handler);
    free(cfg->script_path);
    free(cfg->hostname);
    free(cfg->tls_cert);
    free(cfg->tls_key);
    free(cfg->smtps_cert);
    free(cfg->smtps_key);
    free(cfg->smtps_host);
    networks_free(&cfg->trusted);
    for (size_t i = 0; i < cfg->n_settings; i++) {
        free(cfg->settings[i].key);
        free(cfg->settings[i].value);
    }
    free(cfg->settings);
    memset(cfg, 0, sizeof(*cfg));
}
