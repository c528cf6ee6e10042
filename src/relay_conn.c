/* The SMTP/LMTP client connection (see relay_conn.h). Every user callback runs from an event
 * callback, never from inside an API call, so a caller may yield a coroutine after queueing a
 * command and be resumed later. The connection is freed only when no callback of ours is on the
 * stack (enter/leave), so a callback may close it. Replies are trusted for nothing: each is
 * checked against the class its command calls for before anyone sees it as a success. */
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
#include <unistd.h>

#include "luasmtpd/buf.h"
#include "luasmtpd/smtp_data.h"

/* What we keep of a reply line: the code, its separator, the longest text we hand on and a
 * CR. The rest of a longer line is skipped as it arrives, so a server cannot make us buffer
 * without bound, and a 2xx with a long text is still a 2xx. */
#define REPLY_LINE_KEEP (4 + RELAY_TEXT_LINE_MAX + 1)
/* Lines of one reply we keep; further lines are read and dropped. */
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
    CONN_FAILED,   /* the socket is gone; failures are delivered, nothing else happens */
    CONN_QUITTING, /* closed by its user: QUIT sent, waiting for any reply, the close or time */
};

enum pending_kind {
    PENDING_COMMAND,
    PENDING_DATA, /* DATA sent or to send; a 3xx starts the body */
    PENDING_BODY, /* body sent or being sent; `nreplies` final replies to come */
};

struct pending {
    struct pending *next;
    enum pending_kind kind;
    enum relay_expect expect;
    char *line; /* with CRLF */
    size_t line_len;
    bool sent;
    bool dot_sent; /* the end of the message left our buffers: the server may have it all */
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
    unsigned ext;
    size_t size_limit;

    struct buf line; /* the reply line being read (its head, when it is long) */
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
    unsigned in_api; /* inside relay_conn_command/data: failures wait for the loop */
    bool closed;
    struct relay_conn *linger_prev, *linger_next;
};

/* Connections waiting for their 221 after relay_conn_close, which nobody else points to. When
 * the event loop ends first (the server stops), the process exit reclaims them; this list is
 * what keeps them reachable meanwhile, so leak checkers see memory in use, not lost. */
static struct relay_conn *lingering;

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
    case RELAY_UNKNOWN:
        return "upstream's answer after the message was lost: it may have been delivered";
    }
    return "?";
}

bool
relay_failure_is_fatal(enum relay_failure kind)
{
    return kind != RELAY_OK && kind != RELAY_TEMPFAIL && kind != RELAY_PERMFAIL;
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
    if (--conn->depth == 0 && conn->closed && conn->state != CONN_QUITTING)
        conn_free(conn);
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
dot_left(struct relay_conn *conn, struct pending *p)
{
    if (p->kind == PENDING_BODY && !p->dot_sent && conn->body == NULL && conn->bev != NULL &&
        output_length(conn) == 0)
        p->dot_sent = true;
    return p->kind == PENDING_BODY && p->dot_sent;
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

/* The command's verb, for messages: "MAIL", "RCPT", "DATA"... */
static int
verb_length(const struct pending *p)
{
    size_t n = strcspn(p->line, " \r");
    return (int)(n > 16 ? 16 : n);
}

/* Appends [s, e) as reply text we can hand on: printable ASCII kept, a tab made a space,
 * every other byte '?', and cut at RELAY_TEXT_LINE_MAX bytes. */
static int
append_clean(struct buf *out, const char *s, const char *e)
{
    if (e - s > RELAY_TEXT_LINE_MAX)
        e = s + RELAY_TEXT_LINE_MAX;
    size_t n = (size_t)(e - s);
    if (buf_reserve(out, n + 1) == -1)
        return -1;
    for (const char *p = s; p < e; p++) {
        unsigned char c = (unsigned char)*p;
        out->data[out->len++] = c == '\t' ? ' ' : (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    out->data[out->len] = '\0';
    return 0;
}

/* A short cleaned copy of a line, for a failure message. */
static const char *
excerpt(char out[101], const char *s, size_t n)
{
    size_t m = n > 100 ? 100 : n;
    for (size_t i = 0; i < m; i++) {
        unsigned char c = (unsigned char)s[i];
        out[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    out[m] = '\0';
    return out;
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
    while (conn->head != NULL && !conn->closed) {
        struct pending *p = conn->head;
        relay_reply_fn done = p->done;
        void *arg = p->arg;
        enum relay_failure kind = p->dot_sent ? RELAY_UNKNOWN : conn->failure;
        reply.end_of_data = p->kind == PENDING_BODY;
        if (p->kind == PENDING_BODY && p->nreplies > 1) {
            p->nreplies--;
        } else {
            pop_head(conn);
            pending_free(p);
        }
        done(arg, kind, &reply);
    }
}

static void fail(struct relay_conn *conn, enum relay_failure kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
fail(struct relay_conn *conn, enum relay_failure kind, const char *fmt, ...)
{
    if (conn->state == CONN_FAILED)
        return;
    char text[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (conn->head != NULL)
        dot_left(conn, conn->head); /* decided before the socket and its buffers go */
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
    struct evbuffer *in = bufferevent_get_input(conn->bev);
    if (conn->line.len == 0 && conn->reply_lines == 0 && evbuffer_get_length(in) == 0)
        return false;
    char sample[101];
    size_t n = evbuffer_get_length(in);
    const char *head = n ? (const char *)evbuffer_pullup(in, n > 100 ? 100 : (ssize_t)n) : "";
    fail(conn, RELAY_PROTOCOL, "%s sent a reply nobody asked for: %s", conn->peer,
         conn->line.len ? excerpt(sample, conn->line.data, conn->line.len)
                        : excerpt(sample, head, n > 100 ? 100 : n));
    return true;
}

static void
send_bytes(struct relay_conn *conn, const char *bytes, size_t len)
{
    bufferevent_write(conn->bev, bytes, len);
    arm_timer(conn, conn->timeout);
}

static void try_next_address(struct relay_conn *conn);

/* The first line is the server's name; each further line one extension keyword, maybe with
 * parameters (RFC 5321 4.1.1.1). Keywords are matched whole: "8BITMIMEX" is no 8BITMIME. */
static void
parse_extensions(struct relay_conn *conn)
{
    const char *p = memchr(conn->reply_text.data, '\n', conn->reply_text.len);
    while (p != NULL) {
        const char *line = p + 1;
        p = strchr(line, '\n');
        size_t n = p ? (size_t)(p - line) : strlen(line);
        size_t word = 0;
        while (word < n && line[word] != ' ')
            word++;
        if (word == 10 && strncasecmp(line, "PIPELINING", 10) == 0) {
            conn->ext |= RELAY_EXT_PIPELINING;
        } else if (word == 8 && strncasecmp(line, "8BITMIME", 8) == 0) {
            conn->ext |= RELAY_EXT_8BITMIME;
        } else if (word == 8 && strncasecmp(line, "SMTPUTF8", 8) == 0) {
            conn->ext |= RELAY_EXT_SMTPUTF8;
        } else if (word == 4 && strncasecmp(line, "SIZE", 4) == 0) {
            conn->ext |= RELAY_EXT_SIZE;
            conn->size_limit = n > 5 ? strtoul(line + 5, NULL, 10) : 0;
        }
    }
}

static void
send_hello(struct relay_conn *conn, const char *verb)
{
    if (unsolicited(conn))
        return;
    struct buf line = {0};
    if (buf_printf(&line, "%s %s\r\n", verb, conn->helo) == -1) {
        fail(conn, RELAY_PROTOCOL, "out of memory");
        return;
    }
    send_bytes(conn, line.data, line.len);
    buf_free(&line);
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
    struct pending *p = conn->head;
    char sample[101];
    const char *text = excerpt(sample, reply->text, strlen(reply->text));
    if (p == NULL || !p->sent) {
        fail(conn, RELAY_PROTOCOL, "%s sent a reply nobody asked for: %d %s", conn->peer,
             reply->code, text);
        return;
    }
    int cls = reply->code / 100;
    enum relay_failure kind = cls == 4 ? RELAY_TEMPFAIL : cls == 5 ? RELAY_PERMFAIL : RELAY_OK;
    relay_reply_fn done = p->done;
    void *arg = p->arg;
    switch (p->kind) {
    case PENDING_COMMAND:
        if (cls == 1 || (cls == 3 && p->expect == RELAY_EXPECT_2XX)) {
            fail(conn, RELAY_PROTOCOL, "%s answered %.*s with %d %s", conn->peer, verb_length(p),
                 p->line, reply->code, text);
            return;
        }
        break;
    case PENDING_DATA:
        if (cls == 3) {
            if (unsolicited(conn))
                return;
            p->kind = PENDING_BODY;
            conn->body = p;
            conn->body_off = 0;
            smtp_data_encoder_init(&conn->enc);
            send_body(conn);
            return;
        }
        if (kind == RELAY_OK) {
            /* A 2xx here asks for no data: taking it as delivery is how mail gets lost. */
            fail(conn, RELAY_PROTOCOL, "%s answered DATA with %d %s instead of 354", conn->peer,
                 reply->code, text);
            return;
        }
        break; /* DATA refused: one answer, however many replies the body would have had */
    case PENDING_BODY:
        if (!dot_left(conn, p)) {
            /* The server cannot have seen the end of a message still in our buffers: a 2xx
             * now accepts something else; a refusal stands, but the connection is lost. */
            if (kind == RELAY_OK) {
                fail(conn, RELAY_PROTOCOL, "%s answered %d %s before the end of the message",
                     conn->peer, reply->code, text);
                return;
            }
            conn->body = NULL;
            pop_head(conn);
            pending_free(p);
            done(arg, kind, reply);
            if (!conn->closed)
                fail(conn, RELAY_PROTOCOL, "%s refused the message before its end", conn->peer);
            return;
        }
        if (cls == 1 || cls == 3) {
            fail(conn, RELAY_PROTOCOL, "%s answered the end of the message with %d %s", conn->peer,
                 reply->code, text);
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
    pop_head(conn);
    pending_free(p);
    done(arg, kind, reply);
}

static void
handle_hello_refusal(struct relay_conn *conn, const struct relay_reply *reply)
{
    char sample[101];
    enum relay_failure kind = relay_reply_kind(reply);
    if (reply->code / 100 != 4 && reply->code / 100 != 5) {
        fail(conn, RELAY_PROTOCOL, "%s answered %s with %d %s", conn->peer,
             conn->state == CONN_GREETING ? "the connection" : "EHLO", reply->code,
             excerpt(sample, reply->text, strlen(reply->text)));
        return;
    }
    conn->failure_code = reply->code;
    fail(conn, kind, "%s", reply->text);
}

static void
handle_reply(struct relay_conn *conn, struct relay_reply *reply)
{
    switch (conn->state) {
    case CONN_GREETING:
        if (reply->code / 100 != 2) {
            handle_hello_refusal(conn, reply);
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
            handle_hello_refusal(conn, reply);
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
        fail(conn, RELAY_PROTOCOL, "%s sent a reply nobody asked for", conn->peer);
        return;
    }
}

/* Moves the next line of the input into conn->line. true when a whole line is there (its
 * line end taken off), false when more bytes are needed or memory ran out. */
static bool
take_line(struct relay_conn *conn, struct evbuffer *in)
{
    size_t eol_len = 0;
    struct evbuffer_ptr eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
    size_t avail = eol.pos < 0 ? evbuffer_get_length(in) : (size_t)eol.pos;
    size_t room = REPLY_LINE_KEEP - conn->line.len;
    size_t take = avail < room ? avail : room;
    if (take > 0) {
        if (buf_reserve(&conn->line, take) == -1) {
            fail(conn, RELAY_PROTOCOL, "out of memory reading a reply");
            return false;
        }
        evbuffer_remove(in, conn->line.data + conn->line.len, take);
        conn->line.len += take;
    }
    evbuffer_drain(in, avail - take); /* the part of a long line we do not keep */
    if (eol.pos < 0)
        return false;
    evbuffer_drain(in, eol_len);
    /* A CR that came in one read and its LF in the next stays on the line: take it off. */
    if (conn->line.len > 0 && conn->line.data[conn->line.len - 1] == '\r')
        conn->line.len--;
    return true;
}

static bool
is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* The timer after a reply: the oldest command still waiting decides which timeout runs. */
static void
arm_for_head(struct relay_conn *conn)
{
    struct pending *p = conn->head;
    if (conn->state != CONN_READY || p == NULL || !p->sent)
        evtimer_del(conn->timer);
    else
        arm_timer(conn, dot_left(conn, p) ? conn->data_timeout : conn->timeout);
}

/* Reads reply lines; a reply ends at a line whose fourth byte is not '-'. Any three digits
 * from 1 to 5 make a code; what follows is text, whatever it holds (it is cleaned). */
static void
read_replies(struct relay_conn *conn)
{
    struct evbuffer *in = bufferevent_get_input(conn->bev);
    while (conn->state != CONN_FAILED && !conn->closed) {
        if (!take_line(conn, in))
            return;
        const char *line = conn->line.data;
        size_t n = conn->line.len;
        bool ok =
            n >= 3 && line[0] >= '1' && line[0] <= '5' && is_digit(line[1]) && is_digit(line[2]);
        int code = ok ? (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0') : 0;
        if (ok && conn->reply_lines > 0 && code != conn->reply_code)
            ok = false;
        if (!ok) {
            char sample[101];
            fail(conn, RELAY_PROTOCOL, "%s sent a malformed reply line: %s", conn->peer,
                 excerpt(sample, line, n));
            return;
        }
        conn->reply_code = code;
        bool last = n == 3 || line[3] != '-';
        if (++conn->reply_lines <= REPLY_LINES_MAX) {
            const char *text = n > 3 && (line[3] == ' ' || line[3] == '-') ? line + 4 : line + 3;
            if ((conn->reply_lines > 1 && buf_append(&conn->reply_text, "\n", 1) == -1) ||
                append_clean(&conn->reply_text, text, line + n) == -1) {
                fail(conn, RELAY_PROTOCOL, "out of memory reading a reply");
                return;
            }
        }
        conn->line.len = 0;
        if (!last)
            continue;
        struct relay_reply reply = {.code = code, .text = conn->reply_text.data};
        conn->reply_lines = 0;
        evtimer_del(conn->timer);
        handle_reply(conn, &reply);
        buf_reset(&conn->reply_text);
        if (conn->reply_text.data != NULL)
            conn->reply_text.data[0] = '\0';
        if (conn->state == CONN_READY && !conn->closed) {
            pump(conn);
            if (conn->state == CONN_READY)
                arm_for_head(conn);
        }
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
        if (!waiting && unsolicited(conn))
            return;
        send_bytes(conn, p->line, p->line_len);
        p->sent = true;
        waiting = true;
        if (p->kind != PENDING_COMMAND)
            return;
    }
}

static void
linger_remove(struct relay_conn *conn)
{
    if (conn->linger_prev != NULL)
        conn->linger_prev->linger_next = conn->linger_next;
    else if (lingering == conn)
        lingering = conn->linger_next;
    if (conn->linger_next != NULL)
        conn->linger_next->linger_prev = conn->linger_prev;
    conn->linger_prev = conn->linger_next = NULL;
}

/* The QUIT wait is over (a reply, the close, or time): the socket goes, and leave() frees. */
static void
quit_done(struct relay_conn *conn)
{
    linger_remove(conn);
    drop_socket(conn);
    evtimer_del(conn->timer);
    conn->state = CONN_FAILED;
}

static void
quit_read(struct relay_conn *conn)
{
    struct evbuffer *in = bufferevent_get_input(conn->bev);
    while (conn->state == CONN_QUITTING && take_line(conn, in)) {
        bool last = conn->line.len <= 3 || conn->line.data[3] != '-';
        conn->line.len = 0;
        if (last)
            quit_done(conn);
    }
}

static void
on_read(struct bufferevent *bev, void *arg)
{
    (void)bev;
    struct relay_conn *conn = arg;
    enter(conn);
    if (conn->state == CONN_QUITTING)
        quit_read(conn);
    else
        read_replies(conn);
    leave(conn);
}

static void
on_write(struct bufferevent *bev, void *arg)
{
    (void)bev;
    struct relay_conn *conn = arg;
    enter(conn);
    if (conn->state == CONN_READY && conn->body != NULL) {
        send_body(conn);
    } else if (conn->state == CONN_READY && conn->head != NULL && !conn->head->dot_sent &&
               dot_left(conn, conn->head)) {
        /* The end of the message is out: the server may now take its time delivering. */
        arm_timer(conn, conn->data_timeout);
    }
    leave(conn);
}

static void
on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct relay_conn *conn = arg;
    enter(conn);
    if (conn->state == CONN_QUITTING) {
        quit_done(conn);
    } else if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        setsockopt(bufferevent_getfd(conn->bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        conn->state = CONN_GREETING;
        arm_timer(conn, conn->timeout);
    } else if (conn->state == CONN_CONNECTING) {
        conn->last_errno = EVUTIL_SOCKET_ERROR();
        drop_socket(conn);
        try_next_address(conn);
    } else {
        fail(conn, RELAY_PROTOCOL, "%s closed the connection%s", conn->peer,
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
    struct pending *p = conn->head;
    if (conn->state == CONN_QUITTING) {
        quit_done(conn);
    } else if (conn->state <= CONN_CONNECTING) {
        fail(conn, RELAY_TIMED_OUT, "%s timed out %s", conn->peer,
             conn->state == CONN_CONNECTING ? "connecting" : "resolving");
    } else if (conn->state == CONN_GREETING || conn->state == CONN_HELLO ||
               conn->state == CONN_HELO_FALLBACK) {
        fail(conn, RELAY_TIMED_OUT, "%s timed out waiting for the %s", conn->peer,
             conn->state == CONN_GREETING ? "greeting"
             : conn->state == CONN_HELLO  ? (conn->lmtp ? "LHLO reply" : "EHLO reply")
                                          : "HELO reply");
    } else if (p != NULL && p->kind == PENDING_BODY && dot_left(conn, p)) {
        fail(conn, RELAY_TIMED_OUT, "%s timed out waiting for the reply after the message",
             conn->peer);
    } else if (p != NULL && p->kind == PENDING_BODY) {
        fail(conn, RELAY_TIMED_OUT, "%s timed out sending the message", conn->peer);
    } else if (p != NULL) {
        fail(conn, RELAY_TIMED_OUT, "%s timed out waiting for the reply to %.*s", conn->peer,
             verb_length(p), p->line);
    } else {
        fail(conn, RELAY_TIMED_OUT, "%s timed out", conn->peer);
    }
    leave(conn);
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
        bufferevent_setcb(conn->bev, on_read, on_write, on_event, conn);
        bufferevent_setwatermark(conn->bev, EV_WRITE, BODY_HIGH_WATER / 4, 0);
        bufferevent_enable(conn->bev, EV_READ | EV_WRITE);
        conn->state = CONN_CONNECTING;
        arm_timer(conn, conn->timeout);
        if (bufferevent_socket_connect(conn->bev, ai->ai_addr, (int)ai->ai_addrlen) == 0)
            return;
        conn->last_errno = EVUTIL_SOCKET_ERROR();
        drop_socket(conn);
    }
    fail(conn, RELAY_CONNECT_FAILED, "cannot connect to %s: %s", conn->peer,
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
        arm_timer(conn, conn->timeout);
        struct evutil_addrinfo hints = {
            .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_protocol = IPPROTO_TCP};
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
    conn->helo = strdup(helo);
    conn->port = opts->port;
    conn->timeout = opts->timeout > 0 ? opts->timeout : RELAY_DEFAULT_TIMEOUT;
    conn->data_timeout = opts->data_timeout > 0 ? opts->data_timeout : RELAY_DEFAULT_DATA_TIMEOUT;
    conn->lmtp = opts->lmtp;
    conn->ready = ready;
    conn->ready_arg = arg;
    struct buf peer = {0};
    if (buf_printf(&peer, "%s:%u", opts->host, opts->port) == 0)
        conn->peer = peer.data;
    conn->timer = evtimer_new(base, on_timer, conn);
    conn->kick = event_new(base, -1, 0, on_kick, conn);
    if (conn->host == NULL || conn->helo == NULL || conn->peer == NULL || conn->timer == NULL ||
        conn->kick == NULL) {
        conn_free(conn);
        errno = ENOMEM;
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
    conn->in_api++;
    if (conn->state == CONN_FAILED)
        event_active(conn->kick, 0, 0);
    else
        pump(conn);
    conn->in_api--;
}

int
relay_conn_command(struct relay_conn *conn, const char *line, size_t len, enum relay_expect expect,
                   relay_reply_fn done, void *arg)
{
    if (memchr(line, '\r', len) != NULL || memchr(line, '\n', len) != NULL ||
        memchr(line, '\0', len) != NULL) {
        errno = EINVAL; /* a second command smuggled into this one */
        return -1;
    }
    struct pending *p = calloc(1, sizeof(*p));
    char *copy = malloc(len + 3);
    if (p == NULL || copy == NULL) {
        free(p);
        free(copy);
        errno = ENOMEM;
        return -1;
    }
    memcpy(copy, line, len);
    memcpy(copy + len, "\r\n", 3);
    p->kind = PENDING_COMMAND;
    p->expect = expect;
    p->line = copy;
    p->line_len = len + 2;
    p->done = done;
    p->arg = arg;
    enqueue(conn, p);
    return 0;
}

int
relay_conn_data(struct relay_conn *conn, const char *data, size_t len, unsigned nreplies,
                relay_reply_fn done, void *arg)
{
    struct pending *p = calloc(1, sizeof(*p));
    if (p == NULL || (p->line = strdup("DATA\r\n")) == NULL) {
        free(p);
        errno = ENOMEM;
        return -1;
    }
    p->kind = PENDING_DATA;
    p->line_len = 6;
    p->data = data;
    p->len = len;
    p->nreplies = nreplies ? nreplies : 1;
    p->done = done;
    p->arg = arg;
    enqueue(conn, p);
    return 0;
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

const char *
relay_conn_peer(const struct relay_conn *conn)
{
    return conn->peer;
}

static void
conn_free(struct relay_conn *conn)
{
    linger_remove(conn);
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
    buf_free(&conn->line);
    buf_free(&conn->reply_text);
    buf_free(&conn->chunk);
    free(conn->failure_text);
    free(conn->host);
    free(conn->helo);
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
    for (struct pending *p = conn->head; p != NULL; p = p->next)
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
        /* Commands never sent are forgotten; their callbacks will not run. */
        while (conn->head != NULL) {
            struct pending *p = conn->head;
            pop_head(conn);
            pending_free(p);
        }
        conn->state = CONN_QUITTING;
        conn->line.len = 0;
        bufferevent_write(conn->bev, "QUIT\r\n", 6);
        arm_timer(conn, conn->timeout < RELAY_QUIT_TIMEOUT ? conn->timeout : RELAY_QUIT_TIMEOUT);
        conn->linger_next = lingering;
        if (lingering != NULL)
            lingering->linger_prev = conn;
        lingering = conn;
        return;
    }
    drop_socket(conn);
    evtimer_del(conn->timer);
    if (conn->depth == 0)
        conn_free(conn);
}
