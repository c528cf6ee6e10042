"""AUTH on the server side (RFC 4954: PLAIN and LOGIN) with the script's authenticate():
real clients (smtplib, swaks, curl, msmtp when installed) over STARTTLS, the refusals
(538 before TLS, 535, 530 with --auth-required, 503, 501 for `*` and bad base64, over-long
lines), a yielding authenticator, --max-errors, and the password kept out of the -d log.
Certificates come from test_tls's helpers."""

import base64
import os
import shutil
import subprocess
import unittest

from harness import bound, wait_until
from test_pipe import children_of
from test_tls import TlsCase, client_context

PASSWORD = "s3cret wonder"


def b64(text):
    if isinstance(text, str):
        text = text.encode()
    return base64.b64encode(text).decode()


def plain(user, password, authzid=""):
    return b64(f"{authzid}\0{user}\0{password}")


class AuthCase(TlsCase):
    def auth_server(self, extra=(), **kw):
        return self.start_server("auth", args=self.tls_args(extra=extra), **kw)

    def tls_client(self, srv):
        """A raw client in TLS after EHLO, STARTTLS and a second EHLO (whose reply it keeps)."""
        c = self.connect(srv)
        self.assertEqual(c.cmd("EHLO client.example").code, 250)
        self.starttls_raw(c)
        self.ehlo = c.cmd("EHLO client.example")
        self.assertEqual(self.ehlo.code, 250)
        return c

    def smtplib_tls(self, srv):
        c = self.smtp(srv)
        c.ehlo("client.example")
        self.assertEqual(c.starttls(context=client_context(self.cert))[0], 220)
        c.ehlo("client.example")
        return c

    def run_tool(self, argv):
        p = subprocess.run(argv, capture_output=True, timeout=bound(60))
        out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
        self.assertEqual(p.returncode, 0, f"{argv!r} exited {p.returncode}:\n{out}")
        return out


class TestClients(AuthCase):
    """Real clients log in over STARTTLS; the script sees the user; Received says ESMTPSA."""

    def test_smtplib_plain_and_login(self):
        srv = self.auth_server()
        for mechanism, initial in (("PLAIN", True), ("PLAIN", False), ("LOGIN", True),
                                   ("LOGIN", False)):
            with self.subTest(mechanism=mechanism, initial_response=initial):
                c = self.smtplib_tls(srv)
                self.assertEqual(c.esmtp_features.get("auth", "").split(), ["PLAIN", "LOGIN"])
                c.user, c.password = "alice", PASSWORD
                auth = c.auth_plain if mechanism == "PLAIN" else c.auth_login
                code, text = c.auth(mechanism, auth, initial_response_ok=initial)
                self.assertEqual((code, text), (235, b"2.7.0 Authentication successful"))
                self.assertEqual(c.mail("a@b.example"), (250, b"2.1.0 auth=alice"))
                self.assertEqual(c.rcpt("c@d.example")[0], 250)
                self.assertEqual(c.data(b"Subject: s\r\n\r\nx\r\n"),
                                 (250, b"2.0.0 auth=alice protocol=ESMTPSA"))
                c.quit()
        srv.wait_log(r"session \d+: AUTH LOGIN as alice accepted")

    def test_swaks_plain_and_login(self):
        srv = self.auth_server()
        for mechanism in ("PLAIN", "LOGIN"):
            with self.subTest(mechanism=mechanism):
                out = self.run_tool(
                    ["swaks", "--server", "127.0.0.1", "--port", str(srv.port), "--tls",
                     "--auth", mechanism, "--auth-user", "alice", "--auth-password", PASSWORD,
                     "--to", "c@d.example", "--from", "a@b.example", "--timeout", "30"])
                self.assertIn("235 2.7.0 Authentication successful", out)
                self.assertIn("250 2.0.0 auth=alice protocol=ESMTPSA", out)

    def test_curl_ssl_reqd_user(self):
        srv = self.auth_server()
        path = os.path.join(self.dir, "msg")
        with open(path, "wb") as f:
            f.write(b"Subject: via curl\r\n\r\nhello\r\n")
        for mechanism in ("PLAIN", "LOGIN"):
            with self.subTest(mechanism=mechanism):
                out = self.run_tool(
                    ["curl", "-v", "-s", "-S", "--max-time", "30", "--ssl-reqd", "--cacert",
                     self.cert, "--user", f"alice:{PASSWORD}", "--login-options",
                     f"AUTH={mechanism}", f"smtp://127.0.0.1:{srv.port}", "--mail-from",
                     "a@b.example", "--mail-rcpt", "c@d.example", "-T", path])
                self.assertIn("235 2.7.0 Authentication successful", out)
                self.assertIn("250 2.0.0 auth=alice protocol=ESMTPSA", out)

    @unittest.skipUnless(shutil.which("msmtp"), "msmtp is not installed")
    def test_msmtp_tls_auth(self):
        srv = self.auth_server()
        for mechanism in ("plain", "login"):
            with self.subTest(mechanism=mechanism):
                p = subprocess.run(
                    ["msmtp", "--host=127.0.0.1", f"--port={srv.port}", "--tls=on",
                     "--tls-starttls=on", f"--tls-trust-file={self.cert}", "--auth=" + mechanism,
                     "--user=alice", "--passwordeval=echo '" + PASSWORD + "'",
                     "--from=a@b.example", "--domain=client.example", "--debug", "c@d.example"],
                    input=b"Subject: via msmtp\r\n\r\nhello\r\n", capture_output=True,
                    timeout=bound(60))
                out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
                self.assertEqual(p.returncode, 0, out)
                self.assertIn("235 2.7.0 Authentication successful", out)
                self.assertIn("250 2.0.0 auth=alice protocol=ESMTPSA", out)


class TestRefusals(AuthCase):
    def test_wrong_password_is_535_and_counts_toward_max_errors(self):
        srv = self.auth_server(extra=["--max-errors", "3"])
        c = self.tls_client(srv)
        for _ in range(2):
            self.assertReply(c.cmd("AUTH PLAIN " + plain("alice", "wrong")), 535,
                             "535 5.7.8 Authentication credentials invalid")
        # The third failure reaches the limit: its 535, then the 421, then the close.
        self.assertEqual(c.cmd("AUTH LOGIN " + b64("alice")).code, 334)
        self.assertEqual(c.cmd(b64("wrong")).code, 535)
        self.assertEqual(c.reply().code, 421)
        self.assertTrue(c.wait_closed())
        srv.wait_log(r"session \d+: AUTH LOGIN as alice refused")

    def test_before_tls_538_and_not_offered(self):
        srv = self.auth_server()
        c = self.connect(srv)
        caps = c.cmd("EHLO client.example")
        self.assertNotIn("250-AUTH PLAIN LOGIN", caps.lines)
        self.assertReply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), 538,
                         "538 5.7.11 Encryption required for requested authentication mechanism")
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").lines[-1], "250 2.1.0 auth=nil")
        # Inside TLS it is offered.
        c.cmd("RSET")
        self.starttls_raw(c)
        self.assertIn("250-AUTH PLAIN LOGIN", c.cmd("EHLO client.example").lines)

    def test_no_requiretls_allows_plaintext(self):
        for flag in ("--no-requiretls", "--auth-plaintext"):
            with self.subTest(flag=flag):
                srv = self.auth_server(extra=[flag])
                c = self.connect(srv)
                self.assertIn("250-AUTH PLAIN LOGIN", c.cmd("EHLO client.example").lines)
                self.assertEqual(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)).code, 235)
                replies = c.transaction("a@b.example", ["c@d.example"], b"x\r\n", helo=None)
                self.assertEqual(replies[-1].lines[-1], "250 2.0.0 auth=alice protocol=ESMTPA")

    def test_not_offered_without_authenticate(self):
        srv = self.start_server("sink", args=self.tls_args())
        c = self.tls_client(srv)
        self.assertNotIn("250-AUTH PLAIN LOGIN", self.ehlo.lines)
        self.assertEqual(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)).code, 502)

    def test_auth_required(self):
        srv = self.auth_server(extra=["--auth-required"])
        c = self.tls_client(srv)
        self.assertReply(c.cmd("MAIL FROM:<a@b.example>"), 530,
                         "530 5.7.0 Authentication required")
        self.assertEqual(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)).code, 235)
        replies = c.transaction("a@b.example", ["c@d.example"], b"x\r\n", helo=None)
        self.assertEqual([r.code for r in replies], [250, 250, 354, 250])

    def test_cancel_bad_base64_empty_and_syntax(self):
        srv = self.auth_server()
        c = self.tls_client(srv)
        self.assertReply(c.cmd("AUTH PLAIN"), 334, "334 ")
        self.assertReply(c.cmd("*"), 501, "501 5.7.0 Authentication cancelled")
        self.assertReply(c.cmd("AUTH LOGIN"), 334, "334 " + b64("Username:"))
        self.assertReply(c.cmd(b64("alice")), 334, "334 " + b64("Password:"))
        self.assertEqual(c.cmd("*").code, 501)
        for bad in ("AUTH PLAIN not*base64", "AUTH PLAIN QUJD=A==", "AUTH PLAIN QUJD RA==",
                    "AUTH PLAIN =", "AUTH PLAIN " + b64("no nul at all"),
                    "AUTH PLAIN " + b64("\0alice\0"), "AUTH LOGIN " + b64("al\r\nice")):
            self.assertReply(c.cmd(bad), 501, "501 5.5.2 Cannot decode response", bad)
        for empty in ("AUTH PLAIN", "AUTH LOGIN"):
            self.assertEqual(c.cmd(empty).code, 334)
            self.assertReply(c.cmd(""), 501, "501 5.5.2 Cannot decode response", empty)
        self.assertEqual(c.cmd("AUTH PLAIN").code, 334)
        self.assertEqual(c.cmd("%%%%").code, 501)
        self.assertEqual(c.cmd("AUTH").code, 501)
        self.assertEqual(c.cmd("AUTH CRAM-MD5").code, 504)
        # The session is fine after all that, and a good AUTH still works.
        self.assertEqual(c.cmd("NOOP").code, 250)
        self.assertEqual(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)).code, 235)

    def test_over_long_lines(self):
        srv = self.auth_server(extra=["--max-errors", "100"])
        c = self.tls_client(srv)
        # 12,288 bytes is still an AUTH line (RFC 4954 4): it is decoded and judged.
        long_password = "x" * 9000
        line = "AUTH PLAIN " + plain("alice", long_password)
        self.assertLessEqual(len(line), 12288)
        self.assertReply(c.cmd(line), 535, "535 5.7.8 Authentication credentials invalid")
        padded = "AUTH PLAIN " + "QUFB" * ((12288 - 11) // 4)
        self.assertLessEqual(len(padded), 12288)
        self.assertEqual(c.cmd(padded).code, 501)  # decodes, but holds no NUL
        self.assertEqual(c.cmd("AUTH PLAIN " + "QUFB" * 3100).code, 500)
        self.assertEqual(c.cmd("AUTH PLAIN").code, 334)
        self.assertReply(c.cmd("QUFB" * 3100), 500,
                         "500 5.5.6 Authentication Exchange line is too long")
        # The exchange ended: the next line is a command again.
        self.assertEqual(c.cmd("NOOP").code, 250)
        # Other commands keep their own limit.
        self.assertEqual(c.cmd("NOOP " + "x" * 600).code, 500)

    def test_second_auth_and_auth_in_a_transaction_are_503(self):
        srv = self.auth_server()
        c = self.tls_client(srv)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 250)
        self.assertReply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), 503,
                         "503 5.5.1 Error: MAIL transaction in progress")
        self.assertEqual(c.cmd("RSET").code, 250)
        self.assertEqual(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)).code, 235)
        self.assertReply(c.cmd("AUTH LOGIN"), 503, "503 5.5.1 Error: already authenticated")

    def test_authzid(self):
        srv = self.auth_server()
        c = self.tls_client(srv)
        self.assertEqual(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD, "bob")).code, 535)
        srv.wait_log(r"session \d+: AUTH PLAIN for another identity refused")
        self.assertEqual(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD, "alice")).code, 235)


class TestScriptAnswers(AuthCase):
    def test_yielding_failing_and_string_answers(self):
        srv = self.auth_server(expect_errors=[r"authenticate failed", r"neither 235"])
        c = self.tls_client(srv)
        self.assertEqual(c.cmd("AUTH PLAIN " + plain("yielder", "nope")).code, 535)
        self.assertReply(c.cmd("AUTH PLAIN " + plain("boom", "x")), 454,
                         "454 4.7.0 Temporary authentication failure")
        srv.wait_log(r"authenticate failed .*authenticator exploded")
        self.assertReply(c.cmd("AUTH LOGIN " + b64("custom")), 334)
        self.assertReply(c.cmd(b64("x")), 535, "535 5.7.8 custom refusal for LOGIN")
        self.assertEqual(c.cmd("AUTH PLAIN " + plain("chatty", "x")).code, 454)
        srv.wait_log(r"neither 235 nor a refusal")
        # LOGIN's password line also reaches a waiting authenticator.
        self.assertEqual(c.cmd("AUTH LOGIN").code, 334)
        self.assertEqual(c.cmd(b64("yielder")).code, 334)
        self.assertEqual(c.cmd(b64("pipe-pass")).code, 235)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").lines[-1], "250 2.1.0 auth=yielder")

    def test_pipelined_exchange(self):
        srv = self.auth_server()
        c = self.tls_client(srv)
        c.send(f"AUTH PLAIN\r\n{plain('yielder', 'pipe-pass')}\r\nNOOP\r\n")
        self.assertEqual([r.code for r in c.replies(3)], [334, 235, 250])

    def test_client_leaves_while_authenticate_waits(self):
        # Inside TLS too: there libevent reports a reset as an end of input (a dirty shutdown),
        # and the server must still tell it from a half-close.
        srv = self.auth_server(extra=["--no-requiretls"])
        for tls in (False, True):
            with self.subTest(tls=tls):
                c = self.tls_client(srv) if tls else self.connect(srv)
                if not tls:
                    c.cmd("EHLO client.example")
                c.send(f"AUTH PLAIN {plain('sleeper', 'x')}\r\n")
                wait_until(lambda: any(comm == "sleep" for _, _, comm in children_of(srv.pid)),
                           bound(10), what="authenticate's child running")
                c.reset()
                # The wait is cancelled: its child is killed and reaped, never left to its 30 s.
                wait_until(lambda: not children_of(srv.pid), bound(10),
                           what=f"luasmtpd[{srv.pid}] without children: {children_of(srv.pid)}")
        c2 = self.tls_client(srv)
        self.assertEqual(c2.cmd("AUTH PLAIN " + plain("alice", PASSWORD)).code, 235)

    def test_password_is_in_no_log_line_under_debug(self):
        srv = self.auth_server(extra=["-d"])
        c = self.tls_client(srv)
        self.assertEqual(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)).code, 235)
        c2 = self.tls_client(srv)
        self.assertEqual(c2.cmd("AUTH LOGIN").code, 334)
        self.assertEqual(c2.cmd(b64("alice")).code, 334)
        self.assertEqual(c2.cmd(b64(PASSWORD)).code, 235)
        c3 = self.tls_client(srv)
        self.assertEqual(c3.cmd("AUTH LOGIN " + b64("alice")).code, 334)
        self.assertEqual(c3.cmd(b64("wrong " + PASSWORD)).code, 535)
        for client in (c, c2, c3):
            client.cmd("QUIT")
        for _ in range(3):
            srv.wait_log(r"session \d+: closed")
        srv.wait_log(r"AUTH LOGIN as alice refused")
        text = srv.log.text()
        for secret in (PASSWORD, b64(PASSWORD), plain("alice", PASSWORD),
                       b64("wrong " + PASSWORD), "s3cret"):
            self.assertNotIn(secret, text)
        self.assertIn("(AUTH response, ", text)  # the continuation lines were seen
        self.assertIn("< AUTH PLAIN (initial response not shown)", text)


class TestStartTlsForgets(AuthCase):
    def test_plaintext_auth_is_forgotten_after_starttls(self):
        # RFC 3207 4.2: nothing learnt before the handshake survives it.
        srv = self.auth_server(extra=["--no-requiretls"])
        c = self.connect(srv)
        c.cmd("EHLO client.example")
        self.assertEqual(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)).code, 235)
        self.starttls_raw(c)
        c.cmd("EHLO client.example")
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").lines[-1], "250 2.1.0 auth=nil")


class TestHelp(AuthCase):
    """HELP lists BDAT (after EHLO), STARTTLS and AUTH where this connection offers them, after
    Python's nine."""

    PYTHON = "Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY"

    def test_help_follows_what_is_offered(self):
        srv = self.auth_server()
        c = self.connect(srv)
        self.assertReply(c.cmd("HELP"), 250, f"250 2.0.0 {self.PYTHON} STARTTLS")
        self.assertReply(c.cmd("HELP STARTTLS"), 250, "250 2.0.0 Syntax: STARTTLS")
        # AUTH is not offered before TLS, so HELP does not know it either.
        self.assertReply(c.cmd("HELP AUTH"), 501, f"501 5.5.4 {self.PYTHON} STARTTLS")
        c.close()
        c = self.tls_client(srv)
        self.assertReply(c.cmd("HELP"), 250, f"250 2.0.0 {self.PYTHON} BDAT AUTH")
        self.assertReply(c.cmd("HELP auth"), 250,
                         "250 2.0.0 Syntax: AUTH mechanism [initial-response]")
        self.assertReply(c.cmd("HELP STARTTLS"), 501, f"501 5.5.4 {self.PYTHON} BDAT AUTH")
        self.assertReply(c.cmd("HELP MAIL"), 250,
                         "250 2.0.0 Syntax: MAIL FROM: <address> [SP <mail-parameters>]")
        # Both in plaintext with --no-requiretls; neither without TLS files and authenticate.
        srv2 = self.auth_server(extra=["--no-requiretls"])
        self.assertReply(self.connect(srv2).cmd("HELP"), 250,
                         f"250 2.0.0 {self.PYTHON} STARTTLS AUTH")
        srv3 = self.start_server("sink")
        self.assertReply(self.connect(srv3).cmd("HELP"), 250, f"250 2.0.0 {self.PYTHON}")


if __name__ == "__main__":
    unittest.main()
