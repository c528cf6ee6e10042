"""TLS and AUTH on the relay side (issue 14): smtpd.relay{} and smtpd.connect{} with
starttls = "try" | "require", tls = true (implicit), verify, cafile, servername, auth and
auth_plaintext, against aiosmtpd with STARTTLS, SMTPS and AUTH, and a hostile upstream that
pipelines a fake reply behind its 220 to STARTTLS; and pureproxy's relay_tls, relay_user,
relay_password_file and relay_cafile settings through an upstream requiring STARTTLS and AUTH.

Certificates are made once for the module with `openssl req`/`openssl x509`: a test CA signing
a server certificate for localhost and 127.0.0.1, and a second CA nobody signed with.
"""

import base64
import os
import shutil
import ssl
import subprocess
import tempfile
import unittest
import warnings

from harness import ServerTestCase, stuff
from upstreams import AioUpstream, RawServer

EHLO = "EHLO client.example"
BODY = b"Subject: tls relay\r\nFrom: a@b.example\r\n\r\nover TLS\r\n"
WARN_LINE = r"^\S+ luasmtpd\[\d+\] warn: "
USER, PASSWORD = "relayuser", "s3cret-Pa55word"

CERTS = {}


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)


def _make_ca(d, name):
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def setUpModule():
    # aiosmtpd warns when AUTH is offered outside TLS: a case below does it on purpose. (Here,
    # not at import: unittest resets the warning filters before it runs the tests.)
    warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
    d = tempfile.mkdtemp(prefix="luasmtpd-tls-")
    CERTS["dir"] = d
    _make_ca(d, "testca")
    _make_ca(d, "otherca")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "testca.pem", "-CAkey", "testca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    for name in ("testca", "otherca", "server"):
        CERTS[name] = os.path.join(d, f"{name}.pem")
    CERTS["key"] = os.path.join(d, "server.key")


def tearDownModule():
    shutil.rmtree(CERTS["dir"], ignore_errors=True)


def server_context():
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(CERTS["server"], CERTS["key"])
    return ctx


class Authenticator:
    """aiosmtpd's authenticator: USER/PASSWORD pass; notes each attempt on `up`."""

    def __init__(self):
        self.up = None
        self.attempts = []

    def __call__(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult
        self.attempts.append((mechanism, auth_data.login, auth_data.password))
        ok = auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode()
        # handled=False: aiosmtpd itself answers 535 (handled=True would leave it to us).
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


class RelayTlsCase(ServerTestCase):
    def start_upstream(self, starttls=True, require_starttls=True, auth=False,
                       implicit=False, **smtp_kwargs):
        kw = dict(smtp_kwargs)
        if starttls:
            kw["tls_context"] = server_context()
            kw["require_starttls"] = require_starttls
        authenticator = None
        if auth:
            authenticator = Authenticator()
            kw["authenticator"] = authenticator
            kw["auth_required"] = True
        up = AioUpstream(ssl_context=server_context() if implicit else None, smtp_kwargs=kw)
        self.addCleanup(up.close)
        up.auth = authenticator
        return up

    def start_relay(self, up_port, sets, args=(), **kw):
        kw.setdefault("expect_errors", [WARN_LINE])
        sets = dict(sets)
        sets.setdefault("host", "127.0.0.1")
        return self.start_server("relay_tls", sets=sets, args=args,
                                 remote=f"127.0.0.1:{up_port}", **kw)

    def send(self, srv, rcpts=("c@d.example",)):
        c = self.connect(srv)
        self.assertEqual(c.cmd(EHLO).code, 250)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 250)
        for r in rcpts:
            self.assertEqual(c.cmd(f"RCPT TO:<{r}>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(stuff(BODY) + b".\r\n")
        return c.reply(timeout=60)

    def assertDelivered(self, up, reply, tls=True, auth=None):
        self.assertEqual(reply.code, 250, reply.lines)
        msgs = up.wait_messages(1, timeout=20)
        self.assertEqual(len(msgs), 1)
        self.assertEqual(msgs[0]["rcpt_tos"], ["c@d.example"])
        self.assertTrue(msgs[0]["data"].endswith(b"over TLS\r\n"))
        if tls is not None:
            self.assertEqual(msgs[0]["tls"], tls)
        self.assertEqual(msgs[0]["auth"], auth)

    def assertFailed(self, up, reply, text, code="nil"):
        """The relay failed: 451 with the message and code the binding returned, and the
        upstream never saw a recipient. The relay had finished (it answered our client) before
        we look, so nothing more can reach the upstream from it."""
        self.assertEqual(reply.code, 451, reply.lines)
        self.assertIn(f"relay failed code={code} ", reply.lines[-1])
        self.assertIn(text, reply.lines[-1])
        self.assertEqual(up.messages, [])
        events = [e for _, e in up.events]
        self.assertFalse(any(isinstance(e, tuple) and e[0] == "rcpt" for e in events), events)


class TestStartTLS(RelayTlsCase):
    def test_require_verified_against_test_ca(self):
        up = self.start_upstream()
        srv = self.start_relay(up.port, {"starttls": "require", "cafile": CERTS["testca"]})
        self.assertDelivered(up, self.send(srv))

    def test_servername_checked(self):
        up = self.start_upstream()
        srv = self.start_relay(up.port, {"starttls": "require", "cafile": CERTS["testca"],
                                         "servername": "localhost"})
        self.assertDelivered(up, self.send(srv))

    def test_wrong_name_fails(self):
        up = self.start_upstream()
        srv = self.start_relay(up.port, {"starttls": "require", "cafile": CERTS["testca"],
                                         "servername": "wrong.example"})
        r = self.send(srv)
        self.assertFailed(up, r, "TLS failed: 127.0.0.1:")
        self.assertIn("certificate verify failed: hostname mismatch", r.lines[-1])

    def test_wrong_ca_fails_verification(self):
        up = self.start_upstream()
        srv = self.start_relay(up.port, {"starttls": "require", "cafile": CERTS["otherca"]})
        r = self.send(srv)
        self.assertFailed(up, r, "TLS failed: 127.0.0.1:")
        self.assertIn("certificate verify failed:", r.lines[-1])

    def test_system_bundle_does_not_know_test_ca(self):
        up = self.start_upstream()
        srv = self.start_relay(up.port, {"starttls": "require"})
        r = self.send(srv)
        self.assertFailed(up, r, "certificate verify failed:")

    def test_require_without_starttls_offered(self):
        up = self.start_upstream(starttls=False)
        srv = self.start_relay(up.port, {"starttls": "require", "cafile": CERTS["testca"]})
        self.assertFailed(up, self.send(srv), "does not offer STARTTLS, and TLS is required")

    def test_try_against_plain_upstream_stays_plain(self):
        up = self.start_upstream(starttls=False)
        srv = self.start_relay(up.port, {"starttls": "try"})
        self.assertDelivered(up, self.send(srv), tls=False)

    def test_try_encrypts_without_verifying(self):
        # RFC 7435: opportunistic TLS takes any certificate (the test CA is not given).
        up = self.start_upstream()
        srv = self.start_relay(up.port, {"starttls": "try"})
        self.assertDelivered(up, self.send(srv), tls=True)

    def test_try_with_verify_checks(self):
        up = self.start_upstream()
        srv = self.start_relay(up.port, {"starttls": "try", "verify": "1",
                                         "cafile": CERTS["otherca"]})
        self.assertFailed(up, self.send(srv), "certificate verify failed:")

    def test_connect_reports_tls(self):
        up = self.start_upstream()
        srv = self.start_relay(up.port, {"starttls": "require", "cafile": CERTS["testca"],
                                         "mode": "connect"})
        self.assertEqual(self.send(srv).lines[-1], "250 2.0.0 tls=true")
        plain = self.start_upstream(starttls=False)
        srv2 = self.start_relay(plain.port, {"starttls": "try", "mode": "connect"})
        self.assertEqual(self.send(srv2).lines[-1], "250 2.0.0 tls=false")


class TestImplicitTLS(RelayTlsCase):
    def test_implicit_verified(self):
        up = self.start_upstream(starttls=False, implicit=True)
        srv = self.start_relay(up.port, {"tls": "1", "cafile": CERTS["testca"]})
        self.assertDelivered(up, self.send(srv), tls=None)

    def test_implicit_wrong_ca(self):
        up = self.start_upstream(starttls=False, implicit=True)
        srv = self.start_relay(up.port, {"tls": "1", "cafile": CERTS["otherca"]})
        r = self.send(srv)
        self.assertFailed(up, r, "certificate verify failed:")

    def test_implicit_against_plain_upstream_fails(self):
        up = self.start_upstream(starttls=False)
        srv = self.start_relay(up.port, {"tls": "1", "cafile": CERTS["testca"]})
        self.assertFailed(up, self.send(srv), "TLS failed: 127.0.0.1:")


class TestAuth(RelayTlsCase):
    def test_plain_preferred(self):
        up = self.start_upstream(auth=True)
        srv = self.start_relay(up.port, {"starttls": "require", "cafile": CERTS["testca"],
                                         "user": USER, "password": PASSWORD}, args=["-d"])
        self.assertDelivered(up, self.send(srv), auth=USER.encode())
        self.assertEqual([a[0] for a in up.auth.attempts], ["PLAIN"])
        srv.stop()
        text = "\n".join(srv.log.snapshot())
        # Not even with -d, neither as given nor as it went on the wire.
        plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
        for secret in (PASSWORD, plain, base64.b64encode(PASSWORD.encode()).decode()):
            self.assertNotIn(secret, text)

    def test_login(self):
        up = self.start_upstream(auth=True, auth_exclude_mechanism=["PLAIN"])
        srv = self.start_relay(up.port, {"starttls": "require", "cafile": CERTS["testca"],
                                         "user": USER, "password": PASSWORD})
        self.assertDelivered(up, self.send(srv), auth=USER.encode())
        self.assertEqual([a[0] for a in up.auth.attempts], ["LOGIN"])

    def test_wrong_password(self):
        up = self.start_upstream(auth=True)
        srv = self.start_relay(up.port, {"starttls": "require", "cafile": CERTS["testca"],
                                         "user": USER, "password": "wrong"})
        self.assertFailed(up, self.send(srv), "refused permanently: 535", code="535")

    def test_no_auth_offered(self):
        up = self.start_upstream(auth_exclude_mechanism=["PLAIN", "LOGIN"])
        srv = self.start_relay(up.port, {"starttls": "require", "cafile": CERTS["testca"],
                                         "user": USER, "password": PASSWORD})
        self.assertFailed(up, self.send(srv), "offers no AUTH PLAIN or LOGIN")

    def test_never_over_plaintext_unless_allowed(self):
        up = self.start_upstream(starttls=False, auth=True, auth_require_tls=False)
        srv = self.start_relay(up.port, {"starttls": "try", "user": USER,
                                         "password": PASSWORD})
        self.assertFailed(up, self.send(srv), "not sending a password to 127.0.0.1:")
        self.assertEqual(up.auth.attempts, [])
        srv2 = self.start_relay(up.port, {"starttls": "try", "user": USER,
                                          "password": PASSWORD, "auth_plaintext": "1"})
        self.assertDelivered(up, self.send(srv2), tls=False, auth=USER.encode())

    def test_try_checks_the_certificate_before_a_password(self):
        # Opportunistic TLS checks no certificate, but a password sent to an unchecked one goes
        # to whoever sits in the path and presents one. Here the upstream's CA is not in the
        # system bundle, as a man in the middle's would not be.
        up = self.start_upstream(auth=True)
        srv = self.start_relay(up.port, {"starttls": "try", "user": USER,
                                         "password": PASSWORD})
        self.assertFailed(up, self.send(srv), "certificate verify failed")
        self.assertEqual(up.auth.attempts, [])
        # verify = false, said in so many words, still sends it.
        srv2 = self.start_relay(up.port, {"starttls": "try", "verify": "0", "user": USER,
                                          "password": PASSWORD})
        self.assertDelivered(up, self.send(srv2), auth=USER.encode())


def hostile_starttls(server, conn):
    """Offers STARTTLS and answers it with "220 go" and a fake "250" in one write, then
    speaks TLS and a plain SMTP dialogue inside it, noting each command it gets."""
    conn.send("220 hostile ESMTP\r\n")
    conn.readline()
    conn.send("250-hostile\r\n250 STARTTLS\r\n")
    line = conn.readline()
    server.note(("plain", line))
    conn.send(b"220 go\r\n250 fake\r\n")
    conn.sock = server_context().wrap_socket(conn.sock, server_side=True)
    server.note("handshake")
    replies = {b"EHLO": "250-hostile\r\n250 8BITMIME\r\n", b"MAIL": "250 ok\r\n",
               b"RCPT": "250 ok\r\n", b"DATA": "354 go\r\n", b"QUIT": "221 bye\r\n"}
    for _ in range(10):
        line = conn.readline()
        server.note(("tls", line.split(b" ")[0]))
        conn.send(replies.get(line[:4], "500 what\r\n"))
        if line.startswith(b"DATA"):
            conn.read_until(b"\r\n.\r\n")
            server.note("message")
            conn.send("250 queued\r\n")
        if line.startswith(b"QUIT"):
            return


def stalled_starttls(server, conn):
    """Answers STARTTLS with 220 and then never speaks TLS: the handshake never ends."""
    conn.send("220 stall ESMTP\r\n")
    conn.readline()
    conn.send("250-stall\r\n250 STARTTLS\r\n")
    conn.readline()
    conn.send("220 go\r\n")
    server.note("stalled")
    conn.wait_eof()
    server.note("peer closed")


class TestHandshakeStalls(RelayTlsCase):
    def test_handshake_timeout(self):
        raw = RawServer(stalled_starttls)
        self.addCleanup(raw.close)
        srv = self.start_relay(raw.port, {"starttls": "require", "cafile": CERTS["testca"],
                                          "timeout": "2"})
        r = self.send(srv)
        self.assertEqual(r.code, 451, r.lines)
        self.assertIn("code=nil timed out: 127.0.0.1:", r.lines[-1])
        self.assertIn("timed out waiting for the TLS handshake", r.lines[-1])
        raw.wait_event("peer closed", 1, 20)  # the socket was let go, not leaked

    def test_client_leaves_during_handshake(self):
        # The relay is cancelled with the handshake half way: the upstream connection goes,
        # and the server (under ASan in CI, too) goes on serving.
        raw = RawServer(stalled_starttls)
        self.addCleanup(raw.close)
        srv = self.start_relay(raw.port, {"starttls": "require", "cafile": CERTS["testca"]})
        c = self.connect(srv)
        self.assertEqual(c.cmd(EHLO).code, 250)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(stuff(BODY) + b".\r\n")
        raw.wait_event("stalled", 1, 20)
        c.reset()
        srv.wait_log(r"client left during the handler")
        raw.wait_event("peer closed", 1, 20)
        c2 = self.connect(srv)
        self.assertEqual(c2.cmd("NOOP").code, 250)


class TestResponseInjection(RelayTlsCase):
    def test_fake_reply_after_220_is_dropped(self):
        raw = RawServer(hostile_starttls)
        self.addCleanup(raw.close)
        srv = self.start_relay(raw.port, {"starttls": "require", "cafile": CERTS["testca"]})
        r = self.send(srv)
        self.assertEqual(r.code, 250, r.lines)
        raw.wait_event("message", 1, 20)
        srv.wait_log(r"sent 10 bytes after its 220 to STARTTLS: dropped")
        # Inside TLS the client began again with EHLO: the fake 250 answered nothing.
        tls_cmds = [e[1] for _, e in raw.events if isinstance(e, tuple) and e[0] == "tls"]
        self.assertEqual(tls_cmds[:4], [b"EHLO", b"MAIL", b"RCPT", b"DATA"])
        self.assertEqual(raw.count("message"), 1)


class TestPureproxy(RelayTlsCase):
    def smarthost_settings(self):
        """relay_* settings for an upstream requiring STARTTLS and AUTH (the password in a
        file of its own)."""
        d = tempfile.mkdtemp(prefix="luasmtpd-pw-")
        self.addCleanup(shutil.rmtree, d, True)
        pw = os.path.join(d, "password")
        with open(pw, "w") as f:
            f.write(PASSWORD + "\n")
        return {"relay_tls": "require", "relay_user": USER, "relay_password_file": pw,
                "relay_cafile": CERTS["testca"]}

    def test_smarthost_with_starttls_and_auth(self):
        up = self.start_upstream(auth=True)
        srv = self.start_server("pureproxy", remote=f"127.0.0.1:{up.port}",
                                expect_errors=[WARN_LINE], sets=self.smarthost_settings())
        self.assertDelivered(up, self.send(srv), auth=USER.encode())
        self.assertEqual(len(up.auth.attempts), 1)

    def test_mailman_relays_non_list_mail_the_same_way(self):
        from fake_mailman import FakeMailman2
        mm = FakeMailman2(("test",))
        self.addCleanup(mm.close)
        up = self.start_upstream(auth=True)
        sets = self.smarthost_settings()
        sets.update(mailman_wrapper=mm.wrapper, mailman_lists=mm.lists_dir)
        srv = self.start_server("mailman", remote=f"127.0.0.1:{up.port}",
                                expect_errors=[WARN_LINE], sets=sets)
        self.assertDelivered(up, self.send(srv), auth=USER.encode())
        self.assertEqual(mm.calls(), [])

    def test_implicit_smarthost(self):
        up = self.start_upstream(starttls=False, implicit=True)
        srv = self.start_server("pureproxy", remote=f"127.0.0.1:{up.port}",
                                expect_errors=[WARN_LINE],
                                sets={"relay_tls": "implicit", "relay_cafile": CERTS["testca"]})
        self.assertDelivered(up, self.send(srv), tls=None)

    def test_bad_settings_refuse_to_load(self):
        for sets, why in (({"relay_tls": "sometimes"}, "relay_tls must be"),
                          ({"relay_user": USER}, "relay_user needs relay_password_file")):
            with self.subTest(sets=sets):
                with self.assertRaises(AssertionError) as cm:
                    self.start_server("pureproxy", remote="127.0.0.1:9", sets=sets)
                self.assertIn(why, str(cm.exception))

    def test_require_against_plain_upstream_answers_451(self):
        up = self.start_upstream(starttls=False)
        srv = self.start_server("pureproxy", remote=f"127.0.0.1:{up.port}",
                                expect_errors=[WARN_LINE], sets={"relay_tls": "require"})
        c = self.connect(srv)
        self.assertEqual(c.cmd(EHLO).code, 250)
        r = c.cmd("MAIL FROM:<a@b.example>")
        self.assertEqual(r.code, 451, r.lines)
        self.assertEqual(up.messages, [])


class TestMisuse(RelayTlsCase):
    def check_raises(self, sets, field):
        up = self.start_upstream(starttls=False)
        srv = self.start_relay(up.port, sets, expect_errors=[WARN_LINE, r"error"])
        r = self.send(srv)
        self.assertEqual(r.code, 451, r.lines)
        srv.wait_log(f"field '{field}'")

    def test_bad_starttls(self):
        self.check_raises({"starttls": "maybe"}, "starttls")

    def test_starttls_with_tls(self):
        self.check_raises({"starttls": "try", "tls": "1"}, "starttls")

    def test_auth_without_password(self):
        self.check_raises({"user": USER}, "auth")


if __name__ == "__main__":
    unittest.main()
