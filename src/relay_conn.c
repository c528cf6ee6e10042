/* The SMTP/LMTP client connection (see relay_conn.h). Every user callback runs from an event
 * callback, never from inside an API call, so a caller may yield a coroutine after queueing a
 * command and be resumed later. The connection is freed only when no callback of ours is on the
 * stack (enter/leave), so a callback may close it. */
#include "luasmtpd/relay_conn.h"

#include <errno.h>
#include <stdarg.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "luasmtpd/buf.h"
#include "luasmtpd/smtp_data.h"

/* RFC 5321 4.5.3.1.5 allows 512; servers write longer ones, so be generous but bounded. */
#define REPLY_LINE_MAX 4096
#define REPLY_LINES_MAX 100
#define BODY_CHUNK (64 * 1024)
#define BODY_HIGH_WATER (256 * 1024)

enum conn_state {
    CONN_STARTING,
    CONN_RESOLVING,
    CONN_CONNECTING,
    CONN_GREETING,
    CONN_HELLO,
    CONN_HELO_FALLBACK,
    CONN_READY,
    CONN_FAILED,
};

enum pending_kind {
    PENDING_COMMAND,
    PENDING_DATA,   /* DATA sent or to send; 354 starts the body */
    PENDING_BODY,   /* body sent or being sent; `nreplies` final replies to come */
};

struct pending {
    struct pending *next;
    enum pending_kind kind;
    char *line;  /* with CRLF */
    bool sent;
    const char *data;
    size_t len;
    unsigned nreplies;
    relay_reply_fn done;
    void *arg;
};

struct relay_conn {
    struct event_base *base;
    struct evdns_base *dns;
    char *host;
    char *helo;
    unsigned short port;
    double timeout;
    bool lmtp;

    enum conn_state state;
    struct evdns_getaddrinfo_request *dns_req;
    struct evutil_addrinfo *addrs, *next_addr;
    int last_errno;
    struct bufferevent *bev;
    struct event *timer;
    struct event *kick; /* runs start-up and failure delivery from the loop */
    relay_ready_fn ready;
    void *ready_arg;
    unsigned ext;
    size_t size_limit;

    int reply_code;
    unsigned reply_lines;
    struct buf reply_text;

    struct pending *head, *tail;
    struct pending *body; /* the PENDING_BODY whose bytes are going out */
    size_t body_off;
    struct smtp_data_encoder enc;
    struct buf chunk;

    enum relay_failure failure;
    int failure_code; /* the server's refusal that failed the connection, or 0 */
    char *failure_text;
    unsigned depth;
    bool closed;
};

const char *
relay_failure_name(enum relay_failure kind)
{
    switch (kind) {
    case RELAY_OK:
        return "ok";
    case RELAY_CONNECT_FAILED:
        return "could not connect";
    case RELAY_TIMED_OUT:
        return "timed out";
    case RELAY_TEMPFAIL:
        return "refused temporarily";
    case RELAY_PERMFAIL:
        return "refused permanently";
    case RELAY_PROTOCOL:
        return "protocol error";
    }
    return "?";
}

enum relay_failure
relay_reply_kind(const struct relay_reply *reply)
{
    if (reply->code >= 200 && reply->code < 400)
        return RELAY_OK;
    if (reply->code >= 400 && reply->code < 500)
        return RELAY_TEMPFAIL;
    if (reply->code >= 500 && reply->code < 600)
        return RELAY_PERMFAIL;
    return RELAY_PROTOCOL;
}

static void conn_free(struct relay_conn *conn);
static void pump(struct relay_conn *conn);

static void
enter(struct relay_conn *conn)
{
    conn->depth++;
}

static void
leave(struct relay_conn *conn)
{
    if (--conn->depth == 0 && conn->closed)
        conn_free(conn);
}

static void
arm_timer(struct relay_conn *conn)
{
    struct timeval tv;
    tv.tv_sec = (time_t)conn->timeout;
    tv.tv_usec = (suseconds_t)((conn->timeout - (double)tv.tv_sec) * 1e6);
    evtimer_add(conn->timer, &tv);
}

static void
drop_socket(struct relay_conn *conn)
{
    if (conn->bev != NULL) {
        bufferevent_free(conn->bev);
        conn->bev = NULL;
    }
}

static void
pending_free(struct pending *p)
{
    free(p->line);
    free(p);
}

static void
pop_head(struct relay_conn *conn)
{
    conn->head = conn->head->next;
    if (conn->head == NULL)
        conn->tail = NULL;
}

/* Delivers the failure to whoever waits: the ready callback if the connection never got
 * ready, else every queued command (a body once per reply it still expected). */
static void
deliver_failure(struct relay_conn *conn)
{
    struct relay_reply reply = {.code = conn->failure_code, .text = conn->failure_text};
    if (conn->ready != NULL) {
        relay_ready_fn ready = conn->ready;
        conn->ready = NULL;
        conn->closed = true; /* the caller never got a usable connection */
        ready(conn->ready_arg, NULL, conn->failure, &reply);
        return;
    }
    while (conn->head != NULL && !conn->closed) {
        struct pending *p = conn->head;
        relay_reply_fn done = p->done;
        void *arg = p->arg;
        if (p->kind != PENDING_COMMAND && p->nreplies > 1) {
            p->nreplies--;
        } else {
            pop_head(conn);
            pending_free(p);
        }
        done(arg, conn->failure, &reply);
    }
}

static void
fail(struct relay_conn *conn, enum relay_failure kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
fail(struct relay_conn *conn, enum relay_failure kind, const char *fmt, ...)
{
    if (conn->state == CONN_FAILED)
        return;
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    conn->state = CONN_FAILED;
    conn->failure = kind;
    free(conn->failure_text);
    conn->failure_text = strdup(text);
    evtimer_del(conn->timer);
    if (conn->dns_req != NULL) {
        evdns_getaddrinfo_cancel(conn->dns_req);
        conn->dns_req = NULL;
    }
    drop_socket(conn);
    conn->body = NULL;
    deliver_failure(conn);
}

static void
send_line(struct relay_conn *conn, const char *line)
{
    bufferevent_write(conn->bev, line, strlen(line));
    arm_timer(conn);
}

static void try_next_address(struct relay_conn *conn);

static void
parse_extensions(struct relay_conn *conn)
{
    /* The first line is the server's name; each further line one extension (RFC 5321 4.1.1.1). */
    const char *p = memchr(conn->reply_text.data, '\n', conn->reply_text.len);
    while (p != NULL) {
        const char *line = p + 1;
        p = strchr(line, '\n');
        size_t n = p ? (size_t)(p - line) : strlen(line);
        if (n >= 10 && strncasecmp(line, "PIPELINING", 10) == 0 && (n == 10 || line[10] == ' '))
            conn->ext |= RELAY_EXT_PIPELINING;
        else if (n >= 8 && strncasecmp(line, "8BITMIME", 8) == 0)
            conn->ext |= RELAY_EXT_8BITMIME;
        else if (n >= 8 && strncasecmp(line, "SMTPUTF8", 8) == 0)
            conn->ext |= RELAY_EXT_SMTPUTF8;
        else if (n >= 4 && strncasecmp(line, "SIZE", 4) == 0 && (n == 4 || line[4] == ' ')) {
            conn->ext |= RELAY_EXT_SIZE;
            conn->size_limit = n > 5 ? strtoul(line + 5, NULL, 10) : 0;
        }
    }
}

static void
send_hello(struct relay_conn *conn, const char *verb)
{
    char line[300];
    snprintf(line, sizeof(line), "%s %s\r\n", verb, conn->helo);
    send_line(conn, line);
}

static void
send_body(struct relay_conn *conn)
{
    struct pending *p = conn->body;
    struct evbuffer *out = bufferevent_get_output(conn->bev);
    while (p != NULL && evbuffer_get_length(out) < BODY_HIGH_WATER) {
        buf_reset(&conn->chunk);
        size_t n = p->len - conn->body_off;
        if (n > BODY_CHUNK)
            n = BODY_CHUNK;
        int rc = smtp_data_encode(&conn->enc, p->data + conn->body_off, n, &conn->chunk);
        conn->body_off += n;
        if (rc == 0 && conn->body_off == p->len)
            rc = smtp_data_encode_end(&conn->enc, &conn->chunk);
        if (rc == -1) {
            fail(conn, RELAY_PROTOCOL, "out of memory sending the message");
            return;
        }
        evbuffer_add(out, conn->chunk.data, conn->chunk.len);
        if (conn->body_off == p->len) {
            conn->body = NULL; /* all queued; the final replies come to p */
            buf_free(&conn->chunk);
        }
        p = conn->body;
    }
    arm_timer(conn);
}

/* Answers the oldest command waiting for a reply. */
static void
complete_pending(struct relay_conn *conn, const struct relay_reply *reply)
{
    struct pending *p = conn->head;
    if (p == NULL || !p->sent) {
        fail(conn, RELAY_PROTOCOL, "unexpected reply: %d %s", reply->code, reply->text);
        return;
    }
    enum relay_failure kind = relay_reply_kind(reply);
    relay_reply_fn done = p->done;
    void *arg = p->arg;
    unsigned calls = 1;
    if (p->kind == PENDING_DATA) {
        if (reply->code == 354) {
            p->kind = PENDING_BODY;
            conn->body = p;
            conn->body_off = 0;
            smtp_data_encoder_init(&conn->enc);
            send_body(conn);
            return;
        }
        if (kind == RELAY_OK)
            kind = RELAY_PROTOCOL; /* DATA answered 2xx without asking for the data */
        calls = p->nreplies;       /* a refused DATA answers every reply expected */
    } else if (p->kind == PENDING_BODY && p->nreplies > 1 && conn->body == NULL) {
        p->nreplies--; /* one of several LMTP replies */
        done(arg, kind, reply);
        return;
    }
    bool cut_short = conn->body == p; /* the server answered before the body was out */
    if (cut_short)
        conn->body = NULL;
    pop_head(conn);
    pending_free(p);
    for (unsigned i = 0; i < calls && !conn->closed; i++)
        done(arg, kind, reply);
    if (cut_short && !conn->closed)
        fail(conn, RELAY_PROTOCOL, "the server answered before the end of the data");
}

static void
handle_reply(struct relay_conn *conn, const struct relay_reply *reply)
{
    switch (conn->state) {
    case CONN_GREETING:
        if (reply->code / 100 != 2) {
            conn->failure_code = reply->code;
            fail(conn, relay_reply_kind(reply) == RELAY_OK ? RELAY_PROTOCOL : relay_reply_kind(reply),
                 "%s", reply->text);
            return;
        }
        conn->state = CONN_HELLO;
        send_hello(conn, conn->lmtp ? "LHLO" : "EHLO");
        return;
    case CONN_HELLO:
    case CONN_HELO_FALLBACK:
        if (reply->code / 100 != 2) {
            if (conn->state == CONN_HELLO && !conn->lmtp && reply->code / 100 == 5) {
                conn->state = CONN_HELO_FALLBACK; /* an old server: RFC 5321 4.1.4 */
                send_hello(conn, "HELO");
                return;
            }
            conn->failure_code = reply->code;
            fail(conn, relay_reply_kind(reply) == RELAY_OK ? RELAY_PROTOCOL : relay_reply_kind(reply),
                 "%s", reply->text);
            return;
        }
        if (conn->state == CONN_HELLO)
            parse_extensions(conn);
        conn->state = CONN_READY;
        evtimer_del(conn->timer);
        relay_ready_fn ready = conn->ready;
        conn->ready = NULL;
        ready(conn->ready_arg, conn, RELAY_OK, reply);
        return;
    case CONN_READY:
        complete_pending(conn, reply);
        return;
    default:
        fail(conn, RELAY_PROTOCOL, "unexpected reply: %d %s", reply->code, reply->text);
        return;
    }
}

/* Reads reply lines; a reply ends at a line whose fourth byte is not '-'. */
static void
read_replies(struct relay_conn *conn)
{
    struct evbuffer *in = bufferevent_get_input(conn->bev);
    while (conn->state != CONN_FAILED && !conn->closed) {
        size_t n;
        char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
        if (line == NULL) {
            if (evbuffer_get_length(in) > REPLY_LINE_MAX)
                fail(conn, RELAY_PROTOCOL, "reply line too long");
            return;
        }
        bool ok = n >= 3 && n <= REPLY_LINE_MAX && line[0] >= '1' && line[0] <= '5' &&
                  line[1] >= '0' && line[1] <= '9' && line[2] >= '0' && line[2] <= '9' &&
                  (n == 3 || line[3] == ' ' || line[3] == '-');
        int code = ok ? atoi(line) : 0;
        if (ok && conn->reply_lines > 0 && code != conn->reply_code)
            ok = false;
        if (!ok || ++conn->reply_lines > REPLY_LINES_MAX) {
            fail(conn, RELAY_PROTOCOL, "malformed reply: %.100s", line);
            free(line);
            return;
        }
        conn->reply_code = code;
        if (conn->reply_lines > 1)
            buf_append(&conn->reply_text, "\n", 1);
        if (n > 4)
            buf_append(&conn->reply_text, line + 4, n - 4);
        bool last = n == 3 || line[3] == ' ';
        free(line);
        if (!last)
            continue;
        buf_append(&conn->reply_text, "", 1); /* NUL-terminate */
        conn->reply_text.len--;
        struct relay_reply reply = {.code = code, .text = conn->reply_text.data};
        conn->reply_lines = 0;
        evtimer_del(conn->timer);
        handle_reply(conn, &reply);
        buf_reset(&conn->reply_text);
        if (conn->state == CONN_READY && !conn->closed)
            pump(conn);
    }
}

/* Sends what may go out now: everything queued when the server pipelines (but nothing behind
 * a DATA until its body is out), else one command at a time. */
static void
pump(struct relay_conn *conn)
{
    if (conn->state != CONN_READY || conn->body != NULL)
        return;
    bool pipelining = (conn->ext & RELAY_EXT_PIPELINING) != 0;
    bool waiting = false;
    for (struct pending *p = conn->head; p != NULL; p = p->next) {
        if (p->sent) {
            if (p->kind != PENDING_COMMAND)
                return; /* DATA or a body in flight: RFC 2920 3.1, DATA ends a group */
            waiting = true;
            continue;
        }
        if (waiting && !pipelining)
            return;
        send_line(conn, p->line);
        p->sent = true;
        waiting = true;
        if (p->kind != PENDING_COMMAND)
            return;
    }
}

static void
on_read(struct bufferevent *bev, void *arg)
{
    (void)bev;
    struct relay_conn *conn = arg;
    enter(conn);
    read_replies(conn);
    leave(conn);
}

static void
on_write(struct bufferevent *bev, void *arg)
{
    (void)bev;
    struct relay_conn *conn = arg;
    enter(conn);
    if (conn->body != NULL && conn->state == CONN_READY)
        send_body(conn);
    leave(conn);
}

static void
on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct relay_conn *conn = arg;
    enter(conn);
    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        setsockopt(bufferevent_getfd(conn->bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        conn->state = CONN_GREETING;
        arm_timer(conn);
    } else if (conn->state == CONN_CONNECTING) {
        conn->last_errno = EVUTIL_SOCKET_ERROR();
        drop_socket(conn);
        try_next_address(conn);
    } else {
        fail(conn, RELAY_PROTOCOL, "%s:%u closed the connection%s", conn->host, conn->port,
             (what & BEV_EVENT_ERROR) ? " with an error" : "");
    }
    leave(conn);
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct relay_conn *conn = arg;
    enter(conn);
    static const char *const stages[] = {
        [CONN_STARTING] = "starting", [CONN_RESOLVING] = "resolving",
        [CONN_CONNECTING] = "connecting", [CONN_GREETING] = "waiting for the greeting",
        [CONN_HELLO] = "waiting for the EHLO reply", [CONN_HELO_FALLBACK] = "waiting for the HELO reply",
        [CONN_READY] = "waiting for a reply", [CONN_FAILED] = "failed",
    };
    fail(conn, conn->state <= CONN_CONNECTING ? RELAY_CONNECT_FAILED : RELAY_TIMED_OUT,
         "%s:%u timed out %s", conn->host, conn->port,
         conn->body ? "sending the message" : stages[conn->state]);
    if (conn->failure == RELAY_CONNECT_FAILED)
        conn->failure = RELAY_TIMED_OUT;
    leave(conn);
}

static void
try_next_address(struct relay_conn *conn)
{
    while (conn->next_addr != NULL) {
        struct evutil_addrinfo *ai = conn->next_addr;
        conn->next_addr = ai->ai_next;
        conn->bev = bufferevent_socket_new(conn->base, -1, BEV_OPT_CLOSE_ON_FREE);
        if (conn->bev == NULL)
            break;
        bufferevent_setcb(conn->bev, on_read, on_write, on_event, conn);
        bufferevent_setwatermark(conn->bev, EV_WRITE, BODY_HIGH_WATER / 4, 0);
        bufferevent_enable(conn->bev, EV_READ | EV_WRITE);
        conn->state = CONN_CONNECTING;
        arm_timer(conn);
        if (bufferevent_socket_connect(conn->bev, ai->ai_addr, (int)ai->ai_addrlen) == 0)
            return;
        conn->last_errno = EVUTIL_SOCKET_ERROR();
        drop_socket(conn);
    }
    fail(conn, RELAY_CONNECT_FAILED, "cannot connect to %s:%u: %s", conn->host, conn->port,
         conn->last_errno ? strerror(conn->last_errno) : "no address");
}

static void
on_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
    struct relay_conn *conn = arg;
    if (result == EVUTIL_EAI_CANCEL)
        return;
    enter(conn);
    conn->dns_req = NULL;
    if (result != 0) {
        fail(conn, RELAY_CONNECT_FAILED, "cannot resolve %s: %s", conn->host,
             evutil_gai_strerror(result));
    } else {
        conn->addrs = res;
        conn->next_addr = res;
        try_next_address(conn);
    }
    leave(conn);
}

static void
on_kick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct relay_conn *conn = arg;
    enter(conn);
    if (conn->state == CONN_STARTING) {
        conn->state = CONN_RESOLVING;
        arm_timer(conn);
        struct evutil_addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                        .ai_protocol = IPPROTO_TCP};
        char port[8];
        snprintf(port, sizeof(port), "%u", conn->port);
        /* The callback may run before this returns, for a numeric address. */
        struct evdns_getaddrinfo_request *req =
            evdns_getaddrinfo(conn->dns, conn->host, port, &hints, on_resolved, conn);
        if (conn->state == CONN_RESOLVING)
            conn->dns_req = req;
    } else if (conn->state == CONN_FAILED) {
        deliver_failure(conn);
    }
    leave(conn);
}

struct relay_conn *
relay_conn_open(struct event_base *base, struct evdns_base *dns,
                const struct relay_conn_options *opts, relay_ready_fn ready, void *arg)
{
    struct relay_conn *conn = calloc(1, sizeof(*conn));
    if (conn == NULL)
        return NULL;
    conn->base = base;
    conn->dns = dns;
    conn->host = strdup(opts->host);
    conn->helo = strdup(opts->helo && *opts->helo ? opts->helo : "localhost");
    conn->port = opts->port;
    conn->timeout = opts->timeout > 0 ? opts->timeout : 60;
    conn->lmtp = opts->lmtp;
    conn->ready = ready;
    conn->ready_arg = arg;
    conn->timer = evtimer_new(base, on_timer, conn);
    conn->kick = event_new(base, -1, 0, on_kick, conn);
    if (conn->host == NULL || conn->helo == NULL || conn->timer == NULL || conn->kick == NULL) {
        conn_free(conn);
        return NULL;
    }
    event_active(conn->kick, 0, 0);
    return conn;
}

static void
enqueue(struct relay_conn *conn, struct pending *p)
{
    if (conn->tail)
        conn->tail->next = p;
    else
        conn->head = p;
    conn->tail = p;
    if (conn->state == CONN_FAILED)
        event_active(conn->kick, 0, 0);
    else
        pump(conn);
}

void
relay_conn_command(struct relay_conn *conn, const char *line, relay_reply_fn done, void *arg)
{
    struct pending *p = calloc(1, sizeof(*p));
    size_t n = strlen(line);
    char *copy = malloc(n + 3);
    if (p == NULL || copy == NULL) {
        free(p);
        free(copy);
        fail(conn, RELAY_PROTOCOL, "out of memory");
        return;
    }
    memcpy(copy, line, n);
    memcpy(copy + n, "\r\n", 3);
    p->kind = PENDING_COMMAND;
    p->line = copy;
    p->done = done;
    p->arg = arg;
    enqueue(conn, p);
}

void
relay_conn_data(struct relay_conn *conn, const char *data, size_t len, unsigned nreplies,
                relay_reply_fn done, void *arg)
{
    struct pending *p = calloc(1, sizeof(*p));
    if (p == NULL || (p->line = strdup("DATA\r\n")) == NULL) {
        free(p);
        fail(conn, RELAY_PROTOCOL, "out of memory");
        return;
    }
    p->kind = PENDING_DATA;
    p->data = data;
    p->len = len;
    p->nreplies = nreplies ? nreplies : 1;
    p->done = done;
    p->arg = arg;
    enqueue(conn, p);
}

unsigned
relay_conn_extensions(const struct relay_conn *conn)
{
    return conn->ext;
}

size_t
relay_conn_size_limit(const struct relay_conn *conn)
{
    return conn->size_limit;
}

bool
relay_conn_lmtp(const struct relay_conn *conn)
{
    return conn->lmtp;
}

static void
conn_free(struct relay_conn *conn)
{
    if (conn->dns_req != NULL)
        evdns_getaddrinfo_cancel(conn->dns_req);
    drop_socket(conn);
    if (conn->addrs != NULL)
        evutil_freeaddrinfo(conn->addrs);
    if (conn->timer)
        event_free(conn->timer);
    if (conn->kick)
        event_free(conn->kick);
    while (conn->head != NULL) {
        struct pending *p = conn->head;
        conn->head = p->next;
        pending_free(p);
    }
    buf_free(&conn->reply_text);
    buf_free(&conn->chunk);
    free(conn->failure_text);
    free(conn->host);
    free(conn->helo);
    free(conn);
}

void
relay_conn_close(struct relay_conn *conn)
{
    if (conn == NULL || conn->closed)
        return;
    /* A polite QUIT when nothing else is half sent; it goes straight to the socket because the
     * bufferevent is freed at once. A transaction cut short is simply abandoned, which tells
     * the server not to deliver. */
    if (conn->state == CONN_READY && conn->bev != NULL && conn->body == NULL &&
        evbuffer_get_length(bufferevent_get_output(conn->bev)) == 0)
        send(bufferevent_getfd(conn->bev), "QUIT\r\n", 6, MSG_NOSIGNAL | MSG_DONTWAIT);
    conn->closed = true;
    drop_socket(conn);
    if (conn->dns_req != NULL) {
        evdns_getaddrinfo_cancel(conn->dns_req);
        conn->dns_req = NULL;
    }
    if (conn->depth == 0)
        conn_free(conn);
}
