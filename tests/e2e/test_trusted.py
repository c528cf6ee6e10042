"""--trusted-networks (issue 15): clients from these networks (loopback by default) are exempt
from --max-per-client and --max-messages, as Postfix exempts $mynetworks; session.trusted and
smtpd.networks show scripts the same matching; pureproxy's relay_clients defaults to it. Every
client here is on 127.0.0.0/8: the client socket is bound to 127.0.0.2 to be an untrusted one
(--trusted-networks 127.0.0.1/32). Also Postfix's smtp-source sending more messages down one
connection than --max-messages allows, from loopback."""

import os
import re
import subprocess
import unittest

from harness import (SMTPClient, ServerTestCase, binary, bound, free_port, wait_records,
                     wait_until)

EHLO = "EHLO client.example"
BODY = b"Subject: trusted\r\n\r\nbody\r\n"
ONLY_ONE = ["--trusted-networks", "127.0.0.1/32"]
TOO_MANY_CONNECTIONS = ("421 4.7.0 test.example Error: too many connections from your "
                        "address, try again later")
TOO_MANY_MESSAGES = ("421 4.7.0 test.example Error: too many messages in this connection, "
                     "closing")
SMTP_SOURCE = "/usr/sbin/smtp-source"


def send_message(c, mailfrom="a@b.example"):
    codes = [c.cmd(f"MAIL FROM:<{mailfrom}>").code]
    if codes[0] != 250:
        return codes
    codes.append(c.cmd("RCPT TO:<c@d.example>").code)
    codes.append(c.cmd("DATA").code)
    c.send(BODY + b".\r\n")
    codes.append(c.reply().code)
    return codes


class TestLimitsSpareTrusted(ServerTestCase):
    def clients(self, srv, source, n):
        out = []
        for _ in range(n):
            c = SMTPClient(srv.port, source=source)
            self.addCleanup(c.close)
            out.append(c)
        return out

    def test_max_per_client(self):
        """--max-per-client 2 with only 127.0.0.1 trusted: 127.0.0.2's third connection gets
        421, while 127.0.0.1 holds six at once."""
        srv = self.start_server("sink", args=["--max-per-client", "2", *ONLY_ONE])
        untrusted = self.clients(srv, "127.0.0.2", 3)
        self.assertEqual([c.greeting.code for c in untrusted[:2]], [220, 220])
        self.assertEqual(untrusted[2].greeting.lines, [TOO_MANY_CONNECTIONS])
        self.assertTrue(untrusted[2].wait_closed(5))
        trusted = self.clients(srv, "127.0.0.1", 6)
        self.assertEqual([c.greeting.code for c in trusted], [220] * 6)
        for c in trusted + untrusted[:2]:
            self.assertEqual(c.cmd("NOOP").code, 250)

    def test_default_is_loopback(self):
        """By default 127.0.0.0/8 is trusted: 127.0.0.2 too may open more than
        --max-per-client; with --trusted-networks "" nobody may."""
        srv = self.start_server("sink", args=["--max-per-client", "1"])
        self.assertEqual([c.greeting.code for c in self.clients(srv, "127.0.0.2", 3)],
                         [220] * 3)
        # No probe: the harness's own connection would count until the server let it go.
        none = self.start_server("sink", args=["--max-per-client", "1", "--trusted-networks", ""],
                                 probe=False)
        codes = [c.greeting.code for c in self.clients(none, "127.0.0.1", 2)]
        self.assertEqual(codes, [220, 421])

    def test_max_messages(self):
        """--max-messages 2 with only 127.0.0.1 trusted: 127.0.0.2's third MAIL gets 421 and
        the close; 127.0.0.1 sends five down one connection."""
        srv, d = self.start_recording(args=["--max-messages", "2", *ONLY_ONE])
        c = SMTPClient(srv.port, source="127.0.0.2")
        self.addCleanup(c.close)
        c.cmd(EHLO)
        for _ in range(2):
            self.assertEqual(send_message(c, "untrusted@b.example"), [250, 250, 354, 250])
        self.assertEqual(c.cmd("MAIL FROM:<untrusted@b.example>").lines, [TOO_MANY_MESSAGES])
        self.assertTrue(c.wait_closed(5))
        t = SMTPClient(srv.port, source="127.0.0.1")
        self.addCleanup(t.close)
        t.cmd(EHLO)
        for _ in range(5):
            self.assertEqual(send_message(t, "trusted@b.example"), [250, 250, 354, 250])
        self.assertEqual(sorted(r.mailfrom for r in wait_records(d, 7)),
                         ["trusted@b.example"] * 5 + ["untrusted@b.example"] * 2)

    @unittest.skipUnless(os.access(SMTP_SOURCE, os.X_OK), "no Postfix smtp-source")
    def test_smtp_source_from_loopback(self):
        """Postfix's smtp-source, 120 messages over 3 connections at once (-d: each keeps its
        connection), against --max-messages 10: from loopback (trusted by default) all are taken;
        with nothing trusted the same run dies on the 421, so the test can tell."""
        def run(srv):
            cmd = [SMTP_SOURCE, "-d", "-s", "3", "-m", "120", "-l", "200", "-M", "client.example",
                   "-f", "a@b.example", "-t", "c@d.example", f"127.0.0.1:{srv.port}"]
            return subprocess.run(cmd, capture_output=True, timeout=bound(60))

        srv = self.start_server("sink", args=["--max-messages", "10"])
        p = run(srv)
        self.assertEqual(p.returncode, 0, p)
        # Every message was answered 250 (smtp-source stops at anything else), and each one
        # accepted has its log line.
        wait_until(lambda: len([l for l in srv.log.snapshot()
                                if re.search(r"session \d+: message \d+ from", l)]) == 120,
                   bound(10), what="120 messages logged")
        self.assertTrue(srv.log.snapshot() and
                        any(re.search(r"session \d+: message (1[1-9]|[2-9]\d) from", l)
                            for l in srv.log.snapshot()), "no session went past 10 messages")
        limited = self.start_server("sink", args=["--max-messages", "10", "--trusted-networks", ""])
        p = run(limited)
        self.assertNotEqual(p.returncode, 0, p)
        self.assertIn(b"too many messages", p.stderr + p.stdout)


class TestOption(ServerTestCase):
    def test_bad_lists_are_usage_errors(self):
        for value, why in [("127.0.0.1/8", "bits set past the /8 prefix"),
                           ("::1/129", "the prefix length must be 0 to 128"),
                           ("10.0.0.0/8,localhost", "'localhost': not an IPv4 or IPv6")]:
            with self.subTest(value=value):
                p = subprocess.run([binary(), "-n", "--trusted-networks", value, "127.0.0.1:0"],
                                   capture_output=True, timeout=bound(10))
                self.assertEqual(p.returncode, 2, p)
                self.assertIn(f"--trusted-networks: bad network", p.stderr.decode())
                self.assertIn(why, p.stderr.decode())


class TestBindings(ServerTestCase):
    def mail(self, srv, case, source="127.0.0.1"):
        c = SMTPClient(srv.port, source=source)
        self.addCleanup(c.close)
        c.cmd(EHLO)
        r = c.cmd(f"MAIL FROM:<{case}@b.example>")
        self.assertEqual(r.code, 250, r)
        return r.lines[-1][len("250 2.1.0 "):]

    def test_session_trusted(self):
        srv = self.start_server("networks", args=ONLY_ONE)
        self.assertEqual(self.mail(srv, "trusted"), "trusted=true")
        self.assertEqual(self.mail(srv, "trusted", source="127.0.0.2"), "trusted=false")

    def test_contains(self):
        probe = ("127.0.0.1,127.0.0.2,::1,::ffff:127.0.0.1,::ffff:10.1.2.3,10.1.2.3,"
                 "2001:db8::1,2001:db9::1,junk")
        srv = self.start_server("networks", sets={"list": "10.0.0.0/8, ::1 2001:db8::/32",
                                                  "probe": probe})
        self.assertEqual(self.mail(srv, "match").split(), [
            "smtpd.networks", "(3", "entries)",
            "127.0.0.1=false", "127.0.0.2=false", "::1=true", "::ffff:127.0.0.1=false",
            "::ffff:10.1.2.3=true", "10.1.2.3=true", "2001:db8::1=true", "2001:db9::1=false",
            "junk=false"])

    def test_misuse_raises_naming_the_argument(self):
        srv = self.start_server("networks")
        for case, want in [
                ("none", "bad argument #1 to 'networks' (string expected, got no value)"),
                ("table", "bad argument #1 to 'networks' (string expected, got table)"),
                ("bad", "bad argument #1 to 'networks' (bad network '127.0.0.1/8': bits set "
                        "past the /8 prefix)"),
                ("name", "bad argument #1 to 'networks' (bad network 'localhost': not an IPv4 "
                         "or IPv6 address)"),
                ("noaddr", "bad argument #1 to 'contains' (string expected, got no value)"),
                ("notself", "bad argument #1 to 'contains' (smtpd.networks expected, got "
                            "table)")]:
            with self.subTest(case=case):
                got = self.mail(srv, case)
                self.assertTrue(got.startswith("ok=false "), got)
                self.assertIn(want, got)


class TestPureproxyRelayClients(ServerTestCase):
    """relay_clients defaults to --trusted-networks; given, it is read by the same parser."""

    def proxy(self, sets=None, args=()):
        up, d = self.start_recording()
        return self.start_server("pureproxy", sets=sets, args=args,
                                 remote=f"127.0.0.1:{up.port}"), d

    def mail_code(self, srv, source):
        c = SMTPClient(srv.port, source=source)
        self.addCleanup(c.close)
        c.cmd(EHLO)
        return c.cmd("MAIL FROM:<a@b.example>").code

    def test_default_follows_trusted_networks(self):
        srv, _ = self.proxy(args=["--trusted-networks", "127.0.0.2/32"])
        self.assertEqual(self.mail_code(srv, "127.0.0.1"), 554)
        self.assertEqual(self.mail_code(srv, "127.0.0.2"), 250)

    def test_ipv6_and_mapped_lists(self):
        srv, _ = self.proxy(sets={"relay_clients": "2001:db8::/32, ::ffff:127.0.0.2"})
        self.assertEqual(self.mail_code(srv, "127.0.0.1"), 554)
        self.assertEqual(self.mail_code(srv, "127.0.0.2"), 250)

    def test_bad_relay_clients_stop_the_start(self):
        port = free_port()
        p = subprocess.run([binary(), "-n", "-c", "pureproxy", "--set",
                            "relay_clients=127.0.0.0/8,bogus", f"127.0.0.1:{port}"],
                           capture_output=True, timeout=bound(10))
        self.assertNotEqual(p.returncode, 0, p)
        self.assertRegex(p.stderr.decode(), r"relay_clients: bad argument #1 to "
                         r"'(smtpd\.)?networks' \(bad network 'bogus': not an IPv4 or IPv6")


if __name__ == "__main__":
    unittest.main()
