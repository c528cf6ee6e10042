"""A real Postfix on either side of us (issue 14): Postfix's smtp client relaying to luasmtpd
over STARTTLS, the certificate verified against the test's own, with the message arriving
once and our Received: line saying ESMTPS. The Postfix instance is postfix_instance.py's
(root and /usr/sbin/postfix needed; CI has both, so there these tests run, and elsewhere they
are skipped saying why). Certificates come from test_tls's helpers."""

import os
import re
import smtplib
import unittest

from harness import REPLY_TIMEOUT, free_port, read_records, wait_records, wait_until
from postfix_instance import PostfixInstance, postfix_usable, smtpd_service
from test_tls import TlsCase

WHY_NOT = postfix_usable()


@unittest.skipIf(WHY_NOT, f"no Postfix instance: {WHY_NOT}")
class PostfixCase(TlsCase):
    def start_postfix(self, **kw):
        """A Postfix instance with an smtpd on a free port (self.pf_port) taking mail from
        127.0.0.1; stopped when the test ends."""
        self.pf_port = free_port()
        pf = PostfixInstance(self.dir, services=[smtpd_service(self.pf_port)], **kw)
        self.addCleanup(pf.stop)
        pf.wait_ready(self.pf_port)
        return pf

    def inject(self, subject, rcpt="bob@example.net"):
        c = smtplib.SMTP("127.0.0.1", self.pf_port, timeout=REPLY_TIMEOUT)
        self.addCleanup(c.close)
        refused = c.sendmail("alice@example.org", [rcpt],
                             f"From: alice@example.org\r\nSubject: {subject}\r\n\r\nhi\r\n")
        self.assertEqual(refused, {})
        c.quit()

    def wait_maillog(self, pf, regex, timeout=60):
        """The first line of Postfix's log matching regex, waited for."""
        pattern = re.compile(regex, re.M)
        return wait_until(lambda: pattern.search(pf.log()), timeout,
                          what=f"Postfix's log to say {regex!r}; it has:\n{pf.log()[-2000:]}")


class TestPostfixDeliversToUs(PostfixCase):
    def test_smtp_client_over_verified_starttls(self):
        srv, rec = self.start_recording(args=self.tls_args(), sets={"received": "1"})
        # [localhost], as the certificate names it: `verify` checks the chain against our CA
        # file and the name against the next hop's.
        pf = self.start_postfix(transport=("smtp", srv.port, "localhost"),
                                main={"smtp_tls_security_level": "verify",
                                      "smtp_tls_CAfile": self.cert})
        self.inject("through Postfix")
        record = wait_records(rec, 1, timeout=60)[0]
        self.assertEqual(record.rcpttos, ["bob@example.net"])
        self.assertEqual(record.mailfrom, "alice@example.org")
        self.assertEqual(record.helo, "postfix.test")
        unfolded = re.sub(rb"\r\n[ \t]+", b" ", record.data)
        self.assertRegex(unfolded.split(b"\r\n", 1)[0],
                         rb"^Received: from postfix\.test \(\[127\.0\.0\.1\]\) by test\.example "
                         rb"with ESMTPS id ")
        self.assertIn(b"\r\nSubject: through Postfix\r\n", record.data)
        self.wait_maillog(pf, r"Verified TLS connection established to "
                              rf"localhost\[127\.0\.0\.1\]:{srv.port}: TLSv1\.[23] ")
        self.wait_maillog(pf, rf"to=<bob@example\.net>, relay=localhost\[127\.0\.0\.1\]:"
                              rf"{srv.port},.* status=sent \(250 ")
        srv.wait_log(r"session \d+: TLS TLSv1\.[23], ")
        # Postfix said sent: nothing of it is left to try again, and one copy came.
        self.assertEqual(len(read_records(rec)), 1)
        self.assertNotRegex(pf.log(), r"status=(deferred|bounced)")

    def test_encrypt_level_refuses_a_server_without_starttls(self):
        # The test above could pass on a plaintext delivery only if Postfix's TLS setting were
        # not in force: without our certificate, `encrypt` defers the message instead.
        srv, rec = self.start_recording()
        pf = self.start_postfix(transport=("smtp", srv.port),
                                main={"smtp_tls_security_level": "encrypt"})
        self.inject("must not arrive in plaintext")
        self.wait_maillog(pf, r"status=deferred \(TLS is required, but was not offered")
        self.assertEqual(read_records(rec), [])


if __name__ == "__main__":
    unittest.main()
