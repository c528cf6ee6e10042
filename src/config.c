/* The command line, compatible with `python -m smtpd` (Lib/smtpd.py's getopt flags and
 * positional host:port pair), plus long options of our own. Errors print usage and return
 * CONFIG_EXIT_USAGE; main() turns that into exit status 2. */
#include "luasmtpd/config.h"

#include <ctype.h>
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
    "  -u, --smtputf8        offer SMTPUTF8 (RFC 6531)\n"
    "  -V, --version         print the version and exit\n"
    "  -h, --help            print this and exit\n"
    "Options of our own:\n"
    "  --set KEY=VALUE       a setting for the script: smtpd.settings.KEY (repeatable)\n"
    "  --hostname NAME       the name in the greeting and EHLO (default: this host's)\n"
    "  --max-recipients N    recipients per message before 452 (default %d)\n"
    "  --timeout SECONDS     client silence before 421 and close (default %d)\n"
    "  --shutdown-timeout S  grace for transactions in flight on SIGTERM (default %d)\n"
    "  --workers N           N processes share the port (SO_REUSEPORT), each with its own\n"
    "                        loop and Lua state; one that dies is restarted (default 1)\n"
    "  --no-reload           do not reload when the script files change (SIGHUP still does)\n"
    "  --check SCRIPT        load SCRIPT as a reload would, say whether it is good, exit 0/1\n"
    "\n"
    "localhost:localport defaults to localhost:8025 (port 0 picks a free one; the bound\n"
    "address is logged), remotehost:remoteport to localhost:25 (the relay handlers'\n"
    "upstream, smtpd.remote). IPv6 addresses go in brackets: [::1]:8025.\n";

static void
usage(FILE *f, const char *prog)
{
    fprintf(f, usage_text, prog, CONFIG_DEFAULT_SIZE, CONFIG_DEFAULT_MAX_RECIPIENTS,
            CONFIG_DEFAULT_TIMEOUT, CONFIG_DEFAULT_SHUTDOWN_TIMEOUT);
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
    OPT_MAX_RECIPIENTS,
    OPT_TIMEOUT,
    OPT_SHUTDOWN_TIMEOUT,
    OPT_NO_RELOAD,
    OPT_CHECK,
    OPT_WORKERS,
};

enum config_result
config_parse(struct config *cfg, int argc, char **argv, FILE *out, FILE *err)
{
    static const struct option long_options[] = {
        {"nosetuid", no_argument, NULL, 'n'},
        {"class", required_argument, NULL, 'c'},
        {"size", required_argument, NULL, 's'},
        {"debug", no_argument, NULL, 'd'},
        {"smtputf8", no_argument, NULL, 'u'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {"set", required_argument, NULL, OPT_SET},
        {"hostname", required_argument, NULL, OPT_HOSTNAME},
        {"max-recipients", required_argument, NULL, OPT_MAX_RECIPIENTS},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"shutdown-timeout", required_argument, NULL, OPT_SHUTDOWN_TIMEOUT},
        {"no-reload", no_argument, NULL, OPT_NO_RELOAD},
        {"workers", required_argument, NULL, OPT_WORKERS},
        {"check", required_argument, NULL, OPT_CHECK},
        {NULL, 0, NULL, 0},
    };
    const char *prog = argc > 0 ? argv[0] : "luasmtpd";

    memset(cfg, 0, sizeof(*cfg));
    cfg->handler = strdup("debugging");
    cfg->size_limit = CONFIG_DEFAULT_SIZE;
    cfg->max_recipients = CONFIG_DEFAULT_MAX_RECIPIENTS;
    cfg->timeout = CONFIG_DEFAULT_TIMEOUT;
    cfg->shutdown_timeout = CONFIG_DEFAULT_SHUTDOWN_TIMEOUT;
    cfg->workers = 1;

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
        case OPT_WORKERS:
        case OPT_MAX_RECIPIENTS:
        case OPT_TIMEOUT:
        case OPT_SHUTDOWN_TIMEOUT:
            if (!parse_number(optarg, c == OPT_WORKERS ? 64 : UINT_MAX, &n) ||
                (n == 0 && c != OPT_SHUTDOWN_TIMEOUT)) {
                fprintf(err, "%s: invalid number for --%s: %s\n", prog,
                        c == OPT_MAX_RECIPIENTS ? "max-recipients"
                        : c == OPT_TIMEOUT      ? "timeout"
                        : c == OPT_WORKERS      ? "workers"
                                                : "shutdown-timeout",
                        optarg);
                goto bad;
            }
            if (c == OPT_WORKERS)
                cfg->workers = (unsigned)n;
            else if (c == OPT_MAX_RECIPIENTS)
                cfg->max_recipients = (unsigned)n;
            else if (c == OPT_TIMEOUT)
                cfg->timeout = (unsigned)n;
            else
                cfg->shutdown_timeout = (unsigned)n;
            break;
        case ':':
            fprintf(err, "%s: option requires an argument: %s\n", prog, argv[optind - 1]);
            goto bad;
        default:
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
            "luasmtpd: unknown handler '%s': name a bundled one (debugging, sink, pureproxy) or a path "
            "to a .lua script\n",
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
    for (size_t i = 0; i < cfg->n_settings; i++) {
        free(cfg->settings[i].key);
        free(cfg->settings[i].value);
    }
    free(cfg->settings);
    memset(cfg, 0, sizeof(*cfg));
}
