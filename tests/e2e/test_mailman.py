"""The bundled mailman handler (`-c mailman` / `-c MailmanProxy`).

Mailman 2 mode runs against a stand-in wrapper this test writes (it records its argv and stdin,
and exits with the status in a file) and a lists directory it makes; Mailman 3 mode against
aiosmtpd's LMTP server. Recipients that are not list mail go to an upstream smtp-sink (or
aiosmtpd where a test counts what the upstream was asked).

A transaction has one destination (the upstream, one Mailman 3 address, one wrapper command):
a recipient for another gets TOO_MANY, and `deliver` below sends it again in a later
transaction, as a client that honours that 452 (Postfix's) does."""

import email.utils
import unittest

from harness import ServerTestCase, stuff, wait_until, without_received
from fake_mailman import TOO_MANY, FakeMailman2
from upstreams import AioUpstream, SmtpSink, parse_sink_dump, sink_body

EHLO = "EHLO client.example"
WARN = r" warn: "
SENDER = "sender@example.org"
MESSAGE = (b"From: Alice <alice@example.org>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
           b"Subject: hello list\r\nMessage-ID: <m1@example.org>\r\n\r\n"
           b"body line\r\n..dotted\r\n")
BARE = b"Subject: no from, no date\r\n\r\nbody\r\n"


def headers_of(data):
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    out = []
    for line in head.split("\r\n"):
        name, _, value = line.partition(":")
        out.append((name.lower(), value.strip()))
    return out


class MailmanTestCase(ServerTestCase):
    def setUp(self):
        self.mailman2 = FakeMailman2(("test", "foo", "foo-bar"))
        self.addCleanup(self.mailman2.close)
        self.calls_dir = self.mailman2.calls_dir
        self.lists_dir = self.mailman2.lists_dir
        self.wrapper = self.mailman2.wrapper
        self.set_exit = self.mailman2.set_exit
        self.calls = self.mailman2.calls

    def start_sink(self):
        sink = SmtpSink()
        self.addCleanup(sink.close)
        return sink

    def start_mailman(self, sink=None, handler="mailman", **sets):
        sets.setdefault("mailman_wrapper", self.wrapper)
        sets.setdefault("mailman_lists", self.lists_dir)
        sets.setdefault("mailman_timeout", "10")
        sets.setdefault("relay_timeout", "10")
        # With no sink the upstream is a port nobody listens on: relaying there would be seen.
        remote = f"127.0.0.1:{sink.port}" if sink else "127.0.0.1:9"
        return self.start_server(handler, sets=sets, remote=remote, expect_errors=[WARN])

    def send(self, srv, rcpts, data=MESSAGE, mailfrom=SENDER):
        c = self.connect(srv, timeout=15)
        return c.transaction(mailfrom, rcpts, stuff(data), helo=EHLO)

    def assertAccepted(self, replies):
        for r in replies:
            self.assertIn(r.code, (250, 354), replies)

    def deliver(self, srv, rcpts, data=MESSAGE, mailfrom=SENDER):
        """Sends to `rcpts` as a client that keeps each recipient refused with TOO_MANY for
        its next transaction. Every other RCPT must get 250 and every message 250. Returns the
        recipients of each transaction, in order. Each transaction has its own connection:
        the server counts every 452 toward --max-errors (20 a connection), which ten list
        commands given together would pass over a few rounds on one."""
        groups, left = [], list(rcpts)
        while left:
            # Each round takes at least one recipient (asserted below): bounded by len(rcpts).
            self.assertLessEqual(len(groups), len(rcpts), groups)
            c = self.connect(srv, timeout=15)
            self.assertEqual(c.cmd(EHLO).code, 250)
            self.assertReply(c.cmd(f"MAIL FROM:<{mailfrom}>"), 250)
            took, later = [], []
            for r in left:
                reply = c.cmd(f"RCPT TO:<{r}>")
                if reply.code == 452:
                    self.assertReply(reply, 452, TOO_MANY)
                    later.append(r)
                else:
                    self.assertReply(reply, 250, msg=f"RCPT {r}: {reply.lines}")
                    took.append(r)
            self.assertTrue(took, f"every one of {left} deferred")
            self.assertReply(c.cmd("DATA"), 354)
            c.send(stuff(data) + b".\r\n")
            self.assertReply(c.reply(), 250)
            groups.append(took)
            left = later
            c.close()
        return groups


class TestMailman2(MailmanTestCase):
    def test_every_suffix(self):
        srv = self.start_mailman()
        rcpts = {
            "test@lists.example": ["post", "test"],
            "test-admin@lists.example": ["admin", "test"],
            "test-owner@lists.example": ["owner", "test"],
            "test-request@lists.example": ["request", "test"],
            "test-join@lists.example": ["join", "test"],
            "test-leave@lists.example": ["leave", "test"],
            "test-bounces@lists.example": ["bounces", "test"],
            "test-confirm@lists.example": ["confirm", "test"],
            "test-subscribe@lists.example": ["subscribe", "test"],
            "test-unsubscribe@lists.example": ["unsubscribe", "test"],
        }
        # One list command per transaction: ten of them.
        self.assertEqual(self.deliver(srv, list(rcpts)), [[r] for r in rcpts])
        got = sorted(argv for argv, _ in self.calls())
        self.assertEqual(got, sorted(rcpts.values()))

    def test_python_class_name(self):
        srv = self.start_mailman(handler="MailmanProxy")
        self.assertAccepted(self.send(srv, ["test@lists.example"]))
        self.assertEqual([argv for argv, _ in self.calls()], [["post", "test"]])

    def test_hyphenated_list_names_longest_match(self):
        srv = self.start_mailman()
        cases = {
            "foo-bar-admin@lists.example": ["admin", "foo-bar"],
            "foo-admin@lists.example": ["admin", "foo"],
            "foo-bar@lists.example": ["post", "foo-bar"],
            "foo@lists.example": ["post", "foo"],
            "foo-bar-request@lists.example": ["request", "foo-bar"],
            # upper case local part
            "FOO-BAR-Owner@Lists.Example": ["owner", "foo-bar"],
            "TEST@lists.example": ["post", "test"],
            # Mailman 2's VERP'd confirmation address: list-confirm+cookie
            "test-confirm+0123abcd@lists.example": ["confirm", "test"],
        }
        self.assertEqual(self.deliver(srv, list(cases)), [[r] for r in cases])
        self.assertEqual(sorted(argv for argv, _ in self.calls()), sorted(cases.values()))

    def test_non_list_recipients_go_upstream(self):
        sink = self.start_sink()
        srv = self.start_mailman(sink)
        # list-looking, but no such list; a list name with a suffix no wrapper knows; a
        # plain address
        others = ["nolist-admin@lists.example", "nolist@lists.example",
                  "foo-baz@lists.example", "bob@example.net"]
        groups = self.deliver(srv, ["test@lists.example", *others, "foo-bar-admin@lists.example"])
        self.assertEqual(groups, [["test@lists.example"], others,
                                  ["foo-bar-admin@lists.example"]])
        self.assertEqual(sorted(argv for argv, _ in self.calls()),
                         [["admin", "foo-bar"], ["post", "test"]])
        wait_until(lambda: sink.dumps(), 10, what="the upstream got the message")
        (dump,) = sink.dumps()
        fields, body = parse_sink_dump(dump)
        self.assertEqual(sorted(fields["X-Rcpt-Args"]), sorted(f"<{r}>" for r in others))
        self.assertEqual(fields["X-Mail-Args"], [f"<{SENDER}>"])
        self.assertEqual(without_received(body, b"\n"), sink_body(MESSAGE))

    def test_only_non_list_recipients(self):
        sink = self.start_sink()
        srv = self.start_mailman(sink)
        self.assertAccepted(self.send(srv, ["bob@example.net"]))
        wait_until(lambda: sink.dumps(), 10, what="the upstream got the message")
        self.assertEqual(self.calls(), [])

    def test_from_and_date_added_when_missing(self):
        srv = self.start_mailman()
        self.assertAccepted(self.send(srv, ["test@lists.example"], data=BARE))
        ((argv, data),) = self.calls()
        heads = headers_of(data)
        froms = [v for k, v in heads if k == "from"]
        dates = [v for k, v in heads if k == "date"]
        self.assertEqual(froms, [SENDER])
        self.assertEqual(len(dates), 1, heads)
        # RFC 5322 3.3: "Mon, 01 Jan 2024 10:00:00 +0000"
        self.assertRegex(dates[0], r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{1,2} "
                                   r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
                                   r"\d\d:\d\d:\d\d [+-]\d{4}$")
        self.assertIsNotNone(email.utils.parsedate_to_datetime(dates[0]))
        self.assertTrue(data.endswith(b"\r\n\r\nbody\r\n"), data)

    def test_from_and_date_kept_when_present(self):
        srv = self.start_mailman()
        self.assertAccepted(self.send(srv, ["test@lists.example"]))
        ((argv, data),) = self.calls()
        self.assertEqual(without_received(data), MESSAGE)

    def test_join_and_leave_subject_for_that_delivery_alone(self):
        srv = self.start_mailman()
        self.deliver(srv, ["test-join@lists.example", "test@lists.example",
                           "foo-leave@lists.example", "foo-bar-request@lists.example"])
        by_cmd = {tuple(argv): data for argv, data in self.calls()}
        self.assertEqual(sorted(by_cmd), [("join", "test"), ("leave", "foo"),
                                          ("post", "test"), ("request", "foo-bar")])

        def subjects(data):
            return [v for k, v in headers_of(data) if k == "subject"]

        self.assertEqual(subjects(by_cmd[("join", "test")]), ["subscribe"])
        self.assertEqual(subjects(by_cmd[("leave", "foo")]), ["unsubscribe"])
        self.assertEqual(subjects(by_cmd[("post", "test")]), ["hello list"])
        self.assertEqual(subjects(by_cmd[("request", "foo-bar")]), ["hello list"])
        self.assertEqual(without_received(by_cmd[("post", "test")]), MESSAGE)

    def test_wrapper_tempfail_gives_451(self):
        srv = self.start_mailman()
        self.set_exit(75)
        replies = self.send(srv, ["test@lists.example"])
        self.assertReply(replies[-1], 451)
        self.assertEqual(len(self.calls()), 1)
        srv.wait_log(r"warn: script: mailman post test: 451")

    def test_wrapper_killed_after_it_had_the_message_is_logged(self):
        """The one way a 451 from the wrapper may leave a copy: it was killed at
        mailman_timeout after it read the message (Mailman may have posted it). The log
        says so."""
        srv = self.start_mailman(mailman_timeout="5")
        self.mailman2.set_hang(120)  # far past the timeout: the server kills it at 5 s
        replies = self.send(srv, ["test@lists.example"])
        self.assertReply(replies[-1], 451)
        self.assertEqual(len(self.calls()), 1)
        srv.wait_log(r"warn: script: mailman post test: the wrapper ended by timeout after it "
                     r"had the message; Mailman may have kept a copy")

    def test_wrapper_failure_gives_554(self):
        srv = self.start_mailman()
        self.set_exit(1)
        replies = self.send(srv, ["test@lists.example"])
        self.assertReply(replies[-1], 554)
        self.assertEqual(len(self.calls()), 1)

    def test_relay_denied_but_lists_accepted(self):
        sink = self.start_sink()
        srv = self.start_mailman(sink, relay_clients="10.0.0.0/8")
        c = self.connect(srv, timeout=15)
        c.cmd(EHLO)
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd("RCPT TO:<bob@example.net>"), 554,
                         "554 5.7.1 Relaying denied for 127.0.0.1")
        self.assertReply(c.cmd("RCPT TO:<test@lists.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<nolist-admin@lists.example>"), 554)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(stuff(MESSAGE) + b".\r\n")
        self.assertReply(c.reply(), 250)
        self.assertEqual([argv for argv, _ in self.calls()], [["post", "test"]])
        self.assertEqual(sink.dumps(), [])


class TestOneDestination(MailmanTestCase):
    """Mailman 2 and the upstream: a transaction's first accepted recipient fixes where its
    message goes; one that needs another destination gets TOO_MANY and nothing of this
    transaction. A check that a destination did NOT get something is made after the client's
    reply to the final dot: the server asks the upstream at RCPT time and waits for the
    upstream's DATA and for the wrapper's exit before it answers, so anything it sent is
    recorded by then."""

    def start_upstream(self):
        up = AioUpstream()
        self.addCleanup(up.close)
        return up

    def transaction(self, c, rcpts, codes):
        """MAIL, the RCPTs (each expected to get its code in `codes`: 250 or TOO_MANY's 452),
        DATA, the message; returns the final reply."""
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        for r, code in zip(rcpts, codes, strict=True):
            reply = c.cmd(f"RCPT TO:<{r}>")
            if code == 452:
                self.assertReply(reply, 452, TOO_MANY)
            else:
                self.assertReply(reply, code, msg=f"RCPT {r}: {reply.lines}")
        self.assertReply(c.cmd("DATA"), 354)
        c.send(stuff(MESSAGE) + b".\r\n")
        return c.reply()

    def test_list_then_relayed(self):
        up = self.start_upstream()
        srv = self.start_mailman(up)
        c = self.connect(srv, timeout=15)
        c.cmd(EHLO)
        final = self.transaction(c, ["test@lists.example", "bob@example.net"], [250, 452])
        self.assertReply(final, 250)
        self.assertEqual([argv for argv, _ in self.calls()], [["post", "test"]])
        self.assertEqual(up.count(("rcpt", "bob@example.net")), 0)  # never even asked
        self.assertEqual(up.messages, [])
        # The client's next transaction: bob alone, and the list has no second copy.
        self.assertReply(self.transaction(c, ["bob@example.net"], [250]), 250)
        (msg,) = up.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["bob@example.net"])
        self.assertEqual(len(self.calls()), 1)

    def test_relayed_then_list(self):
        up = self.start_upstream()
        srv = self.start_mailman(up)
        c = self.connect(srv, timeout=15)
        c.cmd(EHLO)
        final = self.transaction(c, ["bob@example.net", "test@lists.example"], [250, 452])
        self.assertEqual(final.lines, ["250 2.0.0 queued as aio"])  # the upstream's own reply
        (msg,) = up.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["bob@example.net"])
        self.assertEqual(self.calls(), [])
        self.assertReply(self.transaction(c, ["test@lists.example"], [250]), 250)
        self.assertEqual([argv for argv, _ in self.calls()], [["post", "test"]])
        self.assertEqual(len(up.messages), 1)

    def test_two_lists_and_two_commands(self):
        srv = self.start_mailman()
        rcpts = ["test@lists.example", "foo@lists.example", "test-request@lists.example"]
        self.assertEqual(self.deliver(srv, rcpts), [[r] for r in rcpts])
        runs = sorted(self.calls())
        self.assertEqual([argv for argv, _ in runs],
                         [["post", "foo"], ["post", "test"], ["request", "test"]])
        for (argv, data), rcpt in zip(runs, ["foo@lists.example", "test@lists.example",
                                             "test-request@lists.example"]):
            self.assertIn(f"for <{rcpt}>".encode(), data.split(b"\r\n\r\n")[0])

    def test_refused_recipients_fix_nothing(self):
        """A refused recipient is no destination: the first one accepted fixes it."""
        up = self.start_upstream()
        srv = self.start_mailman(up, relay_clients="10.0.0.0/8")
        c = self.connect(srv, timeout=15)
        c.cmd(EHLO)
        final = self.transaction(c, ["bob@example.net", "test@lists.example",
                                     "carol@example.net", "foo@lists.example"],
                                 [554, 250, 554, 452])
        self.assertReply(final, 250)
        self.assertEqual([argv for argv, _ in self.calls()], [["post", "test"]])

    def test_duplicates_count_once(self):
        up = self.start_upstream()
        srv = self.start_mailman(up)
        groups = self.deliver(srv, [
            "test@lists.example", "TEST@Lists.Example", "test+tag@lists.example",
            "bob@example.net", "bob@EXAMPLE.NET",
            "test-request@lists.example", "Test-Request@lists.example"])
        self.assertEqual(groups, [
            ["test@lists.example", "TEST@Lists.Example", "test+tag@lists.example"],
            ["bob@example.net", "bob@EXAMPLE.NET"],
            ["test-request@lists.example", "Test-Request@lists.example"]])
        self.assertEqual(sorted(argv for argv, _ in self.calls()),
                         [["post", "test"], ["request", "test"]])
        (msg,) = up.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["bob@example.net"])
        self.assertEqual(up.count(("rcpt", "bob@EXAMPLE.NET")), 0)


class TestMailman3(MailmanTestCase):
    def start_lmtp(self):
        """aiosmtpd's LMTP server standing in for Mailman 3: RCPT is accepted for the
        addresses of known lists, refused '550 5.1.1 no such list' otherwise."""
        lists = {"ant", "ant-request", "bee", "bee-bounces"}

        def refusal(address):
            local = address.lower().partition("@")[0]
            return None if local in lists else "550 5.1.1 no such list"
        lmtp = AioUpstream(lmtp=True, refuse_rcpt=refusal, hostname="mailman3.example")
        self.addCleanup(lmtp.close)
        return lmtp

    def test_list_mail_over_lmtp_rest_upstream(self):
        lmtp = self.start_lmtp()
        sink = self.start_sink()
        srv = self.start_mailman(sink, mailman_lmtp=f"127.0.0.1:{lmtp.port}")
        lists = ["ant@lists.example", "ant-request@lists.example", "bee-bounces@lists.example"]
        others = ["bob@example.net", "nolist-admin@lists.example"]
        groups = self.deliver(srv, [lists[0], others[0], lists[1], others[1], lists[2]])
        # 1: ant, the rest deferred without asking Mailman (it would have delivered to them
        # too). 2: the relayed ones; Mailman is asked about each and the lists it takes are
        # deferred. 3, 4: one list address each.
        self.assertEqual(groups, [[lists[0]], others, [lists[1]], [lists[2]]])
        got = lmtp.wait_messages(3)
        self.assertEqual([m["rcpt_tos"] for m in got], [[l] for l in lists])
        for m in got:
            self.assertEqual(m["mail_from"], SENDER)
            self.assertEqual(without_received(m["data"]), MESSAGE)
        # Asked once, in the transaction that relayed it, not in the first.
        self.assertEqual(lmtp.count(("rcpt", "bob@example.net")), 1)
        wait_until(lambda: sink.dumps(), 10, what="the upstream got the message")
        (dump,) = sink.dumps()
        fields, body = parse_sink_dump(dump)
        self.assertEqual(fields["X-Rcpt-Args"], [f"<{r}>" for r in others])
        self.assertEqual(without_received(body, b"\n"), sink_body(MESSAGE))
        self.assertEqual(self.calls(), [])  # no Mailman 2 wrapper in this mode

    def test_only_list_mail(self):
        lmtp = self.start_lmtp()
        srv = self.start_mailman(None, mailman_lmtp=f"127.0.0.1:{lmtp.port}")
        self.assertAccepted(self.send(srv, ["ant@lists.example"]))
        (got,) = lmtp.wait_messages(1)
        self.assertEqual(got["rcpt_tos"], ["ant@lists.example"])

    def test_only_non_list_mail(self):
        """Every address looks like a list to ask Mailman about; when Mailman refuses them all,
        the message is plain relay mail and must get the upstream's 250. (A 451 here would
        make the client send it again and again, and the upstream get it each time.)"""
        lmtp = self.start_lmtp()
        sink = self.start_sink()
        srv = self.start_mailman(sink, mailman_lmtp=f"127.0.0.1:{lmtp.port}")
        replies = self.send(srv, ["bob@example.net"])
        wait_until(lambda: sink.dumps(), 10, what="the upstream got the message")
        self.assertEqual(len(sink.dumps()), 1)
        self.assertEqual(lmtp.messages, [])
        self.assertAccepted(replies)

    def test_lmtp_down_defers_list_looking_recipients(self):
        from harness import free_port
        srv = self.start_mailman(None, mailman_lmtp=f"127.0.0.1:{free_port()}")
        c = self.connect(srv, timeout=15)
        c.cmd(EHLO)
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd("RCPT TO:<ant@lists.example>"), 451,
                         "451 4.4.1 Mailing list service unavailable, try again later")


    def test_two_list_recipients(self):
        """LMTP answers per recipient; two would be two answers for one message. The second
        is not even put to Mailman (it would be a recipient of this message then)."""
        lmtp = self.start_lmtp()
        srv = self.start_mailman(None, mailman_lmtp=f"127.0.0.1:{lmtp.port}")
        c = self.connect(srv, timeout=15)
        c.cmd(EHLO)
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd("RCPT TO:<ant@lists.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<bee@lists.example>"), 452, TOO_MANY)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(stuff(MESSAGE) + b".\r\n")
        self.assertReply(c.reply(), 250, "250 2.0.0 <ant@lists.example> delivered")
        (got,) = lmtp.wait_messages(1)
        self.assertEqual(got["rcpt_tos"], ["ant@lists.example"])
        # Looked at after the 452: the server answers a RCPT only after Mailman answered it.
        self.assertEqual(lmtp.count(("rcpt", "bee@lists.example")), 0)
        self.assertEqual(self.deliver(srv, ["bee@lists.example"]), [["bee@lists.example"]])
        self.assertEqual([m["rcpt_tos"] for m in lmtp.wait_messages(2)],
                         [["ant@lists.example"], ["bee@lists.example"]])

    def test_relayed_then_list_never_reaches_mailman(self):
        """With the upstream as the destination, Mailman is still asked whether an address is
        a list (else it could not be relayed); the LMTP transaction that took the list's
        address never gets the message."""
        lmtp = self.start_lmtp()
        up = AioUpstream()
        self.addCleanup(up.close)
        srv = self.start_mailman(up, mailman_lmtp=f"127.0.0.1:{lmtp.port}")
        c = self.connect(srv, timeout=15)
        c.cmd(EHLO)
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd("RCPT TO:<bob@example.net>"), 250)
        self.assertReply(c.cmd("RCPT TO:<ant@lists.example>"), 452, TOO_MANY)
        self.assertReply(c.cmd("RCPT TO:<carol@example.net>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(stuff(MESSAGE) + b".\r\n")
        self.assertReply(c.reply(), 250, "250 2.0.0 queued as aio")
        (msg,) = up.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["bob@example.net", "carol@example.net"])
        self.assertEqual(lmtp.count(("rcpt", "ant@lists.example")), 1)  # it was asked
        # The reply after the message came after the LMTP session ended: a DATA there would
        # have been answered (and noted) before it.
        self.assertEqual(lmtp.count("data"), 0)
        self.assertEqual(lmtp.messages, [])

    def test_duplicates_count_once(self):
        lmtp = self.start_lmtp()
        srv = self.start_mailman(None, mailman_lmtp=f"127.0.0.1:{lmtp.port}")
        groups = self.deliver(srv, ["ant@lists.example", "ANT@Lists.Example",
                                    "bee@lists.example", "Bee@lists.example"])
        self.assertEqual(groups, [["ant@lists.example", "ANT@Lists.Example"],
                                  ["bee@lists.example", "Bee@lists.example"]])
        self.assertEqual([m["rcpt_tos"] for m in lmtp.wait_messages(2)],
                         [["ant@lists.example"], ["bee@lists.example"]])
        # Every RCPT was answered, so Mailman has been asked all it will be asked.
        self.assertEqual(lmtp.count(("rcpt", "ANT@Lists.Example")), 0)
        self.assertEqual(lmtp.count(("rcpt", "Bee@lists.example")), 0)


if __name__ == "__main__":
    unittest.main()
