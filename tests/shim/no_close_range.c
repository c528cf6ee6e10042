/* Test-only LD_PRELOAD library: makes close_range(2) fail as on a kernel before 5.9 (ENOSYS)
 * or under a seccomp filter (EPERM, with LUASMTPD_SHIM_CLOSE_RANGE=EPERM), so that pipe.c's
 * fallbacks run. With LUASMTPD_SHIM_PROC_FD=refuse, opening /proc/self/fd fails too (as with
 * no /proc mounted), which leaves the last fallback. With LUASMTPD_SHIM_STRDUP_FAIL=WORD,
 * strdup fails (ENOMEM) for any string containing WORD, so a test can run a command into an
 * allocation failure without starving the rest of the process. Never part of the server. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static int refusal = ENOSYS;
static int refuse_proc_fd;
static char strdup_fail[64];

/* The environment is read once, at load: the child after fork must not need getenv. */
__attribute__((constructor)) static void
shim_init(void)
{
    const char *how = getenv("LUASMTPD_SHIM_CLOSE_RANGE");
    if (how != NULL && strcmp(how, "EPERM") == 0)
        refusal = EPERM;
    const char *proc = getenv("LUASMTPD_SHIM_PROC_FD");
    refuse_proc_fd = proc != NULL && strcmp(proc, "refuse") == 0;
    const char *word = getenv("LUASMTPD_SHIM_STRDUP_FAIL");
    if (word != NULL && strlen(word) < sizeof(strdup_fail))
        strcpy(strdup_fail, word);
}

int close_range(unsigned first, unsigned last, int flags);

int
close_range(unsigned first, unsigned last, int flags)
{
    (void)first;
    (void)last;
    (void)flags;
    errno = refusal;
    return -1;
}

static int
refused(const char *path)
{
    return refuse_proc_fd &&
           (strcmp(path, "/proc/self/fd") == 0 || strcmp(path, "/proc/self/fd/") == 0);
}

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);

static mode_t
mode_of(int flags, va_list ap)
{
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? va_arg(ap, mode_t) : 0;
}

#define SHIM_OPEN(name)                                                                            \
    int name(const char *path, int flags, ...);                                                    \
    int name(const char *path, int flags, ...)                                                     \
    {                                                                                              \
        va_list ap;                                                                                \
        va_start(ap, flags);                                                                       \
        mode_t mode = mode_of(flags, ap);                                                          \
        va_end(ap);                                                                                \
        if (refused(path)) {                                                                       \
            errno = ENOENT;                                                                        \
            return -1;                                                                             \
        }                                                                                          \
        open_fn next = (open_fn)dlsym(RTLD_NEXT, #name);                                           \
        return next(path, flags, mode);                                                            \
    }

#define SHIM_OPENAT(name)                                                                          \
    int name(int dirfd, const char *path, int flags, ...);                                         \
    int name(int dirfd, const char *path, int flags, ...)                                          \
    {                                                                                              \
        va_list ap;                                                                                \
        va_start(ap, flags);                                                                       \
        mode_t mode = mode_of(flags, ap);                                                          \
        va_end(ap);                                                                                \
        if (refused(path)) {                                                                       \
            errno = ENOENT;                                                                        \
            return -1;                                                                             \
        }                                                                                          \
        openat_fn next = (openat_fn)dlsym(RTLD_NEXT, #name);                                       \
        return next(dirfd, path, flags, mode);                                                     \
    }

SHIM_OPEN(open)
SHIM_OPEN(open64)
SHIM_OPENAT(openat)
SHIM_OPENAT(openat64)

typedef char *(*strdup_fn)(const char *);

char *
strdup(const char *s)
{
    if (strdup_fail[0] != '\0' && strstr(s, strdup_fail) != NULL) {
        errno = ENOMEM;
        return NULL;
    }
    strdup_fn next = (strdup_fn)dlsym(RTLD_NEXT, "strdup");
    return next(s);
}
