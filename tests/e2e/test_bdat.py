"""CHUNKING (RFC 3030): BDAT n [LAST] from a raw-socket client, checking the exact replies and
what the handler got (handlers/record.lua). No real client here sends BDAT: smtplib has no BDAT,
swaks (20201014) has no chunking option, and Postfix's smtp client sends DATA only. So the raw
client plays Exchange's part: chunks, LAST, BDAT 0 LAST, pipelined chunks.

The rules checked: a chunk's bytes are always read, even when it is refused (they follow the
command without waiting for an answer), and what follows them is the next command; the last
chunk's message reaches the handler exactly as a DATA's would; the size limit counts all the
chunks; a BDAT whose size cannot be read ends the connection (its bytes cannot be told from
commands); nothing is delivered from a transfer that did not end with its LAST chunk.
"""

import socket
import threading
import time
import unittest

from harness import SANITIZED, ServerTestCase, bound, proc_status, read_records, wait_records, \
    without_received

EHLO = "EHLO client.example"
MAIL = "MAIL FROM:<a@b.example>"
RCPT = "RCPT TO:<c@d.example>"
MESSAGE = (b"Subject: chunks\r\n"
           b"\r\n"
           b".a line with a leading dot\r\n"
           b".\r\n"
           b"..\r\n"
           b"last line\r\n")


def chunk(data, last=False):
    """One BDAT command and its bytes."""
    return b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data


class TestBdat(ServerTestCase):
    def setUp(self):
        self.srv, self.dir = self.start_recording()

    def envelope(self, srv=None, rcpts=(RCPT,)):
        c = self.connect(srv or self.srv)
        self.assertEqual(c.cmd(EHLO).code, 250)
        self.assertEqual(c.cmd(MAIL).code, 250)
        for r in rcpts:
            self.assertEqual(c.cmd(r).code, 250)
        return c

    def assertNothingDelivered(self):
        self.assertEqual(read_records(self.dir), [])

    def test_ehlo_offers_chunking(self):
        r = self.connect(self.srv).cmd(EHLO)
        self.assertIn("250-CHUNKING", r.lines)
        self.assertNotIn("BINARYMIME", " ".join(r.lines))

    def test_chunks_then_last(self):
        c = self.envelope(rcpts=(RCPT, "RCPT TO:<e@f.example>"))
        c.send(chunk(MESSAGE[:20]))
        self.assertEqual(c.reply().lines, ["250 2.0.0 20 octets received"])
        c.send(chunk(MESSAGE[20:40]))
        self.assertEqual(c.reply().lines, ["250 2.0.0 20 octets received"])
        c.send(chunk(MESSAGE[40:], last=True))
        self.assertEqual(c.reply().lines, ["250 2.0.0 OK"])
        (rec,) = wait_records(self.dir, 1)
        self.assertEqual(rec.data, MESSAGE)
        self.assertEqual(rec.mailfrom, "a@b.example")
        self.assertEqual(rec.rcpttos, ["c@d.example", "e@f.example"])
        self.assertEqual(rec.helo, "client.example")
        # The session goes on: another message, by DATA this time.
        self.assertEqual(c.cmd(MAIL).code, 250)
        self.assertEqual(c.cmd(RCPT).code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(b"x\r\n.\r\n")
        self.assertEqual(c.reply().code, 250)
        self.assertEqual(len(wait_records(self.dir, 2)), 2)

    def test_zero_last(self):
        c = self.envelope()
        c.send(chunk(MESSAGE))
        self.assertEqual(c.reply().lines, [f"250 2.0.0 {len(MESSAGE)} octets received"])
        c.send(b"BDAT 0 LAST\r\n")
        self.assertEqual(c.reply().lines, ["250 2.0.0 OK"])
        # A message of no bytes at all, as DATA's "." alone gives.
        self.assertEqual(c.cmd(MAIL).code, 250)
        self.assertEqual(c.cmd(RCPT).code, 250)
        self.assertEqual(c.cmd("BDAT 0 LAST").lines, ["250 2.0.0 OK"])
        recs = wait_records(self.dir, 2)
        self.assertEqual([r.data for r in recs], [MESSAGE, b""])

    def test_same_data_and_options_as_data(self):
        """The same message by DATA (dot-stuffed) and by BDAT: the handler gets the same data
        and the same options."""
        stuffed = b"".join(b"." + l if l.startswith(b".") else l
                           for l in MESSAGE.splitlines(keepends=True))
        c = self.connect(self.srv)
        c.cmd(EHLO)
        for by_data in (True, False):
            self.assertEqual(c.cmd(MAIL + " BODY=8BITMIME SIZE=100").code, 250)
            self.assertEqual(c.cmd(RCPT).code, 250)
            if by_data:
                self.assertEqual(c.cmd("DATA").code, 354)
                c.send(stuffed + b".\r\n")
            else:
                c.send(chunk(MESSAGE[:7]) + chunk(MESSAGE[7:], last=True))
                self.assertEqual(c.reply().code, 250)
            self.assertEqual(c.reply().lines, ["250 2.0.0 OK"])
        a, b = wait_records(self.dir, 2)
        self.assertEqual(a.data, MESSAGE)
        self.assertEqual(b.data, a.data)
        self.assertEqual(b.mail_options, a.mail_options)
        self.assertEqual(b.mail_options, ["BODY=8BITMIME", "SIZE=100"])

    def test_relayed_as_after_data(self):
        """pureproxy in front, luasmtpd recording behind: a message taken by BDAT is relayed as
        the same message taken by DATA is (by DATA: the relay client sends no BDAT), with its
        Received: line on top and its BODY= passed on."""
        proxy = self.start_server("pureproxy", remote=f"127.0.0.1:{self.srv.port}",
                                  expect_errors=[r"^\S+ luasmtpd\[\d+\] warn: "])
        stuffed = b"".join(b"." + l if l.startswith(b".") else l
                           for l in MESSAGE.splitlines(keepends=True))
        c = self.connect(proxy)
        c.cmd(EHLO)
        for by_data in (True, False):
            self.assertEqual(c.cmd(MAIL + " BODY=8BITMIME").code, 250)
            self.assertEqual(c.cmd(RCPT).code, 250)
            if by_data:
                self.assertEqual(c.cmd("DATA").code, 354)
                c.send(stuffed + b".\r\n")
            else:
                c.send(chunk(MESSAGE[:30]) + chunk(MESSAGE[30:]) + b"BDAT 0 LAST\r\n")
                self.assertEqual([r.code for r in c.replies(2)], [250, 250])
            self.assertEqual(c.reply().code, 250)
        a, b = wait_records(self.dir, 2)
        self.assertEqual(without_received(b.data), without_received(a.data))
        self.assertIn(b"X-Peer: 127.0.0.1", b.data)
        self.assertEqual(b.mail_options, a.mail_options)
        self.assertIn("BODY=8BITMIME", b.mail_options)
        self.assertEqual(b.rcpttos, ["c@d.example"])

    def test_line_ends_made_crlf(self):
        """Bytes are stored as they come but for line ends: a bare LF or CR is stored as CRLF,
        as after DATA, and a last line without one gets CRLF (handlers see CRLF lines only). A
        CRLF split between two chunks stays one line end."""
        c = self.envelope()
        c.send(chunk(b"Subject: lf\n\nbare lf\nbare cr\rsplit\r") + chunk(b"\nno end", True))
        self.assertEqual([r.code for r in c.replies(2)], [250, 250])
        (rec,) = wait_records(self.dir, 1)
        self.assertEqual(rec.data,
                         b"Subject: lf\r\n\r\nbare lf\r\nbare cr\r\nsplit\r\nno end\r\n")

    def test_handler_reply_answers_last(self):
        srv, d = self.start_recording(sets={"reply": "550 5.7.1 Not here"})
        c = self.envelope(srv)
        c.send(chunk(b"a\r\n") + chunk(b"b\r\n", last=True))
        self.assertEqual(c.reply().lines, ["250 2.0.0 3 octets received"])
        self.assertEqual(c.reply().lines, ["550 5.7.1 Not here"])
        (rec,) = wait_records(d, 1)  # the handler ran, once, and refused
        self.assertEqual(rec.data, b"a\r\nb\r\n")

    def test_before_helo_mail_rcpt(self):
        """Out of sequence: 503, and the chunk's bytes (commands, here) are read and dropped,
        not run. Without RCPT the transaction stays open (as after DATA's 503)."""
        c = self.connect(self.srv)
        c.send(chunk(b"QUIT\r\n"))
        self.assertEqual(c.reply().lines, ["503 5.5.1 Error: send HELO first"])
        c.cmd(EHLO)
        c.send(chunk(b"QUIT\r\n", last=True))
        self.assertEqual(c.reply().lines, ["503 5.5.1 Error: need RCPT command"])
        self.assertEqual(c.cmd(MAIL).code, 250)
        c.send(chunk(b"RSET\r\n", last=True))
        self.assertEqual(c.reply().lines, ["503 5.5.1 Error: need RCPT command"])
        self.assertEqual(c.cmd(RCPT).lines, ["250 2.1.5 OK"])  # MAIL still stands
        c.send(chunk(b"x\r\n", last=True))
        self.assertEqual(c.reply().lines, ["250 2.0.0 OK"])
        (rec,) = wait_records(self.dir, 1)
        self.assertEqual(rec.data, b"x\r\n")

    def test_data_and_rcpt_after_bdat(self):
        c = self.envelope()
        c.send(chunk(b"part one\r\n"))
        self.assertEqual(c.reply().code, 250)
        self.assertEqual(c.cmd("DATA").lines, ["503 5.5.1 Error: DATA after BDAT"])
        self.assertEqual(c.cmd("RCPT TO:<e@f.example>").lines,
                         ["503 5.5.1 Error: RCPT after BDAT"])
        self.assertEqual(c.cmd(MAIL).lines, ["503 5.5.1 Error: nested MAIL command"])
        self.assertEqual(c.cmd("RSET").lines, ["250 2.0.0 OK"])
        # After RSET nothing of the chunk is left: a new transaction by DATA.
        self.assertEqual(c.cmd(MAIL).code, 250)
        self.assertEqual(c.cmd(RCPT).code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(b"only this\r\n.\r\n")
        self.assertEqual(c.reply().code, 250)
        (rec,) = wait_records(self.dir, 1)
        self.assertEqual(rec.data, b"only this\r\n")

    def test_bad_size_closes(self):
        """No size to read: nobody can tell where the chunk ends, so the bytes after the line
        are not taken as commands (they would be the message's text): 501, then 421, closed.
        The chunks before are not delivered."""
        for arg in ("BDAT", "BDAT x", "BDAT -1", "BDAT 12abc LAST",
                    "BDAT 99999999999999999999999 LAST"):
            with self.subTest(arg=arg):
                c = self.envelope()
                c.send(chunk(b"first\r\n"))
                self.assertEqual(c.reply().code, 250)
                c.send(arg.encode() + b"\r\nRCPT TO:<x@y.example>\r\nQUIT\r\n")
                self.assertEqual(c.reply().lines, ["501 5.5.4 Syntax: BDAT chunk-size [LAST]"])
                r = c.reply()
                self.assertEqual(r.code, 421, r.lines)
                self.assertRegex(r.lines[-1], r"^421 4\.5\.0 .*closing connection$")
                self.assertTrue(c.wait_closed(5))
                self.assertEqual(c.buf, b"")  # the RCPT and QUIT got no answer
        self.assertNothingDelivered()

    def test_bad_marker_drops_chunk_and_transaction(self):
        """The size is readable but LAST is not: the chunk is read and dropped, 501, and the
        transaction is over (its chunks with it)."""
        c = self.envelope()
        c.send(chunk(b"first\r\n"))
        self.assertEqual(c.reply().code, 250)
        c.send(b"BDAT 6 FINAL\r\nQUIT\r\nNOOP\r\n")
        self.assertEqual(c.reply().lines, ["501 5.5.4 Syntax: BDAT chunk-size [LAST]"])
        self.assertEqual(c.reply().lines, ["250 2.0.0 OK"])  # NOOP; QUIT was chunk data
        self.assertEqual(c.cmd(RCPT).lines, ["503 5.5.1 Error: need MAIL command"])
        self.assertNothingDelivered()

    def test_size_limit_across_chunks(self):
        """-s 100: chunks of 60 and 60 pass the limit with the second, which is read to its end
        and answered 552; the transaction is over, so the LAST the client had pipelined gets
        503 (its bytes dropped too); the session goes on."""
        srv, d = self.start_recording(args=["-s", "100"])
        c = self.envelope(srv)
        c.send(chunk(b"a" * 58 + b"\r\n"))
        self.assertEqual(c.reply().lines, ["250 2.0.0 60 octets received"])
        c.send(chunk(b"b" * 58 + b"\r\n") + chunk(b"c\r\n", last=True))
        self.assertEqual(c.reply().lines, ["552 5.3.4 Error: Too much mail data"])
        self.assertEqual(c.reply().lines, ["503 5.5.1 Error: need RCPT command"])
        srv.wait_log(r"message from <a@b.example> refused: \d+ bytes over the size limit")
        # A message within the limit still goes through, and a first chunk over it alone is
        # refused the same way.
        self.assertEqual(c.cmd(MAIL).code, 250)
        self.assertEqual(c.cmd(RCPT).code, 250)
        c.send(chunk(b"x" * 200, last=True))
        self.assertEqual(c.reply().lines, ["552 5.3.4 Error: Too much mail data"])
        self.assertEqual(c.cmd(MAIL).code, 250)
        self.assertEqual(c.cmd(RCPT).code, 250)
        c.send(chunk(b"y" * 98 + b"\r\n", last=True))
        self.assertEqual(c.reply().lines, ["250 2.0.0 OK"])
        (rec,) = wait_records(d, 1)
        self.assertEqual(rec.data, b"y" * 98 + b"\r\n")

    def test_pipelined_chunks_and_commands(self):
        """Two messages and QUIT in one write: the bytes after each chunk are the next
        command, and every reply comes in order."""
        c = self.connect(self.srv)
        c.send(("%s\r\n%s\r\n%s\r\n" % (EHLO, MAIL, RCPT)).encode()
               + chunk(b"MAIL FROM:<evil@x>\r\n")
               + chunk(b"RCPT TO:<evil@x>\r\n", last=True)
               + ("%s\r\n%s\r\nRCPT TO:<e@f.example>\r\n" % (MAIL, RCPT)).encode()
               + b"BDAT 0\r\n" + chunk(b"second\r\n", last=True) + b"NOOP\r\nQUIT\r\n")
        codes = [r.code for r in c.replies(12)]
        self.assertEqual(codes, [250, 250, 250, 250, 250, 250, 250, 250, 250, 250, 250, 221])
        self.assertTrue(c.wait_closed(5))
        a, b = wait_records(self.dir, 2)
        self.assertEqual(a.data, b"MAIL FROM:<evil@x>\r\nRCPT TO:<evil@x>\r\n")
        self.assertEqual(a.rcpttos, ["c@d.example"])
        self.assertEqual(b.data, b"second\r\n")
        self.assertEqual(b.rcpttos, ["c@d.example", "e@f.example"])

    def test_client_leaves_mid_chunk(self):
        """A client that half-closes, or resets, inside a chunk (the LAST, or one before it)
        leaves nothing delivered."""
        for how in ("fin", "reset"):
            for before in (b"", chunk(b"first\r\n")):
                with self.subTest(how=how, before=bool(before)):
                    c = self.envelope()
                    start = len(self.srv.log.snapshot())
                    c.send(before + b"BDAT 100 LAST\r\n" + b"x" * 50)
                    if before:
                        self.assertEqual(c.reply().code, 250)
                    if how == "fin":
                        c.sock.shutdown(socket.SHUT_WR)
                        self.assertTrue(c.wait_closed(10))
                    else:
                        c.reset()
                    self.srv.wait_log(r"client left during (DATA|the transaction)", start=start)
        # The handler would have run before the log lines above; a record would be there.
        self.assertNothingDelivered()

    def test_timeout_mid_chunk(self):
        """--data-timeout bounds the wait for a chunk's bytes as for DATA's."""
        srv, d = self.start_recording(args=["--data-timeout", "1"])
        c = self.envelope(srv)
        c.send(b"BDAT 100 LAST\r\n" + b"x" * 10)
        t0 = time.monotonic()
        r = c.reply(timeout=15)
        self.assertRegex(r.lines[-1], r"^421 4\.4\.2 .*timeout exceeded$")
        self.assertLess(time.monotonic() - t0, 15)
        self.assertTrue(c.wait_closed(5))
        self.assertEqual(read_records(d), [])

    def test_min_data_rate_across_chunks(self):
        """Chunks of 10 bytes a second, each quick: --min-data-rate 1000 measures the transfer
        from its first chunk, so once the 30 s grace period is over the next BDAT gets 421
        (a rate per chunk would never see the drip). Nothing is delivered."""
        srv, d = self.start_recording(args=["--min-data-rate", "1000"])
        c = self.envelope(srv)
        pace = threading.Event()  # never set: its wait paces the drip, one chunk a second
        t0 = time.monotonic()
        for _ in range(int(bound(60))):
            c.send(chunk(b"x" * 8 + b"\r\n"))
            r = c.reply()
            if r.code != 250:
                break
            pace.wait(1.0)
        elapsed = time.monotonic() - t0
        self.assertRegex(r.lines[-1], r"^421 4\.4\.2 .*timeout exceeded$")
        self.assertGreaterEqual(elapsed, 29)  # the grace period is the DATA's (1 s for clocks)
        srv.wait_log(r"data rate too low across BDAT chunks")
        self.assertTrue(c.wait_closed(5))
        self.assertEqual(read_records(d), [])

    def test_huge_announced_size_allocates_nothing_ahead(self):
        """BDAT 4000000000 (over the default limit): the bytes are dropped as they come. The
        process's address space does not grow by anything like the announced size, nor its
        RSS by what was sent."""
        c = self.envelope()
        before_vm = proc_status(self.srv.pid, "VmSize")
        before_rss = proc_status(self.srv.pid, "VmRSS")
        c.send(b"BDAT 4000000000 LAST\r\n")
        block = b"z" * 65536
        for _ in range(128):  # 8 MiB
            c.send(block)
        c.send(b"\r\n")  # nothing answers yet: the chunk is far from its end
        self.assertLess(proc_status(self.srv.pid, "VmSize") - before_vm, 64 * 1024)
        if not SANITIZED:  # ASan's own memory would be measured
            self.assertLess(proc_status(self.srv.pid, "VmRSS") - before_rss, 4 * 1024)
        c.sock.shutdown(socket.SHUT_WR)
        self.srv.wait_log(r"client left during DATA")
        self.assertNothingDelivered()

    def test_huge_announced_size_within_budget(self):
        """-s 0 (no size limit) and --data-memory 1: BDAT 4000000000 is not charged to the
        budget ahead (a reservation would be refused at once); its bytes are, as they come,
        and past the budget the transfer ends with 421 4.3.1, as a DATA's would."""
        srv, d = self.start_recording(args=["-s", "0", "--data-memory", "1"])
        c = self.envelope(srv)
        before_vm = proc_status(srv.pid, "VmSize")
        c.send(b"BDAT 4000000000\r\n" + b"x" * 1000)
        # Watched 1 s: a refusal charged ahead would be sent at once, while the pump runs on
        # the bytes just read; a second is plenty for that on a loaded machine.
        with self.assertRaises(AssertionError):
            c.reply(timeout=1)
        self.assertLess(proc_status(srv.pid, "VmSize") - before_vm, 64 * 1024)
        block = b"y" * 65536
        try:
            for _ in range(32):  # 2 MiB, twice the budget
                c.send(block)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close before the last block
        r = c.reply()
        self.assertRegex(r.lines[-1], r"^421 4\.3\.1 .*Insufficient system storage")
        self.assertEqual(read_records(d), [])


if __name__ == "__main__":
    unittest.main()
