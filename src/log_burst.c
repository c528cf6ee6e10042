/* Rate-limits a kind of log line (see log_burst.h). It only counts and formats; it never logs
 * nor reads the clock, so the caller's cached loop time decides the intervals. */
#include "luasmtpd/log_burst.h"

#include <event2/util.h>
#include <stdio.h>

/* Of a kind of line a flood brings by the thousand a second, the first in each
 * LOG_BURST_INTERVAL_SEC is logged, saying how many were not since the one before. */
bool
log_burst_pass(struct log_burst *b, const struct timeval *now, const char *what, char *more,
               size_t size)
{
    struct timeval since;
    evutil_timersub(now, &b->logged, &since);
    if (evutil_timerisset(&b->logged) && since.tv_sec < LOG_BURST_INTERVAL_SEC) {
        b->unlogged++;
        return false;
    }
    more[0] = '\0';
    if (b->unlogged > 0)
        snprintf(more, size, " (and %u more %s in the last %ld s)", b->unlogged, what,
                 (long)since.tv_sec);
    b->unlogged = 0;
    b->logged = *now;
    return true;
}
