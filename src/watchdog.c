/* The stuck-loop watchdog (see watchdog.h). Its state is the process's, as the signal is: the
 * SIGALRM handler may only read it and may only call async-signal-safe functions, so it formats
 * its log line by hand rather than through log.c's snprintf and gmtime_r. */
#include "luasmtpd/watchdog.h"

#include <errno.h>
#include <event2/event.h>
#include <signal.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "luasmtpd/log.h"

static struct {
    unsigned seconds;      /* 0: off */
    struct event *tick;    /* re-arms from the loop */
    struct timespec armed; /* CLOCK_MONOTONIC_COARSE of the last re-arm */
    long rearm_after_ms;   /* re-arming more often than this buys nothing */
} wd;

/* Appends the decimal digits of `v`, at least `width` of them. */
static char *
put_number(char *p, unsigned long v, int width)
{
    char digits[24];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0 && n < (int)sizeof(digits));
    while (n < width && n < (int)sizeof(digits))
        digits[n++] = '0';
    while (n > 0)
        *p++ = digits[--n];
    return p;
}

static char *
put_text(char *p, const char *s)
{
    size_t n = strlen(s);
    memcpy(p, s, n);
    return p + n;
}

/* log.c's "<UTC time> luasmtpd[pid] error: " prefix, from the civil calendar of the days since
 * 1970 (the proleptic Gregorian algorithm: eras of 400 years, 146097 days each). */
static char *
put_prefix(char *p)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    long days = now.tv_sec / 86400, secs = now.tv_sec % 86400;
    long z = days + 719468;
    long era = z / 146097;
    long doe = z - era * 146097;
    long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long mp = (5 * doy + 2) / 153;
    long day = doy - (153 * mp + 2) / 5 + 1;
    long month = mp < 10 ? mp + 3 : mp - 9;
    long year = yoe + era * 400 + (month <= 2);
    p = put_number(p, (unsigned long)year, 4);
    *p++ = '-';
    p = put_number(p, (unsigned long)month, 2);
    *p++ = '-';
    p = put_number(p, (unsigned long)day, 2);
    *p++ = 'T';
    p = put_number(p, (unsigned long)(secs / 3600), 2);
    *p++ = ':';
    p = put_number(p, (unsigned long)(secs / 60 % 60), 2);
    *p++ = ':';
    p = put_number(p, (unsigned long)(secs % 60), 2);
    *p++ = '.';
    p = put_number(p, (unsigned long)(now.tv_nsec / 1000000), 3);
    p = put_text(p, "Z luasmtpd[");
    p = put_number(p, (unsigned long)getpid(), 1);
    return put_text(p, "] error: ");
}

static void
on_alarm(int sig)
{
    (void)sig;
    char line[256];
    char *p = put_prefix(line);
    p = put_text(p, "watchdog: the event loop has been stuck for ");
    p = put_number(p, wd.seconds, 1);
    p = put_text(p, " s (a Lua finalizer or a C call that never returns?); exiting with "
                    "status ");
    p = put_number(p, WATCHDOG_EXIT_STATUS, 1);
    *p++ = '\n';
    ssize_t ignored = write(STDERR_FILENO, line, (size_t)(p - line));
    (void)ignored;
    /* Nothing in flight was answered 2xx (the answer is what the loop could not send), so
     * ending here loses no accepted mail; exit() would run atexit handlers of a stuck state. */
    _exit(WATCHDOG_EXIT_STATUS);
}

static void
arm(void)
{
    struct itimerval it = {.it_value = {.tv_sec = wd.seconds}};
    setitimer(ITIMER_REAL, &it, NULL);
    clock_gettime(CLOCK_MONOTONIC_COARSE, &wd.armed);
}

void
watchdog_kick(void)
{
    if (wd.seconds == 0)
        return;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
    long ms = (now.tv_sec - wd.armed.tv_sec) * 1000 + (now.tv_nsec - wd.armed.tv_nsec) / 1000000;
    if (ms >= wd.rearm_after_ms)
        arm();
}

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    arm();
}

bool
watchdog_start(struct event_base *base, unsigned seconds)
{
    if (seconds == 0)
        return true;
    struct sigaction sa = {.sa_handler = on_alarm};
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGALRM, &sa, NULL) != 0) {
        log_warn("watchdog: cannot handle SIGALRM: %s; running without it", strerror(errno));
        return false;
    }
    sigset_t alrm;
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    sigprocmask(SIG_UNBLOCK, &alrm, NULL);
    /* A quarter of the limit, at most a second: a loop that turns re-arms well before the
     * alarm, and a stuck one is caught within a tick of the limit. */
    long tick_ms = seconds >= 4 ? 1000 : (long)seconds * 250;
    wd.rearm_after_ms = tick_ms / 4;
    wd.tick = event_new(base, -1, EV_PERSIST, on_tick, NULL);
    struct timeval tv = {.tv_sec = tick_ms / 1000, .tv_usec = tick_ms % 1000 * 1000};
    if (wd.tick == NULL || event_add(wd.tick, &tv) != 0) {
        if (wd.tick != NULL)
            event_free(wd.tick);
        wd.tick = NULL;
        signal(SIGALRM, SIG_DFL);
        log_warn("watchdog: cannot add its timer to the loop; running without it");
        return false;
    }
    wd.seconds = seconds;
    arm();
    log_debug("watchdog: %u s", seconds);
    return true;
}

void
watchdog_stop(void)
{
    if (wd.seconds == 0)
        return;
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    signal(SIGALRM, SIG_DFL);
    event_free(wd.tick);
    wd.tick = NULL;
    wd.seconds = 0;
}
