/* One connection's state and the primitives every part of the session uses: the one function
 * that sends a reply (and counts errors by the reply's class), the state entry, the close
 * after flush, the transaction's start and end. Below both the command table (commands.c) and
 * the session's I/O (session.c): it includes neither. */
#ifndef LUASMTPD_CONN_H
#define LUASMTPD_CONN_H

#include <netdb.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/time.h>

#include "luasmtpd/envelope.h"
#include "luasmtpd/session_group.h"
#include "luasmtpd/smtp_parse.h"
#include "luasmtpd/transaction.h"

struct bufferevent;
struct event;
struct evbuffer;
struct lrt_call;
struct lrt_session;

/* The longest command line but AUTH's: RCPT with DSN's NOTIFY and ORCPT; MAIL (SIZE, SMTPUTF8,
 * RET, ENVID) is shorter. */
#define CONN_LINE_MAX (SMTP_COMMAND_LINE_LIMIT + SMTP_DSN_RCPT_EXTRA)
_Static_assert(SMTP_SIZE_EXTRA + SMTP_SMTPUTF8_EXTRA + SMTP_DSN_MAIL_EXTRA <= SMTP_DSN_RCPT_EXTRA,
               "MAIL's longest line fits in CONN_LINE_MAX");

/* Where an AUTH exchange is (auth.c's): after a 334, the next line is its answer. */
enum session_sasl {
    SESSION_SASL_NONE,
    SESSION_SASL_PLAIN,      /* waiting for PLAIN's message */
    SESSION_SASL_LOGIN_USER, /* waiting for LOGIN's username */
    SESSION_SASL_LOGIN_PASS, /* waiting for LOGIN's password */
};

enum session_state {
    SESSION_COMMAND,
    SESSION_DATA,
    SESSION_HOOK,    /* a hook (on_connect, on_helo, on_mail, on_rcpt, authenticate) decides */
    SESSION_HANDLER, /* process_message is deciding; input waits */
    SESSION_CLOSING, /* the last reply is being flushed */
    /* TLS is being set up: STARTTLS's 220 is being flushed, or the handshake runs. No
     * command is read; --timeout covers it. */
    SESSION_HANDSHAKE,
};

struct session {
    struct session_group *g;
    struct session *prev, *next;
    unsigned long id;
    struct bufferevent *bev; /* plain or TLS; freeing it closes the socket */
    int fd;                  /* the socket, for the switch to TLS */
    struct evbuffer *out;    /* replies not yet handed to the socket */
    struct event *timer;     /* the idle timeout, checked lazily against last_activity */
    struct timeval last_activity;
    /* When the server began waiting for the command line now due (the greeting or the reply
     * to the last command was queued): the command timeout runs from here, not from the last
     * byte, so a client that drips a line cannot hold its slot for ever. */
    struct timeval command_since;
    enum session_state state;
    char peer_addr[NI_MAXHOST];
    int peer_port;
    char *helo;
    bool esmtp;
    bool discarding; /* inside a command line that is over the limit */
    bool pumping;
    struct transaction tx;
    struct lrt_session *ls;
    struct lrt_call *call;
    unsigned long messages;
    unsigned errors;    /* error replies to commands so far */
    unsigned overshoot; /* "452 4.5.3" (too many recipients) replies so far */
    unsigned junk;      /* junk commands (commands.c) since a message was accepted */
    bool greeted;       /* the 220 went out; input before it is a pregreet */
    bool counted;       /* in g->per_client */
    bool proven;        /* its address had a message accepted lately (g->proven) */
    bool trusted;       /* its address is in --trusted-networks: no per-client limits */
    bool read_eof;      /* the client half-closed: what is buffered is all that will come */
    bool write_failed;  /* the socket refused a write: the client is gone */
    bool in_tls;        /* bev speaks TLS (implicit from the start, or after STARTTLS) */
    bool tls_switch;    /* STARTTLS answered: the switch comes once the 220 is on the socket */
    enum session_sasl sasl;
    char *auth_user; /* the user AUTH accepted; NULL: not authenticated */
    /* The command being carried out, from its check to its proceed (a hook may decide in
     * between): commands.c's, as it runs the command table (auth.c fills it for the AUTH row:
     * the mechanism, then username and password); commands_release frees it. */
    struct {
        enum smtp_verb verb;
        char *arg;
        struct strv params;
        enum session_state resume; /* the state to go back to when the hook answers */
    } cmd;
    /* session.c's input loop, which a hook's answer resumes: a pointer, so the layers below
     * the loop can resume it without including it. */
    void (*pump)(struct session *s);
};

/* What a reply answers, which decides whether a 4xx/5xx counts toward --max-errors. */
enum conn_reply_class {
    CONN_REPLY_COMMAND, /* a command (or the connection: 421s never count) */
    CONN_REPLY_MESSAGE, /* a message, after its final dot: a refused message is no error loop */
};

/* The one function that sends a reply: `bytes` is whole wire lines, CRLF included. */
void conn_send(struct session *s, enum conn_reply_class class, const char *bytes, size_t n);
/* A one-line reply to a command, formatted; the CRLF is added. */
void conn_reply(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A fixed reply, without formatting: the common ones are on every message's path. */
#define conn_send_const(s, class, text)                                                            \
    conn_send((s), (class), text "\r\n", sizeof(text "\r\n") - 1)
#define conn_reply_const(s, text) conn_send_const((s), CONN_REPLY_COMMAND, text)
/* Hands the queued replies to the socket. */
void conn_flush(struct session *s);

/* Only a client that owes us something can time out: while a hook or the handler decides,
 * its silence is expected. */
static inline bool
conn_client_owes_us(const struct session *s)
{
    return s->state == SESSION_COMMAND || s->state == SESSION_DATA || s->state == SESSION_HANDSHAKE;
}
/* Only this writes s->state. */
void conn_enter(struct session *s, enum session_state state);
/* Sends nothing more after what is queued; the session is freed once it is flushed. */
void conn_close_after_flush(struct session *s);
/* The reply to a command is queued: the wait for the next line starts now. */
void conn_await_command(struct session *s);
void conn_greet(struct session *s);
/* Draining: an idle session gets its 421 and closes. */
void conn_shut_down_if_idle(struct session *s);
/* After each command: the error limit, then the drain. */
void conn_after_command(struct session *s);

/* MAIL starts a transaction: it gets its id, which the script sees from on_mail on. */
void conn_begin_transaction(struct session *s);
void conn_end_transaction(struct session *s);
/* A greeting was accepted (name: its argument) or must come again (name NULL, after
 * STARTTLS): the transaction ends and the session's HELO/EHLO name is replaced. */
void conn_set_greeting(struct session *s, const char *name, bool esmtp);

#endif
