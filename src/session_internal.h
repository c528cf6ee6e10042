/* What session.c and commands.c share: one connection's state, and the few session calls the
 * command handlers make. Private to the session part; nothing outside src/session*.c and
 * src/commands.c includes it. */
#ifndef LUASMTPD_SESSION_INTERNAL_H
#define LUASMTPD_SESSION_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/time.h>
#include <netdb.h>

#include "luasmtpd/buf.h"
#include "luasmtpd/envelope.h"
#include "luasmtpd/lua_runtime.h"
#include "luasmtpd/session.h"
#include "luasmtpd/smtp_data.h"
#include "luasmtpd/smtp_parse.h"

/* Past this much unsent output we stop reading commands until the client reads its replies:
 * a pipelining client that never reads cannot make us buffer without bound. */
#define OUTPUT_PAUSE (64 * 1024)
/* Input buffered while a handler decides, or a command is dispatched, is capped here. */
#define INPUT_HIGH_WATERMARK (256 * 1024)
#define MAX_SINGLE_READ (256 * 1024)
#define LINE_MAX_BYTES (SMTP_COMMAND_LINE_LIMIT + SMTP_SIZE_EXTRA + SMTP_SMTPUTF8_EXTRA)
/* A transaction id: 8 + 6 hex digits of prefix and a counter of at most 16. */
#define SESSION_TXN_ID_MAX 32
/* Once a DATA has run this long, its last this many seconds must keep up the minimum rate. */
#define DATA_RATE_GRACE_SEC 30
/* The byte count is sampled when the timer looks (every 5 s), at most one sample in this many
 * seconds, and kept in a ring that covers more than the window. */
#define DATA_RATE_SAMPLE_SEC 4
#define DATA_RATE_SAMPLES 10

enum session_state {
    SESSION_COMMAND,
    SESSION_DATA,
    SESSION_HOOK,    /* a hook (on_connect, on_helo, on_mail, on_rcpt) is deciding */
    SESSION_HANDLER, /* process_message is deciding; input waits */
    SESSION_CLOSING, /* the last reply is being flushed */
};

struct session {
    struct session_group *g;
    struct session *prev, *next;
    unsigned long id;
    struct bufferevent *bev;
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
    struct envelope env;
    struct smtp_data_decoder decoder;
    struct buf message;
    struct lrt_session *ls;
    struct lrt_call *call;
    unsigned long messages;
    unsigned errors;        /* error replies to commands so far */
    unsigned overshoot;     /* "452 4.5.3" (too many recipients) replies so far */
    unsigned junk;          /* junk commands (commands.c) since a message was accepted */
    bool greeted;           /* the 220 went out; input before it is a pregreet */
    bool counted;           /* in g->per_client */
    bool proven;            /* its address had a message accepted lately (g->proven) */
    bool message_reply;     /* the reply being written answers a message, not a command */
    bool read_eof;          /* the client half-closed: what is buffered is all that will come */
    bool write_failed;      /* the socket refused a write: the client is gone */
    char txn_id[SESSION_TXN_ID_MAX]; /* the open transaction's id; "" between transactions */
    /* The bytes this message holds against the group's DATA budget (see data_hold). */
    size_t data_held;
    /* The DATA's byte counts as the timer saw them, the oldest overwritten first. */
    struct session_rate_sample {
        struct timeval at;
        size_t size;
    } rate[DATA_RATE_SAMPLES];
    unsigned rate_n, rate_next;
    struct timeval data_started; /* when the DATA began: how long it held its slot (make_room) */
    /* The command a hook decides on, kept until its answer comes. */
    enum smtp_verb hook_verb;
    char *hook_arg;
    struct strv hook_params;
    enum session_state hook_resume;
};

void session_reply_bytes(struct session *s, const char *bytes, size_t n);
void session_reply(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A fixed reply, without formatting: the common ones are on every message's path. */
#define session_reply_const(s, text) \
    session_reply_bytes((s), text "\r\n", sizeof(text "\r\n") - 1)
/* Only this writes s->state. */
void session_enter(struct session *s, enum session_state state);
/* Sends nothing more after what is queued; the session is freed once it is flushed. */
void session_close_after_flush(struct session *s);
/* MAIL starts a transaction: it gets its id, which the script sees from on_mail on. */
void session_begin_transaction(struct session *s);
void session_reset_transaction(struct session *s);
/* The DATA memory budget. MAIL's SIZE= against it (RFC 1870 6.1): more than the whole budget is
 * never taken (552), more than is left beside the DATA in flight not now (452, logged). */
enum session_data_fit { SESSION_DATA_FITS, SESSION_DATA_FULL, SESSION_DATA_NEVER };
enum session_data_fit session_data_fit(struct session *s, size_t size);
/* DATA: readies the decoder and the message buffer, charged to the budget. false (logged)
 * when the budget cannot hold it now: the caller answers 452, the transaction stays open. */
bool session_data_begin(struct session *s);
/* Asks the script's hook about a command; the command goes on when it answers. */
void session_ask_hook(struct session *s, enum lrt_hook hook, enum smtp_verb verb, const char *arg,
                      const struct smtp_param *params, int n_params);

/* commands.c: the SMTP commands. */
void commands_dispatch(struct session *s, char *line, size_t len);
/* HELO/EHLO accepted (after on_helo): record the name, answer with our capabilities. */
void commands_accept_helo(struct session *s, const char *name, bool extended);
/* MAIL or RCPT accepted (after on_mail/on_rcpt): record s->hook_arg and s->hook_params in the
 * envelope; answer with `reply` (the hook's 2xx, in wire form) or our own 250. */
void commands_accept_path(struct session *s, enum smtp_verb verb, const char *reply, size_t len);

#endif
