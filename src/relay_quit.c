/* QUIT on a connection its user let go (see relay_quit.h). Each goodbye is an object of its
 * own that nobody else points to, so it frees itself from its own callbacks. */
#include "luasmtpd/relay_quit.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdlib.h>

#include "luasmtpd/buf.h"
#include "luasmtpd/relay_reply.h"

struct relay_quit {
    struct bufferevent *bev;
    struct event *timer;
    struct buf line;
    struct relay_quit *prev, *next;
};

/* Goodbyes still waiting. When the event loop ends first (the server stops), the process exit
 * reclaims them; this list is what keeps them reachable meanwhile, so leak checkers see memory
 * in use, not lost. */
static struct relay_quit *lingering;

/* The wait is over (a reply, the close, or time). Called from our own callbacks only, the
 * last thing each does. */
static void
relay_quit_done(struct relay_quit *q)
{
    if (q->prev != NULL)
        q->prev->next = q->next;
    else
        lingering = q->next;
    if (q->next != NULL)
        q->next->prev = q->prev;
    bufferevent_free(q->bev);
    event_free(q->timer);
    buf_free(&q->line);
    free(q);
}

/* Any reply ends the wait once its last line is in; what it says does not matter any more. */
static void
relay_quit_on_read(struct bufferevent *bev, void *arg)
{
    struct relay_quit *q = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    while (relay_reply_take_line(&q->line, in) == 1) {
        bool last = q->line.len <= 3 || q->line.data[3] != '-';
        q->line.len = 0;
        if (last) {
            relay_quit_done(q);
            return;
        }
    }
}

static void
relay_quit_on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)what;
    relay_quit_done(arg);
}

static void
relay_quit_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    relay_quit_done(arg);
}

void
relay_quit_start(struct event_base *base, struct bufferevent *bev, double seconds)
{
    struct relay_quit *q = calloc(1, sizeof(*q));
    struct event *timer = q ? evtimer_new(base, relay_quit_on_timer, q) : NULL;
    if (timer == NULL) {
        free(q);
        bufferevent_free(bev);
        return;
    }
    q->bev = bev;
    q->timer = timer;
    bufferevent_setcb(bev, relay_quit_on_read, NULL, relay_quit_on_event, q);
    bufferevent_write(bev, "QUIT\r\n", 6);
    struct timeval tv;
    tv.tv_sec = (time_t)seconds;
    tv.tv_usec = (suseconds_t)((seconds - (double)tv.tv_sec) * 1e6);
    evtimer_add(q->timer, &tv);
    q->next = lingering;
    if (lingering != NULL)
        lingering->prev = q;
    lingering = q;
}
