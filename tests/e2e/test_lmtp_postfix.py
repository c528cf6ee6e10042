"""Postfix's lmtp delivery agent delivering into `--lmtp` (RFC 2033): a real Postfix instance
(postfix_instance.py; root and /usr/sbin/postfix needed, else skipped saying why) whose
default_transport is lmtp:inet:127.0.0.1:PORT, fed over SMTP. Each recipient's reply after the
message decides that recipient's fate in Postfix: a 250 is sent, a 550 bounced, a 452 deferred,
as its log says recipient by recipient."""

import re
import shutil
import smtplib
import tempfile
import unittest

from harness import REPLY_TIMEOUT, ServerTestCase, free_port, wait_until
from postfix_instance import PostfixInstance, postfix_usable, smtpd_service

WHY_NOT = postfix_usable()


@unittest.skipIf(WHY_NOT, f"no Postfix instance: {WHY_NOT}")
class TestPostfixLmtpDelivers(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="luasmtpd-pf-lmtp-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def start_postfix(self, lmtp_port):
        self.pf_port = free_port()
        pf = PostfixInstance(self.dir, services=[smtpd_service(self.pf_port)],
                             transport=("lmtp", lmtp_port))
        self.addCleanup(pf.stop)
        pf.wait_ready(self.pf_port)
        return pf

    def wait_maillog(self, pf, regex, timeout=60):
        pattern = re.compile(regex, re.M)
        return wait_until(lambda: pattern.search(pf.log()), timeout,
                          what=f"Postfix's log to say {regex!r}; it has:\n{pf.log()[-3000:]}")

    def test_each_recipient_gets_its_own_fate(self):
        srv = self.start_server("lmtp_replies", args=["--lmtp"])
        pf = self.start_postfix(srv.port)
        rcpts = ["yes1@example.net", "no1@example.net", "full1@example.net", "plain@example.net"]
        with smtplib.SMTP("127.0.0.1", self.pf_port, timeout=REPLY_TIMEOUT) as c:
            refused = c.sendmail("table@example.org", rcpts,
                                 "From: table@example.org\r\nSubject: per recipient\r\n\r\nhi\r\n")
        self.assertEqual(refused, {})
        relay = rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{srv.port}"
        self.wait_maillog(pf, rf"to=<yes1@example\.net>, {relay},.* status=sent "
                              rf"\(250 2\.1\.5 <yes1@example\.net> delivered\)")
        self.wait_maillog(pf, rf"to=<plain@example\.net>, {relay},.* status=sent \(250 2\.0\.0 OK\)")
        self.wait_maillog(pf, rf"to=<no1@example\.net>, {relay},.* status=bounced \(host "
                              rf".* said: 550 5\.1\.1 <no1@example\.net> no such user")
        self.wait_maillog(pf, rf"to=<full1@example\.net>, {relay},.* status=deferred \(host "
                              rf".* said: 452 4\.2\.2 <full1@example\.net> mailbox full")
        # One LMTP transaction for the four (Postfix sorts its recipients: the order is its).
        line = srv.wait_log(r"message 1 from <table@example\.org> for 4 recipient\(s\).*: "
                            r"(\d{3}) (\d{3}) (\d{3}) (\d{3}) \(generation")
        self.assertEqual(sorted(line.groups()), ["250", "250", "452", "550"])
        self.assertNotRegex(pf.log(), r"to=<(yes1|plain)@example\.net>.* status=(deferred|bounced)")
        # The bounce for no1 comes back to the sender through us, from the null sender.
        srv.wait_log(r"message \d+ from <> for 1 recipient\(s\).*: 250 \(generation", timeout=60)

    def test_handler_error_defers_every_recipient(self):
        srv = self.start_server("lmtp_replies", args=["--lmtp"],
                                expect_errors=[r"process_message failed"])
        pf = self.start_postfix(srv.port)
        with smtplib.SMTP("127.0.0.1", self.pf_port, timeout=REPLY_TIMEOUT) as c:
            c.sendmail("error@example.org", ["a@example.net", "b@example.net"],
                       "Subject: fails\r\n\r\nhi\r\n")
        for rcpt in ("a", "b"):
            self.wait_maillog(pf, rf"to=<{rcpt}@example\.net>, .* status=deferred \(host .* "
                                  rf"said: 451 4\.3\.0 Error: the message handler failed")
        self.assertNotRegex(pf.log(), r"status=(sent|bounced)")


if __name__ == "__main__":
    unittest.main()
