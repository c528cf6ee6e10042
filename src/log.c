/* Log lines on stderr: "<UTC time> luasmtpd[pid] <level>: <text>". Each line is written in one
 * call, so lines from several processes never interleave mid-line. */
#include "luasmtpd/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static bool debug_on;
static bool quiet;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

void
log_set_debug(bool on)
{
    debug_on = on;
}

void
log_set_quiet(bool on)
{
    quiet = on;
}

bool
log_debug_enabled(void)
{
    return debug_on;
}

int
log_level_from_name(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

/* The "<time> luasmtpd[pid] " prefix is formatted once a second, not once a line. */
static int
format_prefix(char *out, size_t size)
{
    static char cached[64];
    static time_t cached_sec = -1;
    static int cached_len;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    if (tv.tv_sec != cached_sec) {
        struct tm tm;
        gmtime_r(&tv.tv_sec, &tm);
        strftime(cached, sizeof(cached), "%Y-%m-%dT%H:%M:%S", &tm);
        cached_len = (int)strlen(cached);
        cached_sec = tv.tv_sec;
    }
    return snprintf(out, size, "%.*s.%03dZ luasmtpd[%d] ", cached_len, cached,
                    (int)(tv.tv_usec / 1000), (int)getpid());
}

void
log_msg(enum log_level level, const char *fmt, ...)
{
    if (quiet)
        return;
    char line[2048];
    int n = format_prefix(line, sizeof(line));
    n += snprintf(line + n, sizeof(line) - (size_t)n, "%s: ", level_names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    /* Control bytes from clients or scripts must not forge log lines; a traceback's line
     * breaks become spaces so it stays one event. */
    for (size_t i = (size_t)n; i < len; i++) {
        if (line[i] == '\n')
            line[i] = ' ';
        else if ((unsigned char)line[i] < 0x20 && line[i] != '\t')
            line[i] = '?';
    }
    line[len++] = '\n';
    ssize_t ignored = write(STDERR_FILENO, line, len);
    (void)ignored;
}
