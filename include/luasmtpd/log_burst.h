/* A kind of log line that can come by the thousand a second: the first in each interval is
 * logged, with a count of the others. Pure bookkeeping; the caller logs. */
#ifndef LUASMTPD_LOG_BURST_H
#define LUASMTPD_LOG_BURST_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/time.h>

#define LOG_BURST_INTERVAL_SEC 10

struct log_burst {
    struct timeval logged; /* when the last was logged; 0: never */
    unsigned unlogged;     /* how many were not since */
};

/* false for one not to log; else fills `more` with "" or " (and N more WHAT in the last T s)". */
bool log_burst_pass(struct log_burst *b, const struct timeval *now, const char *what, char *more,
                    size_t size);

#endif
