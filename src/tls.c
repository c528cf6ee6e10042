/* The server's OpenSSL contexts and the TLS bufferevents over accepted sockets (see tls.h).
 * libevent's bufferevent_openssl does the TLS; this file only builds contexts from the
 * certificate files and says what a handshake gave. No SMTP here. */
#include "luasmtpd/tls.h"

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "luasmtpd/log.h"

/* What a file was when it was last read: a file replaced or rewritten differs in one of these
 * (a rename brings another inode, a write another mtime or ctime). */
struct tls_file_id {
    bool present;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime, ctime;
};

struct tls_server {
    struct tls_server_files files; /* the config's strings, which outlive us */
    SSL_CTX *ctx[2];
    struct tls_file_id read[2][2]; /* [kind][0 cert, 1 key], as they were at the last try */
};

static struct tls_file_id
tls_file_id_of(const char *path)
{
    struct tls_file_id id = {0};
    struct stat st;
    if (stat(path, &st) == 0)
        id = (struct tls_file_id){.present = true,
                                  .dev = st.st_dev,
                                  .ino = st.st_ino,
                                  .size = st.st_size,
                                  .mtime = st.st_mtim,
                                  .ctime = st.st_ctim};
    return id;
}

static bool
tls_file_id_same(const struct tls_file_id *a, const struct tls_file_id *b)
{
    return a->present == b->present && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
           a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec;
}

/* Taken before the files are read: a change while they are read shows at the next look. */
static bool
tls_files_changed(struct tls_server *t, int k)
{
    bool changed = false;
    const char *path[2] = {t->files.cert[k], t->files.key[k]};
    for (int f = 0; f < 2; f++) {
        struct tls_file_id now = tls_file_id_of(path[f]);
        changed = changed || !tls_file_id_same(&now, &t->read[k][f]);
        t->read[k][f] = now;
    }
    return changed;
}

/* A client certificate is asked for but never required or checked: the script sees its
 * subject and decides what it is worth. Nothing is trusted on the strength of it here. */
static int
tls_accept_any_peer(int ok, X509_STORE_CTX *store)
{
    (void)ok;
    (void)store;
    return 1;
}

static void
tls_error_text(char *text, size_t len)
{
    unsigned long e = ERR_peek_last_error();
    if (e != 0)
        ERR_error_string_n(e, text, len);
    else
        snprintf(text, len, "unknown error");
    ERR_clear_error();
}

/* A context for one pair: TLS 1.2 and 1.3, ciphers as the system's OpenSSL policy has them.
 * NULL: `why` says what was wrong. */
static SSL_CTX *
tls_context_new(const char *cert, const char *key, char *why, size_t len)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        tls_error_text(why, len);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* A client that closes the socket without close_notify is an ordinary end of input, as it
     * is without TLS; the session decides what an unfinished command means. */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, tls_accept_any_peer);
    /* Asking for a client certificate makes OpenSSL refuse to resume a session without this. */
    static const unsigned char session_context[] = "luasmtpd";
    SSL_CTX_set_session_id_context(ctx, session_context, sizeof(session_context) - 1);
    const char *what = NULL, *file = key;
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        what = "certificate";
        file = cert;
    } else if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        what = "key";
    } else if (SSL_CTX_check_private_key(ctx) != 1) {
        what = "key does not match the certificate";
    }
    if (what == NULL)
        return ctx;
    char detail[256];
    tls_error_text(detail, sizeof(detail));
    snprintf(why, len, "%s (%s): %s", what, file, detail);
    SSL_CTX_free(ctx);
    return NULL;
}

struct tls_server *
tls_server_new(const struct tls_server_files *files, FILE *err)
{
    struct tls_server *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->files = *files;
    for (int k = 0; k < 2; k++) {
        if (files->cert[k] == NULL)
            continue;
        char why[512];
        tls_files_changed(t, k);
        t->ctx[k] = tls_context_new(files->cert[k], files->key[k], why, sizeof(why));
        if (t->ctx[k] == NULL) {
            fprintf(err, "luasmtpd: cannot load the %s certificate: %s\n",
                    k == TLS_STARTTLS ? "STARTTLS" : "SMTPS", why);
            tls_server_free(t);
            return NULL;
        }
    }
    return t;
}

static bool
tls_server_read_again(struct tls_server *t, bool only_changed)
{
    bool all = true;
    for (int k = 0; t != NULL && k < 2; k++) {
        if (t->ctx[k] == NULL)
            continue;
        /* Always taken, so that a forced reload also records what it read. */
        if (!tls_files_changed(t, k) && only_changed)
            continue;
        char why[512];
        SSL_CTX *ctx = tls_context_new(t->files.cert[k], t->files.key[k], why, sizeof(why));
        const char *name = k == TLS_STARTTLS ? "STARTTLS" : "SMTPS";
        if (ctx == NULL) {
            log_error("%s certificate not reloaded, the old one stays: %s", name, why);
            all = false;
            continue;
        }
        /* Each SSL holds a reference to its context: connections in TLS keep the old one
         * until they end. */
        SSL_CTX_free(t->ctx[k]);
        t->ctx[k] = ctx;
        log_info("%s certificate reloaded from %s", name, t->files.cert[k]);
    }
    return all;
}

bool
tls_server_reload(struct tls_server *t)
{
    return tls_server_read_again(t, false);
}

bool
tls_server_refresh(struct tls_server *t)
{
    return tls_server_read_again(t, true);
}

bool
tls_server_offers(const struct tls_server *t, enum tls_kind kind)
{
    return t != NULL && t->ctx[kind] != NULL;
}

struct bufferevent *
tls_server_accept(struct tls_server *t, enum tls_kind kind, struct event_base *base, int fd)
{
    SSL *ssl = SSL_new(t->ctx[kind]);
    if (ssl == NULL)
        return NULL;
    struct bufferevent *bev = bufferevent_openssl_socket_new(
        base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        SSL_free(ssl);
        return NULL;
    }
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

void
tls_server_free(struct tls_server *t)
{
    if (t == NULL)
        return;
    for (int k = 0; k < 2; k++)
        SSL_CTX_free(t->ctx[k]);
    free(t);
}

void
tls_close_notify(struct bufferevent *bev)
{
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    if (ssl != NULL && SSL_is_init_finished(ssl))
        SSL_shutdown(ssl);
    ERR_clear_error();
}

void
tls_describe(struct bufferevent *bev, struct tls_info *info)
{
    memset(info, 0, sizeof(*info));
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    if (ssl == NULL)
        return;
    snprintf(info->version, sizeof(info->version), "%s", SSL_get_version(ssl));
    const SSL_CIPHER *cipher = SSL_get_current_cipher(ssl);
    if (cipher != NULL) {
        snprintf(info->cipher, sizeof(info->cipher), "%s", SSL_CIPHER_get_name(cipher));
        info->bits = SSL_CIPHER_get_bits(cipher, NULL);
    }
    X509 *peer = SSL_get1_peer_certificate(ssl);
    if (peer != NULL) {
        X509_NAME_oneline(X509_get_subject_name(peer), info->subject, sizeof(info->subject));
        X509_free(peer);
    }
}

void
tls_failure(struct bufferevent *bev, char *text, size_t len)
{
    unsigned long e = bufferevent_get_openssl_error(bev);
    /* The first error is the cause; the rest only say where it surfaced. */
    for (int i = 0; i < 16 && bufferevent_get_openssl_error(bev) != 0; i++)
        ;
    if (e != 0)
        ERR_error_string_n(e, text, len);
    else
        snprintf(text, len, "connection closed");
}
