"""Many clients at once, and clients that vanish, against one server process."""

import smtplib
import socket
import struct
import threading
import unittest

from harness import ServerTestCase, failures, read_records, run_threads, wait_until

EHLO = "EHLO client.example"


class TestConcurrency(ServerTestCase):
    def setUp(self):
        self.srv, self.dir = self.start_recording()

    def test_hundred_clients_at_once(self):
        n = 100

        def client(i):
            msg = (f"Subject: client {i}\r\nX-Client: {i}\r\n\r\n" +
                   f"body of client {i}\r\n" * 20).encode()
            with smtplib.SMTP("127.0.0.1", self.srv.port, timeout=30) as s:
                code, _ = s.ehlo(f"client{i}.example")
                assert code == 250, code
                refused = s.sendmail(f"sender{i}@b.example", [f"rcpt{i}@d.example"], msg)
                assert refused == {}, refused

        errors = failures(run_threads(n, client))
        self.assertEqual(errors, [])
        recs = read_records(self.dir)
        self.assertEqual(len(recs), n)
        by_client = {}
        for rec in recs:
            i = int(rec.mailfrom[len("sender"):].split("@")[0])
            by_client[i] = rec
            self.assertEqual(rec.rcpttos, [f"rcpt{i}@d.example"])
            self.assertEqual(rec.helo, f"client{i}.example")
            self.assertIn(f"X-Client: {i}\r\n".encode(), rec.data)
            self.assertEqual(rec.data.count(f"body of client {i}\r\n".encode()), 20)
        self.assertEqual(sorted(by_client), list(range(n)))
        self.assertTrue(self.srv.alive())

    def test_client_vanishes_mid_data(self):
        vanishing = self.connect(self.srv)
        vanishing.cmd(EHLO)
        self.assertEqual(vanishing.cmd("MAIL FROM:<vanish@b.example>").code, 250)
        self.assertEqual(vanishing.cmd("RCPT TO:<c@d.example>").code, 250)
        self.assertEqual(vanishing.cmd("DATA").code, 354)
        vanishing.send(b"Subject: vanishing\r\n\r\n" + b"half a body\r\n" * 500 + b"no end")

        started = threading.Event()

        def client(i):
            with smtplib.SMTP("127.0.0.1", self.srv.port, timeout=30) as s:
                started.set()
                refused = s.sendmail(f"ok{i}@b.example", ["c@d.example"],
                                     f"Subject: ok {i}\r\n\r\nfine\r\n".encode())
                assert refused == {}, refused

        def close_vanishing():
            started.wait(10)
            vanishing.close()

        closer = threading.Thread(target=close_vanishing, daemon=True)
        closer.start()
        errors = failures(run_threads(10, client))
        closer.join(10)
        self.assertEqual(errors, [])
        # One more message after the vanished socket is gone: the server still serves.
        with smtplib.SMTP("127.0.0.1", self.srv.port, timeout=10) as s:
            self.assertEqual(s.sendmail("last@b.example", ["c@d.example"], b"last\r\n"), {})
        recs = read_records(self.dir)
        senders = sorted(r.mailfrom for r in recs)
        self.assertEqual(senders, sorted([f"ok{i}@b.example" for i in range(10)] +
                                         ["last@b.example"]))
        self.assertFalse([r for r in recs if b"half a body" in r.data])
        self.assertTrue(self.srv.alive())

    def test_vanish_at_every_stage(self):
        """Clients that drop after connect, EHLO, MAIL, RCPT, DATA, mid-line and mid-
        pipeline leave nothing behind (no message, no socket, no descriptor) and do not
        disturb the server."""
        # The harness's probe and setUp's connections are gone first: the baseline.
        wait_until(lambda: self.srv.client_sockets() == 0, 10, what="no client connections")
        fds = self.srv.fd_count()
        stages = [
            b"",
            b"EHLO x\r\n",
            b"EHLO x\r\nMAIL FROM:<a@b>\r\n",
            b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n",
            b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n",
            b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n",
            b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nbody\r\n.",
            b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nbody\r\n.\r",
            b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nbody\n.\n",
            b"NOOP " + b"x" * 100000,
        ]
        for data in stages:
            c = self.connect(self.srv)
            if data:
                c.send(data)
            c.close()
        # Reset-on-close: an RST instead of a FIN.
        c = self.connect(self.srv)
        c.send(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nrst body\r\n")
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        with smtplib.SMTP("127.0.0.1", self.srv.port, timeout=10) as s:
            self.assertEqual(s.sendmail("after@b.example", ["c@d.example"], b"after\r\n"), {})
        recs = read_records(self.dir)
        self.assertEqual([r.mailfrom for r in recs], ["after@b.example"])
        self.assertTrue(self.srv.alive())
        # Every session let its socket go, and the server holds no more descriptors than
        # before (the log says each vanished client left).
        wait_until(lambda: self.srv.client_sockets() == 0, 10, what="every session closed")
        wait_until(lambda: self.srv.fd_count() == fds, 10,
                   what=f"{fds} descriptors again (now {self.srv.fd_count()})")

    def test_slow_client_does_not_block_others(self):
        """A client stalled mid-command does not hold up other sessions."""
        stalled = self.connect(self.srv)
        stalled.send(b"EHLO stalled\r\nMAIL FROM:<a@b")  # no line end
        with smtplib.SMTP("127.0.0.1", self.srv.port, timeout=5) as s:
            self.assertEqual(s.sendmail("quick@b.example", ["c@d.example"], b"q\r\n"), {})
        stalled.send(b">\r\n")
        self.assertEqual(stalled.reply().code, 250)   # EHLO
        self.assertEqual(stalled.reply().code, 250)   # MAIL
        self.assertEqual([r.mailfrom for r in read_records(self.dir)], ["quick@b.example"])


if __name__ == "__main__":
    unittest.main()
