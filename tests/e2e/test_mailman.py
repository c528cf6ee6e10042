"""The bundled mailman handler (`-c mailman` / `-c MailmanProxy`).

Mailman 2 mode runs against a stand-in wrapper this test writes (it records its argv and stdin,
and exits with the status in a file) and a lists directory it makes; Mailman 3 mode against
aiosmtpd's LMTP server. Recipients that are not list mail go to an upstream smtp-sink."""

import email.utils
import os
import shutil
import stat
import tempfile
import unittest

from harness import ServerTestCase, wait_until, without_received
from upstreams import AioUpstream, SmtpSink, parse_sink_dump, sink_body

EHLO = "EHLO client.example"
WARN = r" warn: "
SENDER = "sender@example.org"
MESSAGE = (b"From: Alice <alice@example.org>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
           b"Subject: hello list\r\nMessage-ID: <m1@example.org>\r\n\r\n"
           b"body line\r\n..dotted\r\n")
BARE = b"Subject: no from, no date\r\n\r\nbody\r\n"

# The stand-in for Mailman 2's mail wrapper: one call.N.argv / call.N.stdin per run; the exit
# status is the number in DIR/exit (0 when missing). The server gives its children only PATH,
# so the directory is written into the script.
WRAPPER = r"""#!/bin/sh
d='@DIR@'
tmp=$(mktemp "$d/tmp.XXXXXX") || exit 70
cat > "$tmp.stdin"
printf '%s\n' "$@" > "$tmp.argv"
mv "$tmp.stdin" "$tmp.call.stdin"
mv "$tmp.argv" "$tmp.call.argv"
rm -f "$tmp"
read code < "$d/exit" 2>/dev/null || code=0
echo "wrapper exiting $code"
exit "$code"
"""


def stuff(data):
    return b"".join(b"." + line if line.startswith(b".") else line
                    for line in data.splitlines(keepends=True))


def headers_of(data):
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    out = []
    for line in head.split("\r\n"):
        name, _, value = line.partition(":")
        out.append((name.lower(), value.strip()))
    return out


class MailmanTestCase(ServerTestCase):
    def setUp(self):
        self.calls_dir = tempfile.mkdtemp(prefix="mailman-calls-")
        self.lists_dir = tempfile.mkdtemp(prefix="mailman-lists-")
        self.addCleanup(shutil.rmtree, self.calls_dir, True)
        self.addCleanup(shutil.rmtree, self.lists_dir, True)
        for name in ("test", "foo", "foo-bar"):
            os.mkdir(os.path.join(self.lists_dir, name))
        self.wrapper = os.path.join(self.calls_dir, "wrapper")
        with open(self.wrapper, "w") as f:
            f.write(WRAPPER.replace("@DIR@", self.calls_dir))
        os.chmod(self.wrapper, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH |
                 stat.S_IXOTH)

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

    def set_exit(self, code):
        with open(os.path.join(self.calls_dir, "exit"), "w") as f:
            f.write(f"{code}\n")

    def calls(self):
        """[(argv list, stdin bytes)] of the wrapper's finished runs, in no particular order."""
        out = []
        for name in sorted(os.listdir(self.calls_dir)):
            if name.endswith(".call.argv"):
                base = os.path.join(self.calls_dir, name[:-len(".argv")])
                with open(base + ".argv") as f:
                    argv = f.read().splitlines()
                with open(base + ".stdin", "rb") as f:
                    out.append((argv, f.read()))
        return out

    def send(self, srv, rcpts, data=MESSAGE, mailfrom=SENDER):
        c = self.connect(srv, timeout=15)
        return c.transaction(mailfrom, rcpts, stuff(data), helo=EHLO)

    def assertAccepted(self, replies):
        for r in replies:
            self.assertIn(r.code, (250, 354), replies)


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
        self.assertAccepted(self.send(srv, list(rcpts)))
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
        self.assertAccepted(self.send(srv, list(cases)))
        self.assertEqual(sorted(argv for argv, _ in self.calls()), sorted(cases.values()))

    def test_non_list_recipients_go_upstream(self):
        sink = self.start_sink()
        srv = self.start_mailman(sink)
        # list-looking, but no such list; a list name with a suffix no wrapper knows; a
        # plain address
        others = ["nolist-admin@lists.example", "nolist@lists.example",
                  "foo-baz@lists.example", "bob@example.net"]
        replies = self.send(srv, ["test@lists.example", *others, "foo-bar-admin@lists.example"])
        self.assertAccepted(replies)
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
        self.assertAccepted(self.send(srv, ["test-join@lists.example", "test@lists.example",
                                            "foo-leave@lists.example",
                                            "foo-bar-request@lists.example"]))
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
        self.assertAccepted(self.send(srv, [lists[0], others[0], lists[1], others[1],
                                            lists[2]]))
        (got,) = lmtp.wait_messages(1)
        self.assertEqual(got["mail_from"], SENDER)
        self.assertEqual(got["rcpt_tos"], lists)
        self.assertEqual(without_received(got["data"]), MESSAGE)
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


if __name__ == "__main__":
    unittest.main()
