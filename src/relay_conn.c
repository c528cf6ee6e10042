/* The SMTP/LMTP client connection (see relay_conn.h). Every user callback runs from an event
 * callback, never from inside an API call, so a caller may yield a coroutine after queueing a
 * command and be resumed later. The connection is freed only when no callback of ours is on the
 * stack (relay_conn_enter/leave), so a callback may close it. Replies are trusted for nothing:
 * each is checked against the class its command calls for before anyone sees it as a success.
 * Reading replies is relay_reply.c's, the queue relay_pending.c's, the QUIT relay_quit.c's, the
 * opening (EHLO, STARTTLS, AUTH) relay_hello.c's and TLS itself tls_client.c's. */
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
#include <sys/socket.h>
#include <unistd.h>

#include "luasmtpd/buf.h"
#include "luasmtpd/log.h"
#include "luasmtpd/relay_pending.h"
#include "luasmtpd/relay_quit.h"
#include "luasmtpd/smtp_data.h"
#include "luasmtpd/tls_client.h"

#define BODY_CHUNK (64 * 1024)
#define BODY_HIGH_WATER (256 * 1024)

enum conn_state {
    CONN_STARTING,
    CONN_RESOLVING,
    CONN_CONNECTING,
    CONN_HANDSHAKE, /* TLS, implicit or after STARTTLS */
    CONN_OPENING,   /* greeting, EHLO, STARTTLS, AUTH: relay_hello.c's steps */
    CONN_READY,
    CONN_FAILED, /* the socket is gone; failures are delivered, nothing else happens */
};

struct relay_conn {
    struct event_base *base;
    struct evdns_base *dns;
    char *host;
    char *peer; /* "host:port" */
    unsigned short port;
    double timeout;
    double data_timeout;
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
    struct relay_hello hello;

    struct relay_reply_reader reader;

    struct relay_pending_queue queue;
    struct relay_pending *body; /* the RELAY_PENDING_BODY whose bytes are going out */
    size_t body_off;
    struct smtp_data_encoder enc;
    struct buf chunk;

    enum relay_failure failure;
    int failure_code; /* the server's refusal that failed the connection, or 0 */
    char *failure_text;
    unsigned depth;
    unsigned in_api; /* inside relay_conn_command/data: failures wait for the loop */
    bool closed;
};

static void relay_conn_free(struct relay_conn *conn);
static void relay_conn_pump(struct relay_conn *conn);
static void relay_conn_on_read(struct bufferevent *bev, void *arg);
static void relay_conn_on_write(struct bufferevent *bev, void *arg);
static void relay_conn_on_event(struct bufferevent *bev, short what, void *arg);

static void
relay_conn_enter(struct relay_conn *conn)
{
    conn->depth++;
}

static void
relay_conn_leave(struct relay_conn *conn)
{
    if (--conn->depth == 0 && conn->closed)
        relay_conn_free(conn);
}

static void
arm_timer(struct relay_conn *conn, double seconds)
{
    struct timeval tv;
    tv.tv_sec = (time_t)seconds;
    tv.tv_usec = (suseconds_t)((seconds - (double)tv.tv_sec) * 1e6);
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

static size_t
output_length(const struct relay_conn *conn)
{
    return conn->bev ? evbuffer_get_length(bufferevent_get_output(conn->bev)) : 0;
}

/* Whether the end of `p`'s message has left our buffers for the kernel: only then can the
 * server have seen the final dot, so only then may a reply answer it. */
static bool
dot_left(struct relay_conn *conn, struct relay_pending *p)
{
    if (p->kind == RELAY_PENDING_BODY && !p->dot_sent && conn->body == NULL && conn->bev != NULL &&
        output_length(conn) == 0)
        p->dot_sent = true;
    return p->kind == RELAY_PENDING_BODY && p->dot_sent;
}

/* Delivers the failure to whoever waits: the ready callback if the connection never got
 * ready, else every queued command (a body once per reply it still expected). A message whose
 * end had left us gets RELAY_UNKNOWN: the server may have delivered it. */
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
    reply.code = 0;
    while (conn->queue.head != NULL && !conn->closed) {
        struct relay_pending *p = conn->queue.head;
        relay_reply_fn done = p->done;
        void *arg = p->arg;
        enum relay_failure kind = p->dot_sent ? RELAY_UNKNOWN : conn->failure;
        reply.end_of_data = p->kind == RELAY_PENDING_BODY;
        if (p->kind == RELAY_PENDING_BODY && p->nreplies > 1) {
            p->nreplies--;
        } else {
            relay_pending_free(relay_pending_pop(&conn->queue));
        }
        done(arg, kind, &reply);
    }
}

static void relay_conn_fail(struct relay_conn *conn, enum relay_failure kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
relay_conn_fail(struct relay_conn *conn, enum relay_failure kind, const char *fmt, ...)
{
    if (conn->state == CONN_FAILED)
        return;
    char text[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (conn->queue.head != NULL)
        dot_left(conn, conn->queue.head); /* decided before the socket and its buffers go */
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
    if (conn->in_api > 0)
        event_active(conn->kick, 0, 0); /* never a callback from inside an API call */
    else
        deliver_failure(conn);
}

/* Called before we send something while no reply is owed to us: whatever the server sent by
 * then answers nothing we asked. Taking it as the answer to what we are about to send is how
 * one extra reply would shift every later one and turn a refusal into a success. (An extra
 * reply that arrives on its own, after we sent the next command, cannot be told from the
 * answer to it by any client; one sent with the reply before it, the usual way, is caught
 * here, and a shifted reply then meets DATA, which only a 3xx satisfies.) */
static bool
unsolicited(struct relay_conn *conn)
{
    char sample[101];
    if (!relay_reply_waiting(&conn->reader, bufferevent_get_input(conn->bev), sample))
        return false;
    relay_conn_fail(conn, RELAY_PROTOCOL, "%s sent a reply nobody asked for: %s", conn->peer,
                    sample);
    return true;
}

static void
send_bytes(struct relay_conn *conn, const char *bytes, size_t len)
{
    bufferevent_write(conn->bev, bytes, len);
    arm_timer(conn, conn->timeout);
}

static void try_next_address(struct relay_conn *conn);

static void
send_body(struct relay_conn *conn)
{
    struct relay_pending *p = conn->body;
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
            relay_conn_fail(conn, RELAY_PROTOCOL, "out of memory sending the message");
            return;
        }
        evbuffer_add(out, conn->chunk.data, conn->chunk.len);
        if (conn->body_off == p->len) {
            conn->body = NULL; /* all queued; the final replies come to p once it is out */
            buf_free(&conn->chunk);
        }
        p = conn->body;
    }
    arm_timer(conn, conn->timeout);
}

/* Answers the oldest command waiting for a reply, if the reply is one it may have. */
static void
complete_pending(struct relay_conn *conn, struct relay_reply *reply)
{
    struct relay_pending *p = conn->queue.head;
    char sample[101];
    const char *text = relay_reply_excerpt(sample, reply->text, strlen(reply->text));
    if (p == NULL || !p->sent) {
        relay_conn_fail(conn, RELAY_PROTOCOL, "%s sent a reply nobody asked for: %d %s", conn->peer,
                        reply->code, text);
        return;
    }
    int cls = reply->code / 100;
    enum relay_failure kind = cls == 4 ? RELAY_TEMPFAIL : cls == 5 ? RELAY_PERMFAIL : RELAY_OK;
    relay_reply_fn done = p->done;
    void *arg = p->arg;
    switch (p->kind) {
    case RELAY_PENDING_COMMAND:
        if (cls == 1 || (cls == 3 && p->expect == RELAY_EXPECT_2XX)) {
            relay_conn_fail(conn, RELAY_PROTOCOL, "%s answered %.*s with %d %s", conn->peer,
                            relay_pending_verb_length(p), p->line, reply->code, text);
            return;
        }
        break;
    case RELAY_PENDING_DATA:
        if (cls == 3) {
            if (unsolicited(conn))
                return;
            p->kind = RELAY_PENDING_BODY;
            conn->body = p;
            conn->body_off = 0;
            smtp_data_encoder_init(&conn->enc);
            send_body(conn);
            return;
        }
        if (kind == RELAY_OK) {
            /* A 2xx here asks for no data: taking it as delivery is how mail gets lost. */
            relay_conn_fail(conn, RELAY_PROTOCOL, "%s answered DATA with %d %s instead of 354",
                            conn->peer, reply->code, text);
            return;
        }
        break; /* DATA refused: one answer, however many replies the body would have had */
    case RELAY_PENDING_BODY:
        if (!dot_left(conn, p)) {
            /* The server cannot have seen the end of a message still in our buffers: a 2xx
             * now accepts something else; a refusal stands, but the connection is lost. */
            if (kind == RELAY_OK) {
                relay_conn_fail(conn, RELAY_PROTOCOL,
                                "%s answered %d %s before the end of the message", conn->peer,
                                reply->code, text);
                return;
            }
            conn->body = NULL;
            relay_pending_free(relay_pending_pop(&conn->queue));
            done(arg, kind, reply);
            if (!conn->closed)
                relay_conn_fail(conn, RELAY_PROTOCOL, "%s refused the message before its end",
                                conn->peer);
            return;
        }
        if (cls == 1 || cls == 3) {
            relay_conn_fail(conn, RELAY_PROTOCOL, "%s answered the end of the message with %d %s",
                            conn->peer, reply->code, text);
            return;
        }
        reply->end_of_data = true;
        if (p->nreplies > 1) {
            p->nreplies--; /* one of several LMTP replies */
            done(arg, kind, reply);
            return;
        }
        break;
    }
    relay_pending_free(relay_pending_pop(&conn->queue));
    done(arg, kind, reply);
}

/* After STARTTLS's 220 (tls_client_wrap drops what came with it: RFC 3207 5, CVE-2011-0411 seen
 * from the client), or before the greeting for implicit TLS. */
static void
start_tls(struct relay_conn *conn)
{
    struct tls_client_options o = {.verify = conn->hello.verify,
                                   .ca = conn->hello.cafile,
                                   .name = conn->hello.servername ? conn->hello.servername
                                                                  : conn->host};
    char err[300];
    size_t junk = 0;
    struct bufferevent *tls = tls_client_wrap(conn->bev, &o, &junk, err, sizeof(err));
    if (junk > 0)
        log_warn("relay: %s sent %zu bytes after its 220 to STARTTLS: dropped", conn->peer, junk);
    if (tls == NULL) {
        relay_conn_fail(conn, RELAY_TLS_FAILED, "%s: %s", conn->peer, err);
        return;
    }
    conn->bev = tls;
    bufferevent_setcb(tls, relay_conn_on_read, relay_conn_on_write, relay_conn_on_event, conn);
    bufferevent_setwatermark(tls, EV_WRITE, BODY_HIGH_WATER / 4, 0);
    bufferevent_enable(tls, EV_READ | EV_WRITE);
    conn->state = CONN_HANDSHAKE;
    arm_timer(conn, conn->timeout);
}

/* Does what the opening asks for after `reply` (relay_hello.c decides what). */
static void
opening_step(struct relay_conn *conn, enum relay_hello_step step, const struct relay_reply *reply)
{
    switch (step) {
    case RELAY_HELLO_SEND:
        if (!unsolicited(conn))
            send_bytes(conn, conn->hello.out.data, conn->hello.out.len);
        return;
    case RELAY_HELLO_STARTTLS:
        start_tls(conn);
        return;
    case RELAY_HELLO_READY: { /* read_replies stopped the timer */
        conn->state = CONN_READY;
        relay_ready_fn ready = conn->ready;
        conn->ready = NULL;
        ready(conn->ready_arg, conn, RELAY_OK, reply);
        return;
    }
    case RELAY_HELLO_FAIL:
        conn->failure_code = conn->hello.code;
        relay_conn_fail(conn, conn->hello.kind, "%s",
                        conn->hello.out.data ? conn->hello.out.data : "out of memory");
        return;
    }
}

static void
handle_reply(struct relay_conn *conn, struct relay_reply *reply)
{
    switch (conn->state) {
    case CONN_OPENING:
        opening_step(conn, relay_hello_reply(&conn->hello, reply), reply);
        return;
    case CONN_READY:
        complete_pending(conn, reply);
        return;
    default:
        relay_conn_fail(conn, RELAY_PROTOCOL, "%s sent a reply nobody asked for", conn->peer);
        return;
    }
}

/* The timer after a reply: the oldest command still waiting decides which timeout runs. */
static void
arm_for_head(struct relay_conn *conn)
{
    struct relay_pending *p = conn->queue.head;
    if (conn->state != CONN_READY || p == NULL || !p->sent)
        evtimer_del(conn->timer);
    else
        arm_timer(conn, dot_left(conn, p) ? conn->data_timeout : conn->timeout);
}

/* Reads replies and answers with each what waits for it, until the input runs out or the
 * connection fails or is closed (by a callback). */
static void
read_replies(struct relay_conn *conn)
{
    /* Not in CONN_HANDSHAKE: the socket's input is TLS's then, and a new bufferevent reads. */
    while ((conn->state == CONN_OPENING || conn->state == CONN_READY) && !conn->closed) {
        struct evbuffer *in = bufferevent_get_input(conn->bev);
        struct relay_reply reply;
        switch (relay_reply_read(&conn->reader, in, &reply)) {
        case RELAY_READ_MORE:
            return;
        case RELAY_READ_MALFORMED: {
            char sample[101];
            const struct buf *line = &conn->reader.line;
            relay_conn_fail(conn, RELAY_PROTOCOL, "%s sent a malformed reply line: %s", conn->peer,
                            relay_reply_excerpt(sample, line->data, line->len));
            return;
        }
        case RELAY_READ_NOMEM:
            relay_conn_fail(conn, RELAY_PROTOCOL, "out of memory reading a reply");
            return;
        case RELAY_READ_REPLY:
            break;
        }
        evtimer_del(conn->timer);
        handle_reply(conn, &reply);
        if (conn->state == CONN_READY && !conn->closed) {
            relay_conn_pump(conn);
            if (conn->state == CONN_READY)
                arm_for_head(conn);
        }
    }
}

/* Sends what may go out now: everything queued when the server pipelines (but nothing behind
 * a DATA until its body is out), else one command at a time. */
static void
relay_conn_pump(struct relay_conn *conn)
{
    if (conn->state != CONN_READY || conn->body != NULL)
        return;
    bool pipelining = (conn->hello.ext & RELAY_EXT_PIPELINING) != 0;
    bool waiting = false;
    for (struct relay_pending *p = conn->queue.head; p != NULL; p = p->next) {
        if (p->sent) {
            if (p->kind != RELAY_PENDING_COMMAND)
                return; /* DATA or a body in flight: RFC 2920 3.1, DATA ends a group */
            waiting = true;
            continue;
        }
        if (waiting && !pipelining)
            return;
        if (!waiting && unsolicited(conn))
            return;
        send_bytes(conn, p->line, p->line_len);
        p->sent = true;
        waiting = true;
        if (p->kind != RELAY_PENDING_COMMAND)
            return;
    }
}

static void
relay_conn_on_read(struct bufferevent *bev, void *arg)
{
    (void)bev;
    struct relay_conn *conn = arg;
    relay_conn_enter(conn);
    read_replies(conn);
    relay_conn_leave(conn);
}

static void
relay_conn_on_write(struct bufferevent *bev, void *arg)
{
    (void)bev;
    struct relay_conn *conn = arg;
    relay_conn_enter(conn);
    if (conn->state == CONN_READY && conn->body != NULL) {
        send_body(conn);
    } else if (conn->state == CONN_READY && conn->queue.head != NULL &&
               !conn->queue.head->dot_sent && dot_left(conn, conn->queue.head)) {
        /* The end of the message is out: the server may now take its time delivering. */
        arm_timer(conn, conn->data_timeout);
    }
    relay_conn_leave(conn);
}

static void
relay_conn_on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct relay_conn *conn = arg;
    relay_conn_enter(conn);
    if ((what & BEV_EVENT_CONNECTED) && conn->state == CONN_HANDSHAKE) {
        conn->state = CONN_OPENING;
        if (conn->hello.tls != RELAY_TLS_IMPLICIT) {
            opening_step(conn, relay_hello_secured(&conn->hello), NULL);
        } else {
            arm_timer(conn, conn->timeout);
            read_replies(conn); /* the greeting may have come with the handshake's end */
        }
    } else if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        setsockopt(bufferevent_getfd(conn->bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        conn->state = CONN_OPENING;
        arm_timer(conn, conn->timeout);
        if (conn->hello.tls == RELAY_TLS_IMPLICIT)
            start_tls(conn);
    } else if (conn->state == CONN_HANDSHAKE) {
        char why[300];
        relay_conn_fail(conn, RELAY_TLS_FAILED, "%s: %s", conn->peer,
                        tls_client_failure(conn->bev, conn->hello.verify, why, sizeof(why)));
    } else if (conn->state == CONN_CONNECTING) {
        conn->last_errno = EVUTIL_SOCKET_ERROR();
        drop_socket(conn);
        try_next_address(conn);
    } else {
        relay_conn_fail(conn, RELAY_PROTOCOL, "%s closed the connection%s", conn->peer,
                        (what & BEV_EVENT_ERROR) ? " with an error" : "");
    }
    relay_conn_leave(conn);
}

static void
relay_conn_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct relay_conn *conn = arg;
    relay_conn_enter(conn);
    struct relay_pending *p = conn->queue.head;
    if (conn->state <= CONN_CONNECTING) {
        relay_conn_fail(conn, RELAY_TIMED_OUT, "%s timed out %s", conn->peer,
                        conn->state == CONN_CONNECTING ? "connecting" : "resolving");
    } else if (conn->state == CONN_HANDSHAKE || conn->state == CONN_OPENING) {
        relay_conn_fail(conn, RELAY_TIMED_OUT, "%s timed out waiting for the %s", conn->peer,
                        conn->state == CONN_HANDSHAKE ? "TLS handshake"
                                                      : relay_hello_waiting_for(&conn->hello));
    } else if (p != NULL && p->kind == RELAY_PENDING_BODY && dot_left(conn, p)) {
        relay_conn_fail(conn, RELAY_TIMED_OUT,
                        "%s timed out waiting for the reply after the message", conn->peer);
    } else if (p != NULL && p->kind == RELAY_PENDING_BODY) {
        relay_conn_fail(conn, RELAY_TIMED_OUT, "%s timed out sending the message", conn->peer);
    } else if (p != NULL) {
        relay_conn_fail(conn, RELAY_TIMED_OUT, "%s timed out waiting for the reply to %.*s",
                        conn->peer, relay_pending_verb_length(p), p->line);
    } else {
        relay_conn_fail(conn, RELAY_TIMED_OUT, "%s timed out", conn->peer);
    }
    relay_conn_leave(conn);
}

static void
try_next_address(struct relay_conn *conn)
{
    while (conn->next_addr != NULL) {
        struct evutil_addrinfo *ai = conn->next_addr;
        conn->next_addr = ai->ai_next;
        /* Our own socket: the one bufferevent_socket_connect would make is not close-on-exec,
         * and a child (smtpd.pipe) would inherit the upstream connection. */
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
        if (fd < 0) {
            conn->last_errno = errno;
            continue;
        }
        conn->bev = bufferevent_socket_new(conn->base, fd, BEV_OPT_CLOSE_ON_FREE);
        if (conn->bev == NULL) {
            close(fd);
            break;
        }
        bufferevent_setcb(conn->bev, relay_conn_on_read, relay_conn_on_write, relay_conn_on_event,
                          conn);
        bufferevent_setwatermark(conn->bev, EV_WRITE, BODY_HIGH_WATER / 4, 0);
        bufferevent_enable(conn->bev, EV_READ | EV_WRITE);
        conn->state = CONN_CONNECTING;
        arm_timer(conn, conn->timeout);
        if (bufferevent_socket_connect(conn->bev, ai->ai_addr, (int)ai->ai_addrlen) == 0)
            return;
        conn->last_errno = EVUTIL_SOCKET_ERROR();
        drop_socket(conn);
    }
    relay_conn_fail(conn, RELAY_CONNECT_FAILED, "cannot connect to %s: %s", conn->peer,
                    conn->last_errno ? strerror(conn->last_errno) : "no address");
}

static void
relay_conn_on_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
    struct relay_conn *conn = arg;
    if (result == EVUTIL_EAI_CANCEL)
        return;
    relay_conn_enter(conn);
    conn->dns_req = NULL;
    if (result != 0) {
        relay_conn_fail(conn, RELAY_CONNECT_FAILED, "cannot resolve %s: %s", conn->host,
                        evutil_gai_strerror(result));
    } else {
        conn->addrs = res;
        conn->next_addr = res;
        try_next_address(conn);
    }
    relay_conn_leave(conn);
}

static void
relay_conn_on_kick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct relay_conn *conn = arg;
    relay_conn_enter(conn);
    if (conn->state == CONN_STARTING) {
        conn->state = CONN_RESOLVING;
        arm_timer(conn, conn->timeout);
        struct evutil_addrinfo hints = {
            .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_protocol = IPPROTO_TCP};
        char port[8];
        snprintf(port, sizeof(port), "%u", conn->port);
        /* The callback may run before this returns, for a numeric address. */
        struct evdns_getaddrinfo_request *req =
            evdns_getaddrinfo(conn->dns, conn->host, port, &hints, relay_conn_on_resolved, conn);
        if (conn->state == CONN_RESOLVING)
            conn->dns_req = req;
    } else if (conn->state == CONN_FAILED) {
        deliver_failure(conn);
    }
    relay_conn_leave(conn);
}

struct relay_conn *
relay_conn_open(struct event_base *base, struct evdns_base *dns,
                const struct relay_conn_options *opts, relay_ready_fn ready, void *arg)
{
    const char *helo = opts->helo && *opts->helo ? opts->helo : "localhost";
    if (strpbrk(helo, "\r\n") != NULL) {
        errno = EINVAL;
        return NULL;
    }
    struct relay_conn *conn = calloc(1, sizeof(*conn));
    if (conn == NULL)
        return NULL;
    conn->base = base;
    conn->dns = dns;
    conn->host = strdup(opts->host);
    conn->port = opts->port;
    conn->timeout = opts->timeout > 0 ? opts->timeout : RELAY_DEFAULT_TIMEOUT;
    conn->data_timeout = opts->data_timeout > 0 ? opts->data_timeout : RELAY_DEFAULT_DATA_TIMEOUT;
    conn->lmtp = opts->lmtp;
    conn->ready = ready;
    conn->ready_arg = arg;
    struct buf peer = {0};
    if (buf_printf(&peer, "%s:%u", opts->host, opts->port) == 0)
        conn->peer = peer.data;
    conn->timer = evtimer_new(base, relay_conn_on_timer, conn);
    conn->kick = event_new(base, -1, 0, relay_conn_on_kick, conn);
    if (conn->host == NULL || conn->peer == NULL || conn->timer == NULL || conn->kick == NULL ||
        relay_hello_init(&conn->hello, &opts->sec, helo, conn->peer, opts->lmtp) == -1) {
        relay_conn_free(conn);
        errno = ENOMEM;
        return NULL;
    }
    event_active(conn->kick, 0, 0);
    return conn;
}

static void
enqueue(struct relay_conn *conn, struct relay_pending *p)
{
    relay_pending_push(&conn->queue, p);
    conn->in_api++;
    if (conn->state == CONN_FAILED)
        event_active(conn->kick, 0, 0);
    else
        relay_conn_pump(conn);
    conn->in_api--;
}

int
relay_conn_command(struct relay_conn *conn, const char *line, size_t len, enum relay_expect expect,
                   relay_reply_fn done, void *arg)
{
    struct relay_pending *p = relay_pending_command(line, len, expect, done, arg);
    if (p == NULL)
        return -1;
    enqueue(conn, p);
    return 0;
}

int
relay_conn_data(struct relay_conn *conn, const char *data, size_t len, unsigned nreplies,
                relay_reply_fn done, void *arg)
{
    struct relay_pending *p = relay_pending_data(data, len, nreplies, done, arg);
    if (p == NULL)
        return -1;
    enqueue(conn, p);
    return 0;
}

unsigned
relay_conn_extensions(const struct relay_conn *conn)
{
    return conn->hello.ext;
}

size_t
relay_conn_size_limit(const struct relay_conn *conn)
{
    return conn->hello.size_limit;
}

bool
relay_conn_lmtp(const struct relay_conn *conn)
{
    return conn->lmtp;
}

bool
relay_conn_tls(const struct relay_conn *conn)
{
    return conn->hello.tls_active;
}

const char *
relay_conn_peer(const struct relay_conn *conn)
{
    return conn->peer;
}

static void
relay_conn_free(struct relay_conn *conn)
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
    relay_pending_clear(&conn->queue);
    relay_reply_reader_free(&conn->reader);
    buf_free(&conn->chunk);
    free(conn->failure_text);
    free(conn->host);
    relay_hello_free(&conn->hello);
    free(conn->peer);
    free(conn);
}

/* Whether the connection is idle enough for a polite QUIT: nothing sent is waiting for its
 * reply (a transaction cut short is abandoned instead, which tells the server not to
 * deliver), and the loop still runs to read the 221. */
static bool
can_quit(struct relay_conn *conn)
{
    if (conn->state != CONN_READY || conn->bev == NULL || conn->body != NULL ||
        output_length(conn) != 0 || event_base_got_exit(conn->base))
        return false;
    for (struct relay_pending *p = conn->queue.head; p != NULL; p = p->next)
        if (p->sent)
            return false;
    return true;
}

void
relay_conn_close(struct relay_conn *conn)
{
    if (conn == NULL || conn->closed)
        return;
    conn->closed = true;
    conn->ready = NULL;
    if (conn->dns_req != NULL) {
        evdns_getaddrinfo_cancel(conn->dns_req);
        conn->dns_req = NULL;
    }
    if (can_quit(conn)) {
        /* The socket goes on alone; commands never sent are forgotten with the connection
         * below, and their callbacks will not run. */
        relay_quit_start(conn->base, conn->bev,
                         conn->timeout < RELAY_QUIT_TIMEOUT ? conn->timeout : RELAY_QUIT_TIMEOUT);
        conn->bev = NULL;
    }
    drop_socket(conn);
    evtimer_del(conn->timer);
    if (conn->depth == 0)
        relay_conn_free(conn);
}
