/* One line per event on stderr, with a level; "debug" lines only with -d (Python's
 * DEBUGSTREAM). Nothing here knows SMTP or Lua. */
#ifndef LUASMTPD_LOG_H
#define LUASMTPD_LOG_H

#include <stdbool.h>

enum log_level {
    LOG_ERROR = 0,
    LOG_WARN,
    LOG_INFO,
    LOG_DEBUG,
};

void log_set_debug(bool on);
/* Drops every line (the fuzzers' own output must stay readable). */
void log_set_quiet(bool on);
bool log_debug_enabled(void);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Parses "error", "warn", "info" or "debug"; -1 for anything else. */
int log_level_from_name(const char *name);

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_debug_enabled())                                                                   \
            log_msg(LOG_DEBUG, __VA_ARGS__);                                                       \
    } while (0)

#endif
