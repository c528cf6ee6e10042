/* Fuzzes the command parser: a line, then the path and parameter parsers on its argument, as
 * the session does, and DSN's checks and decoding on the parameters. The parser works in
 * place, so each run gets its own copy. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "luasmtpd/dsn.h"
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
            bool known[SMTP_PARAMS_MAX] = {false};
            bool mail = cmd.verb == SMTP_VERB_MAIL;
            bool ok = n > 0 && dsn_check_params(params, n, mail, known) == NULL;
            for (int i = 0; ok && i < n; i++) {
                /* Each accepted parameter decodes as the envelope keeps it, within bounds. */
                char word[4200];
                snprintf(word, sizeof(word), "%s=%s", params[i].keyword,
                         params[i].value ? params[i].value : "");
                const char *words[] = {word};
                struct dsn_mail m;
                struct dsn_rcpt r;
                dsn_mail_decode(&m, words, 1);
                dsn_rcpt_decode(&r, word);
                if (strlen(m.envid) > DSN_ENVID_MAX || strlen(r.orcpt) > DSN_ORCPT_MAX)
                    abort();
            }
        }
    }
    free(line);
    return 0;
}
