"""The bundled pureproxy handler (`-c pureproxy` / `-c PureProxy`): relays every message to the
upstream named on the command line, asks the upstream at RCPT time, answers the client with the
upstream's verdict, and never loses mail silently (Python's PureProxy did, and blocked the whole
server while relaying)."""

import select
import shutil
import smtplib
import tempfile
import threading
import time
import unittest

from harness import SMTPClient, ServerTestCase, bound, failures, free_port, read_records, \
    run_threads, stuff, wait_records, wait_until, without_received
from upstreams import AioUpstream, RawServer, SmtpSink, parse_sink_dump, scripted_handler, \
    silent_handler, sink_body

EHLO = "EHLO client.example"
WARN_LINE = r"^\S+ luasmtpd\[\d+\] warn: "
PEER = b"X-Peer: 127.0.0.1"

# Dot lines ("." and ".." and ".x" and "..."), 8-bit bytes (UTF-8 and not), CRLF throughout.
BODY = (b"Subject: dots and bytes\r\nFrom: a@b.example\r\n\r\n"
        b"first line\r\n.\r\n..\r\n.x\r\n...\r\n"
        b"\xc3\xa9t\xc3\xa9 and \xff\xfe raw 8-bit\r\n\r\nlast line\r\n")


def with_peer(data, line=PEER):
    """Where Python's PureProxy put X-Peer: before the first empty line, or as the last line of
    a message that has none (PYTHON_SMTPD.md b.5)."""
    if data.startswith(b"\r\n"):
        return line + b"\r\n" + data
    at = data.find(b"\r\n\r\n")
    if at < 0:
        if data and not data.endswith(b"\r\n"):
            data += b"\r\n"
        return data + line + b"\r\n"
    return data[:at + 2] + line + b"\r\n" + data[at + 2:]



def big_message(size=1024 * 1024):
    """A message of at least `size` bytes whose lines start with dots now and then and carry
    8-bit bytes."""
    lines = [b"Subject: a big one\r\nX-Test: big\r\n\r\n"]
    total = len(lines[0])
    i = 0
    while total < size:
        prefix = b"." * (i % 3) if i % 7 == 0 else b""
        line = prefix + b"%08d " % i + bytes(range(0x21, 0x7f)) + b" \xe2\x82\xac\xf0\r\n"
        lines.append(line)
        total += len(line)
        i += 1
    return b"".join(lines)


def smtp_send(port, mailfrom, rcpts, data, mail_options=(), timeout=15):
    with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as s:
        s.ehlo("client.example")
        return s.sendmail(mailfrom, list(rcpts), data, mail_options=list(mail_options))


class ProxyTestCase(ServerTestCase):
    def start_proxy(self, upstream_port, handler="pureproxy", sets=None, args=(), **kw):
        # pureproxy logs upstream trouble at level warn, and such lines may hold "error: "
        # ("protocol error: ..."), which the harness would count as error lines.
        kw.setdefault("expect_errors", [WARN_LINE])
        return self.start_server(handler, sets=sets, args=args,
                                 remote=f"127.0.0.1:{upstream_port}", **kw)

    def start_sink(self):
        sink = SmtpSink()
        self.addCleanup(sink.close)
        return sink

    def start_aio(self, **kw):
        up = AioUpstream(**kw)
        self.addCleanup(up.close)
        return up

    def start_raw(self, handler):
        raw = RawServer(handler)
        self.addCleanup(raw.close)
        return raw

    def start_hooks_upstream(self, sets):
        """A second luasmtpd with handlers/hooks_upstream.lua recording into a directory."""
        d = tempfile.mkdtemp(prefix="luasmtpd-rec-")
        self.addCleanup(shutil.rmtree, d, True)
        sets = dict(sets)
        sets["dir"] = d
        return self.start_server("hooks_upstream", sets=sets), d

    def send(self, c, mailfrom, rcpts, body, mail_params=""):
        """MAIL, RCPT..., DATA, body: the replies (MAIL, [RCPT...], DATA, final)."""
        out = [c.cmd(f"MAIL FROM:<{mailfrom}>{mail_params}")]
        for r in rcpts:
            out.append(c.cmd(f"RCPT TO:<{r}>"))
        out.append(c.cmd("DATA"))
        if out[-1].code == 354:
            c.send(stuff(body) + b".\r\n")
            out.append(c.reply(timeout=15))
        return out

    def assertClean(self, srv):
        # Error lines are checked when the test ends (harness), when all of them have arrived.
        self.assertTrue(srv.alive(), "the proxy died")


class TestDelivery(ProxyTestCase):
    """Issue item 1: real upstreams get envelope and body byte for byte, plus X-Peer."""

    def test_smtp_sink_upstream(self):
        sink = self.start_sink()
        proxy = self.start_proxy(sink.port)
        refused = smtp_send(proxy.port, "a@b.example", ["c@d.example", "e@f.example"], BODY,
                            mail_options=["BODY=8BITMIME"])
        self.assertEqual(refused, {})
        expected = sink_body(with_peer(BODY))

        def dumped():
            dumps = sink.dumps()
            return (len(dumps) == 1 and
                    without_received(parse_sink_dump(dumps[0])[1], b"\n") == expected and dumps)

        try:
            dumps = wait_until(dumped, 10, what="smtp-sink's dump of the message")
        except AssertionError:
            dumps = sink.dumps()
            self.assertEqual(len(dumps), 1, dumps)
            self.assertEqual(without_received(parse_sink_dump(dumps[0])[1], b"\n"), expected)
            raise
        fields, _ = parse_sink_dump(dumps[0])
        self.assertEqual(fields["X-Client-Addr"], ["127.0.0.1"])
        self.assertEqual(fields["X-Helo-Args"], ["test.example"])  # the proxy's --hostname
        # smtp-sink offers 8BITMIME but not SIZE: BODY goes along, SIZE does not.
        self.assertEqual(fields["X-Mail-Args"], ["<a@b.example> BODY=8BITMIME"])
        self.assertEqual(fields["X-Rcpt-Args"], ["<c@d.example>", "<e@f.example>"])
        self.assertClean(proxy)

    def test_luasmtpd_upstream_byte_for_byte(self):
        up, d = self.start_recording()
        proxy = self.start_proxy(up.port)
        headerless = b"no header here\r\n.\r\njust lines\r\n"
        leading_empty = b"\r\nbody after an empty first line\r\n"
        with smtplib.SMTP("127.0.0.1", proxy.port, timeout=15) as s:
            s.ehlo("client.example")
            self.assertEqual(s.sendmail("a@b.example", ["c@d.example", "e@f.example"], BODY,
                                        mail_options=["BODY=8BITMIME"]), {})
            # A second transaction on the same connection takes a new upstream transaction.
            self.assertEqual(s.sendmail("", ["g@h.example"], headerless), {})
            self.assertEqual(s.sendmail("x@y.example", ["z@y.example"], leading_empty), {})
        recs = wait_records(d, 3)
        self.assertEqual(len(recs), 3, recs)
        first, second, third = recs
        self.assertEqual(without_received(first.data), with_peer(BODY))
        self.assertEqual(first.mailfrom, "a@b.example")
        self.assertEqual(first.rcpttos, ["c@d.example", "e@f.example"])
        # smtplib sent "size=N BODY=8BITMIME"; the upstream offers both, so both go along.
        self.assertEqual(sorted(first.mail_options), sorted([f"SIZE={len(BODY)}",
                                                             "BODY=8BITMIME"]))
        self.assertEqual(first.helo, "test.example")
        self.assertEqual(first.peer[0], "127.0.0.1")
        # No empty line: X-Peer is the last line, as in Python's PureProxy.
        self.assertEqual(without_received(second.data), headerless + PEER + b"\r\n")
        self.assertEqual(second.mailfrom, "")
        self.assertEqual(second.rcpttos, ["g@h.example"])
        self.assertEqual(without_received(third.data), PEER + b"\r\n" + leading_empty)
        self.assertClean(proxy)

    def test_one_mebibyte_message(self):
        up, d = self.start_recording()
        proxy = self.start_proxy(up.port)
        data = big_message()
        self.assertGreaterEqual(len(data), 1024 * 1024)
        self.assertEqual(smtp_send(proxy.port, "a@b.example", ["c@d.example"], data,
                                   timeout=30), {})
        rec = wait_records(d, 1)[0]
        got = without_received(rec.data)
        self.assertEqual(len(got), len(data) + len(PEER) + 2)
        self.assertTrue(got == with_peer(data), "the upstream got other bytes")
        self.assertClean(proxy)

    def test_alias_PureProxy(self):
        up, d = self.start_recording()
        proxy = self.start_proxy(up.port, handler="PureProxy")
        self.assertEqual(smtp_send(proxy.port, "a@b.example", ["c@d.example"], BODY), {})
        self.assertEqual(without_received(wait_records(d, 1)[0].data), with_peer(BODY))

    def test_smtputf8_passed_only_when_offered(self):
        # Upstream with -u: SMTPUTF8 goes along with the UTF-8 address.
        up, d = self.start_recording(args=["-u"])
        proxy = self.start_proxy(up.port, args=["-u"])
        c = self.connect(proxy)
        c.cmd(EHLO)
        r = self.send(c, "dé@b.example", ["ü@d.example"], b"Subject: utf8\r\n\r\nx\r\n",
                      mail_params=" SMTPUTF8 BODY=8BITMIME")
        self.assertEqual([x.code for x in r], [250, 250, 354, 250], r)
        rec = wait_records(d, 1)[0]
        self.assertEqual(rec.mailfrom, "dé@b.example")
        self.assertEqual(rec.rcpttos, ["ü@d.example"])
        self.assertIn("SMTPUTF8", rec.mail_options)
        self.assertIn("BODY=8BITMIME", rec.mail_options)
        # Upstream with --no-smtputf8: SMTPUTF8 is not passed, so the upstream refuses the
        # address, and the client hears the upstream's own refusal at MAIL.
        up2, d2 = self.start_recording(args=["--no-smtputf8"])
        proxy2 = self.start_proxy(up2.port, args=["-u"])
        c2 = self.connect(proxy2)
        c2.cmd(EHLO)
        r = c2.cmd("MAIL FROM:<dé@b.example> SMTPUTF8")
        direct = self.connect(up2)
        direct.cmd(EHLO)
        expected = direct.cmd("MAIL FROM:<dé@b.example>")
        self.assertEqual(r.code, expected.code, (r, expected))
        self.assertEqual(r.lines, expected.lines)
        self.assertEqual(read_records(d2), [])


class TestUpstreamRefusals(ProxyTestCase):
    def test_one_recipient_of_three_refused(self):
        """Issue item 2."""
        up, d = self.start_hooks_upstream({"refuse_rcpt": "bad@d.example"})
        proxy = self.start_proxy(up.port)
        # Raw client: the RCPT for the refused one gets the upstream's answer at once.
        c = self.connect(proxy)
        c.cmd(EHLO)
        r = self.send(c, "a@b.example", ["ok1@d.example", "bad@d.example", "ok2@d.example"],
                      BODY)
        self.assertEqual(r[0].code, 250, r)
        self.assertEqual(r[1].code, 250, r)
        self.assertEqual(r[2].lines, ["550 5.1.1 no such user"])
        self.assertEqual(r[3].code, 250, r)
        self.assertEqual(r[4].code, 354, r)
        self.assertEqual(r[5].code, 250, r)
        rec = wait_records(d, 1)[0]
        self.assertEqual(rec.rcpttos, ["ok1@d.example", "ok2@d.example"])
        self.assertEqual(without_received(rec.data), with_peer(BODY))
        # smtplib: sendmail returns the one refused.
        refused = smtp_send(proxy.port, "a@b.example",
                            ["ok1@d.example", "bad@d.example", "ok2@d.example"], BODY)
        self.assertEqual(refused, {"bad@d.example": (550, b"5.1.1 no such user")})
        recs = wait_records(d, 2)
        self.assertEqual(recs[1].rcpttos, ["ok1@d.example", "ok2@d.example"])
        self.assertClean(proxy)

    def test_all_recipients_refused(self):
        up, d = self.start_hooks_upstream({"refuse_rcpt": "bad@d.example",
                                      "rcpt_reply": "450 4.2.1 try that one later"})
        proxy = self.start_proxy(up.port)
        c = self.connect(proxy)
        c.cmd(EHLO)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<bad@d.example>").lines,
                         ["450 4.2.1 try that one later"])
        self.assertEqual(c.cmd("DATA").code, 503)  # no valid recipient
        self.assertEqual(c.cmd("RSET").code, 250)
        self.assertEqual(read_records(d), [])
        self.assertClean(proxy)

    def test_mail_refused_upstream(self):
        up, d = self.start_hooks_upstream({"mail_reply": "550 5.7.1 sender blocked upstream"})
        proxy = self.start_proxy(up.port)
        c = self.connect(proxy)
        c.cmd(EHLO)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").lines,
                         ["550 5.7.1 sender blocked upstream"])
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 503)  # no transaction
        self.assertClean(proxy)

    def test_size_passed_and_refused_upstream(self):
        """SIZE goes along (the upstream offers it), so an upstream with a smaller limit
        refuses at MAIL with its own reply."""
        up, d = self.start_recording(args=["-s", "1000"])
        direct = self.connect(up)
        direct.cmd(EHLO)
        expected = direct.cmd("MAIL FROM:<a@b.example> SIZE=5000")
        self.assertEqual(expected.code // 100, 5, expected)
        proxy = self.start_proxy(up.port)
        c = self.connect(proxy)
        c.cmd(EHLO)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example> SIZE=5000").lines, expected.lines)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example> SIZE=500").code, 250)

    def test_data_refused_upstream(self):
        """Issue item 3: the upstream's 4xx/5xx after DATA reaches the client."""
        for reply in ["451 4.3.0 try later", "554 5.6.0 rejected",
                      "554 5.6.0 first line\n554 5.6.0 second line"]:
            with self.subTest(reply=reply):
                up, d = self.start_recording(sets={"reply": reply})
                proxy = self.start_proxy(up.port)
                c = self.connect(proxy)
                c.cmd(EHLO)
                r = self.send(c, "a@b.example", ["c@d.example"], BODY)
                self.assertEqual([x.code for x in r[:3]], [250, 250, 354], r)
                wire = [line[:3] + ("-" if i < reply.count("\n") else " ") + line[4:]
                        for i, line in enumerate(reply.split("\n"))]
                self.assertEqual(r[3].lines, wire)
                # smtplib sees the same.
                with self.assertRaises(smtplib.SMTPDataError) as cm:
                    smtp_send(proxy.port, "a@b.example", ["c@d.example"], BODY)
                self.assertEqual(cm.exception.smtp_code, int(reply[:3]))
                self.assertClean(proxy)


class TestUpstreamFailures(ProxyTestCase):
    def test_upstream_down(self):
        """Issue item 4: a closed port gives 451 4.4.1 at MAIL; once the upstream is back the
        same client's retry goes through."""
        port = free_port()
        proxy = self.start_proxy(port)
        c = self.connect(proxy)
        c.cmd(EHLO)
        r = c.cmd("MAIL FROM:<a@b.example>")
        self.assertEqual(r.code, 451, r)
        self.assertRegex(r.lines[-1], r"^451 4\.4\.1 ")
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 503)
        proxy.wait_log(rf"warn: .*upstream 127\.0\.0\.1:{port}")
        self.assertEqual(c.cmd("NOOP").code, 250)
        # The upstream comes up on that port: the retry is delivered.
        up, d = self.start_recording(listen=f"127.0.0.1:{port}")
        r = self.send(c, "a@b.example", ["c@d.example"], BODY)
        self.assertEqual([x.code for x in r], [250, 250, 354, 250], r)
        self.assertEqual(without_received(wait_records(d, 1)[0].data), with_peer(BODY))
        self.assertClean(proxy)

    def test_silent_upstream_times_out(self):
        """Issue item 5: an upstream that accepts and never speaks, relay_timeout=1: 451 within
        a few seconds, and meanwhile other clients are served."""
        raw = self.start_raw(silent_handler)
        proxy = self.start_proxy(raw.port, sets={"relay_timeout": "2"})
        c = self.connect(proxy)
        c.cmd(EHLO)
        t0 = time.monotonic()
        c.send("MAIL FROM:<a@b.example>\r\n")
        raw.wait_event("accepted", timeout=5)
        # Another client is answered while the first one waits: its replies come before the
        # first client's 451 was even sent (a server that served one at a time would have
        # written that 451 to the first socket before answering the second client at all).
        other = self.connect(proxy)
        self.assertEqual(other.cmd(EHLO).code, 250)
        self.assertEqual(other.cmd("NOOP").code, 250)
        self.assertEqual(select.select([c.sock], [], [], 0)[0], [],
                         "the first client was answered before the second was served")
        r = c.reply(timeout=20)
        elapsed = time.monotonic() - t0
        self.assertEqual(r.code, 451, r)
        self.assertRegex(r.lines[-1], r"^451 4\.4\.1 ")
        self.assertGreater(elapsed, 1.8)
        # The proxy let the silent connection go.
        raw.wait_event("peer closed", timeout=5)
        self.assertEqual(c.cmd("NOOP").code, 250)
        self.assertClean(proxy)

    def test_upstream_hangs_up(self):
        """Issue item 6: the upstream closes at DATA, mid-body, or before its final reply: the
        client gets 451, never 250."""
        body = b"Subject: big\r\n\r\n" + b"0123456789abcdef" * 4 + b"\r\n"
        body = body * 4000  # about 280 KiB: more than the upstream reads
        for hangup in ["data_command", "mid_body", "before_reply"]:
            with self.subTest(hangup=hangup):
                raw = self.start_raw(scripted_handler(hangup))
                proxy = self.start_proxy(raw.port)
                c = self.connect(proxy)
                c.cmd(EHLO)
                r = self.send(c, "a@b.example", ["c@d.example"], body)
                self.assertEqual([x.code for x in r[:3]], [250, 250, 354], r)
                self.assertEqual(r[3].code, 451, r)
                self.assertRegex(r[3].lines[-1], r"^451 4\.4\.1 ")
                raw.wait_event("hung up", timeout=5)
                self.assertEqual(raw.count("delivered"), 0)
                self.assertEqual(c.cmd("NOOP").code, 250)
                self.assertClean(proxy)


class TestClientLeaves(ProxyTestCase):
    def test_client_quits_while_data_relay_in_flight(self):
        """Issue item 7: the upstream takes 2 s to answer the end of data; the client closes
        once the proxy has handed its message on. The proxy lives on, logs nothing bad, and
        serves the next client."""
        up = self.start_aio(data_delay=2.0)
        proxy = self.start_proxy(up.port)
        c = SMTPClient(proxy.port)
        try:
            c.cmd(EHLO)
            self.assertEqual(c.cmd("MAIL FROM:<gone@b.example>").code, 250)
            self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)
            self.assertEqual(c.cmd("DATA").code, 354)
            c.send(stuff(BODY) + b".\r\n")
            up.wait_event("data", timeout=5)  # the relay reached the upstream's end of data
        finally:
            c.close()
        up.data_delay = 0  # for the next message; the one in flight still takes 2 s
        # The proxy drops the upstream connection (aiosmtpd then cancels the delay), or, if it
        # waits for the reply, the upstream answers a proxy whose client has left.
        up.wait_event(["data_cancelled", "data_done"], timeout=5)
        c2 = self.connect(proxy)
        c2.cmd(EHLO)
        r = self.send(c2, "next@b.example", ["c@d.example"], BODY)
        self.assertEqual([x.code for x in r], [250, 250, 354, 250], r)
        msgs = up.wait_messages(1)  # the upstream records before it answers
        self.assertEqual(msgs[-1]["mail_from"], "next@b.example")
        self.assertEqual(without_received(msgs[-1]["data"]), with_peer(BODY))
        self.assertClean(proxy)

    def test_client_quits_right_after_its_body(self):
        """Issue item 7, the racy end: the client closes as soon as its final dot is out,
        while the proxy is starting the relay (it may or may not reach the upstream)."""
        up = self.start_aio(data_delay=0.5)
        proxy = self.start_proxy(up.port)
        for i in range(5):
            c = SMTPClient(proxy.port)
            try:
                c.cmd(EHLO)
                self.assertEqual(c.cmd(f"MAIL FROM:<gone{i}@b.example>").code, 250)
                self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)
                self.assertEqual(c.cmd("DATA").code, 354)
                c.send(stuff(BODY) + b".\r\n")
            finally:
                c.close()
        c2 = self.connect(proxy)
        c2.cmd(EHLO)
        r = self.send(c2, "next@b.example", ["c@d.example"], BODY)
        self.assertEqual([x.code for x in r], [250, 250, 354, 250], r)
        self.assertIn("next@b.example", [m["mail_from"] for m in up.wait_messages(1)])
        self.assertClean(proxy)

    def test_client_quits_while_connecting_upstream(self):
        """The client resets while on_mail waits for a silent upstream: that upstream
        connection is let go at once, not when relay_timeout (30 s) runs out. (A FIN alone
        is a half-close: the MAIL would still be answered, after the timeout.)"""
        raw = self.start_raw(silent_handler)
        proxy = self.start_proxy(raw.port, sets={"relay_timeout": "30"})
        c = SMTPClient(proxy.port)
        try:
            c.cmd(EHLO)
            c.send("MAIL FROM:<gone@b.example>\r\n")
            raw.wait_event("accepted", timeout=5)
        finally:
            c.reset()
        raw.wait_event("peer closed", timeout=5)
        c2 = self.connect(proxy)
        self.assertEqual(c2.cmd(EHLO).code, 250)
        self.assertEqual(c2.cmd("NOOP").code, 250)
        self.assertClean(proxy)


    def test_client_quits_mid_transaction(self):
        """A client that says QUIT (or just goes) after RCPT: the upstream transaction the
        proxy held for it is let go, not left open until the upstream times out."""
        for how in ["QUIT", "close"]:
            with self.subTest(how=how):
                raw = self.start_raw(scripted_handler(None))
                proxy = self.start_proxy(raw.port)
                c = SMTPClient(proxy.port)
                try:
                    c.cmd(EHLO)
                    self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 250)
                    self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)
                    if how == "QUIT":
                        self.assertEqual(c.cmd("QUIT").code, 221)
                finally:
                    c.close()
                raw.wait_event(["quit", "peer closed"], timeout=5)
                self.assertEqual(raw.count("delivered"), 0)
                self.assertClean(proxy)

    def test_rset_drops_the_upstream_transaction(self):
        """The client's RSET abandons the upstream transaction too: the next transaction reuses
        the connection after an upstream RSET, and only its message is delivered."""
        raw = self.start_raw(scripted_handler(None))
        proxy = self.start_proxy(raw.port)
        c = self.connect(proxy)
        c.cmd(EHLO)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)
        self.assertEqual(c.cmd("RSET").code, 250)
        r = self.send(c, "x@b.example", ["y@d.example"], BODY)
        self.assertEqual([x.code for x in r], [250, 250, 354, 250], r)
        raw.wait_event("delivered", timeout=5)
        self.assertEqual(raw.count("rset"), 1)
        self.assertEqual(raw.count("delivered"), 1)
        self.assertEqual(raw.count("accepted"), 1)
        # The client leaves: its upstream connection ends with it.
        c.close()
        raw.wait_event(["quit", "peer closed"], n=1, timeout=5)
        self.assertClean(proxy)

    def test_transactions_share_one_upstream_connection(self):
        raw = self.start_raw(scripted_handler(None))
        proxy = self.start_proxy(raw.port)
        c = self.connect(proxy)
        c.cmd(EHLO)
        for i in range(3):
            r = self.send(c, f"s{i}@b.example", [f"r{i}@d.example"], BODY)
            self.assertEqual([x.code for x in r], [250, 250, 354, 250], r)
        raw.wait_event("delivered", n=3, timeout=5)
        self.assertEqual(raw.count("accepted"), 1)
        self.assertEqual(raw.count("rset"), 0)


class TestConcurrency(ProxyTestCase):
    def test_slow_upstream_does_not_serialise_clients(self):
        """Issue item 9, the key test: an upstream that holds its answer to every message
        until the test lets go, 10 clients at once through the proxy: all 10 messages reach
        the upstream while it holds (one at a time they could not), then all get 250."""
        release = threading.Event()
        up = self.start_aio(hold_data=release)
        self.addCleanup(release.set)
        proxy = self.start_proxy(up.port)
        n = 10

        def client(i):
            body = f"Subject: client {i}\r\n\r\nbody {i}\r\n".encode()
            with SMTPClient(proxy.port, timeout=60) as c:
                c.cmd(EHLO)
                r = c.transaction(f"s{i}@b.example", [f"r{i}@d.example"], body, helo=None)
                return [x.code for x in r]

        results = []
        runner = threading.Thread(target=lambda: results.extend(run_threads(n, client, 90)),
                                  daemon=True)
        runner.start()
        up.wait_event("data", n=n, timeout=30)
        release.set()
        runner.join(bound(90))
        self.assertFalse(runner.is_alive())
        self.assertEqual(failures(results), [])
        for i, (_, codes) in enumerate(results):
            self.assertEqual(codes, [250, 250, 354, 250], f"client {i}")
        msgs = up.wait_messages(n)
        self.assertEqual(sorted(m["mail_from"] for m in msgs),
                         sorted(f"s{i}@b.example" for i in range(n)))
        self.assertEqual(up.count("hold expired"), 0)
        self.assertClean(proxy)


class TestRelayClients(ProxyTestCase):
    def test_denied_client(self):
        """Issue item 12: a client outside relay_clients gets 554 5.7.1 at MAIL."""
        up, d = self.start_recording()
        proxy = self.start_proxy(up.port, sets={"relay_clients": "10.0.0.0/8"})
        c = self.connect(proxy)
        c.cmd(EHLO)
        r = c.cmd("MAIL FROM:<a@b.example>")
        self.assertEqual(r.code, 554, r)
        self.assertRegex(r.lines[-1], r"^554 5\.7\.1 ")
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 503)
        self.assertEqual(read_records(d), [])
        self.assertClean(proxy)

    def test_allowed_clients(self):
        for rule in ["127.0.0.1", "10.0.0.0/8, 127.0.0.0/8", "*", "127.0.0.0/30"]:
            with self.subTest(relay_clients=rule):
                up, d = self.start_recording()
                proxy = self.start_proxy(up.port, sets={"relay_clients": rule})
                self.assertEqual(smtp_send(proxy.port, "a@b.example", ["c@d.example"], BODY),
                                 {})
                self.assertEqual(without_received(wait_records(d, 1)[0].data), with_peer(BODY))

    def test_default_allows_loopback_only(self):
        up, d = self.start_recording()
        proxy = self.start_proxy(up.port, sets={"relay_clients": "127.0.0.2"})
        c = self.connect(proxy)
        c.cmd(EHLO)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 554)
        proxy2 = self.start_proxy(up.port)  # default 127.0.0.0/8,::1
        self.assertEqual(smtp_send(proxy2.port, "a@b.example", ["c@d.example"], BODY), {})


if __name__ == "__main__":
    unittest.main()
