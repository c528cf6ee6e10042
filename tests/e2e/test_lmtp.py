"""The LMTP listener (`--lmtp`, RFC 2033): LHLO in place of HELO/EHLO, and after DATA one reply
per recipient accepted, in RCPT order (4.2), from the handler's one reply or its table of replies
by recipient. Driven by a raw socket client (exact replies), Python's smtplib.LMTP, Postfix's
smtp-source -L and our own relay client (smtpd.relay{lmtp=true}); the bundled handlers run
unchanged under it."""

import os
import re
import smtplib
import subprocess
import unittest

from harness import HOSTNAME, REPLY_TIMEOUT, ServerTestCase, binary, bound, version
from test_tls import TlsCase
from upstreams import SmtpSink

SMTP_SOURCE = "/usr/sbin/smtp-source"
LHLO = "LHLO client.example"
BODY = b"Subject: lmtp\r\n\r\nhello\r\n"


class LmtpTestCase(ServerTestCase):
    def start_lmtp(self, handler="lmtp_replies", args=(), **kw):
        return self.start_server(handler, args=["--lmtp", *args], **kw)

    def lines(self, replies):
        return [r.lines for r in replies]

    def transaction(self, c, mailfrom, rcpts, body=BODY):
        """MAIL, RCPT..., DATA and the message on a client that said LHLO; returns the RCPT
        replies and the replies after the final dot, one per RCPT that got 2xx."""
        self.assertReply(c.cmd(f"MAIL FROM:<{mailfrom}>"), 250)
        rcpt_replies = [c.cmd(f"RCPT TO:<{r}>") for r in rcpts]
        accepted = sum(1 for r in rcpt_replies if r.code // 100 == 2)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(body + b".\r\n")
        return rcpt_replies, c.replies(accepted)

    def assertSilent(self, c):
        """No reply beyond those counted: a NOOP's 250 is the very next thing to come (the
        server answers in order, so an extra reply would come first)."""
        self.assertEqual(c.cmd("NOOP").lines, ["250 2.0.0 OK"])


class TestGreeting(LmtpTestCase):
    def test_greeting_says_lmtp(self):
        srv = self.start_lmtp()
        c = self.connect(srv)
        self.assertEqual(c.greeting.lines, [f"220 {HOSTNAME} luasmtpd {version()} LMTP"])

    def test_lhlo_answers_as_ehlo_does(self):
        smtp = self.start_server("lmtp_replies")
        ehlo = self.connect(smtp).cmd("EHLO client.example")
        srv = self.start_lmtp()
        lhlo = self.connect(srv).cmd(LHLO)
        self.assertEqual(lhlo.lines, ehlo.lines)
        self.assertIn("250-PIPELINING", lhlo.lines)  # RFC 2033 5 requires both
        self.assertIn("250-ENHANCEDSTATUSCODES", lhlo.lines)

    def test_helo_and_ehlo_refused(self):
        srv = self.start_lmtp()
        c = self.connect(srv)
        # RFC 2033 4.1: never a 2xx to HELO or EHLO; 500 is recommended.
        self.assertEqual(c.cmd("HELO client.example").lines,
                         ['500 5.5.1 Error: command "HELO" not recognized'])
        self.assertEqual(c.cmd("EHLO client.example").lines,
                         ['500 5.5.1 Error: command "EHLO" not recognized'])
        self.assertReply(c.cmd("MAIL FROM:<a@x.example>"), 503)
        self.assertEqual(c.cmd("LHLO").lines, ["501 5.5.4 Syntax: LHLO hostname"])
        self.assertReply(c.cmd(LHLO), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@x.example>"), 250)

    def test_help_names_lhlo(self):
        srv = self.start_lmtp()
        c = self.connect(srv)
        commands = "Supported commands: LHLO MAIL RCPT DATA RSET NOOP QUIT VRFY"
        self.assertEqual(c.cmd("HELP").lines, [f"250 2.0.0 {commands}"])
        self.assertEqual(c.cmd("HELP LHLO").lines, ["250 2.0.0 Syntax: LHLO hostname"])
        self.assertEqual(c.cmd("HELP EHLO").lines, [f"501 5.5.4 {commands}"])
        smtp = self.start_server("lmtp_replies")
        self.assertEqual(self.connect(smtp).cmd("HELP LHLO").code, 501)

    def test_smtp_listener_refuses_lhlo(self):
        srv = self.start_server("lmtp_replies")
        c = self.connect(srv)
        self.assertTrue(c.greeting.lines[0].endswith(" ESMTP"), c.greeting)
        self.assertEqual(c.cmd(LHLO).lines, ['500 5.5.1 Error: command "LHLO" not recognized'])
        self.assertReply(c.cmd("EHLO client.example"), 250)

    def test_port_25_refused(self):
        out = subprocess.run([binary(), "-n", "--lmtp", "127.0.0.1:25"],
                             capture_output=True, timeout=bound(10))
        self.assertEqual(out.returncode, 2, out)
        self.assertIn(b"--lmtp is not for port 25 (RFC 2033 5)", out.stderr)


class TestRepliesAfterData(LmtpTestCase):
    def test_one_reply_per_accepted_recipient(self):
        srv = self.start_lmtp()
        c = self.connect(srv)
        self.assertReply(c.cmd(LHLO), 250)
        rcpt, after = self.transaction(
            c, "default@x.example", ["a@y.example", "refused@y.example", "c@y.example"])
        self.assertEqual([r.code for r in rcpt], [250, 550, 250])
        self.assertEqual(self.lines(after), [["250 2.0.0 OK"], ["250 2.0.0 OK"]])
        self.assertSilent(c)
        srv.wait_log(r"message 1 from <default@x\.example> for 2 recipient\(s\).*: 250 250 "
                     r"\(generation")

    def test_table_gives_each_recipient_its_reply_in_rcpt_order(self):
        srv = self.start_lmtp()
        c = self.connect(srv)
        self.assertReply(c.cmd(LHLO), 250)
        rcpts = ["yes1@y.example", "no1@y.example", "refused@y.example", "plain@y.example",
                 "full1@y.example", "no2@y.example"]
        rcpt, after = self.transaction(c, "table@x.example", rcpts)
        self.assertEqual([r.code for r in rcpt], [250, 250, 550, 250, 250, 250])
        self.assertEqual(self.lines(after), [
            ["250 2.1.5 <yes1@y.example> delivered"],
            ["550 5.1.1 <no1@y.example> no such user"],
            ["250 2.0.0 OK"],
            ["452 4.2.2 <full1@y.example> mailbox full"],
            ["550 5.1.1 <no2@y.example> no such user"],
        ])
        self.assertSilent(c)
        srv.wait_log(r"message 1 .* for 5 recipient\(s\).*: 250 550 250 452 550 \(generation")
        # The next transaction starts clean, on the same connection.
        _, after = self.transaction(c, "table@x.example", ["no3@y.example"])
        self.assertEqual(self.lines(after), [["550 5.1.1 <no3@y.example> no such user"]])

    def test_one_string_answers_every_recipient(self):
        srv = self.start_lmtp()
        c = self.connect(srv)
        self.assertReply(c.cmd(LHLO), 250)
        _, after = self.transaction(c, "one@x.example", ["a@y.example", "b@y.example"])
        self.assertEqual(self.lines(after), [["250 2.0.0 one reply for all"]] * 2)
        _, after = self.transaction(c, "refuse@x.example", ["a@y.example", "b@y.example"])
        self.assertEqual(self.lines(after), [["554 5.7.1 not today"]] * 2)
        self.assertSilent(c)

    def test_a_recipient_given_twice_gets_two_replies(self):
        srv = self.start_lmtp()
        c = self.connect(srv)
        self.assertReply(c.cmd(LHLO), 250)
        _, after = self.transaction(c, "table@x.example", ["no1@y.example", "no1@y.example"])
        self.assertEqual(self.lines(after), [["550 5.1.1 <no1@y.example> no such user"]] * 2)

    def test_keys_match_the_address_exactly(self):
        # The handler keys its table by the lower-cased address: "bob@y.example" is no
        # recipient of a message for "Bob@Y.example", so nobody is told a 250 it never meant.
        log = (r"error: session \d+: process_message returned a reply for 'bob@y\.example', "
               r"which is no recipient")
        srv = self.start_lmtp(expect_errors=[log])
        c = self.connect(srv)
        self.assertReply(c.cmd(LHLO), 250)
        _, after = self.transaction(c, "lower@x.example", ["Bob@Y.example"])
        self.assertEqual(self.lines(after),
                         [["451 4.3.0 Error: the message handler failed; try again later"]])
        srv.wait_log(log)
        _, after = self.transaction(c, "lower@x.example", ["bob@y.example"])
        self.assertEqual(self.lines(after), [["550 5.1.1 lower-cased"]])

    def test_handler_error_is_451_for_every_recipient(self):
        srv = self.start_lmtp(expect_errors=[r"process_message failed"])
        c = self.connect(srv)
        self.assertReply(c.cmd(LHLO), 250)
        _, after = self.transaction(c, "error@x.example",
                                    ["a@y.example", "refused@y.example", "b@y.example"])
        want = ["451 4.3.0 Error: the message handler failed; try again later"]
        self.assertEqual(self.lines(after), [want, want])
        self.assertSilent(c)
        srv.wait_log(r"error: session \d+: process_message failed .*boom")

    def test_bad_tables_are_451_for_every_recipient(self):
        cases = {
            "badvalue": r"process_message returned a table whose field 'a@y\.example' is a "
                        r"number, not a reply string",
            "stranger": r"process_message returned a reply for 'stranger@nowhere\.example', "
                        r"which is no recipient of this message \(keys are the addresses "
                        r"exactly as given to RCPT\)",
            "numkey": r"process_message returned a table with a number key: keys are "
                      r"recipient addresses",
            "badreply": r"process_message returned an invalid reply for <b@y\.example>: hello",
        }
        srv = self.start_lmtp(expect_errors=list(cases.values()))
        c = self.connect(srv)
        self.assertReply(c.cmd(LHLO), 250)
        want = ["451 4.3.0 Error: the message handler failed; try again later"]
        for what, log in cases.items():
            with self.subTest(what):
                _, after = self.transaction(c, f"{what}@x.example", ["a@y.example", "b@y.example"])
                self.assertEqual(self.lines(after), [want, want])
                srv.wait_log(r"error: session \d+: " + log)
        self.assertSilent(c)

    def test_too_big_is_552_for_every_recipient(self):
        srv = self.start_lmtp(args=["-s", "100"])
        c = self.connect(srv)
        self.assertReply(c.cmd(LHLO), 250)
        _, after = self.transaction(c, "table@x.example",
                                    ["no1@y.example", "refused@y.example", "b@y.example"],
                                    body=b"Subject: big\r\n\r\n" + b"x" * 200 + b"\r\n")
        want = ["552 5.3.4 Error: Too much mail data"]
        self.assertEqual(self.lines(after), [want, want])
        self.assertSilent(c)
        # The session goes on.
        _, after = self.transaction(c, "default@x.example", ["a@y.example"])
        self.assertEqual(self.lines(after), [["250 2.0.0 OK"]])

    def test_data_refused_as_a_command_is_one_reply(self):
        # RFC 2033 4.2: replies per recipient only once DATA got its 354.
        srv = self.start_lmtp()
        c = self.connect(srv)
        self.assertReply(c.cmd(LHLO), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<refused@y.example>"), 550)
        self.assertEqual(c.cmd("DATA").lines, ["503 5.5.1 Error: need RCPT command"])
        self.assertSilent(c)

    def test_received_says_lmtp(self):
        srv = self.start_lmtp()
        c = self.connect(srv)
        self.assertReply(c.cmd(LHLO), 250)
        _, after = self.transaction(c, "received@x.example", ["a@y.example"])
        self.assertEqual(self.lines(after), [["250 2.0.0 LMTP lmtp=true"]])
        smtp = self.start_server("lmtp_replies")
        c = self.connect(smtp)
        out = c.transaction("received@x.example", ["a@y.example"], BODY)
        self.assertEqual(out[-1].lines, ["250 2.0.0 ESMTP lmtp=false"])

    def test_pipelined_transactions(self):
        srv = self.start_lmtp()
        c = self.connect(srv)
        c.send(f"{LHLO}\r\n"
               "MAIL FROM:<table@x.example>\r\nRCPT TO:<no1@y.example>\r\n"
               "RCPT TO:<refused@y.example>\r\nRCPT TO:<yes1@y.example>\r\nDATA\r\n"
               .encode() + BODY + b".\r\n" +
               b"MAIL FROM:<one@x.example>\r\nRCPT TO:<a@y.example>\r\nRCPT TO:<b@y.example>\r\n"
               b"DATA\r\n" + BODY + b".\r\nQUIT\r\n")
        got = [r.lines[-1] for r in c.replies(15)]
        self.assertEqual(got, [
            "250 HELP",
            "250 2.1.0 OK", "250 2.1.5 OK", "550 5.1.1 <refused@y.example> refused at RCPT",
            "250 2.1.5 OK", "354 End data with <CR><LF>.<CR><LF>",
            "550 5.1.1 <no1@y.example> no such user", "250 2.1.5 <yes1@y.example> delivered",
            "250 2.1.0 OK", "250 2.1.5 OK", "250 2.1.5 OK", "354 End data with <CR><LF>.<CR><LF>",
            "250 2.0.0 one reply for all", "250 2.0.0 one reply for all",
            "221 2.0.0 Bye",
        ])
        self.assertTrue(c.wait_closed())


class TestStarttls(TlsCase, LmtpTestCase):
    def test_starttls_then_lhlo_again(self):
        srv = self.start_lmtp(args=self.tls_args())
        c = self.connect(srv)
        self.assertIn("250-STARTTLS", c.cmd(LHLO).lines)
        self.starttls_raw(c)
        # RFC 3207 4.2: the session starts over; MAIL before the new LHLO is out of order.
        self.assertReply(c.cmd("MAIL FROM:<received@x.example>"), 503)
        self.assertReply(c.cmd("EHLO client.example"), 500)
        self.assertReply(c.cmd(LHLO), 250)
        _, after = self.transaction(c, "received@x.example", ["a@y.example", "b@y.example"])
        self.assertEqual(self.lines(after), [["250 2.0.0 LMTPS lmtp=true"]] * 2)


class TestTableOverSmtp(LmtpTestCase):
    """SMTP has one reply per message: the first 5xx, else the first 4xx, else the first 2xx
    the table gave, so a 250 never claims a recipient the handler refused."""

    def test_all_taken_is_the_first_given_2xx(self):
        srv = self.start_server("lmtp_replies")
        out = self.connect(srv).transaction("table@x.example", ["plain@y.example",
                                                                "yes1@y.example"], BODY)
        self.assertEqual(out[-1].lines, ["250 2.1.5 <yes1@y.example> delivered"])

    def test_mixed_is_the_most_severe_refusal_and_a_warning(self):
        srv = self.start_server("lmtp_replies")
        out = self.connect(srv).transaction(
            "table@x.example", ["yes1@y.example", "full1@y.example", "no1@y.example"], BODY)
        self.assertEqual(out[-1].lines, ["550 5.1.1 <no1@y.example> no such user"])
        srv.wait_log(r"warn: session \d+: process_message took some recipients and refused "
                     r"others; SMTP has one reply per message")


class TestClients(LmtpTestCase):
    def test_smtplib_lmtp(self):
        srv = self.start_lmtp()
        with smtplib.LMTP(srv.host, srv.port, local_hostname="client.example",
                          timeout=REPLY_TIMEOUT) as client:
            refused = client.sendmail("table@x.example",
                                      ["refused1@y.example", "yes1@y.example"], BODY)
            self.assertEqual(refused, {"refused1@y.example": (
                550, b"5.1.1 <refused1@y.example> refused at RCPT")})
            # smtplib's data() reads one reply (the first recipient's); getreply() the others.
            self.assertEqual(client.mail("table@x.example")[0], 250)
            for r in ["yes2@y.example", "no1@y.example", "full1@y.example"]:
                self.assertEqual(client.rcpt(r)[0], 250)
            self.assertEqual(client.data(BODY), (250, b"2.1.5 <yes2@y.example> delivered"))
            self.assertEqual(client.getreply(), (550, b"5.1.1 <no1@y.example> no such user"))
            self.assertEqual(client.getreply(), (452, b"4.2.2 <full1@y.example> mailbox full"))
            self.assertEqual(client.noop(), (250, b"2.0.0 OK"))

    @unittest.skipUnless(os.access(SMTP_SOURCE, os.X_OK), f"{SMTP_SOURCE} not installed")
    def test_smtp_source_lmtp(self):
        srv = self.start_lmtp("sink")
        # 2 sessions of 5 messages each, 3 recipients a message; smtp-source -L reads a reply
        # per recipient after DATA and stops at the first that is not 2xx.
        out = subprocess.run(
            [SMTP_SOURCE, "-L", "-s", "2", "-m", "10", "-r", "3", "-d", "-M", "client.example",
             "-f", "from@x.example", "-t", "to@y.example", f"{srv.host}:{srv.port}"],
            capture_output=True, timeout=bound(60))
        self.assertEqual(out.returncode, 0, out)
        self.assertEqual(out.stderr, b"")
        # Each message is logged before its replies go out, so all ten are in the log by now.
        done = re.compile(r"info: session \d+: message \d+ from <from@x\.example> for 3 "
                          r"recipient\(s\).*: 250 250 250 \(generation")
        messages = [line for line in srv.log_lines() if done.search(line)]
        self.assertEqual(len(messages), 10, srv.log.text())

    def test_our_relay_client_over_lmtp(self):
        # A front server (LMTP too) relays each message with smtpd.relay{lmtp=true} to an LMTP
        # back end, and hands its per-recipient answers on as a table.
        back = self.start_lmtp()
        front = self.start_lmtp("lmtp_chain", sets={"lmtp_port": str(back.port)})
        c = self.connect(front)
        self.assertReply(c.cmd(LHLO), 250)
        _, after = self.transaction(c, "table@x.example",
                                    ["yes1@y.example", "no1@y.example", "full1@y.example",
                                     "plain@y.example"])
        self.assertEqual(self.lines(after), [
            ["250 2.0.0 OK"],
            ["550 5.1.1 <no1@y.example> no such user"],
            ["452 4.2.2 <full1@y.example> mailbox full"],
            ["250 2.0.0 OK"],
        ])
        back.wait_log(r"for 4 recipient\(s\).*: 250 550 452 250 \(generation")


class TestBundledHandlers(LmtpTestCase):
    """debugging, sink, pureproxy and mailman, unchanged, behind an LMTP listener."""

    def send_two(self, srv):
        c = self.connect(srv)
        self.assertReply(c.cmd(LHLO), 250)
        return self.transaction(c, "a@x.example", ["b@y.example", "c@y.example"])

    def test_debugging_and_sink(self):
        for handler in ("debugging", "sink"):
            with self.subTest(handler):
                srv = self.start_lmtp(handler)
                _, after = self.send_two(srv)
                self.assertEqual(self.lines(after), [["250 2.0.0 OK"]] * 2)

    def test_debugging_prints(self):
        srv = self.start_lmtp("debugging")
        self.send_two(srv)
        self.assertIn(b"Subject: lmtp", srv.stdout())
        self.assertIn(b"X-Peer: 127.0.0.1", srv.stdout())

    def test_relaying_handlers(self):
        for handler in ("pureproxy", "mailman"):
            with self.subTest(handler):
                sink = SmtpSink()
                self.addCleanup(sink.close)
                sets = {"mailman_domains": "lists.example"} if handler == "mailman" else {}
                srv = self.start_lmtp(handler, sets=sets, remote=f"127.0.0.1:{sink.port}")
                _, after = self.send_two(srv)
                self.assertEqual(len(after), 2)
                for r in after:
                    self.assertReply(r, 250)
                self.assertEqual(after[0].lines, after[1].lines)
                dumps = sink.dumps()
                self.assertEqual(len(dumps), 1, dumps)
                self.assertRegex(dumps[0], rb"Received: from client\.example \(\[127\.0\.0\.1\]\)"
                                           rb" by test\.example with LMTP\s+id ")


if __name__ == "__main__":
    unittest.main()
