"""The relay bindings seen from scripts: smtpd.relay{} (one shot, SMTP and LMTP), smtpd.connect
and the upstream object command by command, smtpd.reply, and misuse that must raise. Fixture
handlers (handlers/relay_*.lua) turn what the bindings returned into the reply our client reads.
"""

import re
import shutil
import subprocess
import tempfile
import time
import unittest

import harness
from harness import ServerTestCase, binary, fixture, free_port, read_records, stuff, \
    wait_records, wait_until
from upstreams import AioUpstream, RawServer, SmtpSink, parse_sink_dump, silent_handler, \
    sink_body

EHLO = "EHLO client.example"
WARN_LINE = r"^\S+ luasmtpd\[\d+\] warn: "

BODY = (b"Subject: relay\r\nFrom: a@b.example\r\n\r\n"
        b"line\r\n.\r\n..\r\n.x\r\n\xc3\xa9t\xc3\xa9 \xff\r\nlast\r\n")



class RelayTestCase(ServerTestCase):
    def start_relay(self, handler, upstream_port, sets=None, args=(), **kw):
        kw.setdefault("expect_errors", [WARN_LINE])
        return self.start_server(handler, sets=sets, args=args,
                                 remote=f"127.0.0.1:{upstream_port}", **kw)

    def start_hooks_upstream(self, sets=None, args=()):
        """A second luasmtpd with handlers/hooks_upstream.lua recording into a directory."""
        d = tempfile.mkdtemp(prefix="luasmtpd-rec-")
        self.addCleanup(shutil.rmtree, d, True)
        sets = dict(sets or {})
        sets["dir"] = d
        return self.start_server("hooks_upstream", sets=sets, args=args), d

    def start_aio(self, **kw):
        up = AioUpstream(**kw)
        self.addCleanup(up.close)
        return up

    def send(self, srv, mailfrom, rcpts, body=BODY, timeout=None):
        """One transaction on a new connection; returns the final reply (the earlier ones must
        be 250/354)."""
        c = self.connect(srv)
        self.assertEqual(c.cmd(EHLO).code, 250)
        self.assertEqual(c.cmd(f"MAIL FROM:<{mailfrom}>").code, 250)
        for r in rcpts:
            self.assertEqual(c.cmd(f"RCPT TO:<{r}>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(stuff(body) + b".\r\n")
        return c.reply(timeout=timeout)

    def assertNoErrors(self, srv):
        # Error lines are checked when the test ends (harness), when all of them have arrived.
        self.assertTrue(srv.alive())


def relayed(*refused):
    """The reply relay_oneshot.lua gives for a result table with these refusals
    (("address", "code text"), ...), sorted by address."""
    lines = [f"2.0.0 relayed refused={len(refused)}"]
    lines += [f"refused {a} {t}" for a, t in sorted(refused)]
    return [f"250{'-' if i < len(lines) - 1 else ' '}{l}" for i, l in enumerate(lines)]


class TestRelayOneShot(RelayTestCase):
    """Issue item 10: smtpd.relay{} returns refused (a table) or nil, message, code."""

    def test_all_accepted(self):
        up, d = self.start_recording()
        relay = self.start_relay("relay_oneshot", up.port)
        r = self.send(relay, "a@b.example", ["c@d.example", "e@f.example"])
        self.assertEqual(r.lines, relayed())
        rec = wait_records(d, 1)[0]
        self.assertEqual(rec.data, BODY)  # unchanged, byte for byte
        self.assertEqual(rec.mailfrom, "a@b.example")
        self.assertEqual(rec.rcpttos, ["c@d.example", "e@f.example"])
        self.assertEqual(rec.helo, "test.example")  # our --hostname by default
        # The upstream offers SIZE and 8BITMIME: the relay declares both for 8-bit data.
        self.assertIn(f"SIZE={len(BODY)}", rec.mail_options)
        self.assertIn("BODY=8BITMIME", rec.mail_options)
        self.assertNoErrors(relay)

    def test_recipient_as_string_helo_null_sender(self):
        up, d = self.start_recording()
        relay = self.start_relay("relay_oneshot", up.port,
                                 sets={"to_string": "1", "helo": "relay.example"})
        r = self.send(relay, "", ["c@d.example"], body=b"Subject: 7bit\r\n\r\nplain\r\n")
        self.assertEqual(r.lines, relayed())
        rec = wait_records(d, 1)[0]
        self.assertEqual(rec.mailfrom, "")
        self.assertEqual(rec.rcpttos, ["c@d.example"])
        self.assertEqual(rec.helo, "relay.example")
        self.assertNotIn("BODY=8BITMIME", rec.mail_options)

    def test_host_and_port_override_the_command_line(self):
        up, d = self.start_recording()
        relay = self.start_relay("relay_oneshot", free_port(),  # nothing listens there
                                 sets={"host": "127.0.0.1", "port": str(up.port)})
        self.assertEqual(self.send(relay, "a@b.example", ["c@d.example"]).lines, relayed())
        self.assertEqual(wait_records(d, 1)[0].data, BODY)

    def test_one_refused(self):
        up, d = self.start_hooks_upstream({"refuse_rcpt": "bad@d.example"})
        relay = self.start_relay("relay_oneshot", up.port)
        r = self.send(relay, "a@b.example", ["ok1@d.example", "bad@d.example", "ok2@d.example"])
        self.assertEqual(r.lines, relayed(("bad@d.example", "550 5.1.1 no such user")))
        rec = wait_records(d, 1)[0]
        self.assertEqual(rec.rcpttos, ["ok1@d.example", "ok2@d.example"])
        self.assertEqual(rec.data, BODY)
        self.assertNoErrors(relay)

    def test_all_refused(self):
        up, d = self.start_hooks_upstream({"refuse_rcpt": "bad@d.example",
                                           "rcpt_reply": "450 4.2.1 later"})
        relay = self.start_relay("relay_oneshot", up.port)
        r = self.send(relay, "a@b.example", ["bad@d.example"])
        self.assertEqual(r.lines, relayed(("bad@d.example", "450 4.2.1 later")))
        self.assertEqual(read_records(d), [])

    def test_upstream_down(self):
        relay = self.start_relay("relay_oneshot", free_port())
        r = self.send(relay, "a@b.example", ["c@d.example"])
        self.assertEqual(r.code, 451, r)
        self.assertRegex(r.lines[-1], r"^451 4\.4\.1 relay failed code=nil \S")
        self.assertNoErrors(relay)

    def test_upstream_silent_times_out(self):
        raw = RawServer(silent_handler)
        self.addCleanup(raw.close)
        relay = self.start_relay("relay_oneshot", raw.port, sets={"timeout": "1"})
        t0 = time.monotonic()
        r = self.send(relay, "a@b.example", ["c@d.example"], timeout=8)
        elapsed = time.monotonic() - t0
        self.assertRegex(r.lines[-1], r"^451 4\.4\.1 relay failed code=nil \S")
        self.assertGreater(elapsed, 0.8)
        self.assertLess(elapsed, 1 + harness.bound(4), "not the 1 s relay timeout")
        raw.wait_event("peer closed", timeout=5)

    def test_refused_at_mail(self):
        for reply in ["550 5.7.1 sender blocked", "421 4.3.2 going away"]:
            with self.subTest(reply=reply):
                up, d = self.start_hooks_upstream({"mail_reply": reply})
                relay = self.start_relay("relay_oneshot", up.port)
                r = self.send(relay, "a@b.example", ["c@d.example"])
                self.assertEqual(r.code, 451, r)
                self.assertRegex(r.lines[-1],
                                 rf"^451 4\.4\.1 relay failed code={reply[:3]} .*"
                                 rf"{re.escape(reply[4:])}")
                self.assertEqual(read_records(d), [])

    def test_greeting_refused(self):
        """The upstream was reached and refused in its greeting: the code is its code."""
        up = self.start_server("hooks_all", sets={"connect": "refuse"}, probe=False)
        relay = self.start_relay("relay_oneshot", up.port)
        r = self.send(relay, "a@b.example", ["c@d.example"])
        self.assertRegex(r.lines[-1], r"^451 4\.4\.1 relay failed code=554 .*no thanks")

    def test_refused_after_data(self):
        for reply in ["554 5.6.0 rejected", "451 4.3.0 try later"]:
            with self.subTest(reply=reply):
                up, d = self.start_recording(sets={"reply": reply})
                relay = self.start_relay("relay_oneshot", up.port)
                r = self.send(relay, "a@b.example", ["c@d.example"])
                self.assertRegex(r.lines[-1],
                                 rf"^451 4\.4\.1 relay failed code={reply[:3]} .*"
                                 rf"{re.escape(reply[4:])}")


class TestLmtp(RelayTestCase):
    """Issue item 8: smtpd.relay{lmtp=true} to aiosmtpd's LMTP server."""

    def test_delivered(self):
        up = self.start_aio(lmtp=True)
        relay = self.start_relay("relay_oneshot", up.port, sets={"lmtp": "1"})
        r = self.send(relay, "a@b.example", ["c@d.example", "e@f.example"])
        self.assertEqual(r.lines, relayed())
        msg = up.wait_messages(1)[0]
        self.assertEqual(msg["data"], BODY)
        self.assertEqual(msg["mail_from"], "a@b.example")
        self.assertEqual(msg["rcpt_tos"], ["c@d.example", "e@f.example"])
        self.assertNoErrors(relay)

    def test_smtp_sink_lmtp(self):
        """A real LMTP server: Postfix's smtp-sink -L."""
        sink = SmtpSink(args=["-L"])
        self.addCleanup(sink.close)
        relay = self.start_relay("relay_oneshot", sink.port, sets={"lmtp": "1"})
        r = self.send(relay, "a@b.example", ["c@d.example", "e@f.example"])
        self.assertEqual(r.lines, relayed())
        want = sink_body(BODY)
        dumps = wait_until(lambda: [x for x in sink.dumps() if parse_sink_dump(x)[1] == want],
                           10, what="smtp-sink's dump")
        fields, _ = parse_sink_dump(dumps[0])
        self.assertEqual(fields["X-Client-Proto"], ["LMTP"])
        self.assertEqual(fields["X-Rcpt-Args"], ["<c@d.example>", "<e@f.example>"])

    def test_refused_at_rcpt_and_after_data(self):
        up = self.start_aio(lmtp=True,
                            refuse_rcpt={"bad@d.example": "550 5.1.1 no such user here"},
                            data_replies={"full@d.example": "452 4.2.2 mailbox full"})
        relay = self.start_relay("relay_oneshot", up.port, sets={"lmtp": "1"})
        r = self.send(relay, "a@b.example", ["ok@d.example", "bad@d.example", "full@d.example"])
        self.assertEqual(r.lines, relayed(("bad@d.example", "550 5.1.1 no such user here"),
                                          ("full@d.example", "452 4.2.2 mailbox full")))
        msg = up.wait_messages(1)[0]
        self.assertEqual(msg["rcpt_tos"], ["ok@d.example", "full@d.example"])
        self.assertEqual(msg["data"], BODY)

    def test_one_refused(self):
        up = self.start_aio(lmtp=True,
                            refuse_rcpt={"bad@d.example": "550 5.1.1 no such user here"})
        relay = self.start_relay("relay_oneshot", up.port, sets={"lmtp": "1"})
        r = self.send(relay, "a@b.example", ["ok@d.example", "bad@d.example"])
        self.assertEqual(r.lines, relayed(("bad@d.example", "550 5.1.1 no such user here")))
        self.assertEqual(up.wait_messages(1)[0]["rcpt_tos"], ["ok@d.example"])


def step_lines(reply):
    """relay_connect.lua's report: the reply's lines without "250-"/"250 "."""
    return [line[4:] for line in reply.lines]


class TestConnect(RelayTestCase):
    """Issue item 10: smtpd.connect and the upstream's methods, command by command."""

    def test_round_trip_against_luasmtpd(self):
        up, d = self.start_hooks_upstream({"refuse_rcpt": "bad@d.example"},
                                          args=["-s", "123456", "-u"])
        # What the upstream answers a plain client, command by command.
        direct = self.connect(up)
        direct.cmd(EHLO)
        want = []

        def note(name, reply):
            self.assertEqual(len(reply.lines), 1, reply)
            want.append(f"{name} {reply.lines[0][:3]} {reply.lines[0][4:]}")

        note("noop", direct.cmd("NOOP"))
        note("mail", direct.cmd("MAIL FROM:<a@b.example>"))
        note("rcpt", direct.cmd("RCPT TO:<ok@d.example>"))
        note("rcpt", direct.cmd("RCPT TO:<bad@d.example>"))
        self.assertEqual(direct.cmd("DATA").code, 354)
        direct.send(stuff(BODY) + b".\r\n")
        note("data", direct.reply())
        note("rset", direct.cmd("RSET"))
        note("quit", direct.cmd("QUIT"))
        self.assertEqual([w.split()[1] for w in want],
                         ["250", "250", "250", "550", "250", "250", "221"])

        relay = self.start_relay("relay_connect", up.port)
        r = self.send(relay, "a@b.example", ["ok@d.example", "bad@d.example"])
        self.assertEqual(r.code, 250, r)
        self.assertEqual(step_lines(r),
                         ["ext 8BITMIME,DSN,PIPELINING,SIZE=123456,SMTPUTF8"] + want +
                         ["after_quit nil the upstream connection is closed"])
        recs = wait_records(d, 2)
        self.assertEqual(recs[1].data, BODY)
        self.assertEqual(recs[1].rcpttos, ["ok@d.example"])
        self.assertEqual(recs[1].helo, "test.example")
        self.assertNoErrors(relay)

    def test_mail_params_and_helo(self):
        up, d = self.start_hooks_upstream(args=["--no-smtputf8"])
        relay = self.start_relay("relay_connect", up.port,
                                 sets={"mail_params": "BODY=8BITMIME SIZE=100",
                                       "helo": "step.example"})
        r = self.send(relay, "a@b.example", ["c@d.example"])
        self.assertEqual(r.code, 250, r)
        rec = wait_records(d, 1)[0]
        self.assertEqual(sorted(rec.mail_options), ["BODY=8BITMIME", "SIZE=100"])
        self.assertEqual(rec.helo, "step.example")
        self.assertNotIn("SMTPUTF8", step_lines(r)[0])  # the upstream runs --no-smtputf8

    def test_lmtp_data_gives_one_reply_per_recipient(self):
        up = self.start_aio(lmtp=True,
                            refuse_rcpt={"bad@d.example": "550 5.1.1 no such user here"},
                            data_replies={"full@d.example": "452 4.2.2 mailbox full"})
        relay = self.start_relay("relay_connect", up.port, sets={"lmtp": "1"})
        r = self.send(relay, "a@b.example", ["ok@d.example", "bad@d.example", "full@d.example"])
        self.assertEqual(r.code, 250, r)
        lines = step_lines(r)
        self.assertEqual(lines[0], "ext 8BITMIME,SIZE=33554432,SMTPUTF8")
        steps = [l for l in lines[1:] if l.split()[0] in ("rcpt", "data")]
        self.assertEqual(steps, [
            "rcpt 250 2.1.5 OK",
            "rcpt 550 5.1.1 no such user here",
            "rcpt 250 2.1.5 OK",
            "data 250 2.0.0 <ok@d.example> delivered",
            "data 452 4.2.2 mailbox full",
        ])
        self.assertEqual(up.wait_messages(1)[0]["data"], BODY)

    def test_connect_fails(self):
        relay = self.start_relay("relay_connect", free_port())
        r = self.send(relay, "a@b.example", ["c@d.example"])
        self.assertRegex(r.lines[-1], r"^451 4\.4\.1 connect failed code=nil \S")
        self.assertNoErrors(relay)

    def test_greeting_refused(self):
        """An upstream that greets with 554: connect returns nil, message, 554."""
        up = self.start_server("hooks_all", sets={"connect": "refuse"}, probe=False)
        relay = self.start_relay("relay_connect", up.port)
        r = self.send(relay, "a@b.example", ["c@d.example"])
        self.assertRegex(r.lines[-1], r"^451 4\.4\.1 connect failed code=554 .*no thanks")


class TestMisuse(RelayTestCase):
    """Issue item 11: misuse raises; the client gets 451 4.3.0, the log the error and its
    traceback, and the session goes on."""

    CASES = {
        "relay-nil": r"bad argument #1 to 'relay'",
        "connect-string": r"bad argument #1 to 'connect'",
        "relay-in-coroutine": r"smtpd\.relay: can only be used inside a handler or hook",
        "connect-in-coroutine": r"smtpd\.connect: can only be used inside a handler or hook",
        "method-in-coroutine": r"mail: can only be used inside a handler or hook",
        "bad-port": r"smtpd\.relay: field 'port' must be 1-65535",
        "bad-timeout": r"smtpd\.relay: field 'timeout' must be positive",
        "no-recipient": r"'to' names no recipient",
        "bad-recipient": r"smtpd\.relay: field 'to' \[2\] must be a string, not number",
        # an options table's misuse names the field (issue 13 item 4)
        "relay-lmtp-type": r"smtpd\.relay: field 'lmtp' must be a boolean, not string",
        "connect-port-type": r"smtpd\.connect: field 'port' must be a number, not string",
        "pipe-timeout-type": r"smtpd\.pipe: field 'timeout' must be a number, not string",
        "pipe-env-type": r"smtpd\.pipe: field 'env' must be a table, not string",
        "line-break-address": r"not an address",
        "bad-reply-code": r"a reply code is 200-599",
    }

    def test_misuse_raises(self):
        up, d = self.start_recording()
        srv = self.start_relay("relay_misuse", up.port,
                               expect_errors=[r"process_message failed"])
        c = self.connect(srv)
        c.cmd(EHLO)
        for case, pattern in self.CASES.items():
            with self.subTest(case=case):
                self.assertEqual(c.cmd(f"MAIL FROM:<{case}@b.example>").code, 250)
                self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)
                self.assertEqual(c.cmd("DATA").code, 354)
                c.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
                r = c.reply()
                self.assertEqual(r.code, 451, r)
                self.assertRegex(r.lines[-1], r"^451 4\.3\.0 ")
                line = srv.wait_log(pattern)
                line = line.string
                self.assertRegex(line, r" error: ")
                self.assertIn("relay_misuse.lua", line)  # the traceback names the script
        # The session and the server go on.
        self.assertEqual(c.cmd("MAIL FROM:<ok@b.example>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
        self.assertEqual(c.reply().code, 250)
        self.assertTrue(srv.alive())
        self.assertEqual(read_records(d), [])  # no misuse sent anything

    def test_relay_while_loading_raises(self):
        """A script that relays while it loads does not start, and says why."""
        try:
            out = subprocess.run([binary(), "-n", "-c", fixture("relay_atload"), "127.0.0.1:0",
                                  f"127.0.0.1:{free_port()}"],
                                 stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        except subprocess.TimeoutExpired:
            self.fail("luasmtpd kept running with a script that fails to load")
        self.assertNotEqual(out.returncode, 0)
        self.assertIn(b"can only be used inside a handler or hook", out.stderr)


if __name__ == "__main__":
    unittest.main()
