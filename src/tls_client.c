/* The client side of TLS (see tls_client.h). A context per connection: it is cheap beside a
 * handshake, and a CA bundle edited on disk is read again by the next connection with no
 * cache to invalidate. TLS 1.2 is the floor (RFC 8996 retired the older ones); the rest is the
 * system's OpenSSL policy. */
#include "luasmtpd/tls_client.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>

static bool
tls_client_is_address(const char *name)
{
    unsigned char addr[16];
    return inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1;
}

static const char *
tls_client_ossl_reason(char *out, size_t outlen)
{
    unsigned long e = ERR_get_error();
    ERR_clear_error();
    if (e == 0)
        snprintf(out, outlen, "unknown error");
    else
        ERR_error_string_n(e, out, outlen);
    return out;
}

static SSL *
tls_client_ssl(const struct tls_client_options *o, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (o->verify) {
        int ok = o->ca ? SSL_CTX_load_verify_locations(ctx, o->ca, NULL)
                       : SSL_CTX_set_default_verify_paths(ctx);
        if (!ok) {
            char why[200];
            snprintf(err, errlen, "cannot load the CA bundle %s: %s", o->ca ? o->ca : "(system)",
                     tls_client_ossl_reason(why, sizeof(why)));
            SSL_CTX_free(ctx);
            return NULL;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    SSL *ssl = SSL_new(ctx);
    SSL_CTX_free(ctx); /* the SSL holds its own reference */
    if (ssl == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    bool address = tls_client_is_address(o->name);
    int ok = address ? 1 : SSL_set_tlsext_host_name(ssl, o->name);
    if (ok && o->verify) {
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        ok = address ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), o->name)
                     : SSL_set1_host(ssl, o->name);
    }
    if (!ok) {
        snprintf(err, errlen, "cannot use the name %s for TLS", o->name);
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

struct bufferevent *
tls_client_wrap(struct bufferevent *under, const struct tls_client_options *o, size_t *dropped,
                char *err, size_t errlen)
{
    struct evbuffer *in = bufferevent_get_input(under);
    *dropped = evbuffer_get_length(in);
    evbuffer_drain(in, *dropped);
    SSL *ssl = tls_client_ssl(o, err, errlen);
    if (ssl == NULL)
        return NULL;
    struct bufferevent *bev = bufferevent_openssl_filter_new(
        bufferevent_get_base(under), under, ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        SSL_free(ssl);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    /* Many servers close without a close_notify after QUIT's 221; that is no error to us. */
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

const char *
tls_client_failure(struct bufferevent *bev, bool verify, char *out, size_t outlen)
{
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    long result = ssl && verify ? SSL_get_verify_result(ssl) : X509_V_OK;
    unsigned long e = bufferevent_get_openssl_error(bev);
    while (bufferevent_get_openssl_error(bev) != 0)
        ; /* the first error is the reason; the rest would only be left for the next one */
    if (result != X509_V_OK) {
        snprintf(out, outlen, "certificate verify failed: %s",
                 X509_verify_cert_error_string(result));
    } else if (e != 0) {
        char why[200];
        ERR_error_string_n(e, why, sizeof(why));
        snprintf(out, outlen, "handshake failed: %s", why);
    } else {
        snprintf(out, outlen, "handshake failed: the connection closed");
    }
    return out;
}
