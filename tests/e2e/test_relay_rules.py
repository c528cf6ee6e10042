"""The rules every relaying handler (pureproxy, mailman) keeps, case by case from issue 11: each
transaction starts clean upstream, any 2xx after the message is delivery whatever its text,
recipients count once, nothing goes to an upstream that did not offer it, a Received: line on
top, mailman_domains, and mailman's one destination per transaction.

Upstreams: aiosmtpd (AioUpstream, SMTP and LMTP), and a scripted raw server (`Scripted` below)
whose EHLO keywords and replies each test chooses, down to control bytes and over-long lines.
"""

import email.utils
import os
import re
import shutil
import socket
import tempfile
import unittest

from harness import ServerTestCase, free_port, stuff, wait_until
from hostile_upstream import HostileUpstream
from fake_mailman import TOO_MANY, FakeMailman2
from upstreams import AioUpstream, RawServer

EHLO = "EHLO client.example"
SENDER = "alice@example.org"
WARN = r"^\S+ luasmtpd\[\d+\] warn: "
BODY = (b"Subject: rules\r\nFrom: Alice <alice@example.org>\r\n"
        b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n\r\nbody line\r\n")
EIGHT_BIT = b"Subject: bytes\r\n\r\n\xc3\xa9t\xc3\xa9\r\n"
PRINTABLE = re.compile(r"^\d{3}[ -][\x20-\x7e]*$")


def unstuff(data):
    return b"".join(line[1:] if line.startswith(b".") else line
                    for line in data.splitlines(keepends=True))


def split_received(data):
    """(the Received: field's lines, the rest) of a message that starts with one."""
    assert data.startswith(b"Received: "), data[:200]
    lines = data.split(b"\r\n")
    n = 1
    while lines[n][:1] in (b" ", b"\t"):
        n += 1
    return [l.decode() for l in lines[:n]], b"\r\n".join(lines[n:])


RECEIVED = re.compile(r"^Received: from (\S+) \((\[[^\]]+\])\) by (\S+) with (\S+) id (\S+)"
                      r"(?: for <([^>]+)>)?; (.+)$")


def parse_received(lines):
    """The clauses of a folded Received: field, checked against RFC 5321 4.4's order."""
    unfolded = " ".join(l.strip() if i else l for i, l in enumerate(lines))
    m = RECEIVED.match(unfolded)
    assert m, unfolded
    helo, addr, by, proto, ident, rcpt, date = m.groups()
    return {"helo": helo, "addr": addr, "by": by, "with": proto, "id": ident, "for": rcpt,
            "date": email.utils.parsedate_to_datetime(date)}


class Scripted(RawServer):
    """An SMTP (lmtp=True: LMTP) server on a raw socket whose EHLO keywords (`exts`) and
    replies are the test's: `rcpt_replies` {address: reply bytes, or None to hang up}, `final`
    (the reply after the message, bytes, once per recipient over LMTP; None: hang up instead).
    messages: {"mail": MAIL line, "rcpts": [...], "data": bytes unstuffed} per accepted message.
    Events: "mail", ("rcpt", address), "rset", "data_command", "delivered", "quit" (answered
    with 221 to a client still there), "quit without waiting", "peer closed" (no QUIT)."""

    def __init__(self, exts=("8BITMIME", "PIPELINING"), final=b"250 2.0.0 queued as RAW1\r\n",
                 rcpt_replies=None, lmtp=False):
        self.exts = list(exts)
        self.final = final
        self.lmtp = lmtp
        self.rcpt_replies = dict(rcpt_replies or {})
        self.messages = []
        super().__init__(self._serve)

    def _serve(self, server, conn):
        # The proxy keeps its upstream connection between transactions: idle is normal here
        # (close() shuts the socket down to end this thread).
        conn.sock.settimeout(60)
        conn.send("220 raw.example ESMTP\r\n")
        tx = None
        while True:
            try:
                line = conn.readline()
            except (EOFError, OSError):
                self.note("peer closed")
                return
            verb = line[:4].upper()
            if verb == (b"LHLO" if self.lmtp else b"EHLO"):
                lines = ["raw.example", *self.exts]
                conn.send("".join(f"250{'-' if i < len(lines) - 1 else ' '}{l}\r\n"
                                  for i, l in enumerate(lines)))
            elif verb == b"HELO":
                conn.send("250 raw.example\r\n")
            elif verb == b"MAIL":
                tx = {"mail": line.decode("utf-8", "surrogateescape"), "rcpts": []}
                self.note("mail")
                conn.send("250 2.1.0 ok\r\n")
            elif verb == b"RCPT":
                address = line.decode("utf-8", "surrogateescape").split("<", 1)[1].rsplit(">", 1)[0]
                self.note(("rcpt", address))
                reply = self.rcpt_replies.get(address, b"250 2.1.5 ok\r\n")
                if reply is None:
                    self.note("hung up")
                    conn.close()
                    return
                if reply.startswith(b"2"):
                    tx["rcpts"].append(address)
                conn.send(reply)
            elif verb == b"RSET":
                tx = None
                self.note("rset")
                conn.send("250 2.0.0 ok\r\n")
            elif verb == b"DATA":
                self.note("data_command")
                conn.send("354 go ahead\r\n")
                raw = conn.read_until(b"\r\n.\r\n")
                tx["data"] = unstuff(raw[:-3])
                self.messages.append(tx)
                self.note("delivered")
                if self.final is None:
                    self.note("hung up")
                    conn.close()
                    return
                conn.send(self.final * (len(tx["rcpts"]) if self.lmtp else 1))
                tx = None
            elif verb == b"QUIT":
                # A client that does not wait for the 221 closes right after its QUIT (the
                # next system call): its EOF is here within milliseconds. One second without
                # it is a wide margin; only then is the QUIT answered, and counted.
                conn.sock.settimeout(1.0)
                try:
                    eof = conn.buf == b"" and conn.sock.recv(1) == b""
                except socket.timeout:
                    eof = False
                except OSError:
                    eof = True
                if eof:
                    self.note("quit without waiting")
                    return
                self.note("quit")
                conn.send("221 2.0.0 bye\r\n")
                conn.close()
                return
            else:
                conn.send("502 5.5.2 not here\r\n")


class RulesTestCase(ServerTestCase):
    def setUp(self):
        self.mailman2 = FakeMailman2(("test", "foo"))
        self.addCleanup(self.mailman2.close)
        self.calls_dir = self.mailman2.calls_dir
        self.lists_dir = self.mailman2.lists_dir
        self.wrapper = self.mailman2.wrapper
        self.set_exit = self.mailman2.set_exit
        self.calls = self.mailman2.calls

    def start_scripted(self, **kw):
        up = Scripted(**kw)
        self.addCleanup(up.close)
        return up

    def start_aio(self, **kw):
        up = AioUpstream(**kw)
        self.addCleanup(up.close)
        return up

    def start_proxy(self, upstream, handler="pureproxy", sets=None, args=()):
        port = upstream.port if upstream is not None else free_port()
        return self.start_server(handler, sets=sets, args=args, remote=f"127.0.0.1:{port}",
                                 expect_errors=[WARN])

    def start_mailman(self, upstream=None, args=(), **sets):
        sets.setdefault("mailman_wrapper", self.wrapper)
        sets.setdefault("mailman_lists", self.lists_dir)
        sets.setdefault("mailman_timeout", "10")
        sets.setdefault("relay_timeout", "10")
        return self.start_proxy(upstream, "mailman", sets=sets, args=args)

    def session(self, srv, helo=EHLO):
        c = self.connect(srv, timeout=20)
        self.assertEqual(c.cmd(helo).code, 250)
        return c

    def send(self, c, rcpts, body=BODY, mailfrom=SENDER, params=""):
        """MAIL, RCPT..., DATA and the body: all the replies, the last one the final one (or
        the DATA command's if it was refused)."""
        out = [c.cmd(f"MAIL FROM:<{mailfrom}>{params}")]
        for r in rcpts:
            out.append(c.cmd(f"RCPT TO:<{r}>"))
        out.append(c.cmd("DATA"))
        if out[-1].code == 354:
            c.send(stuff(body) + b".\r\n")
            out.append(c.reply(timeout=20))
        return out

    def assertValidReply(self, reply):
        for line in reply.lines:
            self.assertRegex(line, PRINTABLE, reply.lines)
            self.assertLessEqual(len(line) + 2, 512, reply.lines)


class TestEachTransactionStartsClean(RulesTestCase):
    """Item 1: an abandoned transaction (RSET, a message refused for its size) leaves nothing
    behind upstream: the next one has its own sender and only its own recipients."""

    def check_second_alone(self, up):
        up.wait_event("delivered")
        self.assertEqual(len(up.messages), 1, up.messages)
        self.assertEqual(up.messages[0]["mail"], "MAIL FROM:<b@example.org>")
        self.assertEqual(up.messages[0]["rcpts"], ["y@example.net"])

    def test_rset_between_transactions(self):
        for handler in ("mailman", "pureproxy"):
            with self.subTest(handler=handler):
                up = self.start_scripted()
                srv = (self.start_mailman(up) if handler == "mailman"
                       else self.start_proxy(up))
                c = self.session(srv)
                self.assertEqual(c.cmd("MAIL FROM:<a@example.org>").code, 250)
                self.assertEqual(c.cmd("RCPT TO:<x@example.net>").code, 250)
                self.assertEqual(c.cmd("RSET").code, 250)
                r = self.send(c, ["y@example.net"], mailfrom="b@example.org")
                self.assertEqual([x.code for x in r], [250, 250, 354, 250], r)
                self.check_second_alone(up)

    def test_message_refused_for_size_between_transactions(self):
        big = b"Subject: big\r\n\r\n" + b"0123456789" * 500 + b"\r\n"
        for handler in ("mailman", "pureproxy"):
            with self.subTest(handler=handler):
                up = self.start_scripted()
                args = ["-s", "2000"]
                srv = (self.start_mailman(up, args=args) if handler == "mailman"
                       else self.start_proxy(up, args=args))
                c = self.session(srv)
                r = self.send(c, ["x@example.net"], body=big, mailfrom="a@example.org")
                self.assertEqual(r[-1].code, 552, r)
                r = self.send(c, ["y@example.net"], mailfrom="b@example.org")
                self.assertEqual([x.code for x in r], [250, 250, 354, 250], r)
                self.check_second_alone(up)


class TestUpstreamReplyText(RulesTestCase):
    """Item 2: the upstream's code decides; its text only travels on, made a valid reply."""

    def test_any_2xx_is_delivery(self):
        finals = [
            b"250 2.0.0 queued as " + b"Q" * 600 + b"\r\n",          # over 512 bytes
            b"250 2.0.0 queued\x01as X\x00\r\n",                     # control bytes
            b"250-2.0.0 ok \x1b[31m\r\n250 queued \x7f\xff as Y\r\n",  # escape, DEL, 8-bit
        ]
        for final in finals:
            with self.subTest(final=final[:40]):
                up = self.start_scripted(final=final)
                srv = self.start_proxy(up)
                c = self.session(srv)
                r = self.send(c, ["c@d.example"])
                self.assertEqual(r[-1].code, 250, r)
                self.assertValidReply(r[-1])
                self.assertIn("queued", "\n".join(r[-1].lines))
                # The client heard 250, so it will not send again: one copy upstream.
                self.assertEqual(len(up.messages), 1)
                self.assertEqual(c.cmd("NOOP").code, 250)

    def test_refusal_texts_keep_their_code(self):
        cases = [(b"554 5.7.1 no\x00 way\r\n", 554), (b"451 4.3.0 " + b"x" * 700 + b"\r\n", 451)]
        for final, code in cases:
            with self.subTest(final=final[:30]):
                refusal = b"550 5.1.1 no\x01 such\r\n"
                up = self.start_scripted(final=final, rcpt_replies={"bad@d.example": refusal})
                srv = self.start_proxy(up)
                c = self.session(srv)
                r = self.send(c, ["bad@d.example", "c@d.example"])
                self.assertEqual(r[1].lines, ["550 5.1.1 no? such"])
                self.assertEqual(r[-1].code, code, r)
                self.assertValidReply(r[-1])
                # The upstream's own enhanced code, not our "upstream unavailable" 4.4.1.
                self.assertTrue(r[-1].lines[0].startswith(f"{code} {code // 100}."), r[-1].lines)

    def test_lost_answer_after_the_message_is_logged(self):
        """The one case where a 4xx may leave a copy upstream: the answer to the final dot
        never came. The client gets 451, and the log says a copy may be there."""
        up = self.start_scripted(final=None)
        srv = self.start_proxy(up)
        c = self.session(srv)
        r = self.send(c, ["c@d.example"])
        self.assertReply(r[-1], 451, re.compile(r"^451 4\.4\.1 "))
        srv.wait_log(r"warn: .*no answer to the message .*may have kept a copy")

    def test_smtpd_reply(self):
        srv = self.start_server("rules_reply")
        cases = [
            # The enhanced code of a failure goes on every line that has none.
            (554, b"5.7.1 a\r\nb\r\n", ["554-5.7.1 a", "554 5.7.1 b"]),
            (451, b"4.3.0 first\r\n4.7.1 own\r\n\r\nlast\r\n",
             ["451-4.3.0 first", "451-4.7.1 own", "451-4.3.0", "451 4.3.0 last"]),
            # A success's lines are left as the script wrote them.
            (250, b"2.0.0 a\r\nb\r\n", ["250-2.0.0 a", "250 b"]),
            # Control bytes, 8-bit, a tab, a long line: a valid reply all the same.
            (250, b"ok\x01\x7f\xc3\xa9\tend\r\n" + b"y" * 600 + b"\r\n",
             ["250-ok???? end", "250 " + "y" * 506]),
        ]
        for code, text, want in cases:
            with self.subTest(code=code, text=text[:20]):
                c = self.session(srv)
                r = self.send(c, ["c@d.example"], body=b"X-Code: %d\r\n\r\n" % code + text)
                self.assertEqual(r[-1].lines, want)


class TestRecipientsCountOnce(RulesTestCase):
    """Item 3: a recipient given twice is one recipient: one RCPT upstream, one wrapper run,
    one LMTP recipient. Decision: list names and LMTP addresses fold case entirely (Mailman
    does); a relayed address folds only its domain (only the upstream may say whether "Bob"
    and "bob" are one mailbox, and folding two into one would cost one of them its copy)."""

    def test_pureproxy_relays_a_duplicate_once(self):
        up = self.start_aio()
        srv = self.start_proxy(up)
        c = self.session(srv)
        r = self.send(c, ["c@d.example", "c@d.example", "c@D.Example", "C@d.example"])
        self.assertEqual([x.code for x in r], [250, 250, 250, 250, 250, 354, 250], r)
        (msg,) = up.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["c@d.example", "C@d.example"])
        self.assertEqual(up.count(("rcpt", "c@d.example")), 1)
        self.assertEqual(up.count(("rcpt", "c@D.Example")), 0)

    def test_mailman_posts_once(self):
        """One destination per transaction (the others get 452): the duplicates of each."""
        up = self.start_aio()
        srv = self.start_mailman(up)
        c = self.session(srv)
        r = self.send(c, ["test@lists.example", "TEST@Lists.Example", "test@lists.example",
                          "test-request@lists.example", "bob@example.net"])
        self.assertEqual([x.code for x in r], [250, 250, 250, 250, 452, 452, 354, 250], r)
        r = self.send(c, ["test-request@lists.example", "Test-Request@lists.example",
                          "bob@example.net"])
        self.assertEqual([x.code for x in r], [250, 250, 250, 452, 354, 250], r)
        r = self.send(c, ["bob@example.net", "bob@EXAMPLE.net"])
        self.assertEqual([x.code for x in r], [250, 250, 250, 354, 250], r)
        self.assertEqual([argv for argv, _ in self.calls()],
                         [["post", "test"], ["request", "test"]])
        (msg,) = up.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["bob@example.net"])
        self.assertEqual(up.count(("rcpt", "bob@EXAMPLE.net")), 0)

    def test_mailman3_asks_once(self):
        lmtp = self.start_aio(lmtp=True)
        srv = self.start_mailman(None, mailman_lmtp=f"127.0.0.1:{lmtp.port}")
        c = self.session(srv)
        r = self.send(c, ["ant@lists.example", "ANT@lists.example", "ant@lists.example"])
        self.assertTrue(all(x.code in (250, 354) for x in r), r)
        (msg,) = lmtp.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["ant@lists.example"])
        self.assertEqual(lmtp.count(("rcpt", "ANT@lists.example")), 0)


class TestNothingTheUpstreamDidNotOffer(RulesTestCase):
    """Item 4: with SMTPUTF8 (-u) or 8-bit data, an upstream that does not offer the extension
    gets nothing it cannot take, and the client a permanent RFC 3463 refusal (X.6.7, X.6.3),
    never 451 (its retries would fail forever). Each check below that the upstream did NOT get
    a command looks after our client's reply to it: the proxy sends upstream before it
    answers, so a command it sent would be in the upstream's events by then."""

    def test_utf8_sender_refused_at_mail(self):
        up = self.start_scripted(exts=())
        srv = self.start_proxy(up, args=["-u"])
        c = self.session(srv)
        r = c.cmd("MAIL FROM:<dé@b.example> SMTPUTF8")
        self.assertReply(r, 553, re.compile(r"^553 5\.6\.7 "))
        self.assertEqual(up.count("mail"), 0)

    def test_utf8_recipient_refused_at_rcpt(self):
        up = self.start_scripted(exts=("8BITMIME",))
        srv = self.start_proxy(up, args=["-u"])
        c = self.session(srv)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example> SMTPUTF8").code, 250)
        self.assertReply(c.cmd("RCPT TO:<ü@d.example>"), 553, re.compile(r"^553 5\.6\.7 "))
        self.assertEqual(up.count(("rcpt", "ü@d.example")), 0)
        # The transaction goes on with ASCII recipients, without SMTPUTF8 upstream.
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(stuff(BODY) + b".\r\n")
        self.assertEqual(c.reply().code, 250)
        self.assertEqual(up.messages[0]["mail"], "MAIL FROM:<a@b.example>")

    def test_utf8_headers_refused_without_smtputf8(self):
        up = self.start_scripted(exts=("8BITMIME",))
        srv = self.start_proxy(up, args=["-u"])
        c = self.session(srv)
        r = self.send(c, ["c@d.example"], body="Subject: é\r\n\r\nx\r\n".encode(),
                      mailfrom="a@b.example", params=" SMTPUTF8")
        self.assertReply(r[-1], 554, re.compile(r"^554 5\.6\.7 "))
        self.assertEqual(up.count("data_command"), 0)

    def test_8bit_body_refused_without_8bitmime(self):
        up = self.start_scripted(exts=())
        srv = self.start_proxy(up)
        c = self.session(srv)
        r = self.send(c, ["c@d.example"], body=EIGHT_BIT, params=" BODY=8BITMIME")
        self.assertReply(r[-1], 554, "554 5.6.3 Conversion required but not supported")
        self.assertEqual(up.count("data_command"), 0)
        # Declared 8BITMIME but 7-bit in fact: that goes, without the parameter.
        r = self.send(c, ["c@d.example"], params=" BODY=8BITMIME")
        self.assertEqual(r[-1].code, 250, r)
        self.assertEqual(up.messages[0]["mail"], f"MAIL FROM:<{SENDER}>")

    def test_over_the_upstream_size_refused_before_sending(self):
        up = self.start_scripted(exts=("8BITMIME", "SIZE 1000"))
        srv = self.start_proxy(up)
        c = self.session(srv)
        body = b"Subject: big\r\n\r\n" + b"x" * 3000 + b"\r\n"
        r = self.send(c, ["c@d.example"], body=body)
        self.assertReply(r[-1], 552, re.compile(r"^552 5\.3\.4 "))
        self.assertEqual(up.count("data_command"), 0)

    def test_quoted_address_is_carried_or_refused_for_good(self):
        """Issue item 8: a quoted local part holding ">" passes our parser. The relay client
        carries it, or, if it cannot, the client hears 553: never the 451 of a script error,
        which it would retry forever."""
        up = self.start_scripted()
        srv = self.start_proxy(up)
        c = self.session(srv)
        for command, address in (("MAIL FROM", '"a>b"@b.example'), ("RCPT TO", '"c>d"@d.example')):
            r = c.cmd(f"{command}:<{address}>")
            if r.code == 250:
                up.wait_event("mail" if command == "MAIL FROM" else ("rcpt", address))
            else:
                self.assertReply(r, 553, re.compile(r"^553 5\.1\.3 "))
                if command == "MAIL FROM":
                    self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(stuff(BODY) + b".\r\n")
        self.assertEqual(c.reply().code, 250)

    def test_mailman_refuses_the_whole_message_before_any_delivery(self):
        """The list recipient is deferred (452), so the refusal leaves it no copy either."""
        up = self.start_scripted(exts=())
        srv = self.start_mailman(up)
        c = self.session(srv)
        r = self.send(c, ["bob@example.net", "test@lists.example"], body=EIGHT_BIT)
        self.assertReply(r[2], 452, TOO_MANY)
        self.assertReply(r[-1], 554, re.compile(r"^554 5\.6\.3 "))
        self.assertEqual(self.calls(), [])
        self.assertEqual(up.count("data_command"), 0)


class TestReceived(RulesTestCase):
    """Item 5: a Received: line (RFC 5321 4.4) on top of every message passed on."""

    def check_received(self, data, srv, rcpt, helo="client.example", proto="ESMTP"):
        lines, rest = split_received(data)
        for line in lines:
            self.assertLessEqual(len(line), 78, lines)
        got = parse_received(lines)
        self.assertEqual(got["helo"], helo)
        self.assertEqual(got["addr"], "[127.0.0.1]")
        self.assertEqual(got["by"], "test.example")  # the server's --hostname
        self.assertEqual(got["with"], proto)
        self.assertEqual(got["for"], rcpt)
        self.assertIsNotNone(got["date"].tzinfo)
        # The id is the one our log line for the transaction shows (the session's number
        # until the core gives transactions their own).
        line = srv.wait_log(rf"session \d+: message .*(?:\bid {re.escape(got['id'])}\b)|"
                            rf"session {re.escape(got['id'])}: message ")
        self.assertTrue(line)
        return rest

    def test_second_greeting_names_the_client(self):
        """RFC 5321 4.1.4: after a second EHLO, Received: names the client by it."""
        up = self.start_aio()
        srv = self.start_proxy(up)
        c = self.session(srv, helo="EHLO first.example")
        self.assertEqual(c.cmd("HELO second.example").code, 250)
        self.assertEqual(self.send(c, ["c@d.example"])[-1].code, 250)
        (one,) = up.wait_messages(1)
        self.check_received(one["data"], srv, "c@d.example", helo="second.example", proto="SMTP")

    def test_pureproxy(self):
        up = self.start_aio()
        srv = self.start_proxy(up)
        c = self.session(srv)
        self.assertEqual(self.send(c, ["c@d.example"])[-1].code, 250)
        self.assertEqual(self.send(c, ["c@d.example", "e@d.example"])[-1].code, 250)
        one, two = up.wait_messages(2)
        rest = self.check_received(one["data"], srv, "c@d.example")
        # X-Peer stays where Python's PureProxy put it: last in the headers.
        self.assertEqual(rest, BODY.replace(b"\r\n\r\n", b"\r\nX-Peer: 127.0.0.1\r\n\r\n"))
        self.check_received(two["data"], srv, None)  # two recipients: no "for"

    def test_mailman_everywhere_it_delivers(self):
        up = self.start_aio()
        srv = self.start_mailman(up)
        c = self.session(srv)
        self.assertEqual(self.send(c, ["test@lists.example"])[-1].code, 250)
        ((argv, wrapped),) = self.calls()
        self.assertEqual(self.check_received(wrapped, srv, "test@lists.example"), BODY)
        self.assertEqual(self.send(c, ["bob@example.net"])[-1].code, 250)
        (msg,) = up.wait_messages(1)
        self.assertEqual(self.check_received(msg["data"], srv, "bob@example.net"), BODY)

        lmtp = self.start_aio(lmtp=True)
        srv3 = self.start_mailman(up, mailman_lmtp=f"127.0.0.1:{lmtp.port}")
        c = self.session(srv3)
        self.assertEqual(self.send(c, ["ant@lists.example"])[-1].code, 250)
        (msg,) = lmtp.wait_messages(1)
        self.assertEqual(self.check_received(msg["data"], srv3, "ant@lists.example"), BODY)

    def test_user_script_and_folding(self):
        d = tempfile.mkdtemp(prefix="rules-rec-")
        self.addCleanup(shutil.rmtree, d, True)
        srv = self.start_server("rules_received", sets={"dir": d})
        helo = "h" * 50 + ".example"
        c = self.session(srv, helo=f"EHLO {helo}")
        self.assertEqual(self.send(c, ["somebody.with.a.long.name@d.example"])[-1].code, 250)
        path = os.path.join(d, "1.eml")
        wait_until(lambda: os.path.exists(path), 10, what="the fixture's message")
        with open(path, "rb") as f:
            data = f.read()
        lines, rest = split_received(data)
        self.assertGreater(len(lines), 2, lines)  # folded
        self.assertEqual(rest, BODY)
        self.check_received(data, srv, "somebody.with.a.long.name@d.example", helo=helo)

    def test_helo_gives_smtp(self):
        d = tempfile.mkdtemp(prefix="rules-rec-")
        self.addCleanup(shutil.rmtree, d, True)
        srv = self.start_server("rules_received", sets={"dir": d})
        c = self.session(srv, helo="HELO client.example")
        self.assertEqual(self.send(c, ["c@d.example"])[-1].code, 250)
        path = os.path.join(d, "1.eml")
        wait_until(lambda: os.path.exists(path), 10, what="the fixture's message")
        with open(os.path.join(d, "1.esmtp")) as f:
            if f.read() == "nil":
                self.skipTest("the core does not tell scripts HELO from EHLO (options.esmtp)")
        with open(path, "rb") as f:
            self.check_received(f.read(), srv, "c@d.example", proto="SMTP")


class TestMailmanDomains(RulesTestCase):
    """Item 6: mailman_domains, Mailman down, and the upstream's queue id."""

    def test_only_list_domains_have_lists(self):
        up = self.start_aio()
        srv = self.start_mailman(up, mailman_domains="lists.example, Other-Lists.example")
        c = self.session(srv)
        self.assertEqual(c.cmd(f"MAIL FROM:<{SENDER}>").code, 250)
        self.assertReply(c.cmd("RCPT TO:<nolist@lists.example>"), 550,
                         "550 5.1.1 No such list")
        self.assertReply(c.cmd("RCPT TO:<bob@other-lists.EXAMPLE>"), 550,
                         "550 5.1.1 No such list")
        self.assertEqual(c.cmd("RCPT TO:<test@lists.example>").code, 250)
        # Lists, and not lists, of other destinations: deferred; no list still gets 550.
        self.assertReply(c.cmd("RCPT TO:<foo@other-lists.example>"), 452, TOO_MANY)
        self.assertReply(c.cmd("RCPT TO:<test@example.net>"), 452, TOO_MANY)
        self.assertReply(c.cmd("RCPT TO:<nolist@lists.example>"), 550,
                         "550 5.1.1 No such list")
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(stuff(BODY) + b".\r\n")
        self.assertEqual(c.reply().code, 250)
        self.assertEqual(self.send(c, ["foo@other-lists.example"])[-1].code, 250)
        self.assertEqual([argv for argv, _ in self.calls()], [["post", "foo"], ["post", "test"]])
        # A list's name at another domain is no list: relayed.
        self.assertEqual(self.send(c, ["test@example.net", "bob@example.net"])[-1].code, 250)
        (msg,) = up.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["test@example.net", "bob@example.net"])

    def test_wrapper_missing_defers_list_mail_only(self):
        up = self.start_aio()
        srv = self.start_mailman(up, mailman_wrapper=os.path.join(self.calls_dir, "missing"))
        c = self.session(srv)
        self.assertEqual(c.cmd(f"MAIL FROM:<{SENDER}>").code, 250)
        self.assertReply(c.cmd("RCPT TO:<test@lists.example>"), 451,
                         re.compile(r"^451 4\.4\.1 "))
        self.assertEqual(c.cmd("RCPT TO:<bob@example.net>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(stuff(BODY) + b".\r\n")
        self.assertEqual(c.reply().code, 250)
        (msg,) = up.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["bob@example.net"])

    def test_lmtp_down_defers_list_domains_only(self):
        up = self.start_aio()
        srv = self.start_mailman(up, mailman_lmtp=f"127.0.0.1:{free_port()}",
                                 mailman_domains="lists.example")
        c = self.session(srv)
        self.assertEqual(c.cmd(f"MAIL FROM:<{SENDER}>").code, 250)
        self.assertReply(c.cmd("RCPT TO:<ant@lists.example>"), 451,
                         "451 4.4.1 Mailing list service unavailable, try again later")
        self.assertEqual(c.cmd("RCPT TO:<bob@example.net>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(stuff(BODY) + b".\r\n")
        self.assertEqual(c.reply().code, 250)
        (msg,) = up.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["bob@example.net"])

    def test_lmtp_ends_with_quit(self):
        """Mailman 3 logs "Connection lost" for an LMTP client that hangs up without QUIT: the
        session ends with QUIT and its 221, after a delivery and after an abandoned
        transaction alike."""
        lmtp = self.start_scripted(lmtp=True, final=b"250 2.0.0 delivered\r\n")
        srv = self.start_mailman(None, mailman_lmtp=f"127.0.0.1:{lmtp.port}")
        c = self.session(srv)
        self.assertEqual(self.send(c, ["ant@lists.example"])[-1].code, 250)
        lmtp.wait_event("quit")
        self.assertEqual(c.cmd(f"MAIL FROM:<{SENDER}>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<bee@lists.example>").code, 250)
        self.assertEqual(c.cmd("RSET").code, 250)
        self.assertEqual(c.cmd(f"MAIL FROM:<{SENDER}>").code, 250)
        lmtp.wait_event("quit", n=2)
        self.assertEqual(lmtp.count("quit without waiting"), 0)
        self.assertEqual(lmtp.count("peer closed"), 0)

    def test_one_upstream_reply_passed_on(self):
        up = self.start_aio()
        lmtp = self.start_aio(lmtp=True)
        srv = self.start_mailman(up, mailman_lmtp=f"127.0.0.1:{lmtp.port}",
                                 mailman_domains="lists.example")
        c = self.session(srv)
        self.assertEqual(self.send(c, ["bob@example.net"])[-1].lines,
                         ["250 2.0.0 queued as aio"])
        self.assertEqual(self.send(c, ["ant@lists.example"])[-1].lines,
                         ["250 2.0.0 <ant@lists.example> delivered"])
        # There is only ever one: the transaction's destination.
        r = self.send(c, ["ant@lists.example", "bob@example.net"])
        self.assertReply(r[2], 452, TOO_MANY)
        self.assertEqual(r[-1].lines, ["250 2.0.0 <ant@lists.example> delivered"])
        r = self.send(c, ["bob@example.net", "ant@lists.example"])
        self.assertReply(r[2], 452, TOO_MANY)
        self.assertEqual(r[-1].lines, ["250 2.0.0 queued as aio"])


class TestOneDestination(RulesTestCase):
    """Item 7: mailman has no queue, so a transaction has one destination (the upstream, one
    Mailman 3 address, one wrapper command for one list), fixed by its first accepted
    recipient; a recipient for another gets TOO_MANY (452: the client sends it in another
    transaction). The destination's answer after the message is the client's, and a 4xx or
    5xx leaves no copy anywhere, since nothing else was given the message. Each check that
    something did NOT get a copy looks after the client's reply to the final dot: the server
    answers only after the upstream's DATA, the LMTP session and the wrapper are over, so a
    copy sent anywhere would be recorded by then."""

    def test_upstream_refusal_leaves_no_copy(self):
        for final in (b"451 4.7.1 greylisted\r\n", b"554 5.7.1 no thanks\r\n"):
            with self.subTest(final=final):
                up = self.start_scripted(final=final)
                srv = self.start_mailman(up)
                c = self.session(srv)
                r = self.send(c, ["bob@example.net", "test@lists.example"])
                self.assertReply(r[2], 452, TOO_MANY)
                self.assertEqual(r[-1].lines, [final.decode().strip()])
                self.assertEqual(self.calls(), [])

    def test_upstream_lost_after_a_recipient_was_taken(self):
        """The upstream took bob, then went away: bob's copy cannot go, so the message gets
        451 (not 250 with bob left out), and the list, deferred, has nothing to repeat."""
        up = self.start_scripted(rcpt_replies={"carol@example.net": None})
        srv = self.start_mailman(up)
        c = self.session(srv)
        r = self.send(c, ["bob@example.net", "carol@example.net", "test@lists.example"])
        self.assertEqual([x.code for x in r], [250, 250, 451, 452, 354, 451], r)
        self.assertEqual(self.calls(), [])
        self.assertEqual(up.messages, [])

    def test_wrapper_tempfail_where_the_upstream_would_take_it(self):
        """Before: the upstream took bob's copy, then the wrapper failed (75) and the client
        got 451 and sent bob a second copy with its retry. Now bob is another transaction's,
        and a client that retries what it was told to retry gets one copy everywhere."""
        up = self.start_aio()
        srv = self.start_mailman(up)
        self.set_exit(75)
        c = self.session(srv)
        r = self.send(c, ["test@lists.example", "bob@example.net"])
        self.assertReply(r[2], 452, TOO_MANY)
        self.assertReply(r[-1], 451, re.compile(r"^451 4\.3\.0 Delivery deferred: "))
        self.assertValidReply(r[-1])
        self.assertEqual(len(r[-1].lines), 1, r[-1])  # no "already delivered" to tell of
        self.assertEqual(up.count(("rcpt", "bob@example.net")), 0)
        self.assertEqual(up.messages, [])
        srv.wait_log(r"warn: script: mailman post test: 451")
        # The client's next transactions: the 452'd recipient, then, once the wrapper works,
        # the list again.
        self.assertEqual(self.send(c, ["bob@example.net"])[-1].code, 250)
        self.set_exit(0)
        self.assertEqual(self.send(c, ["test@lists.example"])[-1].code, 250)
        (msg,) = up.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["bob@example.net"])
        # Two runs of the wrapper: the one that exited 75 (EX_TEMPFAIL: Mailman kept nothing)
        # and the one that took it.
        self.assertEqual([argv for argv, _ in self.calls()], [["post", "test"]] * 2)
        self.assertEqual(len(up.messages), 1)

    def test_two_commands_of_one_list(self):
        srv = self.start_mailman(None)
        self.set_exit(75, "request")
        c = self.session(srv)
        r = self.send(c, ["test-request@lists.example", "test@lists.example"])
        self.assertReply(r[2], 452, TOO_MANY)
        self.assertEqual(r[-1].code, 451, r)
        self.assertEqual(r[-1].lines, [r[-1].lines[0]])
        # The post, which would reach every subscriber, was this transaction's to defer.
        self.assertEqual([argv for argv, _ in self.calls()], [["request", "test"]])
        self.assertEqual(self.send(c, ["test@lists.example"])[-1].code, 250)
        self.assertEqual([argv for argv, _ in self.calls()],
                         [["post", "test"], ["request", "test"]])

    def test_lmtp_answer_is_the_answer(self):
        """One Mailman 3 address per transaction: LMTP's reply for it is the client's, its
        text cleaned; the second address is not even put to Mailman (it would be this
        message's recipient then)."""
        lmtp = self.start_aio(lmtp=True,
                              data_replies={"bee@lists.example": "452 4.2.2 full\x01"})
        srv = self.start_mailman(None, mailman_lmtp=f"127.0.0.1:{lmtp.port}")
        c = self.session(srv)
        r = self.send(c, ["ant@lists.example", "bee@lists.example"])
        self.assertReply(r[2], 452, TOO_MANY)
        self.assertEqual(r[-1].lines, ["250 2.0.0 <ant@lists.example> delivered"])
        self.assertEqual(lmtp.count(("rcpt", "bee@lists.example")), 0)
        r = self.send(c, ["bee@lists.example"])
        self.assertEqual(r[-1].lines, ["452 4.2.2 full?"])
        self.assertEqual([m["rcpt_tos"] for m in lmtp.wait_messages(2)],
                         [["ant@lists.example"], ["bee@lists.example"]])

    def test_lmtp_refusing_data_is_permanent(self):
        """Mailman 3 refusing the DATA command with a 5xx: nothing went, and the refusal is
        the client's answer (its text passed on), not a 451 retried for ever."""
        lmtp = HostileUpstream({"data": "554 5.7.1 this list takes no mail"}, lmtp=True)
        self.addCleanup(lmtp.close)
        srv = self.start_mailman(None, mailman_lmtp=f"127.0.0.1:{lmtp.port}")
        c = self.session(srv)
        r = self.send(c, ["ant@lists.example"])
        self.assertEqual(r[-2].code, 354, r)
        self.assertEqual(r[-1].lines, ["554 5.7.1 this list takes no mail"])
        self.assertEqual(lmtp.copies(), [])

    def test_lmtp_answer_lost_after_the_message_is_logged(self):
        """The one case where the 451 may leave a copy: Mailman 3 had the whole message,
        then hung up before its answer. The log says a copy may be there."""
        lmtp = self.start_scripted(lmtp=True, final=None)
        srv = self.start_mailman(None, mailman_lmtp=f"127.0.0.1:{lmtp.port}")
        c = self.session(srv)
        r = self.send(c, ["ant@lists.example"])
        self.assertReply(r[-1], 451, re.compile(r"^451 4\.4\.1 Mailing list service failed"))
        self.assertValidReply(r[-1])
        self.assertEqual(len(lmtp.messages), 1)
        srv.wait_log(r"warn: script: mailman lmtp: message to ant@lists\.example: .*Mailman may "
                     r"have kept a copy")

    def test_lmtp_asked_while_relaying_never_gets_the_message(self):
        """With the upstream as the destination, Mailman 3 is still asked about each
        list-looking address (only its answer tells a list from an address to relay). The
        LMTP transaction that took a list's address ends with QUIT, never with the message."""
        up = self.start_scripted()
        lmtp = self.start_scripted(lmtp=True, final=b"250 2.0.0 delivered\r\n",
                                   rcpt_replies={"bob@example.net": b"550 5.1.1 no list\r\n"})
        srv = self.start_mailman(up, mailman_lmtp=f"127.0.0.1:{lmtp.port}")
        c = self.session(srv)
        r = self.send(c, ["bob@example.net", "ant@lists.example"])
        self.assertEqual([x.code for x in r], [250, 250, 452, 354, 250], r)
        self.assertEqual(r[-1].lines, ["250 2.0.0 queued as RAW1"])
        self.assertEqual([m["rcpts"] for m in up.messages], [["bob@example.net"]])
        self.assertEqual(lmtp.count(("rcpt", "ant@lists.example")), 1)
        lmtp.wait_event("quit")
        self.assertEqual(lmtp.count("data_command"), 0)
        self.assertEqual(lmtp.messages, [])
        # The next transaction delivers the list's copy, over LMTP alone.
        r = self.send(c, ["ant@lists.example"])
        self.assertEqual(r[-1].lines, ["250 2.0.0 delivered"])
        self.assertEqual([m["rcpts"] for m in lmtp.messages], [["ant@lists.example"]])
        self.assertEqual(len(up.messages), 1)


if __name__ == "__main__":
    unittest.main()
