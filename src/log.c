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
static const char *const level_names[] = {"error", "warn", "info", "debug"};

void
log_set_debug(bool on)
{
    debug_on = on;
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

void
log_msg(enum log_level level, const char *fmt, ...)
{
    char line[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ luasmtpd[%d] %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (int)(tv.tv_usec / 1000), (int)getpid(), level_names[level]);
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
