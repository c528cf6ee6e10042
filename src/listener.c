/* The process around the sessions: binds the listening sockets, drops root, loads the handler,
 * accepts, and stops gracefully when reload.c reports a stop signal. Owns the event loop's
 * lifetime; never parses SMTP, and leaves when to reload to reload.c. */
#include "luasmtpd/listener.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <grp.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "luasmtpd/hostname.h"
#include "luasmtpd/log.h"
#include "luasmtpd/lua_runtime.h"
#include "luasmtpd/reload.h"
#include "luasmtpd/session.h"
#include "luasmtpd/tls.h"
#include "luasmtpd/watchdog.h"
#include "luasmtpd/workers.h"

#define MAX_LISTENERS 8
/* Out of descriptors or memory, accept() fails with the connection still queued, so the
 * listener is readable again at once: we stop accepting this long (nginx waits too) and say so
 * at most once per ACCEPT_REPORT_SEC. Clients wait in the backlog meanwhile. */
#define ACCEPT_PAUSE_MS 500
#define ACCEPT_REPORT_SEC 10
/* What a connection costs in descriptors: its socket. Kept apart: the listening sockets, the
 * log, inotify, Lua's files, DNS, the upstreams of the handlers relaying at the moment (a
 * session holds one only while its handler or a hook works, a small part of its life), and
 * each smtpd.pipe child's stdin, output and pidfd. Counting an upstream for every connection
 * would halve what an idle or trickling crowd, the common attack, can be given. */
#define FDS_PER_CONNECTION 1
#define FDS_RESERVED 64
#define FDS_PER_CHILD 3

struct server {
    struct event_base *base;
    struct config *cfg;
    struct evconnlistener *listeners[MAX_LISTENERS];
    bool implicit_tls[MAX_LISTENERS]; /* the listener speaks TLS from the first byte */
    int n_listeners;
    struct event *accept_resume;    /* ends a pause after accept() failed */
    unsigned accept_failures;       /* since the last report */
    struct timeval accept_reported; /* when the last report was logged; 0: never */
    struct session_group sessions;
    struct event *shutdown_timer;
    struct reload *reload;
    bool stopping;
};

static void
format_addr(const struct sockaddr *sa, char *out, size_t len)
{
    char host[NI_MAXHOST], port[NI_MAXSERV];
    if (getnameinfo(sa,
                    sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                              : sizeof(struct sockaddr_in),
                    host, sizeof(host), port, sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        snprintf(out, len, "?");
        return;
    }
    snprintf(out, len, sa->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
}

static void
set_port(struct sockaddr *sa, unsigned short port)
{
    if (sa->sa_family == AF_INET6)
        ((struct sockaddr_in6 *)sa)->sin6_port = htons(port);
    else
        ((struct sockaddr_in *)sa)->sin_port = htons(port);
}

/* Binds every address the local host name resolves to (localhost may be both 127.0.0.1 and
 * ::1). With port 0, the first bind picks the port and the others share it. Returns the number
 * of sockets bound, or -1 when the first could not be (the reason is printed). */
static int
bind_all(const char *host, unsigned short local_port, int *fds, int max, unsigned copies)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res;
    char port_text[8];
    snprintf(port_text, sizeof(port_text), "%u", local_port);
    int rc = getaddrinfo(host, port_text, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "luasmtpd: cannot resolve %s: %s\n", host, gai_strerror(rc));
        return -1;
    }
    int n = 0;
    unsigned short port = local_port;
    for (struct addrinfo *ai = res; ai != NULL && n + (int)copies <= max; ai = ai->ai_next) {
        bool duplicate = false;
        for (struct addrinfo *prev = res; prev != ai; prev = prev->ai_next)
            if (prev->ai_addrlen == ai->ai_addrlen &&
                memcmp(prev->ai_addr, ai->ai_addr, ai->ai_addrlen) == 0)
                duplicate = true;
        if (duplicate)
            continue;
        set_port(ai->ai_addr, port);
        char where[NI_MAXHOST + 16];
        format_addr(ai->ai_addr, where, sizeof(where));
        int first = n;
        int err = 0;
        for (unsigned copy = 0; copy < copies && err == 0; copy++) {
            int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            int one = 1;
            if (fd >= 0) {
                setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
                /* Workers each accept on a socket of their own; the kernel spreads clients. */
                if (copies > 1)
                    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
                if (ai->ai_family == AF_INET6)
                    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
            }
            if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 ||
                listen(fd, SOMAXCONN) != 0) {
                err = errno;
                if (fd >= 0)
                    close(fd);
                break;
            }
            if (port == 0) {
                struct sockaddr_storage bound;
                socklen_t len = sizeof(bound);
                getsockname(fd, (struct sockaddr *)&bound, &len);
                port =
                    ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                      : ((struct sockaddr_in *)&bound)->sin_port);
                set_port(ai->ai_addr, port);
            }
            fds[n++] = fd;
        }
        if (err != 0) {
            for (int i = first; i < n; i++)
                close(fds[i]);
            n = first;
            if (err == EADDRINUSE || n == 0) {
                fprintf(stderr, "luasmtpd: cannot listen on %s: %s%s\n", where, strerror(err),
                        err == EADDRINUSE ? " (the port is in use)" : "");
                for (int i = 0; i < n; i++)
                    close(fds[i]);
                freeaddrinfo(res);
                return -1;
            }
            /* A second family the machine lacks (no IPv6 loopback, say) is no reason to stop. */
            log_warn("not listening on %s: %s", where, strerror(err));
            continue;
        }
    }
    freeaddrinfo(res);
    return n;
}

static void
log_listening(int fd, bool implicit_tls)
{
    struct sockaddr_storage bound;
    socklen_t len = sizeof(bound);
    char where[NI_MAXHOST + 16];
    getsockname(fd, (struct sockaddr *)&bound, &len);
    format_addr((struct sockaddr *)&bound, where, sizeof(where));
    log_info("listening on %s%s", where, implicit_tls ? " for implicit TLS (SMTPS)" : "");
}

/* As Python's smtpd: started as root without -n, become nobody once the port is bound. */
static bool
drop_privileges(const struct config *cfg)
{
    if (cfg->nosetuid || geteuid() != 0)
        return true;
    struct passwd *pw = getpwnam("nobody");
    if (pw == NULL || setgroups(0, NULL) != 0 || setgid(pw->pw_gid) != 0 ||
        setuid(pw->pw_uid) != 0) {
        fprintf(stderr, "Cannot setuid \"nobody\"; try running with -n option.\n");
        return false;
    }
    log_info("running as nobody (uid %u)", (unsigned)pw->pw_uid);
    return true;
}

static void
listener_on_accept(struct evconnlistener *listener, evutil_socket_t fd, struct sockaddr *addr,
                   int len, void *arg)
{
    struct server *srv = arg;
    /* The failures since the last report are told once they stop, at the same pace. */
    if (srv->accept_failures > 0) {
        struct timeval now, since;
        event_base_gettimeofday_cached(srv->base, &now);
        evutil_timersub(&now, &srv->accept_reported, &since);
        if (since.tv_sec >= ACCEPT_REPORT_SEC) {
            log_warn("accepting again: accept failed %u more times in the last %ld s",
                     srv->accept_failures, (long)since.tv_sec);
            srv->accept_failures = 0;
            srv->accept_reported = now;
        }
    }
    bool implicit_tls = false;
    for (int i = 0; i < srv->n_listeners; i++)
        if (srv->listeners[i] == listener)
            implicit_tls = srv->implicit_tls[i];
    session_start(&srv->sessions, fd, addr, len, implicit_tls);
}

static void
listener_on_accept_error(struct evconnlistener *listener, void *arg)
{
    (void)listener;
    struct server *srv = arg;
    int err = errno;
    for (int i = 0; i < srv->n_listeners; i++)
        if (srv->listeners[i] != NULL)
            evconnlistener_disable(srv->listeners[i]);
    struct timeval pause = {.tv_sec = ACCEPT_PAUSE_MS / 1000,
                            .tv_usec = (ACCEPT_PAUSE_MS % 1000) * 1000};
    evtimer_add(srv->accept_resume, &pause);
    srv->accept_failures++;
    struct timeval now, since;
    event_base_gettimeofday_cached(srv->base, &now);
    evutil_timersub(&now, &srv->accept_reported, &since);
    bool first = !evutil_timerisset(&srv->accept_reported);
    if (!first && since.tv_sec < ACCEPT_REPORT_SEC)
        return;
    if (first)
        log_warn("accept failed: %s; pausing accepts for %d ms (reported again at most every "
                 "%d s)",
                 strerror(err), ACCEPT_PAUSE_MS, ACCEPT_REPORT_SEC);
    else
        log_warn("accept failed: %s; pausing accepts for %d ms (%u times in the last %ld s)",
                 strerror(err), ACCEPT_PAUSE_MS, srv->accept_failures, (long)since.tv_sec);
    srv->accept_failures = 0;
    srv->accept_reported = now;
}

static void
listener_on_accept_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct server *srv = arg;
    /* A stop signal during the pause has freed the listeners. */
    for (int i = 0; i < srv->n_listeners; i++)
        if (srv->listeners[i] != NULL)
            evconnlistener_enable(srv->listeners[i]);
}

static void
listener_on_sessions_gone(void *arg)
{
    struct server *srv = arg;
    event_base_loopexit(srv->base, NULL);
}

static void
listener_on_shutdown_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct server *srv = arg;
    log_warn("shutdown grace period over: closing %u connection(s)", srv->sessions.count);
    session_group_close_all(&srv->sessions);
    event_base_loopexit(srv->base, NULL);
}

static void
listener_on_stop(void *arg, int sig)
{
    struct server *srv = arg;
    if (srv->stopping) {
        log_warn("second stop signal: closing now");
        listener_on_shutdown_timer(-1, 0, srv);
        return;
    }
    srv->stopping = true;
    log_info("%s: no new connections; %u open", sig == SIGINT ? "SIGINT" : "SIGTERM",
             srv->sessions.count);
    for (int i = 0; i < srv->n_listeners; i++) {
        evconnlistener_free(srv->listeners[i]);
        srv->listeners[i] = NULL;
    }
    session_group_drain(&srv->sessions);
    if (srv->sessions.count == 0) {
        event_base_loopexit(srv->base, NULL);
        return;
    }
    struct timeval grace = {.tv_sec = srv->cfg->shutdown_timeout};
    srv->shutdown_timer = evtimer_new(srv->base, listener_on_shutdown_timer, srv);
    evtimer_add(srv->shutdown_timer, &grace);
}

/* What a reload is: a new generation of the runtime and the certificates read again (each logs
 * how it went, and a failure keeps the old). */
static void
listener_on_reload(void *arg)
{
    struct server *srv = arg;
    lrt_load(srv->sessions.rt);
    tls_server_reload(srv->sessions.tls);
}

/* A certificate or key file changed: the pairs whose files changed are read again (see
 * tls_server_refresh for a pair replaced one file at a time). */
static void
listener_on_cert_file(void *arg)
{
    struct server *srv = arg;
    tls_server_refresh(srv->sessions.tls);
}

/* Every Lua file a generation loads is watched as the script is. */
static void
listener_on_lua_file(void *arg, const char *path)
{
    struct server *srv = arg;
    reload_watch(srv->reload, path);
}

/* Raises the soft descriptor limit to the hard one, and lowers --max-connections to what fits
 * in it (every worker inherits both), so sessions alone never run the process out of
 * descriptors: a server that did would refuse every upstream and child too. */
static void
fit_descriptors(struct config *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t was = rl.rlim_cur;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            log_warn("cannot raise the descriptor limit from %llu to %llu: %s",
                     (unsigned long long)was, (unsigned long long)rl.rlim_max, strerror(errno));
            rl.rlim_cur = was;
        }
    }
    unsigned long long limit = rl.rlim_cur;
    if (limit == rl.rlim_max && limit != was)
        log_info("descriptor limit %llu (raised from %llu to the hard limit)", limit,
                 (unsigned long long)was);
    else
        log_info("descriptor limit %llu", limit);
    /* A limit too small for the whole reserve still gets half of it for connections. */
    unsigned long long reserve =
        FDS_RESERVED + FDS_PER_CHILD * (unsigned long long)cfg->max_children;
    if (reserve > limit / 2)
        reserve = limit / 2;
    unsigned long long fits = (limit - reserve) / FDS_PER_CONNECTION;
    if (fits < 1)
        fits = 1;
    if (cfg->max_connections <= fits)
        return;
    if (cfg->max_connections == UINT_MAX) { /* --max-connections 0: what fits is the cap */
        log_info("at most %llu connections at once (what the descriptor limit fits)", fits);
        cfg->max_connections = (unsigned)fits;
        return;
    }
    log_warn("--max-connections %u does not fit in the descriptor limit %llu (%d per connection, "
             "%llu kept for listeners, Lua, DNS, upstreams and %u pipe children): at most %llu "
             "connections at once",
             cfg->max_connections, limit, FDS_PER_CONNECTION, reserve, cfg->max_children, fits);
    cfg->max_connections = (unsigned)fits;
}

/* What the runtime is given of the command line; serve() adds the loop and the file watcher. */
static struct lrt_options
runtime_options(const struct config *cfg, const char *lua_dir, const char *hostname)
{
    return (struct lrt_options){
        .env = {.hostname = hostname,
                .remote_host = cfg->remote_host,
                .remote_port = cfg->remote_port,
                .settings = cfg->settings,
                .n_settings = cfg->n_settings,
                .size_limit = cfg->size_limit,
                .debug = cfg->debug},
        .load = {.lua_dir = lua_dir,
                 .script_path = cfg->script_path,
                 .started_as_root = cfg->started_as_root},
        .lua_instructions = cfg->lua_instructions,
        .lua_memory_mb = cfg->lua_memory_mb,
        .max_children = cfg->max_children,
    };
}

bool
listener_check_script(const struct config *cfg, const char *lua_dir)
{
    struct lrt_options opts = runtime_options(cfg, lua_dir, "localhost");
    return lrt_check(&opts);
}

struct serve_args {
    struct config *cfg;
    const char *lua_dir;
    bool announce;
    struct tls_server *tls;
    int n_plain; /* the first n_plain addresses speak plaintext first; the rest implicit TLS */
};

/* One process's server: its event loop, its Lua runtime, its sessions, over `fds`. */
static int
serve(void *arg, int *fds, int n)
{
    struct serve_args *sa = arg;
    struct config *cfg = sa->cfg;
    const char *lua_dir = sa->lua_dir;
    char *hostname = strdup(cfg->hostname);
    struct server srv = {.cfg = cfg};
    srv.base = event_base_new();
    /* Upstream host names are resolved without blocking the loop. */
    struct evdns_base *dns =
        srv.base ? evdns_base_new(srv.base, EVDNS_BASE_INITIALIZE_NAMESERVERS) : NULL;
    if (srv.base != NULL && dns == NULL)
        dns = evdns_base_new(srv.base, 0);
    if (srv.base != NULL) {
        struct reload_options triggers = {.base = srv.base,
                                          .script_path = cfg->script_path,
                                          .watch = !cfg->no_reload,
                                          .reload = listener_on_reload,
                                          .reload_certs = listener_on_cert_file,
                                          .stop = listener_on_stop,
                                          .arg = &srv};
        srv.reload = reload_new(&triggers);
        const char *tls_files[] = {cfg->tls_cert, cfg->tls_key, cfg->smtps_cert, cfg->smtps_key};
        for (size_t i = 0; sa->tls != NULL && i < sizeof(tls_files) / sizeof(tls_files[0]); i++)
            if (tls_files[i] != NULL)
                reload_watch_cert(srv.reload, tls_files[i]);
    }
    /* A worker restarted after the running ones saw a certificate change (the supervisor does
     * not watch files) reads the new pair here; at first start nothing has changed. */
    tls_server_refresh(sa->tls);
    struct lrt_options opts = runtime_options(cfg, lua_dir, hostname);
    opts.env.base = srv.base;
    opts.env.dns = dns;
    opts.load.on_file = listener_on_lua_file;
    opts.load.on_file_arg = &srv;
    struct lrt *rt = lrt_new(&opts);
    int status = 1;
    if (srv.base == NULL || rt == NULL || !lrt_load(rt)) {
        for (int i = 0; i < n; i++)
            close(fds[i]);
        goto out;
    }
    if (srv.reload == NULL) { /* out of memory */
        for (int i = 0; i < n; i++)
            close(fds[i]);
        goto out;
    }

    srv.sessions = (struct session_group){.base = srv.base,
                                          .cfg = cfg,
                                          .rt = rt,
                                          .hostname = hostname,
                                          .tls = sa->tls,
                                          .on_empty = listener_on_sessions_gone,
                                          .on_empty_arg = &srv};
    srv.accept_resume = evtimer_new(srv.base, listener_on_accept_resume, &srv);
    for (int i = 0; i < n; i++) {
        srv.listeners[i] =
            evconnlistener_new(srv.base, listener_on_accept, &srv,
                               LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fds[i]);
        evconnlistener_set_error_cb(srv.listeners[i], listener_on_accept_error);
        srv.implicit_tls[i] = i >= sa->n_plain;
    }
    srv.n_listeners = n;
    reload_start(srv.reload);
    /* Said only now, when a client or a signal can be answered: tests and scripts wait for it. */
    for (int i = 0; sa->announce && i < n; i++)
        log_listening(fds[i], i >= sa->n_plain);

    /* From here to the end of the cleanup below (which runs the scripts' finalizers). */
    watchdog_start(srv.base, cfg->watchdog);
    event_base_dispatch(srv.base);
    log_info("stopped");
    status = 0;

    session_group_free(&srv.sessions);
    for (int i = 0; i < srv.n_listeners; i++)
        if (srv.listeners[i])
            evconnlistener_free(srv.listeners[i]);
    if (srv.shutdown_timer)
        event_free(srv.shutdown_timer);
    if (srv.accept_resume)
        event_free(srv.accept_resume);
out:
    /* First, as the stop signals' handlers went before the runtime's finalizers ran. */
    reload_free(srv.reload);
    lrt_free(rt); /* with it the children of deliveries the shutdown cancelled */
    watchdog_stop();
    if (dns != NULL)
        evdns_base_free(dns, 0);
    if (srv.base)
        event_base_free(srv.base);
    free(hostname);
    return status;
}

static int listener_serve_all(struct serve_args *args, int *fds, int n, unsigned workers);

int
listener_run(struct config *cfg, const char *lua_dir)
{
    signal(SIGPIPE, SIG_IGN);
    /* Until serve()'s reload_start, here and in every worker. */
    reload_hold_signals();
    unsigned workers = cfg->workers > 1 ? cfg->workers : 1;
    /* Found once, before the workers: each would otherwise ask the resolver, and warn. */
    if (cfg->hostname == NULL) {
        cfg->hostname = hostname_fqdn();
        if (cfg->hostname == NULL)
            return 1;
        if (strchr(cfg->hostname, '.') == NULL)
            log_warn("this host's name '%s' is not fully qualified: an upstream that wants a "
                     "qualified HELO will refuse our relay (give one with --hostname)",
                     cfg->hostname);
    }
    /* Read before privileges are dropped: keys are often readable by root alone. A pair that
     * does not load is a usage error, as a missing file is. */
    struct serve_args args = {.cfg = cfg, .lua_dir = lua_dir, .announce = workers == 1};
    if (cfg->tls_cert != NULL || cfg->smtps_cert != NULL) {
        struct tls_server_files files = {.cert = {cfg->tls_cert, cfg->smtps_cert},
                                         .key = {cfg->tls_key, cfg->smtps_key}};
        args.tls = tls_server_new(&files, stderr);
        if (args.tls == NULL)
            return 2;
    }
    int fds[MAX_LISTENERS];
    int n = bind_all(cfg->local_host, cfg->local_port, fds, MAX_LISTENERS, workers);
    /* aiosmtpd's --smtpscert makes its one listener speak implicit TLS; --smtps adds one. */
    args.n_plain = cfg->smtps_cert != NULL && cfg->smtps_host == NULL ? 0 : n / (int)workers;
    if (n > 0 && cfg->smtps_host != NULL) {
        int more = bind_all(cfg->smtps_host, cfg->smtps_port, fds + n, MAX_LISTENERS - n, workers);
        if (more <= 0) {
            for (int i = 0; i < n; i++)
                close(fds[i]);
            n = -1;
        } else {
            n += more;
        }
    }
    int status = listener_serve_all(&args, fds, n, workers);
    tls_server_free(args.tls);
    return status;
}

/* The certificates a restarted worker inherits: the ones the running workers reloaded, not the
 * ones read at start. (The script it loads itself, from the files.) */
static void
listener_supervisor_reload(void *arg)
{
    struct serve_args *args = arg;
    tls_server_reload(args->tls);
}

static int
listener_serve_all(struct serve_args *args, int *fds, int n, unsigned workers)
{
    struct config *cfg = args->cfg;
    const char *lua_dir = args->lua_dir;
    if (n <= 0)
        return 1;
    if (!drop_privileges(cfg)) {
        for (int i = 0; i < n; i++)
            close(fds[i]);
        return 1;
    }
    fit_descriptors(cfg);
    if (workers == 1)
        return serve(args, fds, n);

    /* Found out here, once, rather than by every worker dying in turn. */
    if (!listener_check_script(cfg, lua_dir)) {
        for (int i = 0; i < n; i++)
            close(fds[i]);
        return 1;
    }
    int n_addrs = n / (int)workers;
    for (int a = 0; a < n_addrs; a++)
        log_listening(fds[a * (int)workers], a >= args->n_plain);
    int status = workers_run(workers, fds, n_addrs, cfg->shutdown_timeout, serve,
                             listener_supervisor_reload, args);
    for (int i = 0; i < n; i++)
        close(fds[i]);
    return status;
}
