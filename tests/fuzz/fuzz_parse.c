/* Fuzzes the command parser: a line, then the path and parameter parsers on its argument, as
 * the session does. The parser works in place, so each run gets its own copy. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "luasmtpd/smtp_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    char *line = malloc(size + 1);
    memcpy(line, data, size);
    struct smtp_command cmd;
    if (smtp_parse_command(line, size, &cmd) == SMTP_PARSE_OK) {
        char *rest = smtp_strip_keyword(cmd.arg, "FROM:");
        if (rest == NULL)
            rest = cmd.arg;
        struct smtp_path path;
        if (smtp_parse_path(rest, &path)) {
            if (path.null_path && path.address[0] != '\0')
                abort();
            struct smtp_param params[SMTP_PARAMS_MAX];
            int n = smtp_parse_params(path.params, params, SMTP_PARAMS_MAX);
            for (int i = 0; i < n; i++)
                if (params[i].keyword[0] == '\0')
                    abort();
        }
    }
    free(line);
    return 0;
}
