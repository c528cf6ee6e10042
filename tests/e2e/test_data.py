"""DATA: what the handler receives, byte for byte (handlers/record.lua writes it to files), from
raw sockets, smtplib, curl and swaks."""

import hashlib
import os
import smtplib
import subprocess
import socket
import tempfile
import unittest

from harness import ServerTestCase, read_records, tcp_queues, wait_records, wait_until

EHLO = "EHLO client.example"


class TestData(ServerTestCase):
    def setUp(self):
        self.srv, self.dir = self.start_recording()

    def raw_message(self, body, mail="MAIL FROM:<a@b.example>", rcpts=("c@d.example",)):
        """Sends `body` (raw bytes after the 354, including the final dot) and returns the
        final reply and the client."""
        c = self.connect(self.srv)
        self.assertEqual(c.cmd(EHLO).code, 250)
        self.assertEqual(c.cmd(mail).code, 250)
        for r in rcpts:
            self.assertEqual(c.cmd(f"RCPT TO:<{r}>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(body)
        return c.reply(), c

    def only_record(self):
        recs = read_records(self.dir)
        self.assertEqual(len(recs), 1, recs)
        return recs[0]

    def test_simple_message_and_envelope(self):
        r, c = self.raw_message(b"Subject: hi\r\n\r\nhello\r\n.\r\n",
                                rcpts=("c@d.example", "e@f.example"))
        self.assertEqual(r.lines, ["250 2.0.0 OK"])
        rec = self.only_record()
        self.assertEqual(rec.data, b"Subject: hi\r\n\r\nhello\r\n")
        self.assertEqual(rec.mailfrom, "a@b.example")
        self.assertEqual(rec.rcpttos, ["c@d.example", "e@f.example"])
        self.assertEqual(rec.peer, ("127.0.0.1", c.local_port()))
        self.assertEqual(rec.helo, "client.example")

    def test_dot_stuffing_round_trip_smtplib(self):
        msg = (b"Subject: dots\r\n\r\n"
               b".\r\n"
               b"..\r\n"
               b"...\r\n"
               b".leading dot\r\n"
               b"..two leading dots\r\n"
               b"middle . dot\r\n"
               b" .\r\n"
               b"end.\r\n"
               b".\r\n")
        with smtplib.SMTP("127.0.0.1", self.srv.port, timeout=10) as s:
            refused = s.sendmail("a@b.example", ["c@d.example"], msg)
        self.assertEqual(refused, {})
        self.assertEqual(self.only_record().data, msg)

    def test_dot_unstuffing_raw(self):
        r, _ = self.raw_message(b"..\r\n...x\r\n.y\r\nz\r\n.\r\n")
        self.assertEqual(r.code, 250)
        self.assertEqual(self.only_record().data, b".\r\n..x\r\ny\r\nz\r\n")

    def test_bare_lf_stored_as_crlf(self):
        # (the final CRLF.CRLF must be real: "\n.\r\n" would not end the message)
        r, _ = self.raw_message(b"Subject: lf\n\nline one\nline two\r\nline three\r\n.\r\n")
        self.assertEqual(r.code, 250)
        self.assertEqual(self.only_record().data,
                         b"Subject: lf\r\n\r\nline one\r\nline two\r\nline three\r\n")

    def test_no_smuggling(self):
        """\\n.\\n, \\r\\n.\\n and \\n.\\r\\n never end the message: what follows them stays
        message text, and only CRLF.CRLF ends it. Exactly one message, one reply."""
        body = (b"Subject: smuggle\r\n\r\n"
                b"a\n.\nMAIL FROM:<x@y>\nRCPT TO:<z@w>\nDATA\nsmuggled-1\n"
                b"b\r\n.\nMAIL FROM:<x@y>\r\nRCPT TO:<z@w>\r\nDATA\r\nsmuggled-2\r\n"
                b"c\n.\r\nMAIL FROM:<x@y>\r\nRCPT TO:<z@w>\r\nDATA\r\nsmuggled-3\r\n"
                b"last line\r\n.\r\n")
        r, c = self.raw_message(body)
        self.assertEqual(r.lines, ["250 2.0.0 OK"])
        # No further replies are pending: the next one is QUIT's.
        self.assertEqual(c.cmd("QUIT").lines, ["221 2.0.0 Bye"])
        self.assertTrue(c.wait_closed(3))
        rec = self.only_record()
        self.assertTrue(rec.data.startswith(b"Subject: smuggle\r\n\r\na\r\n"), rec.data)
        self.assertTrue(rec.data.endswith(b"smuggled-3\r\nlast line\r\n"), rec.data)
        for n in (1, 2, 3):
            self.assertIn(b"MAIL FROM:<x@y>\r\nRCPT TO:<z@w>\r\nDATA\r\nsmuggled-%d\r\n" % n,
                          rec.data)
        self.assertEqual(rec.rcpttos, ["c@d.example"])

    def test_eight_bit_bytes(self):
        line = bytes(b for b in range(256) if b not in (10, 13))
        body = b"Subject: bytes\r\n\r\n" + line + b"\r\n" + line[::-1] + b"\r\n"
        r, _ = self.raw_message(body + b".\r\n", mail="MAIL FROM:<a@b.example> BODY=8BITMIME")
        self.assertEqual(r.code, 250)
        rec = self.only_record()
        self.assertEqual(rec.data, body)
        self.assertEqual(rec.mail_options, ["BODY=8BITMIME"])

    def test_utf8_text(self):
        body = "Subject: gr\u00fc\u00dfe\r\n\r\nna\u00efve caf\u00e9 \u2713 \U0001F600\r\n".encode()
        r, _ = self.raw_message(body + b".\r\n")
        self.assertEqual(r.code, 250)
        self.assertEqual(self.only_record().data, body)

    def test_message_without_final_crlf_in_text(self):
        """The CRLF before the final dot ends the last line: "abc" arrives as "abc\\r\\n"."""
        r, _ = self.raw_message(b"abc\r\n.\r\n")
        self.assertEqual(r.code, 250)
        self.assertEqual(self.only_record().data, b"abc\r\n")

    def test_empty_message(self):
        r, _ = self.raw_message(b".\r\n")
        self.assertEqual(r.lines, ["250 2.0.0 OK"])
        self.assertEqual(self.only_record().data, b"")

    def test_final_dot_split_across_writes(self):
        r_c = self.connect(self.srv)
        r_c.cmd(EHLO)
        r_c.cmd("MAIL FROM:<a@b.example>")
        r_c.cmd("RCPT TO:<c@d.example>")
        r_c.cmd("DATA")
        r_c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ours, theirs = r_c.local_port(), self.srv.port
        for piece in (b"line\r", b"\n", b".", b"\r", b"\n"):
            r_c.send(piece)
            # The server has read this piece (nothing in flight, nothing unread) before the
            # next is sent, so each is a read of its own.
            wait_until(lambda: tcp_queues(ours, theirs)[0] == 0 and
                       tcp_queues(theirs, ours)[1] == 0, 10, interval=0.005,
                       what="the server to read the piece")
        self.assertEqual(r_c.reply().code, 250)
        self.assertEqual(self.only_record().data, b"line\r\n")

    def test_two_messages_in_one_session(self):
        c = self.connect(self.srv)
        c.cmd(EHLO)
        for i in range(2):
            self.assertEqual(c.cmd(f"MAIL FROM:<s{i}@b.example>").code, 250)
            self.assertEqual(c.cmd(f"RCPT TO:<r{i}@d.example>").code, 250)
            self.assertEqual(c.cmd("DATA").code, 354)
            c.send(b"Subject: %d\r\n\r\nbody %d\r\n.\r\n" % (i, i))
            self.assertEqual(c.reply().code, 250)
        recs = read_records(self.dir)
        self.assertEqual([r.mailfrom for r in recs], ["s0@b.example", "s1@b.example"])
        self.assertEqual([r.rcpttos for r in recs], [["r0@d.example"], ["r1@d.example"]])
        self.assertEqual([r.data for r in recs],
                         [b"Subject: 0\r\n\r\nbody 0\r\n", b"Subject: 1\r\n\r\nbody 1\r\n"])

    def test_rset_discards_envelope(self):
        c = self.connect(self.srv)
        c.cmd(EHLO)
        c.cmd("MAIL FROM:<old@b.example>")
        c.cmd("RCPT TO:<old@d.example>")
        self.assertEqual(c.cmd("RSET").code, 250)
        c.cmd("MAIL FROM:<new@b.example>")
        c.cmd("RCPT TO:<new@d.example>")
        c.cmd("DATA")
        c.send(b"x\r\n.\r\n")
        self.assertEqual(c.reply().code, 250)
        rec = self.only_record()
        self.assertEqual((rec.mailfrom, rec.rcpttos), ("new@b.example", ["new@d.example"]))

    def test_large_message_smtplib(self):
        """30 MiB (under the default 32 MiB limit) arrives intact."""
        line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/0123456789ab\r\n"
        n = (30 << 20) // len(line) + 1
        blocks = [b"Subject: big\r\n\r\n"]
        for i in range(n):
            blocks.append(b"%08d" % i + line[8:] if i % 1000 == 0 else line)
        msg = b"".join(blocks)
        self.assertGreater(len(msg), 30 << 20)
        self.assertLess(len(msg), 33554432)
        with smtplib.SMTP("127.0.0.1", self.srv.port, timeout=60) as s:
            self.assertEqual(s.sendmail("a@b.example", ["c@d.example"], msg), {})
        rec = self.only_record()
        self.assertEqual(len(rec.data), len(msg))
        self.assertEqual(hashlib.sha256(rec.data).hexdigest(), hashlib.sha256(msg).hexdigest())


class TestSizeLimit(ServerTestCase):
    def setUp(self):
        self.srv, self.dir = self.start_recording(args=["-s", "1000"])

    def test_over_limit_then_next_message(self):
        c = self.connect(self.srv)
        c.cmd(EHLO)
        c.cmd("MAIL FROM:<a@b.example>")
        c.cmd("RCPT TO:<c@d.example>")
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(b"Subject: big\r\n\r\n" + (b"y" * 98 + b"\r\n") * 20 + b".\r\n")
        r = c.reply()
        self.assertEqual(r.code, 552, r.lines)
        self.assertEqual(r.lines, ["552 5.3.4 Error: Too much mail data"])
        self.assertEqual(c.cmd("MAIL FROM:<second@b.example>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(b"Subject: small\r\n\r\nok\r\n.\r\n")
        self.assertEqual(c.reply().lines, ["250 2.0.0 OK"])
        recs = read_records(self.dir)
        self.assertEqual(len(recs), 1, recs)
        self.assertEqual(recs[0].mailfrom, "second@b.example")
        self.assertEqual(recs[0].data, b"Subject: small\r\n\r\nok\r\n")

    def test_exactly_at_limit(self):
        head = b"Subject: at\r\n\r\n"
        body = head + b"z" * (1000 - len(head) - 2) + b"\r\n"
        self.assertEqual(len(body), 1000)
        c = self.connect(self.srv)
        c.cmd(EHLO)
        c.cmd("MAIL FROM:<a@b.example>")
        c.cmd("RCPT TO:<c@d.example>")
        c.cmd("DATA")
        c.send(body + b".\r\n")
        self.assertEqual(c.reply().code, 250)
        self.assertEqual(read_records(self.dir)[0].data, body)

    def test_size_parameter_over_limit(self):
        c = self.connect(self.srv)
        c.cmd(EHLO)
        r = c.cmd("MAIL FROM:<a@b.example> SIZE=2000")
        self.assertEqual(r.code, 552, r.lines)
        self.assertRegex(r.lines[-1],
                         r"^552 5\.\d\.\d+ Error: message size exceeds fixed maximum message size$")
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example> SIZE=1000").code, 250)

    def test_smtplib_over_limit(self):
        """smtplib sends SIZE= because the server offers it, so it is refused at MAIL."""
        with smtplib.SMTP("127.0.0.1", self.srv.port, timeout=10) as s:
            with self.assertRaises(smtplib.SMTPSenderRefused) as cm:
                s.sendmail("a@b.example", ["c@d.example"], b"x" * 2000)
            self.assertEqual(cm.exception.smtp_code, 552)
        self.assertEqual(read_records(self.dir), [])


class TestClients(ServerTestCase):
    """Real clients: curl and swaks."""

    def setUp(self):
        self.srv, self.dir = self.start_recording()

    def run_tool(self, argv):
        p = subprocess.run(argv, capture_output=True, timeout=30)
        self.assertEqual(p.returncode, 0,
                         f"{argv!r} exited {p.returncode}\nstdout: {p.stdout.decode(errors='replace')}"
                         f"\nstderr: {p.stderr.decode(errors='replace')}")
        return p

    def test_curl(self):
        content = (b"From: a@b.example\r\nTo: c@d.example\r\nSubject: via curl\r\n\r\n"
                   b"hello from curl\r\n.dot line\r\n")
        fd, path = tempfile.mkstemp(prefix="curl-msg-")
        self.addCleanup(os.unlink, path)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        self.run_tool(["curl", "-s", "-S", "--max-time", "20",
                       f"smtp://127.0.0.1:{self.srv.port}", "--mail-from", "a@b.example",
                       "--mail-rcpt", "c@d.example", "--mail-rcpt", "e@f.example", "-T", path])
        rec = wait_records(self.dir, 1)[0]
        self.assertEqual(rec.data, content)
        self.assertEqual(rec.mailfrom, "a@b.example")
        self.assertEqual(rec.rcpttos, ["c@d.example", "e@f.example"])

    def swaks(self, *extra):
        return self.run_tool(["swaks", "--server", "127.0.0.1", "--port", str(self.srv.port),
                              "--to", "c@d.example", "--from", "a@b.example",
                              "--h-Subject", "via swaks", "--body", "hello from swaks",
                              "--timeout", "20", *extra])

    def check_swaks_record(self):
        rec = wait_records(self.dir, 1)[0]
        self.assertEqual(rec.mailfrom, "a@b.example")
        self.assertEqual(rec.rcpttos, ["c@d.example"])
        self.assertIn(b"\r\nSubject: via swaks\r\n", b"\r\n" + rec.data)
        self.assertIn(b"\r\n\r\nhello from swaks\r\n", rec.data)
        self.assertNotIn(b"\n", rec.data.replace(b"\r\n", b""))
        return rec

    def test_swaks(self):
        p = self.swaks()
        self.assertIn(b"250 2.0.0 OK", p.stdout)
        self.check_swaks_record()

    def test_swaks_pipeline(self):
        p = self.swaks("--pipeline")
        self.assertIn(b"PIPELINING", p.stdout)
        self.check_swaks_record()


if __name__ == "__main__":
    unittest.main()
