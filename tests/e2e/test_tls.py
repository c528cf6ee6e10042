"""TLS on the server side: STARTTLS (RFC 3207) and implicit TLS (RFC 8314) with real clients
(smtplib, swaks, curl, openssl s_client), the plaintext-injection rule (CVE-2011-0411), failed
and unfinished handshakes, --require-starttls, session.tls for scripts, and certificates
reloaded on SIGHUP while a TLS connection stays open. Certificates are made here with
`openssl req`."""

import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

from harness import (REPLY_TIMEOUT, ServerTestCase, SMTPClient, binary, bound, wait_records,
                     wait_until)

SMTPS_LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+) for implicit TLS")
RELOADED = re.compile(r"STARTTLS certificate reloaded")
NOT_RELOADED = r"STARTTLS certificate not reloaded, the old one stays"


def make_cert(directory, name, cn):
    """A self-signed certificate for `cn` (and localhost, 127.0.0.1) with its key:
    (cert path, key path)."""
    cert = os.path.join(directory, name + ".crt")
    key = os.path.join(directory, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={cn}", "-addext",
                    f"subjectAltName=DNS:{cn},DNS:localhost,IP:127.0.0.1",
                    "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def der_subject(der):
    """The subject of a DER certificate, as `openssl x509 -subject` prints it."""
    p = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject",
                        "-nameopt", "RFC2253"], input=der, capture_output=True, check=True,
                       timeout=30)
    return p.stdout.decode().strip()


def client_context(cafile=None):
    """Verifies against `cafile`, or checks nothing (for the raw tests)."""
    if cafile:
        return ssl.create_default_context(cafile=cafile)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class TlsCase(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="luasmtpd-tls-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.cert, self.key = make_cert(self.dir, "server", "mx.test")

    def tls_args(self, smtps=False, extra=()):
        args = ["--tlscert", self.cert, "--tlskey", self.key]
        if smtps:
            args += ["--smtpscert", self.cert, "--smtpskey", self.key,
                     "--smtps", "127.0.0.1:0"]
        return args + list(extra)

    def smtps_port(self, srv):
        return int(srv.wait_log(SMTPS_LISTENING).group(1))

    def smtp(self, srv):
        c = smtplib.SMTP(srv.host, srv.port, timeout=REPLY_TIMEOUT)
        self.addCleanup(c.close)
        return c

    def new_tls_subject(self, srv):
        """A new connection's STARTTLS: the client (in TLS) and the server certificate's
        subject."""
        c = self.connect(srv)
        self.assertEqual(c.cmd("EHLO fresh.example").code, 250)
        self.starttls_raw(c)
        return c, der_subject(c.sock.getpeercert(True))

    def starttls_raw(self, c, ctx=None):
        """STARTTLS on a harness client; the socket then speaks TLS (nothing was buffered)."""
        self.assertEqual(c.cmd("STARTTLS").code, 220)
        self.assertEqual(c.buf, b"", "bytes after the 220 in plaintext")
        c.sock = (ctx or client_context()).wrap_socket(c.sock)


class TestClients(TlsCase):
    """Real clients deliver over STARTTLS and over the implicit-TLS listener."""

    def recording(self, smtps=False):
        self.srv, self.rec = self.start_recording(args=self.tls_args(smtps))

    def test_smtplib_starttls_delivers(self):
        self.recording()
        c = self.smtp(self.srv)
        code, before = c.ehlo("client.example")
        self.assertEqual(code, 250)
        self.assertIn(b"STARTTLS", before.split(b"\n"))
        code, _ = c.starttls(context=client_context(self.cert))
        self.assertEqual(code, 220)
        code, after = c.ehlo("client.example")
        self.assertEqual(code, 250)
        self.assertNotIn(b"STARTTLS", after.split(b"\n"), "STARTTLS offered inside TLS")
        self.assertEqual(c.sendmail("a@b.example", ["c@d.example"],
                                    b"Subject: over TLS\r\n\r\nhello\r\n"), {})
        c.quit()
        rec = wait_records(self.rec, 1)[0]
        self.assertEqual(rec.rcpttos, ["c@d.example"])
        self.assertIn(b"hello\r\n", rec.data)
        self.srv.wait_log(r"session \d+: TLS TLSv1\.[23], ")

    def test_smtp_ssl_implicit_listener(self):
        self.recording(smtps=True)
        port = self.smtps_port(self.srv)
        c = smtplib.SMTP_SSL("127.0.0.1", port, timeout=REPLY_TIMEOUT,
                             context=client_context(self.cert))
        self.addCleanup(c.close)
        code, caps = c.ehlo("client.example")
        self.assertEqual(code, 250)
        self.assertNotIn(b"STARTTLS", caps.split(b"\n"))
        self.assertIn(c.sock.version(), ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(c.sendmail("a@b.example", ["c@d.example"], b"Subject: s\r\n\r\nx\r\n"),
                         {})
        c.quit()
        self.assertEqual(len(wait_records(self.rec, 1)), 1)
        # The plaintext listener still speaks plaintext first.
        self.assertEqual(self.connect(self.srv).greeting.code, 220)

    def test_smtpscert_alone_makes_the_main_listener_implicit(self):
        # aiosmtpd's meaning of --smtpscert: its one listener speaks TLS from the first byte
        # (the harness's plaintext probe cannot greet it).
        srv, rec = self.start_recording(args=["--smtpscert", self.cert, "--smtpskey", self.key],
                                        probe=False)
        srv.wait_log(SMTPS_LISTENING)
        c = smtplib.SMTP_SSL("127.0.0.1", srv.port, timeout=REPLY_TIMEOUT,
                             context=client_context(self.cert))
        self.addCleanup(c.close)
        self.assertEqual(c.sendmail("a@b.example", ["c@d.example"], b"Subject: s\r\n\r\nx\r\n"),
                         {})
        c.quit()
        self.assertEqual(len(wait_records(rec, 1)), 1)

    def run_tool(self, argv, stdin=None):
        p = subprocess.run(argv, capture_output=True, timeout=bound(60), input=stdin)
        self.assertEqual(p.returncode, 0,
                         f"{argv!r} exited {p.returncode}\nstdout: {p.stdout.decode(errors='replace')}"
                         f"\nstderr: {p.stderr.decode(errors='replace')}")
        return p

    def test_swaks_tls(self):
        self.recording()
        p = self.run_tool(["swaks", "--server", "127.0.0.1", "--port", str(self.srv.port),
                           "--to", "c@d.example", "--from", "a@b.example", "--tls",
                           "--body", "hello from swaks", "--timeout", "30"])
        self.assertIn(b"220 2.0.0 Ready to start TLS", p.stdout)
        self.assertIn(b"250 2.0.0 OK", p.stdout)
        rec = wait_records(self.rec, 1)[0]
        self.assertIn(b"hello from swaks", rec.data)

    def test_curl_ssl_reqd(self):
        self.recording()
        path = os.path.join(self.dir, "msg")
        with open(path, "wb") as f:
            f.write(b"Subject: via curl\r\n\r\nhello from curl\r\n")
        self.run_tool(["curl", "-s", "-S", "--max-time", "30", "--ssl-reqd",
                       "--cacert", self.cert, f"smtp://127.0.0.1:{self.srv.port}",
                       "--mail-from", "a@b.example", "--mail-rcpt", "c@d.example", "-T", path])
        rec = wait_records(self.rec, 1)[0]
        self.assertIn(b"hello from curl", rec.data)

    def test_openssl_s_client_starttls(self):
        self.recording()
        p = self.run_tool(["openssl", "s_client", "-starttls", "smtp", "-crlf", "-quiet",
                           "-ign_eof", "-CAfile", self.cert, "-verify_return_error",
                           "-connect", f"127.0.0.1:{self.srv.port}"],
                          stdin=b"EHLO client.example\nNOOP\nQUIT\n")
        out = p.stdout.decode(errors="replace")
        self.assertRegex(out, r"250 HELP\r?\n")
        self.assertIn("250 2.0.0 OK", out)
        self.assertIn("221 2.0.0 Bye", out)


class TestInjection(TlsCase):
    """CVE-2011-0411: what follows STARTTLS in the same write is never executed."""

    def test_command_after_starttls_is_discarded(self):
        srv = self.start_server("sink", args=self.tls_args())
        c = self.connect(srv)
        self.assertEqual(c.cmd("EHLO client.example").code, 250)
        start = len(srv.log.snapshot())
        c.send(b"STARTTLS\r\nNOOP\r\n")
        self.assertEqual(c.reply().code, 220)
        srv.wait_log(r"session \d+: 6 bytes sent after STARTTLS, before the TLS handshake, "
                     r"discarded", start=start)
        # Outside TLS: a plaintext "250" after the 220 would have broken the handshake here.
        self.assertEqual(c.buf, b"")
        c.sock = client_context().wrap_socket(c.sock)
        # Inside TLS: replies come in order, so a NOOP run inside TLS would answer before the
        # EHLO; a 2 s read first gives one that ran late every chance to show (the server
        # answers a NOOP in well under a millisecond).
        with self.assertRaises(Exception):
            c.reply(timeout=2)
        self.assertEqual(c.buf, b"")
        r = c.cmd("EHLO client.example")
        self.assertEqual(r.code, 250)
        self.assertNotIn("STARTTLS", r.lines)
        self.assertEqual(c.cmd("QUIT").code, 221)


class TestHandshakes(TlsCase):
    """A handshake that fails or never ends costs its connection only, logged once."""

    def test_garbage_instead_of_a_handshake(self):
        srv = self.start_server("sink", args=self.tls_args(smtps=True))
        port = self.smtps_port(srv)
        with socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT) as s:
            s.sendall(b"EHLO garbage.example\r\n" * 4)
            s.settimeout(REPLY_TIMEOUT)
            data = b""
            while True:  # the server closes (a reset: our bytes were unread); an alert may come
                try:
                    chunk = s.recv(4096)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
                self.assertLess(len(data), 65536)
        self.assertNotIn(b"220", data)
        m = srv.wait_log(r"session (\d+): TLS handshake with 127\.0\.0\.1 failed: (.+)")
        self.assertRegex(m.group(2), r"wrong version number|unknown protocol|record")
        # The same after STARTTLS, on the plaintext listener; and the server goes on.
        c = self.connect(srv)
        self.assertEqual(c.cmd("STARTTLS").code, 220)
        c.send(b"\x16\x03\x01\x00\x05hello")
        self.assertTrue(c.wait_closed())
        srv.wait_log(rf"session (?!{m.group(1)}\b)\d+: TLS handshake with 127\.0\.0\.1 failed")
        self.assertEqual(len([l for l in srv.log.snapshot() if "TLS handshake" in l]), 2)
        self.assertEqual(self.connect(srv).cmd("NOOP").code, 250)

    def test_unfinished_handshake_is_cut_by_timeout(self):
        srv = self.start_server("sink", args=self.tls_args(smtps=True, extra=["--timeout", "2"]))
        port = self.smtps_port(srv)
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=bound(30)) as s:
            s.sendall(b"\x16\x03\x01")  # the start of a record, never finished
            srv.wait_log(r"session \d+: TLS handshake timed out after 2 s, closing",
                         timeout=30)
            s.settimeout(bound(30))
            self.assertEqual(s.recv(4096), b"")
        self.assertGreaterEqual(time.monotonic() - t0, 1.5)
        # After STARTTLS too: the client that says nothing more is cut.
        start = len(srv.log.snapshot())
        c = self.connect(srv, timeout=30)
        self.assertEqual(c.cmd("STARTTLS").code, 220)
        self.assertTrue(c.wait_closed(timeout=30))
        self.assertEqual(c.buf, b"", "a plaintext reply after the 220")
        srv.wait_log(r"session \d+: TLS handshake timed out after 2 s, closing", start=start)
        self.assertEqual(len([l for l in srv.log.snapshot() if "handshake" in l]), 2)


    def test_unfinished_handshake_gives_way_to_a_newcomer(self):
        # A full server closes the session that waited longest on its client; one stuck in
        # its handshake is such a session (else a handshake flood would hold every slot for a
        # whole --timeout).
        srv = self.start_server("sink", args=self.tls_args(
            smtps=True, extra=["--max-connections", "1"]), probe=False)
        port = self.smtps_port(srv)
        with socket.create_connection(("127.0.0.1", port), timeout=bound(30)) as stuck:
            stuck.sendall(b"\x16\x03\x01")

            def newcomer_served():
                with SMTPClient(srv.port, timeout=5) as c:
                    return c.greeting.code == 220

            # The stuck one may give way once it has waited 5 s (MAKE_ROOM_MIN_WAIT_SEC).
            wait_until(newcomer_served, bound(30), interval=0.5, what="a newcomer served")
            srv.wait_log(r"session \d+: closed to make room for a new connection: waited \d+ s "
                         r"in the TLS handshake")
            stuck.settimeout(bound(10))
            self.assertEqual(stuck.recv(4096), b"")


    def test_shutdown_does_not_wait_for_unfinished_handshakes(self):
        # A session halfway into TLS owes nothing, as an idle one: SIGTERM closes it at once
        # instead of waiting out --shutdown-timeout (120 s, twice the longest wait below).
        srv = self.start_server("sink", args=self.tls_args(smtps=True, extra=["-d"]),
                                shutdown_timeout=120)
        port = self.smtps_port(srv)
        with socket.create_connection(("127.0.0.1", port), timeout=bound(30)) as s:
            s.sendall(b"\x16\x03\x01")  # an implicit-TLS handshake, never finished
            srv.wait_log(rf"session \d+: connection from 127\.0\.0\.1 port "
                         rf"{s.getsockname()[1]}\b")
            c = self.connect(srv)  # and one after STARTTLS
            self.assertEqual(c.cmd("STARTTLS").code, 220)
            srv.send_signal(signal.SIGTERM)
            self.assertEqual(srv.wait_exit(60), 0)
        closed = r"session (\d+): closed by shutdown in the TLS handshake"
        first = srv.wait_log(closed).group(1)
        srv.wait_log(closed.replace(r"(\d+)", rf"(?!{first}\b)\d+"))


class TestSessionReset(TlsCase):
    """RFC 3207 4.2: after the handshake the client greets again; STARTTLS once only."""

    def test_new_ehlo_required_and_accepted(self):
        srv = self.start_server("sink", args=self.tls_args())
        c = self.connect(srv)
        self.assertEqual(c.cmd("EHLO client.example").code, 250)
        self.starttls_raw(c)
        r = c.cmd("MAIL FROM:<a@b.example>")
        self.assertEqual((r.code, r.lines[-1]), (503, "503 5.5.1 Error: send HELO first"))
        self.assertEqual(c.cmd("EHLO again.example").code, 250)
        self.assertReply(c.cmd("STARTTLS"), 503, "503 5.5.1 Error: TLS already active")
        self.assertEqual(c.transaction("a@b.example", ["c@d.example"], b"x\r\n", helo=None)[-1]
                         .code, 250)

    def test_starttls_refused_inside_a_transaction(self):
        srv = self.start_server("sink", args=self.tls_args())
        c = self.connect(srv)
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<a@b.example>")
        self.assertEqual(c.cmd("STARTTLS").code, 503)
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)

    def test_no_starttls_without_a_certificate(self):
        srv = self.start_server("sink")
        c = self.connect(srv)
        self.assertNotIn("250-STARTTLS", c.cmd("EHLO client.example").lines)
        self.assertEqual(c.cmd("STARTTLS").code, 502)


class TestRequireStarttls(TlsCase):
    def test_refusals_before_and_mail_after(self):
        srv, rec = self.start_recording(args=self.tls_args(extra=["--require-starttls"]))
        c = self.connect(srv)
        must = "530 5.7.0 Must issue a STARTTLS command first"
        self.assertEqual(c.cmd("EHLO client.example").code, 250)
        for line in ("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA", "VRFY x",
                     "HELP"):
            self.assertReply(c.cmd(line), 530, must, line)
        for line in ("NOOP", "RSET"):
            self.assertEqual(c.cmd(line).code, 250, line)
        self.starttls_raw(c)
        self.assertEqual(c.transaction("a@b.example", ["c@d.example"], b"x\r\n")[-1].code, 250)
        self.assertEqual(len(wait_records(rec, 1)), 1)
        self.assertEqual(c.cmd("QUIT").code, 221)


class TestScriptSees(TlsCase):
    def test_session_tls_in_hooks_and_received(self):
        srv = self.start_server("tls_probe", args=self.tls_args(smtps=True))
        c = self.connect(srv)
        c.cmd("EHLO plain.example")
        self.assertReply(c.cmd("MAIL FROM:<a@b.example>"), 250,
                         "250 2.1.0 tls=none helo=plain.example")
        c.cmd("RSET")
        self.starttls_raw(c)
        c.cmd("EHLO secure.example")
        r = c.cmd("MAIL FROM:<a@b.example>")
        self.assertRegex(r.lines[-1], r"^250 2\.1\.0 tls=TLSv1\.[23]/\S+/(128|256) "
                                      r"subject=nil helo=secure\.example$")
        replies = c.transaction("a@b.example", ["c@d.example"], b"x\r\n", helo=None)
        self.assertRegex(replies[-1].lines[-1], r"^250 2\.0\.0 protocol=ESMTPS tls=TLSv1")
        # A client certificate's subject, on the implicit listener.
        ccert, ckey = make_cert(self.dir, "client", "client.test")
        ctx = client_context()
        ctx.load_cert_chain(ccert, ckey)
        c2 = SMTPClient(self.smtps_port(srv), greeting=False)
        self.addCleanup(c2.close)
        c2.sock = ctx.wrap_socket(c2.sock)
        self.assertEqual(c2.reply().code, 220)
        c2.cmd("EHLO client.test")
        self.assertRegex(c2.cmd("MAIL FROM:<a@b.example>").lines[-1],
                         r"subject=/CN=client\.test helo=client\.test$")


class TestReload(TlsCase):
    def sighup(self, srv, outcome):
        start = len(srv.log.snapshot())
        os.kill(srv.pid, signal.SIGHUP)
        srv.wait_log(outcome, start=start)

    def test_swapped_certificate_on_sighup(self):
        srv = self.start_server("sink", args=self.tls_args(),
                                expect_errors=[NOT_RELOADED])
        old, subject = self.new_tls_subject(srv)
        self.assertEqual(subject, "subject=CN=mx.test")
        # New files in place under the same names, then SIGHUP.
        new_cert, new_key = make_cert(self.dir, "new", "new.test")
        os.replace(new_key, self.key)
        os.replace(new_cert, self.cert)
        self.sighup(srv, RELOADED)
        fresh, subject = self.new_tls_subject(srv)
        self.assertEqual(subject, "subject=CN=new.test")
        # The connection that was in TLS before goes on, on its old session.
        self.assertEqual(old.cmd("EHLO old.example").code, 250)
        self.assertEqual(old.transaction("a@b.example", ["c@d.example"], b"x\r\n",
                                         helo=None)[-1].code, 250)
        # A broken pair is logged and the last good one stays.
        with open(self.cert, "w") as f:
            f.write("not a certificate\n")
        self.sighup(srv, NOT_RELOADED)
        _, subject = self.new_tls_subject(srv)
        self.assertEqual(subject, "subject=CN=new.test")
        self.assertEqual(fresh.cmd("NOOP").code, 250)


    def test_restarted_worker_serves_the_reloaded_certificate(self):
        # A worker is forked from the supervisor: one restarted after a SIGHUP must not bring
        # back the certificate read at start (an expired one, after a renewal).
        srv = self.start_server("sink", args=self.tls_args(extra=["--workers", "2"]),
                                expect_errors=[r"worker 1 \(pid \d+\) killed by signal 9"])
        pid = int(srv.wait_log(r"worker 1 started \(pid (\d+)\)").group(1))
        new_cert, new_key = make_cert(self.dir, "new", "new.test")
        os.replace(new_key, self.key)
        os.replace(new_cert, self.cert)
        os.kill(srv.pid, signal.SIGHUP)
        wait_until(lambda: len([l for l in srv.log.snapshot() if RELOADED.search(l)]) >= 2,
                   bound(30), what="both workers reloaded their certificate")
        os.kill(pid, signal.SIGKILL)
        srv.wait_log(r"worker 1 restarted \(pid \d+\)", timeout=30)
        # The kernel spreads new connections over both workers' sockets by their ports: 24 of
        # them all miss the restarted worker once in 2**24 runs.
        subjects = set()
        for _ in range(24):
            c, subject = self.new_tls_subject(srv)
            c.close()
            subjects.add(subject)
        self.assertEqual(subjects, {"subject=CN=new.test"})


class TestStartup(TlsCase):
    def run_server(self, *args):
        return subprocess.run([binary(), "-n", *args, "127.0.0.1:0"], capture_output=True,
                              timeout=bound(30))

    def test_missing_or_broken_files_are_usage_errors(self):
        p = self.run_server("--tlscert", os.path.join(self.dir, "nope.crt"), "--tlskey", self.key)
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"cannot read --tlscert", p.stderr)
        p = self.run_server("--tls-cert", self.cert)
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"--tlscert and --tlskey go together", p.stderr)
        other_cert, other_key = make_cert(self.dir, "other", "other.test")
        p = self.run_server("--tls-cert", self.cert, "--tls-key", other_key)
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"cannot load the STARTTLS certificate: key (", p.stderr)
        self.assertIn(b"mismatch", p.stderr)
        bad = os.path.join(self.dir, "bad.crt")
        with open(bad, "w") as f:
            f.write("junk\n")
        p = self.run_server("--smtpscert", bad, "--smtpskey", self.key)
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"cannot load the SMTPS certificate: certificate (", p.stderr)


if __name__ == "__main__":
    unittest.main()
