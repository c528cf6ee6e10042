/* pipeline_client: an SMTP load generator that speaks EHLO and, when the server offers it,
 * PIPELINING (RFC 2920). Part of tests/bench; bench.py compiles it with `cc -O2`.
 *
 *   pipeline_client [-s sessions] [-m messages] [-n per_connection] [-l bytes]
 *                   [-t timeout_s] [-P] host:port
 *
 * -s  connections open at once (default 1)
 * -m  messages in all (default 1)
 * -n  messages per connection before QUIT and a new connection; 0 (default): the messages
 *     are shared out among the -s connections, each sending its share then QUIT
 * -l  size of each message in bytes, headers included, lines of at most 78 characters + CRLF
 * -t  give up after this many seconds (default 300); exit 3
 * -P  pipeline even when the server does not advertise PIPELINING
 *
 * With pipelining a message costs one round trip: the client sends "MAIL, RCPT, DATA", waits
 * for 354, then sends the content, the final dot and the next message's "MAIL, RCPT, DATA" in
 * one write (RFC 2920 allows DATA's content to start a group; DATA ends one). Without it every
 * command waits for its reply (lock-step), as smtp-source does.
 *
 * Prints one line: messages=N bytes=B seconds=S errors=E pipelined=C/T (connections that
 * pipelined / connections that got past EHLO). Exit 0 when every message got a 250, 1 when
 * one did not, 2 on bad usage, 3 on timeout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum step { S_CONNECT, S_GREETING, S_EHLO, S_MAIL, S_RCPT, S_DATA, S_BODY, S_QUIT, S_DONE };

struct conn {
    int fd;
    int pipelining;
    long quota; /* messages this connection still has to start */
    /* replies expected, in order, as the steps that produced them */
    enum step expect[8];
    int nexpect;
    /* what is left to write */
    struct iovec out[4];
    int nout;
    char cmdbuf[256];
    size_t cmdlen;
    char inbuf[8192];
    size_t inlen;
    int want_out;
};

static const char *FROM = "MAIL FROM:<bench@example.org>\r\n";
static const char *RCPT = "RCPT TO:<sink@example.net>\r\n";
static const char *DATA = "DATA\r\n";
static const char *DOT = ".\r\n";
static const char *QUIT = "QUIT\r\n";

static char *body;
static size_t bodylen;
static long total_msgs = 1, per_conn = 0, sessions = 1;
static long unassigned, done_msgs, errors, conns_open, pipelined_conns, ehlo_conns;
static int force_pipe;
static int epfd;
static struct sockaddr_storage addr;
static socklen_t addrlen;

static double
now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
make_body(size_t size)
{
    static const char hdr[] = "From: <bench@example.org>\r\nTo: <sink@example.net>\r\n"
                              "Subject: luasmtpd bench\r\n\r\n";
    body = malloc(size + 2 + sizeof(hdr));
    if (!body) {
        perror("malloc");
        exit(2);
    }
    size_t n = 0;
    if (size >= sizeof(hdr) - 1 + 2) {
        memcpy(body, hdr, sizeof(hdr) - 1);
        n = sizeof(hdr) - 1;
    }
    /* lines of at most 76 letters + CRLF, the total exactly size (a size below 2 gives 2) */
    while (n < size || n == 0) {
        size_t left = size > n + 2 ? size - n : 2;
        size_t chars = left - 2 > 76 ? 76 : left - 2;
        if (left - chars - 2 == 1) /* one byte would be left over: shorten this line */
            chars--;
        for (size_t i = 0; i < chars; i++)
            body[n + i] = (char)('a' + (n + i) % 26);
        n += chars;
        memcpy(body + n, "\r\n", 2);
        n += 2;
    }
    bodylen = n;
}

static void
set_events(struct conn *c)
{
    struct epoll_event ev = {.events = EPOLLIN | (c->nout ? EPOLLOUT : 0), .data.ptr = c};
    int want = c->nout ? 1 : 0;
    if (want != c->want_out) {
        c->want_out = want;
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    }
}

static void
queue(struct conn *c, const char *p, size_t n)
{
    /* short commands are copied into cmdbuf when possible, so that a group is one segment */
    if (c->nout > 0 && c->out[c->nout - 1].iov_base >= (void *)c->cmdbuf &&
        c->out[c->nout - 1].iov_base < (void *)(c->cmdbuf + sizeof(c->cmdbuf)) &&
        (char *)c->out[c->nout - 1].iov_base + c->out[c->nout - 1].iov_len ==
            c->cmdbuf + c->cmdlen &&
        c->cmdlen + n <= sizeof(c->cmdbuf)) {
        memcpy(c->cmdbuf + c->cmdlen, p, n);
        c->cmdlen += n;
        c->out[c->nout - 1].iov_len += n;
        return;
    }
    if (c->nout == 0)
        c->cmdlen = 0;
    if (n <= 64 && c->cmdlen + n <= sizeof(c->cmdbuf)) {
        memcpy(c->cmdbuf + c->cmdlen, p, n);
        c->out[c->nout].iov_base = c->cmdbuf + c->cmdlen;
        c->cmdlen += n;
    } else {
        c->out[c->nout].iov_base = (void *)p;
    }
    c->out[c->nout].iov_len = n;
    c->nout++;
}

static void
close_conn(struct conn *c)
{
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    conns_open--;
    free(c);
}

static void open_conn(void);

static void
fail(struct conn *c, const char *why, const char *line)
{
    if (errors < 5)
        fprintf(stderr, "pipeline_client: %s%s%.*s\n", why, line ? ": " : "",
                line ? (int)strcspn(line, "\r\n") : 0, line ? line : "");
    errors++;
    unassigned += c->quota; /* its remaining share goes to a new connection */
    c->quota = 0;
    close_conn(c);
    if (unassigned > 0 && errors < 100)
        open_conn();
}

/* start the next message: MAIL (, RCPT, DATA when pipelining) */
static void
start_message(struct conn *c)
{
    c->quota--;
    queue(c, FROM, strlen(FROM));
    c->expect[c->nexpect++] = S_MAIL;
    if (c->pipelining) {
        queue(c, RCPT, strlen(RCPT));
        c->expect[c->nexpect++] = S_RCPT;
        queue(c, DATA, strlen(DATA));
        c->expect[c->nexpect++] = S_DATA;
    }
}

static void
open_conn(void)
{
    struct conn *c = calloc(1, sizeof(*c));
    if (!c) {
        perror("calloc");
        exit(2);
    }
    long share = per_conn > 0 ? per_conn : (total_msgs + sessions - 1) / sessions;
    c->quota = share < unassigned ? share : unassigned;
    unassigned -= c->quota;
    c->fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        perror("socket");
        exit(1);
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&addr, addrlen) != 0 && errno != EINPROGRESS) {
        perror("connect");
        exit(1);
    }
    conns_open++;
    c->expect[c->nexpect++] = S_CONNECT;
    c->want_out = 1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

/* one whole reply (last line) arrived, with its code */
static int
on_reply(struct conn *c, int code, const char *line)
{
    if (c->nexpect == 0) {
        fail(c, "unexpected reply", line);
        return -1;
    }
    enum step s = c->expect[0];
    memmove(c->expect, c->expect + 1, (size_t)(--c->nexpect) * sizeof(c->expect[0]));
    switch (s) {
    case S_GREETING:
        if (code != 220) {
            fail(c, "greeting", line);
            return -1;
        }
        queue(c, "EHLO bench.example\r\n", 20);
        c->expect[c->nexpect++] = S_EHLO;
        break;
    case S_EHLO:
        if (code != 250) {
            fail(c, "EHLO", line);
            return -1;
        }
        ehlo_conns++;
        if (force_pipe)
            c->pipelining = 1;
        if (c->pipelining)
            pipelined_conns++;
        if (c->quota > 0) {
            start_message(c);
        } else {
            queue(c, QUIT, strlen(QUIT));
            c->expect[c->nexpect++] = S_QUIT;
        }
        break;
    case S_MAIL:
        if (code != 250) {
            fail(c, "MAIL", line);
            return -1;
        }
        if (!c->pipelining) {
            queue(c, RCPT, strlen(RCPT));
            c->expect[c->nexpect++] = S_RCPT;
        }
        break;
    case S_RCPT:
        if (code != 250 && code != 251) {
            fail(c, "RCPT", line);
            return -1;
        }
        if (!c->pipelining) {
            queue(c, DATA, strlen(DATA));
            c->expect[c->nexpect++] = S_DATA;
        }
        break;
    case S_DATA:
        if (code != 354) {
            fail(c, "DATA", line);
            return -1;
        }
        queue(c, body, bodylen);
        queue(c, DOT, strlen(DOT));
        c->expect[c->nexpect++] = S_BODY;
        if (c->pipelining) { /* the next group goes in the same write */
            if (c->quota > 0) {
                start_message(c);
            } else {
                queue(c, QUIT, strlen(QUIT));
                c->expect[c->nexpect++] = S_QUIT;
            }
        }
        break;
    case S_BODY:
        if (code != 250) {
            fail(c, "end of data", line);
            return -1;
        }
        done_msgs++;
        if (!c->pipelining) {
            if (c->quota > 0) {
                start_message(c);
            } else {
                queue(c, QUIT, strlen(QUIT));
                c->expect[c->nexpect++] = S_QUIT;
            }
        }
        break;
    case S_QUIT:
        close_conn(c);
        if (unassigned > 0)
            open_conn();
        return -1;
    default:
        fail(c, "internal: bad step", NULL);
        return -1;
    }
    return 0;
}

static int
do_read(struct conn *c)
{
    for (;;) {
        if (c->inlen == sizeof(c->inbuf)) {
            fail(c, "reply line too long", NULL);
            return -1;
        }
        ssize_t n = read(c->fd, c->inbuf + c->inlen, sizeof(c->inbuf) - c->inlen);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return 0;
        if (n <= 0) {
            fail(c, n == 0 ? "server closed the connection" : strerror(errno), NULL);
            return -1;
        }
        c->inlen += (size_t)n;
        size_t off = 0;
        for (;;) {
            char *nl = memchr(c->inbuf + off, '\n', c->inlen - off);
            if (!nl)
                break;
            char *line = c->inbuf + off;
            size_t len = (size_t)(nl - line) + 1;
            off += len;
            if (len >= 4 && line[3] == '-') { /* a continuation line */
                if (len >= 14 && strncasecmp(line + 4, "PIPELINING", 10) == 0)
                    c->pipelining = 1;
                continue;
            }
            if (len >= 14 && strncasecmp(line + 4, "PIPELINING", 10) == 0)
                c->pipelining = 1;
            int code = len >= 3 ? atoi(line) : 0;
            if (on_reply(c, code, line) < 0)
                return -1;
        }
        memmove(c->inbuf, c->inbuf + off, c->inlen - off);
        c->inlen -= off;
        if (c->nout)
            return 1; /* something to write now */
    }
}

static int
do_write(struct conn *c)
{
    while (c->nout) {
        ssize_t n = writev(c->fd, c->out, c->nout);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return 0;
        if (n < 0) {
            fail(c, strerror(errno), NULL);
            return -1;
        }
        size_t left = (size_t)n;
        int i = 0;
        while (i < c->nout && left >= c->out[i].iov_len)
            left -= c->out[i++].iov_len;
        if (i < c->nout) {
            c->out[i].iov_base = (char *)c->out[i].iov_base + left;
            c->out[i].iov_len -= left;
        }
        memmove(c->out, c->out + i, (size_t)(c->nout - i) * sizeof(c->out[0]));
        c->nout -= i;
        if (c->nout == 0)
            c->cmdlen = 0;
    }
    return 0;
}

static int
parse_addr(const char *arg)
{
    char host[256];
    const char *colon = strrchr(arg, ':');
    if (!colon || (size_t)(colon - arg) >= sizeof(host))
        return -1;
    memcpy(host, arg, (size_t)(colon - arg));
    host[colon - arg] = 0;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    if (getaddrinfo(host, colon + 1, &hints, &res) != 0)
        return -1;
    memcpy(&addr, res->ai_addr, res->ai_addrlen);
    addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

int
main(int argc, char **argv)
{
    long size = 1024;
    double timeout = 300;
    int opt;
    while ((opt = getopt(argc, argv, "s:m:n:l:t:P")) != -1) {
        switch (opt) {
        case 's':
            sessions = atol(optarg);
            break;
        case 'm':
            total_msgs = atol(optarg);
            break;
        case 'n':
            per_conn = atol(optarg);
            break;
        case 'l':
            size = atol(optarg);
            break;
        case 't':
            timeout = atof(optarg);
            break;
        case 'P':
            force_pipe = 1;
            break;
        default:
            goto usage;
        }
    }
    if (optind != argc - 1 || sessions < 1 || total_msgs < 0 || per_conn < 0 || size < 0 ||
        timeout <= 0 || parse_addr(argv[optind]) != 0)
        goto usage;
    signal(SIGPIPE, SIG_IGN);
    make_body((size_t)size);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    unassigned = total_msgs;
    double t0 = now(), deadline = t0 + timeout;
    for (long i = 0; i < sessions && (i == 0 || unassigned > 0); i++)
        open_conn();
    struct epoll_event evs[256];
    int timed_out = 0;
    while (conns_open > 0) {
        double left = deadline - now();
        if (left <= 0) {
            timed_out = 1;
            break;
        }
        int n = epoll_wait(epfd, evs, 256, (int)(left * 1000) + 1);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->nexpect && c->expect[0] == S_CONNECT) {
                int err = 0;
                socklen_t l = sizeof(err);
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
                if (err) {
                    fail(c, "connect", strerror(err));
                    continue;
                }
                c->expect[0] = S_GREETING;
                set_events(c);
            }
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                int r = do_read(c);
                if (r < 0)
                    continue;
            }
            if (c->nout && do_write(c) < 0)
                continue;
            set_events(c);
        }
    }
    double secs = now() - t0;
    printf("messages=%ld bytes=%ld seconds=%.6f errors=%ld pipelined=%ld/%ld\n", done_msgs,
           done_msgs * (long)bodylen, secs, errors, pipelined_conns, ehlo_conns);
    fflush(stdout);
    if (timed_out) {
        fprintf(stderr, "pipeline_client: timed out after %.0f s\n", timeout);
        return 3;
    }
    return errors || done_msgs != total_msgs ? 1 : 0;
usage:
    fprintf(stderr, "usage: pipeline_client [-s sessions] [-m messages] [-n per_connection] "
                    "[-l bytes] [-t timeout_s] [-P] host:port\n");
    return 2;
}
