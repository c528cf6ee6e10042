/* Unit tests for relay_hello.c, the opening of a relay connection, reply by reply: STARTTLS
 * required and missing or refused fails before anything else, "try" goes on in plaintext, a
 * password never goes out without TLS unless allowed, AUTH PLAIN is preferred to LOGIN, and
 * the base64 is what RFC 4616 and the LOGIN convention call for. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "luasmtpd/relay_hello.h"

static enum relay_hello_step
reply(struct relay_hello *h, int code, const char *text)
{
    struct relay_reply r = {.code = code, .text = (char *)text};
    return relay_hello_reply(h, &r);
}

static void
assert_sends(struct relay_hello *h, enum relay_hello_step step, const char *line, bool secret)
{
    assert_int_equal(step, RELAY_HELLO_SEND);
    assert_string_equal(h->out.data, line);
    assert_int_equal(h->secret, secret);
}

static void
open_hello(struct relay_hello *h, enum relay_tls_mode tls, const char *user, bool plaintext)
{
    struct relay_security sec = {
        .tls = tls, .user = user, .password = user ? "pass" : NULL, .auth_plaintext = plaintext};
    assert_int_equal(relay_hello_init(h, &sec, "me.example", "up:25", false), 0);
    assert_sends(h, reply(h, 220, "up ESMTP"), "EHLO me.example\r\n", false);
}

static void
test_plain(void **state)
{
    (void)state;
    struct relay_hello h;
    open_hello(&h, RELAY_TLS_OFF, NULL, false);
    /* STARTTLS offered but not asked for: not used. */
    assert_int_equal(reply(&h, 250, "up\nPIPELINING\nSTARTTLS"), RELAY_HELLO_READY);
    assert_int_equal(h.ext & RELAY_EXT_PIPELINING, RELAY_EXT_PIPELINING);
    assert_false(h.tls_active);
    relay_hello_free(&h);
}

static void
test_require_missing_and_refused(void **state)
{
    (void)state;
    struct relay_hello h;
    open_hello(&h, RELAY_TLS_REQUIRE, NULL, false);
    assert_int_equal(reply(&h, 250, "up\nPIPELINING"), RELAY_HELLO_FAIL);
    assert_int_equal(h.kind, RELAY_TLS_FAILED);
    assert_int_equal(h.code, 0);
    assert_string_equal(h.out.data, "up:25 does not offer STARTTLS, and TLS is required");
    relay_hello_free(&h);

    open_hello(&h, RELAY_TLS_REQUIRE, NULL, false);
    assert_sends(&h, reply(&h, 250, "up\nSTARTTLS"), "STARTTLS\r\n", false);
    assert_int_equal(reply(&h, 454, "4.7.0 TLS not available"), RELAY_HELLO_FAIL);
    assert_int_equal(h.kind, RELAY_TEMPFAIL);
    assert_int_equal(h.code, 454);
    relay_hello_free(&h);
}

static void
test_try_refused_goes_on_plain(void **state)
{
    (void)state;
    struct relay_hello h;
    open_hello(&h, RELAY_TLS_TRY, NULL, false);
    assert_sends(&h, reply(&h, 250, "up\nSTARTTLS"), "STARTTLS\r\n", false);
    assert_int_equal(reply(&h, 454, "4.7.0 not now"), RELAY_HELLO_READY);
    assert_false(h.tls_active);
    relay_hello_free(&h);
    /* Not offered at all: plaintext, ready at once. */
    open_hello(&h, RELAY_TLS_TRY, NULL, false);
    assert_int_equal(reply(&h, 250, "up\n8BITMIME"), RELAY_HELLO_READY);
    relay_hello_free(&h);
}

static void
test_starttls_then_auth_plain(void **state)
{
    (void)state;
    struct relay_hello h;
    open_hello(&h, RELAY_TLS_REQUIRE, "user", false);
    /* AUTH offered in plaintext is not used before TLS. */
    assert_sends(&h, reply(&h, 250, "up\nAUTH PLAIN LOGIN\nSTARTTLS"), "STARTTLS\r\n", false);
    assert_int_equal(reply(&h, 220, "2.0.0 go"), RELAY_HELLO_STARTTLS);
    assert_sends(&h, relay_hello_secured(&h), "EHLO me.example\r\n", false);
    assert_int_equal(h.ext, 0); /* forgotten until the new EHLO reply */
    /* "\0user\0pass" */
    assert_sends(&h, reply(&h, 250, "up\nAUTH LOGIN PLAIN\nSIZE 1000"),
                 "AUTH PLAIN AHVzZXIAcGFzcw==\r\n", true);
    assert_int_equal(h.size_limit, 1000);
    assert_int_equal(reply(&h, 235, "2.7.0 ok"), RELAY_HELLO_READY);
    assert_true(h.tls_active);
    relay_hello_free(&h);
}

static void
test_auth_login_and_refusal(void **state)
{
    (void)state;
    struct relay_hello h;
    open_hello(&h, RELAY_TLS_IMPLICIT, "user", false);
    assert_sends(&h, reply(&h, 250, "up\nAUTH=LOGIN"), "AUTH LOGIN\r\n", false);
    assert_sends(&h, reply(&h, 334, "VXNlcm5hbWU6"), "dXNlcg==\r\n", true);
    assert_sends(&h, reply(&h, 334, "UGFzc3dvcmQ6"), "cGFzcw==\r\n", true);
    assert_int_equal(reply(&h, 535, "5.7.8 no"), RELAY_HELLO_FAIL);
    assert_int_equal(h.kind, RELAY_PERMFAIL);
    assert_int_equal(h.code, 535);
    assert_false(h.secret);
    relay_hello_free(&h);
}

static void
test_no_password_without_tls(void **state)
{
    (void)state;
    struct relay_hello h;
    open_hello(&h, RELAY_TLS_TRY, "user", false);
    assert_int_equal(reply(&h, 250, "up\nAUTH PLAIN"), RELAY_HELLO_FAIL);
    assert_int_equal(h.kind, RELAY_AUTH_FAILED);
    assert_int_equal(h.code, 0);
    relay_hello_free(&h);
    open_hello(&h, RELAY_TLS_OFF, "user", true);
    assert_sends(&h, reply(&h, 250, "up\nAUTH PLAIN"), "AUTH PLAIN AHVzZXIAcGFzcw==\r\n", true);
    relay_hello_free(&h);
    /* Inside TLS, but nothing we speak is offered. */
    open_hello(&h, RELAY_TLS_IMPLICIT, "user", false);
    assert_int_equal(reply(&h, 250, "up\nAUTH CRAM-MD5 XOAUTH2\nAUTHX PLAIN"), RELAY_HELLO_FAIL);
    assert_int_equal(h.kind, RELAY_AUTH_FAILED);
    relay_hello_free(&h);
}

static void
test_helo_fallback(void **state)
{
    (void)state;
    struct relay_hello h;
    open_hello(&h, RELAY_TLS_OFF, NULL, false);
    assert_sends(&h, reply(&h, 502, "5.5.1 what"), "HELO me.example\r\n", false);
    assert_int_equal(reply(&h, 250, "up"), RELAY_HELLO_READY);
    relay_hello_free(&h);
    /* After STARTTLS, EHLO refused is a failure: that server knew EHLO a moment ago. */
    open_hello(&h, RELAY_TLS_REQUIRE, NULL, false);
    assert_sends(&h, reply(&h, 250, "up\nSTARTTLS"), "STARTTLS\r\n", false);
    assert_int_equal(reply(&h, 220, "go"), RELAY_HELLO_STARTTLS);
    assert_sends(&h, relay_hello_secured(&h), "EHLO me.example\r\n", false);
    assert_int_equal(reply(&h, 502, "5.5.1 what"), RELAY_HELLO_FAIL);
    assert_int_equal(h.code, 502);
    relay_hello_free(&h);
    /* A greeting of the wrong class is a protocol error, not a refusal. */
    struct relay_security sec = {0};
    assert_int_equal(relay_hello_init(&h, &sec, "me.example", "up:25", false), 0);
    assert_int_equal(reply(&h, 354, "go on"), RELAY_HELLO_FAIL);
    assert_int_equal(h.kind, RELAY_PROTOCOL);
    assert_int_equal(h.code, 0);
    relay_hello_free(&h);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain),
        cmocka_unit_test(test_require_missing_and_refused),
        cmocka_unit_test(test_try_refused_goes_on_plain),
        cmocka_unit_test(test_starttls_then_auth_plain),
        cmocka_unit_test(test_auth_login_and_refusal),
        cmocka_unit_test(test_no_password_without_tls),
        cmocka_unit_test(test_helo_fallback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
