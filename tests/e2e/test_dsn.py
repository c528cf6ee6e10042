"""DSN (RFC 3461): RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT.

A raw client checks the exact reply to each good and bad parameter; smtplib sends them as a
mail client does, and a fixture handler (handlers/dsn_echo.lua) answers with what it got, so
the test sees options.dsn and options.rcpt_dsn decoded; pureproxy and mailman pass them on to
an upstream that offers DSN (smtp-sink, a recording upstream) and drop them for one that does
not (smtp-sink -N), which still gets the message. Python's smtpd knew no DSN: it answered 555
to every RCPT parameter."""

import shutil
import smtplib
import tempfile
import unittest

from fake_mailman import FakeMailman2
from harness import ServerTestCase, stuff, wait_until, without_received
from hostile_upstream import DEFAULT_EXTENSIONS, HostileUpstream
from upstreams import SmtpSink, parse_sink_dump, sink_body

EHLO = "EHLO client.example"
MAIL = "MAIL FROM:<a@b.example>"
RCPT = "RCPT TO:<c@d.example>"
MESSAGE = b"Subject: dsn\r\n\r\nbody\r\n"
WARN = r" warn: "

BAD_RET = "501 5.5.4 Error: RET can only be one of FULL, HDRS"
BAD_ENVID = "501 5.5.4 Error: ENVID must be xtext of at most 100 characters"
BAD_NOTIFY = "501 5.5.4 Error: NOTIFY can only be NEVER, or a list of SUCCESS, FAILURE, DELAY"
BAD_ORCPT = "501 5.5.4 Error: ORCPT must be addr-type;xtext of at most 500 characters"
MAIL_555 = "555 5.5.4 MAIL FROM parameters not recognized or not implemented"
RCPT_555 = "555 5.5.4 RCPT TO parameters not recognized or not implemented"

MAIL_CASES = [
    ("RET=BOTH", BAD_RET),
    ("RET", BAD_RET),
    ("RET=FULL RET=HDRS", "501 5.5.4 Error: RET given more than once"),
    ("ENVID", BAD_ENVID),
    ("ENVID=a+2b", BAD_ENVID),         # xtext's hex is upper case
    ("ENVID=a+2", BAD_ENVID),
    ("ENVID=a+00", BAD_ENVID),         # decodes to a control byte
    ("ENVID=a+C3+A9", BAD_ENVID),      # decodes to 8-bit bytes
    ("ENVID=" + "x" * 101, BAD_ENVID),
    ("ENVID=a ENVID=a", "501 5.5.4 Error: ENVID given more than once"),
    ("NOTIFY=NEVER", MAIL_555),        # RCPT's parameter, not MAIL's
    ("ORCPT=rfc822;a@b.example", MAIL_555),
    ("RET=FULL X-FOO=1", MAIL_555),
]

RCPT_CASES = [
    ("NOTIFY=NEVER,SUCCESS", BAD_NOTIFY),
    ("NOTIFY=FAILURE,NEVER", BAD_NOTIFY),
    ("NOTIFY=SOMETIMES", BAD_NOTIFY),
    ("NOTIFY=SUCCESS,", BAD_NOTIFY),
    ("NOTIFY=SUCCESS,,DELAY", BAD_NOTIFY),
    ("NOTIFY", BAD_NOTIFY),
    ("NOTIFY=NEVER NOTIFY=NEVER", "501 5.5.4 Error: NOTIFY given more than once"),
    ("ORCPT", BAD_ORCPT),
    ("ORCPT=rfc822", BAD_ORCPT),
    ("ORCPT=rfc822;", BAD_ORCPT),
    ("ORCPT=;c@d.example", BAD_ORCPT),
    ("ORCPT=rfc822;c+2x@d.example", BAD_ORCPT),
    ("ORCPT=rfc822;" + "x" * 494, BAD_ORCPT),  # 501 characters
    ("ORCPT=rfc822;a ORCPT=rfc822;b", "501 5.5.4 Error: ORCPT given more than once"),
    ("RET=FULL", RCPT_555),            # MAIL's parameter, not RCPT's
    ("ENVID=x", RCPT_555),
    ("NOTIFY=NEVER X-FOO=1", RCPT_555),
]


def pad_param(prefix, length):
    """A command line of exactly `length` bytes: `prefix` and an unknown parameter."""
    line = prefix + " X-PAD="
    return line + "x" * (length - len(line))


class TestParameters(ServerTestCase):
    """The replies, exactly, from a raw client."""

    def setUp(self):
        self.srv = self.start_server("sink")
        self.c = self.connect(self.srv)
        self.assertEqual(self.c.cmd(EHLO).code, 250)

    def test_ehlo_offers_dsn(self):
        lines = self.connect(self.srv).cmd(EHLO).lines
        self.assertIn("250-DSN", lines)

    def test_good_parameters(self):
        c = self.c
        self.assertEqual(c.cmd(MAIL + " RET=FULL ENVID=QQ+2Bx+3D").lines, ["250 2.1.0 OK"])
        self.assertEqual(c.cmd(RCPT + " NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;c@d.example")
                         .lines, ["250 2.1.5 OK"])
        self.assertEqual(c.cmd("RCPT TO:<e@f.example> notify=never").lines, ["250 2.1.5 OK"])
        self.assertEqual(c.cmd("RCPT TO:<g@h.example> ORCPT=x-local;+22q+20r+22").lines,
                         ["250 2.1.5 OK"])
        self.assertEqual(c.cmd("RCPT TO:<i@j.example> NOTIFY=DELAY").lines, ["250 2.1.5 OK"])
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(stuff(MESSAGE) + b".\r\n")
        self.assertEqual(c.reply().lines, ["250 2.0.0 OK"])
        self.assertEqual(c.cmd("MAIL FROM:<> ret=hdrs envid=" + "x" * 100).lines,
                         ["250 2.1.0 OK"])

    def fresh(self):
        """A connection of its own for each case: every refusal counts toward --max-errors."""
        c = self.connect(self.srv)
        self.assertEqual(c.cmd(EHLO).code, 250)
        return c

    def test_bad_mail_parameters(self):
        """Each refused MAIL opens no transaction: a plain MAIL after it is taken."""
        for params, reply in MAIL_CASES:
            with self.subTest(params=params):
                c = self.fresh()
                self.assertEqual(c.cmd(f"{MAIL} {params}").lines, [reply])
                self.assertEqual(c.cmd(RCPT).lines, ["503 5.5.1 Error: need MAIL command"])
                self.assertEqual(c.cmd(MAIL).lines, ["250 2.1.0 OK"])
                c.close()

    def test_bad_rcpt_parameters(self):
        """Each refused RCPT leaves the transaction as it was."""
        for params, reply in RCPT_CASES:
            with self.subTest(params=params):
                c = self.fresh()
                self.assertEqual(c.cmd(MAIL).code, 250)
                self.assertEqual(c.cmd(f"{RCPT} {params}").lines, [reply])
                self.assertEqual(c.cmd("DATA").lines, ["503 5.5.1 Error: need RCPT command"])
                self.assertEqual(c.cmd(RCPT + " NOTIFY=NEVER").lines, ["250 2.1.5 OK"])
                c.close()

    def test_not_after_helo(self):
        """Parameters need EHLO (as every ESMTP parameter does here)."""
        c = self.connect(self.start_server("sink"))
        c.cmd("HELO client.example")
        self.assertEqual(c.cmd(MAIL + " RET=FULL").lines,
                         ["501 5.5.4 Syntax: MAIL FROM: <address>"])
        self.assertEqual(c.cmd(MAIL).code, 250)
        self.assertEqual(c.cmd(RCPT + " NOTIFY=NEVER").lines,
                         ["501 5.5.4 Syntax: RCPT TO: <address>"])

    def test_line_limits(self):
        """RFC 3461 5: MAIL may be 100 characters longer (512 + 26 for SIZE + 10 for SMTPUTF8,
        offered by default, + 100), RCPT 500 (512 + 500); after HELO both stay at 512."""
        c = self.c
        self.assertEqual(c.cmd(pad_param(MAIL, 648)).lines, [MAIL_555])
        self.assertEqual(c.cmd(pad_param(MAIL, 649)).lines, ["500 5.5.2 Error: line too long"])
        self.assertEqual(c.cmd(MAIL).code, 250)
        self.assertEqual(c.cmd(pad_param(RCPT, 1012)).lines, [RCPT_555])
        self.assertEqual(c.cmd(pad_param(RCPT, 1013)).lines, ["500 5.5.2 Error: line too long"])
        longest = RCPT + " NOTIFY=SUCCESS ORCPT=rfc822;" + "x" * 493  # ORCPT of 500
        self.assertEqual(c.cmd(longest).lines, ["250 2.1.5 OK"])
        h = self.connect(self.srv)
        h.cmd("HELO client.example")
        self.assertEqual(h.cmd(MAIL).code, 250)
        self.assertEqual(h.cmd(pad_param(RCPT, 513)).lines, ["500 5.5.2 Error: line too long"])


class TestHandlerSees(ServerTestCase):
    """smtplib sends DSN parameters; process_message gets them decoded (options.dsn,
    options.rcpt_dsn), and as sent in mail_options, rcpt_options and the hooks' params."""

    def test_decoded_values(self):
        srv = self.start_server("dsn_echo")
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=15) as s:
            s.ehlo("client.example")
            self.assertTrue(s.has_extn("dsn"))
            self.assertEqual(s.mail("a@b.example", ["RET=HDRS", "ENVID=abc+2B"])[0], 250)
            self.assertEqual(s.rcpt("b@example.net", ["NOTIFY=SUCCESS,FAILURE",
                                                      "ORCPT=rfc822;B+2Bx@Example.NET"])[0], 250)
            self.assertEqual(s.rcpt("c@example.net")[0], 250)
            self.assertEqual(s.rcpt("d@example.net", ["NOTIFY=NEVER"])[0], 250)
            code, text = s.data(MESSAGE)
        self.assertEqual(code, 250)
        self.assertEqual(text.decode().split(" | "), [
            "2.0.0 ret=HDRS envid=abc+",
            "b@example.net notify=SUCCESS,FAILURE orcpt=rfc822;B+x@Example.NET",
            "c@example.net notify=- orcpt=-",
            "d@example.net notify=NEVER orcpt=-",
            # As sent, upper-cased as Python's smtpd does, but for ENVID's and ORCPT's xtext.
            "mail_options=RET=HDRS,ENVID=abc+2B",
            "rcpt_options=NOTIFY=SUCCESS,FAILURE,ORCPT=rfc822;B+2Bx@Example.NET,NOTIFY=NEVER",
            "on_mail=RET=HDRS,ENVID=abc+2B on_rcpt=NOTIFY=SUCCESS,FAILURE,ORCPT=rfc822;"
            "B+2Bx@Example.NET on_rcpt= on_rcpt=NOTIFY=NEVER",
        ])

    def test_none_given(self):
        srv = self.start_server("dsn_echo")
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=15) as s:
            s.ehlo("client.example")
            s.mail("a@b.example")
            s.rcpt("b@example.net")
            code, text = s.data(MESSAGE)
        self.assertEqual(code, 250)
        self.assertEqual(text.decode().split(" | ")[:2],
                         ["2.0.0 ret=- envid=-", "b@example.net notify=- orcpt=-"])


MAIL_OPTIONS = ["RET=HDRS", "ENVID=abc+2B"]
RCPT_OPTIONS = ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;b@example.net"]


class TestRelay(ServerTestCase):
    """pureproxy (and mailman's relay of mail that is not list mail) pass DSN's parameters on
    when the upstream offers DSN, as the client sent them, and drop them when it does not."""

    def start_sink(self, args=()):
        sink = SmtpSink(args=args)
        self.addCleanup(sink.close)
        return sink

    def start_proxy(self, port, handler="pureproxy", **kw):
        return self.start_server(handler, remote=f"127.0.0.1:{port}", expect_errors=[WARN],
                                 **kw)

    def send(self, port, rcpts=("b@example.net", "c@example.net")):
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as s:
            s.ehlo("client.example")
            return s.sendmail("a@b.example", list(rcpts), MESSAGE, mail_options=MAIL_OPTIONS,
                              rcpt_options=RCPT_OPTIONS)

    def sink_fields(self, sink):
        dumps = wait_until(lambda: sink.dumps() or None, 10, what="smtp-sink's dump")
        self.assertEqual(len(dumps), 1)
        fields, body = parse_sink_dump(dumps[0])
        self.assertIn(b"\nbody\n", body)
        return fields

    def test_smtp_sink_with_dsn(self):
        sink = self.start_sink()
        proxy = self.start_proxy(sink.port)
        self.assertEqual(self.send(proxy.port), {})
        fields = self.sink_fields(sink)
        self.assertEqual(fields["X-Mail-Args"], ["<a@b.example> RET=HDRS ENVID=abc+2B"])
        self.assertEqual(fields["X-Rcpt-Args"], [
            "<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.net",
            "<c@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.net"])

    def test_smtp_sink_without_dsn(self):
        """smtp-sink -N offers no DSN: the parameters stay here, the message goes, and the
        success notice nobody will send is logged."""
        sink = self.start_sink(args=["-N"])
        proxy = self.start_proxy(sink.port)
        self.assertEqual(self.send(proxy.port), {})
        fields = self.sink_fields(sink)
        self.assertEqual(fields["X-Mail-Args"], ["<a@b.example>"])
        self.assertEqual(fields["X-Rcpt-Args"], ["<b@example.net>", "<c@example.net>"])
        proxy.wait_log(r"info: script: upstream offers no DSN: no success notice for <b@example\.net>")

    def test_exact_lines_upstream(self):
        """What goes on the wire, byte for byte, to a recording upstream offering DSN."""
        up = HostileUpstream(extensions=DEFAULT_EXTENSIONS + ("DSN",))
        self.addCleanup(up.close)
        proxy = self.start_proxy(up.port)
        self.assertEqual(self.send(proxy.port, rcpts=["b@example.net"]), {})
        up.wait_transactions(1)
        self.assertEqual(up.command_lines("MAIL"),
                         [b"MAIL FROM:<a@b.example> SIZE=22 RET=HDRS ENVID=abc+2B"])
        self.assertEqual(up.command_lines("RCPT"),
                         [b"RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE "
                          b"ORCPT=rfc822;b@example.net"])

    def test_mailman_relays_dsn(self):
        """mailman relays mail that is not list mail as pureproxy does, DSN included."""
        mailman = FakeMailman2(("test",))
        self.addCleanup(mailman.close)
        sink = self.start_sink()
        srv = self.start_proxy(sink.port, handler="mailman",
                               sets={"mailman_wrapper": mailman.wrapper,
                                     "mailman_lists": mailman.lists_dir,
                                     "relay_timeout": "10"})
        self.assertEqual(self.send(srv.port, rcpts=["b@example.net"]), {})
        fields = self.sink_fields(sink)
        self.assertEqual(fields["X-Mail-Args"], ["<a@b.example> RET=HDRS ENVID=abc+2B"])
        self.assertEqual(fields["X-Rcpt-Args"],
                         ["<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.net"])
        self.assertEqual(mailman.calls(), [])


class TestRelayBinding(ServerTestCase):
    """smtpd.relay{} takes dsn and rcpt_dsn in the shape options has them, and sends them
    xtext-encoded when the upstream offers DSN."""

    def start_up(self, extensions):
        up = HostileUpstream(extensions=extensions)
        self.addCleanup(up.close)
        srv = self.start_server("dsn_relay", remote=f"127.0.0.1:{up.port}",
                                expect_errors=[r"process_message failed"])
        return up, srv

    def send(self, port):
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as s:
            s.ehlo("client.example")
            s.mail("a@b.example", ["RET=FULL", "ENVID=Q+2B+3Dx"])
            s.rcpt("b@example.net", ["NOTIFY=DELAY,FAILURE", "ORCPT=rfc822;B+2B1@example.net"])
            s.rcpt("c@example.net")
            return s.data(MESSAGE)

    def test_passed_on(self):
        up, srv = self.start_up(DEFAULT_EXTENSIONS + ("DSN",))
        self.assertEqual(self.send(srv.port), (250, b"2.0.0 relayed refused=0"))
        self.assertEqual(up.command_lines("MAIL"),
                         [b"MAIL FROM:<a@b.example> SIZE=22 RET=FULL ENVID=Q+2B+3Dx"])
        self.assertEqual(up.command_lines("RCPT"), [
            b"RCPT TO:<b@example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;B+2B1@example.net",
            b"RCPT TO:<c@example.net>"])

    def test_dropped_without_dsn(self):
        up, srv = self.start_up(DEFAULT_EXTENSIONS)
        self.assertEqual(self.send(srv.port), (250, b"2.0.0 relayed refused=0"))
        self.assertEqual(up.command_lines("MAIL"), [b"MAIL FROM:<a@b.example> SIZE=22"])
        self.assertEqual(up.command_lines("RCPT"),
                         [b"RCPT TO:<b@example.net>", b"RCPT TO:<c@example.net>"])

    CASES = {
        "bad-ret": r"field 'dsn' ret must be FULL or HDRS",
        "bad-envid": r"field 'dsn' envid must be printable ASCII",
        "envid-not-string": r"field 'dsn' envid must be a string without NUL, not number",
        "dsn-not-table": r"field 'dsn' must be a table, not string",
        "bad-notify": r"field 'rcpt_dsn' \[1\] notify must be NEVER, or a list",
        "notify-not-list": r"field 'rcpt_dsn' \[1\] notify must be a list, not string",
        "notify-number": r"field 'rcpt_dsn' \[1\] notify\[1\] must be a string, not number",
        "bad-orcpt": r"field 'rcpt_dsn' \[1\] orcpt must be addr-type;address",
        "long-orcpt": r"field 'rcpt_dsn' \[1\] orcpt must be addr-type;address, at most 500",
        "too-many": r"field 'rcpt_dsn' has more entries than 'to' has recipients",
    }

    def test_misuse_raises(self):
        up, srv = self.start_up(DEFAULT_EXTENSIONS + ("DSN",))
        c = self.connect(srv)
        c.cmd(EHLO)
        for case, pattern in self.CASES.items():
            with self.subTest(case=case):
                self.assertEqual(c.cmd(f"MAIL FROM:<{case}@b.example>").code, 250)
                self.assertEqual(c.cmd(RCPT).code, 250)
                self.assertEqual(c.cmd("DATA").code, 354)
                c.send(stuff(MESSAGE) + b".\r\n")
                self.assertRegex(c.reply().lines[-1], r"^451 4\.3\.0 ")
                srv.wait_log("smtpd.relay: " + pattern)
        self.assertEqual(up.command_lines("MAIL"), [])  # nothing went


if __name__ == "__main__":
    unittest.main()
