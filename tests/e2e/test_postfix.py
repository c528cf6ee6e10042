"""A real Postfix on either side of us (issue 14): Postfix's smtp client relaying to luasmtpd
over STARTTLS, the certificate verified against the test's own, with the message arriving
once and our Received: line saying ESMTPS; and pureproxy relaying to a Postfix smtpd that
requires STARTTLS and AUTH (Cyrus SASL with a sasldb of the test's own), which passes the
message on to a recording luasmtpd. The Postfix instance is postfix_instance.py's (root and
/usr/sbin/postfix needed, saslpasswd2 for AUTH; CI has them, so there these tests run, and
elsewhere they are skipped saying why). Certificates come from test_tls's helpers."""

import os
import re
import shutil
import smtplib
import subprocess
import unittest

from harness import (REPLY_TIMEOUT, bound, free_port, read_records, stuff, wait_records,
                     wait_until)
from postfix_instance import PostfixInstance, postfix_usable, smtpd_service
from test_tls import TlsCase

WHY_NOT = postfix_usable()


@unittest.skipIf(WHY_NOT, f"no Postfix instance: {WHY_NOT}")
class PostfixCase(TlsCase):
    def start_postfix(self, smtpd_options=(), **kw):
        """A Postfix instance with an smtpd on a free port (self.pf_port) taking mail from
        127.0.0.1; stopped when the test ends."""
        self.pf_port = free_port()
        pf = PostfixInstance(self.dir, services=[smtpd_service(self.pf_port, *smtpd_options)],
                             **kw)
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

    def test_smtputf8_mail_is_taken_by_default(self):
        """Issue 15: Postfix bounced SMTPUTF8 mail to us when we offered SMTPUTF8 only with
        -u. Offered by default now, a UTF-8 sender arrives as it was; with --no-smtputf8 the
        same mail bounces ("SMTPUTF8 is required, but was not offered"), so the test can
        tell."""
        def deliver(args):
            srv, rec = self.start_recording(args=args)
            pf = self.start_postfix(transport=("smtp", srv.port),
                                    main={"smtputf8_enable": "yes"})
            c = smtplib.SMTP("127.0.0.1", self.pf_port, timeout=REPLY_TIMEOUT)
            self.addCleanup(c.close)
            refused = c.sendmail("j\u00f6rg@example.org", ["bob@example.net"],
                                 "Subject: utf8\r\n\r\nhi\r\n".encode(),
                                 mail_options=["SMTPUTF8"])
            self.assertEqual(refused, {})
            c.quit()
            return rec, pf

        rec, pf = deliver([])
        record = wait_records(rec, 1, timeout=60)[0]
        self.assertEqual(record.mailfrom, "j\u00f6rg@example.org")
        self.assertIn("SMTPUTF8", record.mail_options)
        self.wait_maillog(pf, r"to=<bob@example\.net>, relay=127\.0\.0\.1.* status=sent")
        rec, pf = deliver(["--no-smtputf8"])
        self.wait_maillog(pf, r"SMTPUTF8 is required, but was not offered")
        self.assertEqual(read_records(rec), [])

    def test_encrypt_level_refuses_a_server_without_starttls(self):
        # The test above could pass on a plaintext delivery only if Postfix's TLS setting were
        # not in force: without our certificate, `encrypt` defers the message instead.
        srv, rec = self.start_recording()
        pf = self.start_postfix(transport=("smtp", srv.port),
                                main={"smtp_tls_security_level": "encrypt"})
        self.inject("must not arrive in plaintext")
        self.wait_maillog(pf, r"status=deferred \(TLS is required, but was not offered")
        self.assertEqual(read_records(rec), [])


USER, PASSWORD = "relayuser", "s3cret-Pa55 word"
# pureproxy warns that it relays for its clients; not an error of these tests.
WARN_LINE = r"^\S+ luasmtpd\[\d+\] warn: "


@unittest.skipUnless(shutil.which("saslpasswd2"), "no saslpasswd2 (sasl2-bin) for Postfix's AUTH")
class TestPureproxyToPostfix(PostfixCase):
    """pureproxy -> Postfix smtpd (STARTTLS and AUTH required) -> a recording luasmtpd."""

    def sasl_config(self):
        """Cyrus SASL for Postfix's smtpd: a sasldb holding USER, and the smtpd.conf naming it
        (for the instance's etc/sasl/)."""
        import pwd
        d = os.path.join(self.dir, "sasldb")
        os.mkdir(d)
        os.chmod(d, 0o755)
        db = os.path.join(d, "sasldb2")
        subprocess.run(["saslpasswd2", "-f", db, "-c", "-p", "-u", "postfix.test", USER],
                       input=PASSWORD.encode(), check=True, capture_output=True,
                       timeout=bound(30))
        os.chown(db, pwd.getpwnam("postfix").pw_uid, -1)  # smtpd reads it as user postfix
        return (f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\n"
                f"sasldb_path: {db}\n")

    def relay(self, password):
        """The whole chain; returns (pureproxy's answer to our DATA, records, Postfix)."""
        sink, rec = self.start_recording()
        pf = self.start_postfix(
            transport=("smtp", sink.port),
            smtpd_options=["smtpd_tls_security_level=encrypt", "smtpd_tls_auth_only=yes",
                           "smtpd_sasl_auth_enable=yes",
                           "smtpd_relay_restrictions=permit_sasl_authenticated,reject"],
            main={"smtpd_tls_cert_file": self.cert, "smtpd_tls_key_file": self.key,
                  "smtpd_sasl_type": "cyrus", "smtpd_sasl_path": "smtpd",
                  "smtpd_sasl_local_domain": "postfix.test"},
            etc_files={"sasl/smtpd.conf": self.sasl_config()})
        pw = os.path.join(self.dir, "relay-password")
        with open(pw, "w") as f:
            f.write(password + "\n")
        proxy = self.start_server("pureproxy", remote=f"127.0.0.1:{self.pf_port}",
                                  expect_errors=[WARN_LINE],
                                  sets={"relay_tls": "require", "relay_user": USER,
                                        "relay_password_file": pw,
                                        "relay_cafile": self.cert})
        c = self.connect(proxy)
        self.assertEqual(c.cmd("EHLO client.example").code, 250)
        # pureproxy opens the upstream at MAIL and asks it per recipient: a refusal may come
        # at either.
        for line in ("MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.net>"):
            r = c.cmd(line)
            if r.code != 250:
                return r, rec, pf
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(stuff(b"Subject: via Postfix\r\n\r\nhi\r\n") + b".\r\n")
        return c.reply(timeout=bound(60)), rec, pf

    def test_relays_through_starttls_and_auth(self):
        reply, rec, pf = self.relay(PASSWORD)
        self.assertEqual(reply.code, 250, (reply.lines, pf.log()[-3000:]))
        record = wait_records(rec, 1, timeout=60)[0]
        self.assertEqual(record.rcpttos, ["bob@example.net"])
        self.assertIn(b"\r\nSubject: via Postfix\r\n", record.data)
        self.assertRegex(pf.log(), r"TLS connection established from \S+\[127\.0\.0\.1\]")
        self.assertRegex(pf.log(), rf"sasl_method=(PLAIN|LOGIN), sasl_username={USER}")
        self.wait_maillog(pf, r"to=<bob@example\.net>, relay=127\.0\.0\.1.* status=sent")
        self.assertEqual(len(read_records(rec)), 1)

    def test_wrong_password_is_refused_and_nothing_relayed(self):
        reply, rec, pf = self.relay("not the password")
        self.assertIn(reply.code // 100, (4, 5), reply.lines)
        self.wait_maillog(pf, r"SASL (PLAIN|LOGIN) authentication failed")
        self.assertNotRegex(pf.log(), r"status=sent")
        self.assertEqual(read_records(rec), [])


if __name__ == "__main__":
    unittest.main()
