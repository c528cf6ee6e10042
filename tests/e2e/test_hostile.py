"""Hostile and broken peers: clients that try to make the server buffer without bound, a crowd
of a thousand bad connections, garbage, NUL bytes, bare CR and LF, SMTP smuggling (straight and
through pureproxy), clients vanishing at every state, a delivery child killed mid-feed and
upstreams hanging up at every step. Fixtures: record.lua, limits_hostile.lua (records, or first
runs a child process), pureproxy with smtp-sink or a raw upstream."""

import os
import random
import re
import select
import resource
import shutil
import smtplib
import socket
import struct
import tempfile
import threading
import time
import unittest

import harness
from harness import SMTPClient, ServerTestCase, proc_status, read_records, stuff, wait_records, \
    wait_until
from upstreams import RawServer, SmtpSink, parse_sink_dump

EHLO = "EHLO client.example"
MiB = 1024 * 1024
# pureproxy logs upstream trouble at level warn, and such lines may hold "error: "
WARN_LINE = r"^\S+ luasmtpd\[\d+\] warn: "
BARE_LF = re.compile(rb"(?<!\r)\n")
BARE_CR = re.compile(rb"\r(?!\n)")


def send_until_full(sock, data, limit):
    """Sends `data` without blocking until the socket takes no more (the peer does not read)
    or `limit` seconds pass; returns how many bytes went."""
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + limit
    try:
        while sent < len(data) and time.monotonic() < deadline:
            try:
                sent += sock.send(data[sent:sent + 64 * 1024])
            except BlockingIOError:
                # Full for now; a moment later the kernel may have moved more to the peer.
                if not select.select([], [sock], [], 0.2)[1]:
                    break
    finally:
        sock.setblocking(True)
    return sent



def sendall_in_thread(sock, data, chunk=64 * 1024):
    """Sends `data` from a thread, noting how much went out; returns (thread, progress) where
    progress is a list [bytes sent, error or None]."""
    progress = [0, None]

    def run():
        view = memoryview(data)
        try:
            while progress[0] < len(data):
                progress[0] += sock.send(view[progress[0]:progress[0] + chunk])
        except OSError as e:
            progress[1] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, progress


class HostileTestCase(ServerTestCase):
    def full_transaction(self, srv, mailfrom="good@b.example", body=b"Subject: ok\r\n\r\nok\r\n"):
        """A well-behaved smtplib client's whole transaction; returns its duration."""
        t0 = time.monotonic()
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=harness.bound(10)) as s:
            s.ehlo("good.example")
            self.assertEqual(s.sendmail(mailfrom, ["c@d.example"], body), {})
        return time.monotonic() - t0

    def message(self, c, body_wire, mailfrom="a@b.example", rcpt="c@d.example"):
        """MAIL, RCPT, DATA, then body_wire as is (it carries its own end); the final reply."""
        self.assertEqual(c.cmd(f"MAIL FROM:<{mailfrom}>").code, 250)
        self.assertEqual(c.cmd(f"RCPT TO:<{rcpt}>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(body_wire)
        return c.reply(timeout=15)


class TestMemoryBounds(HostileTestCase):
    """Whatever a client sends, the server's memory stays bounded (peak RSS, VmHWM)."""

    def test_megabyte_line(self):
        """A 1 MiB command line without CRLF, then CRLF: 500 5.5.2 line too long, and the
        session goes on (also for a MAIL line, whose limit is larger)."""
        srv = self.start_server("sink")
        c = self.connect(srv)
        self.assertEqual(c.cmd(EHLO).code, 250)
        for prefix in (b"NOOP ", b"MAIL FROM:<"):
            with self.subTest(prefix=prefix):
                c.send(prefix + b"a" * MiB)
                r = c.cmd(b"", timeout=10)
                self.assertEqual(r.lines, ["500 5.5.2 Error: line too long"])
                self.assertEqual(c.cmd("NOOP").code, 250)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 250)

    def test_fifty_mebibytes_without_newline(self):
        """50 MiB of garbage without a line end: the server throws it away as it comes (its
        peak RSS grows by less than 10 MiB), then answers the line with 500 and goes on."""
        srv = self.start_server("sink")
        c = self.connect(srv, timeout=30)
        self.assertEqual(c.cmd(EHLO).code, 250)
        before = proc_status(srv.pid, "VmHWM")
        rng = random.Random(50)
        chunk = bytes(b for b in rng.randbytes(2 * MiB) if b not in (10, 13))[:MiB]
        for _ in range(50):
            c.send(chunk)
        r = c.cmd(b"", timeout=30)
        self.assertEqual(r.lines, ["500 5.5.2 Error: line too long"])
        self.assertEqual(c.cmd("NOOP").code, 250)
        grown = proc_status(srv.pid, "VmHWM") - before
        if not harness.SANITIZED:  # ASan's quarantine and shadow memory, not ours
            self.assertLess(grown, 10 * 1024, f"peak RSS grew by {grown} KiB")

    def test_pipelined_burst_never_read(self):
        """A million pipelined commands from a client that does not read its replies: the
        server stops reading (what it consumed stops growing; its peak RSS grows by less than
        10 MiB, though the replies alone would be 14 MB), serves another client meanwhile,
        and once the client reads it gets every reply, in order."""
        # A million junk commands: no limit on them here (--max-junk 0).
        srv = self.start_server("sink", args=["--max-junk", "0"])
        c = self.connect(srv, timeout=30)
        self.assertEqual(c.cmd(EHLO).code, 250)
        before = proc_status(srv.pid, "VmHWM")
        n = 1_000_000
        # Every 1000th command is HELP DATA, so the order of the replies shows.
        burst = (b"NOOP\r\n" * 999 + b"HELP DATA\r\n") * (n // 1000)
        expected = (b"250 2.0.0 OK\r\n" * 999 + b"250 2.0.0 Syntax: DATA\r\n") * (n // 1000)
        sent = send_until_full(c.sock, burst, harness.bound(20))

        def consumed():
            # Bytes the server has read: sent, less what is still in either socket's queue.
            # Nothing else moves while this client neither sends nor reads.
            client_tx, _ = harness.tcp_queues(c.local_port(), srv.port)
            _, server_rx = harness.tcp_queues(srv.port, c.local_port())
            return sent - client_tx - server_rx

        # Wait for the server to stop: what it consumed is the same over 0.5 s (at the rate it
        # parses NOOPs it would read the whole queue in that time).
        history = [consumed()]

        def settled():
            history.append(consumed())
            return len(history) > 10 and history[-1] == history[-11]
        harness.wait_until(settled, 20, interval=0.05, what="the server to stop reading")
        stopped_at = history[-1]
        # Then it stays stopped: watched for 1 s (twice the settling window, and as long as the
        # whole queue takes to parse), with the unread bytes still waiting for it.
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            self.assertEqual(consumed(), stopped_at, "the server still reads")
            time.sleep(0.05)
        queue = harness.tcp_queues(srv.port, c.local_port())[1]
        self.assertGreater(queue, 0, "the server read everything")
        grown = proc_status(srv.pid, "VmHWM") - before
        print(f"(burst of {len(burst)} bytes: {sent} sent before the client read; "
              f"{queue} unread in the server's receive queue)")
        if not harness.SANITIZED:  # ASan's quarantine and shadow memory, not ours
            self.assertLess(grown, 10 * 1024, f"peak RSS grew by {grown} KiB")
        # Another client is served meanwhile (smtplib's own timeout bounds it).
        self.full_transaction(srv)
        sender, progress = sendall_in_thread(c.sock, burst[sent:])
        self.addCleanup(sender.join, 10)
        # Now read: every reply, in order.
        got = b""
        c.sock.settimeout(30)
        while len(got) < len(expected):
            chunk = c.sock.recv(1024 * 1024)
            self.assertTrue(chunk, f"closed after {len(got)} bytes of replies")
            got += chunk
        sender.join(10)
        self.assertFalse(sender.is_alive())
        self.assertIsNone(progress[1])
        if got != expected:
            at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b),
                      min(len(got), len(expected)))
            self.fail(f"replies differ at byte {at}: {got[at - 40:at + 40]!r}")
        self.assertEqual(c.cmd("NOOP").code, 250)
        grown = proc_status(srv.pid, "VmHWM") - before
        if not harness.SANITIZED:  # ASan's quarantine and shadow memory, not ours
            self.assertLess(grown, 10 * 1024, f"peak RSS grew by {grown} KiB")

    def test_data_that_never_ends(self):
        """-s 100000 and 50 MiB of DATA: memory stays bounded while it streams (peak RSS grows
        by less than 10 MiB); at its end 552 5.3.4, and the next message is taken."""
        srv, d = self.start_recording(args=["-s", "100000"])
        c = self.connect(srv, timeout=30)
        c.cmd(EHLO)
        self.assertEqual(c.cmd("MAIL FROM:<big@b.example>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        before = proc_status(srv.pid, "VmHWM")
        chunk = (b"x" * 1022 + b"\r\n") * 1024  # 1 MiB of lines
        for _ in range(50):
            c.send(chunk)
        grown_streaming = proc_status(srv.pid, "VmHWM") - before
        c.send(b".\r\n")
        r = c.reply(timeout=30)
        self.assertEqual(r.lines, ["552 5.3.4 Error: Too much mail data"])
        grown = proc_status(srv.pid, "VmHWM") - before
        if not harness.SANITIZED:  # ASan's quarantine and shadow memory, not ours
            self.assertLess(grown_streaming, 10 * 1024, f"peak RSS grew by {grown_streaming} KiB")
        if not harness.SANITIZED:  # ASan's quarantine and shadow memory, not ours
            self.assertLess(grown, 10 * 1024, f"peak RSS grew by {grown} KiB")
        r = self.message(c, b"Subject: small\r\n\r\nsmall\r\n.\r\n", mailfrom="small@b.example")
        self.assertEqual(r.code, 250, r)
        self.assertEqual([x.mailfrom for x in wait_records(d, 1)], ["small@b.example"])


class TestHostileCrowd(HostileTestCase):
    def test_thousand_hostile_connections(self):
        """1000 connections at once, each silent, or stuck in half a command, or dripping
        random bytes, or stalled mid-DATA: a well-behaved smtplib client still gets its whole
        transaction done as if alone."""
        n = 1000
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(hard, 4 * n) if hard != resource.RLIM_INFINITY else 4 * n
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        if want < 2 * n + 64:
            self.skipTest(f"RLIMIT_NOFILE hard limit {hard} is too low for {n} connections")
        # The server inherits the raised limit.
        srv, d = self.start_recording(args=["--max-per-client", "2000"])
        rng = random.Random(1000)
        socks, drippers = [], []
        try:
            for i in range(n):
                s = socket.create_connection((srv.host, srv.port), timeout=5)
                socks.append(s)
                kind = i % 4
                if kind == 1:
                    s.send(b"EHLO half.example\r\nMAIL FROM:<half@")
                elif kind == 2:
                    s.send(rng.randbytes(16))
                    drippers.append(s)
                elif kind == 3:
                    s.send(b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
                           b"DATA\r\nSubject: never ends\r\n\r\nhalf a bo")
            stop = threading.Event()

            def drip():
                while not stop.is_set():
                    for s in drippers:
                        try:
                            s.send(rng.randbytes(1))
                        except OSError:
                            pass
                    stop.wait(0.2)

            t = threading.Thread(target=drip, daemon=True)
            t.start()
            try:
                times = [self.full_transaction(srv, mailfrom=f"good{k}@b.example")
                         for k in range(3)]
            finally:
                stop.set()
                t.join(5)
            # Served as if alone (a few ms each); 5 s leaves room for a loaded machine.
            self.assertLess(max(times), harness.bound(5.0), times)
            self.assertTrue(srv.alive())
        finally:
            for s in socks:
                s.close()
        recs = wait_records(d, 3)
        self.assertEqual([r.mailfrom for r in recs],
                         ["good0@b.example", "good1@b.example", "good2@b.example"])
        # Once the crowd is gone the server is still fine.
        self.assertLess(self.full_transaction(srv, mailfrom="after@b.example"),
                        harness.bound(5.0))


class TestGarbage(HostileTestCase):
    def test_random_bytes_as_commands(self):
        """256 KiB of random bytes as commands: every reply is a well-formed 5xx, the session
        survives to QUIT, and the server serves the next client."""
        srv = self.start_server("sink", args=["--max-errors", "1000000"])
        c = self.connect(srv, timeout=15)
        garbage = random.Random(256).randbytes(256 * 1024)
        sender, progress = sendall_in_thread(c.sock, garbage + b"\r\nQUIT\r\n")
        self.addCleanup(sender.join, 10)
        codes = []
        while True:
            r = c.reply(timeout=15)
            codes.append(r.code)
            if r.code == 221:
                break
        self.assertTrue(c.wait_closed(5))
        self.assertGreater(len(codes), 100)
        self.assertEqual([x for x in codes[:-1] if not 500 <= x < 600], [])
        self.assertIsNone(progress[1])
        self.full_transaction(srv)

    def test_nul_in_commands(self):
        """A NUL byte anywhere in a command line: 500 5.5.2 bad syntax; nothing of the line is
        taken, and the session goes on."""
        srv, d = self.start_recording()
        c = self.connect(srv)
        for line in (b"NO\x00OP", b"\x00", b"EHLO nul\x00.example"):
            self.assertEqual(c.cmd(line).lines, ["500 5.5.2 Error: bad syntax"], line)
        self.assertEqual(c.cmd(EHLO).code, 250)
        for line in (b"MAIL FROM:<evil\x00@b.example>", b"MAIL FROM:<a@b.example>\x00"):
            self.assertEqual(c.cmd(line).lines, ["500 5.5.2 Error: bad syntax"], line)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 250)
        for line in (b"RCPT TO:<c\x00@d.example>", b"RCPT TO:<x@d.example> \x00"):
            self.assertEqual(c.cmd(line).lines, ["500 5.5.2 Error: bad syntax"], line)
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(b"Subject: ok\r\n\r\nok\r\n.\r\n")
        self.assertEqual(c.reply().code, 250)
        recs = wait_records(d, 1)
        self.assertEqual([(r.mailfrom, r.rcpttos, r.helo) for r in recs],
                         [("a@b.example", ["c@d.example"], "client.example")])

    def test_nul_and_every_byte_in_data(self):
        """NUL and every other byte but CR and LF, in runs and at line starts, are kept byte
        for byte."""
        srv, d = self.start_recording()
        c = self.connect(srv)
        c.cmd(EHLO)
        every = bytes(b for b in range(256) if b not in (10, 13))
        body = (b"Subject: bytes\r\n\r\n\x00\x00\x00\r\n" + every + b"\r\n" + every[::-1] +
                b"\r\n\x00.\x00\r\n" + random.Random(7).randbytes(4096).replace(
                    b"\r", b"").replace(b"\n", b"") + b"\r\n")
        r = self.message(c, stuff(body) + b".\r\n")
        self.assertEqual(r.code, 250, r)
        self.assertEqual(wait_records(d, 1)[0].data, body)

    def test_bare_cr_and_lf_in_data(self):
        """A bare CR and a bare LF each end a line and are stored as CRLF; the handler never
        sees one alone."""
        srv, d = self.start_recording()
        c = self.connect(srv)
        c.cmd(EHLO)
        wire = b"Subject: bare\r\n\r\na\rb\nc\r\r\nd\n\re\n\nf\r\rg\r\n.\r\n"
        r = self.message(c, wire)
        self.assertEqual(r.code, 250, r)
        data = wait_records(d, 1)[0].data
        self.assertEqual(data, b"Subject: bare\r\n\r\na\r\nb\r\nc\r\n\r\nd\r\n\r\ne\r\n\r\n"
                               b"f\r\n\r\ng\r\n")
        self.assertIsNone(BARE_LF.search(data))
        self.assertIsNone(BARE_CR.search(data))


# Fake ends of data: none of them is CRLF.CRLF, so none may end (or split) the message.
FAKE_ENDS = [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r", b"\n.\r",
             b"\r.\n", b"\r\n.\r\r\n"]


def smuggling_body(fakes=FAKE_ENDS):
    """A message in which each fake end is followed by a smuggled transaction."""
    body = b"Subject: smuggling\r\n\r\n"
    for i, fake in enumerate(fakes):
        body += (b"before-%d" % i + fake + b"MAIL FROM:<evil%d@x.example>\r\n" % i +
                 b"RCPT TO:<victim%d@y.example>\r\nDATA\r\nsmuggled-%d\r\n" % (i, i))
    return body + b"after all\r\n"


class TestSmuggling(HostileTestCase):
    def check_one_message(self, data, fakes=FAKE_ENDS):
        """data (as the handler or an upstream got it) holds every smuggled part, in order."""
        at = 0
        for i in range(len(fakes)):
            for part in (b"before-%d" % i, b"MAIL FROM:<evil%d@x.example>" % i,
                         b"smuggled-%d" % i):
                pos = data.find(part, at)
                self.assertGreaterEqual(pos, 0, f"{part!r} missing after {at}: {data!r}")
                at = pos + len(part)
        self.assertGreaterEqual(data.find(b"after all", at), 0, data)

    def test_fake_ends_never_split_a_message(self):
        """Each fake end (\\n.\\n, \\r\\n.\\n, \\n.\\r\\n, \\r.\\r, ...) followed by a smuggled
        MAIL/RCPT/DATA: exactly one message, with the text after the fake end inside it, no
        smuggled command executed, one reply, and no bare CR or LF in what is stored."""
        srv, d = self.start_recording()
        for i, fake in enumerate(FAKE_ENDS):
            with self.subTest(fake=fake):
                c = self.connect(srv)
                c.cmd(EHLO)
                r = self.message(c, smuggling_body([fake]) + b".\r\n",
                                 mailfrom=f"real{i}@b.example")
                self.assertEqual(r.lines, ["250 2.0.0 OK"])
                # The next reply is QUIT's: nothing smuggled was answered.
                self.assertEqual(c.cmd("QUIT").lines, ["221 2.0.0 Bye"])
                self.assertTrue(c.wait_closed(3))
                self.assertEqual(c.buf, b"")
                recs = wait_records(d, i + 1)
                self.assertEqual(len(recs), i + 1, recs)
                rec = recs[-1]
                self.assertEqual((rec.mailfrom, rec.rcpttos),
                                 (f"real{i}@b.example", ["c@d.example"]))
                self.check_one_message(rec.data, [fake])
                self.assertIsNone(BARE_LF.search(rec.data), rec.data)
                self.assertIsNone(BARE_CR.search(rec.data), rec.data)
        self.assertEqual(len(read_records(d)), len(FAKE_ENDS))

    def test_smuggling_through_pureproxy_to_smtp_sink(self):
        """All fake ends in one message through pureproxy to Postfix's smtp-sink: the sink
        gets exactly one message, holding every smuggled part, and no bare CR."""
        sink = SmtpSink()
        self.addCleanup(sink.close)
        proxy = self.start_server("pureproxy", remote=f"127.0.0.1:{sink.port}",
                                  expect_errors=[WARN_LINE])
        c = self.connect(proxy, timeout=15)
        c.cmd(EHLO)
        r = self.message(c, smuggling_body() + b".\r\n")
        self.assertEqual(r.code, 250, r)
        # A second, plain message, on a new upstream connection: once the sink has dumped it,
        # anything smuggled in the first would have been dumped too.
        r = self.message(c, b"Subject: marker\r\n\r\nmarker\r\n.\r\n", rcpt="m@d.example")
        self.assertEqual(r.code, 250, r)
        self.assertEqual(c.cmd("QUIT").code, 221)
        dumps = wait_until(lambda: [x for x in sink.dumps() if b"<m@d.example>" in x], 10,
                           what="smtp-sink's dump of the marker")
        dumps = [x for x in sink.dumps() if b"<m@d.example>" not in x]
        self.assertEqual(len(dumps), 1, dumps)
        fields, body = parse_sink_dump(dumps[0])
        self.assertEqual(fields.get("X-Rcpt-Args"), ["<c@d.example>"])
        self.check_one_message(body)
        self.assertNotIn(b"\r", body)

    def test_smuggling_through_pureproxy_raw_upstream(self):
        """The same message to an upstream that keeps the raw bytes of its DATA: every line
        ends in CRLF (no bare CR or LF on the wire), CRLF.CRLF occurs once, at the end, and
        there is one DATA."""
        got = []

        def upstream(server, conn):
            conn.send("220 raw.example ESMTP\r\n")
            try:
                while True:
                    line = conn.readline()
                    verb = line[:4].upper()
                    if verb == b"EHLO":
                        conn.send("250-raw.example\r\n250 8BITMIME\r\n")
                    elif verb == b"DATA":
                        conn.send("354 go ahead\r\n")
                        got.append(conn.read_until(b"\r\n.\r\n"))
                        conn.send("250 2.0.0 ok\r\n")
                        server.note("data")
                    elif verb == b"QUIT":
                        conn.send("221 2.0.0 bye\r\n")
                        conn.close()
                        return
                    else:
                        conn.send("250 2.0.0 ok\r\n")
            except (EOFError, OSError):
                server.note("closed")

        raw = RawServer(upstream)
        self.addCleanup(raw.close)
        proxy = self.start_server("pureproxy", remote=f"127.0.0.1:{raw.port}",
                                  expect_errors=[WARN_LINE])
        c = self.connect(proxy, timeout=15)
        c.cmd(EHLO)
        r = self.message(c, smuggling_body() + b".\r\n")
        self.assertEqual(r.code, 250, r)
        raw.wait_event("data")
        self.assertEqual(len(got), 1)
        wire = got[0]
        self.assertIsNone(BARE_LF.search(wire), wire)
        self.assertIsNone(BARE_CR.search(wire), wire)
        self.assertEqual(wire.count(b"\r\n.\r\n"), 1, wire)
        self.assertTrue(wire.endswith(b"\r\n.\r\n"))
        self.check_one_message(wire)


def read_file(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def closing_upstream(stage):
    """An SMTP upstream that hangs up at `stage`: "accept" (before any greeting), "greeting"
    (right after it), "ehlo", "mail", "rcpt" (each after answering it), "data" (after its
    354), "mid_body" (after some of the body). Notes "hung up" then, "delivered" never."""

    def handler(server, conn):
        def hang_up():
            server.note("hung up")
            conn.close()

        if stage == "accept":
            return hang_up()
        conn.send("220 raw.example ESMTP\r\n")
        if stage == "greeting":
            return hang_up()
        try:
            while True:
                line = conn.readline()
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    conn.send("250-raw.example\r\n250 8BITMIME\r\n")
                    if stage == "ehlo":
                        return hang_up()
                elif verb == b"MAIL":
                    conn.send("250 2.1.0 ok\r\n")
                    if stage == "mail":
                        return hang_up()
                elif verb == b"RCPT":
                    conn.send("250 2.1.5 ok\r\n")
                    if stage == "rcpt":
                        return hang_up()
                elif verb == b"DATA":
                    conn.send("354 go ahead\r\n")
                    if stage == "data":
                        return hang_up()
                    conn.read_bytes(1000)
                    return hang_up()  # mid_body
                else:
                    conn.send("250 2.0.0 ok\r\n")
        except (EOFError, OSError):
            server.note("peer closed")

    return handler


class TestVanishing(HostileTestCase):
    def start_hostile(self, **kw):
        d = tempfile.mkdtemp(prefix="luasmtpd-hostile-")
        self.addCleanup(shutil.rmtree, d, True)
        return self.start_server("limits_hostile", sets={"dir": d}, **kw), d

    def test_client_vanishes_at_every_state(self):
        """A client that goes (FIN, or RST) once the server has answered it at each state,
        mid-body, or while its message waits on a slow child: the server stays up, records
        nothing of the unfinished messages, lets the child go, and logs no error."""
        srv, d = self.start_hostile()
        stages = ["connect", "ehlo", "mail", "rcpt", "data", "mid_body", "almost_dot",
                  "slow_child"]
        for stage in stages:
            # A FIN after the final dot is a client that will still read its reply (a
            # half-close: test_session_eof); only a reset says it is gone.
            for how in ("rst",) if stage == "slow_child" else ("fin", "rst"):
                with self.subTest(stage=stage, how=how):
                    c = SMTPClient(srv.port)
                    try:
                        steps = ["ehlo", "mail", "rcpt", "data"]
                        todo = steps[:steps.index(stage) + 1] if stage in steps else steps
                        if stage == "connect":
                            todo = []
                        rcpt = "slow@d.example" if stage == "slow_child" else "c@d.example"
                        for step in todo:
                            cmd = {"ehlo": EHLO, "mail": "MAIL FROM:<gone@b.example>",
                                   "rcpt": f"RCPT TO:<{rcpt}>", "data": "DATA"}[step]
                            self.assertLess(c.cmd(cmd).code, 400, (stage, step))
                        if stage == "mid_body":
                            c.send(b"Subject: gone\r\n\r\n" + b"half a body\r\n" * 5000)
                        elif stage == "almost_dot":
                            c.send(b"Subject: gone\r\n\r\nbody\r\n.\r")
                        elif stage == "slow_child":
                            pidfile = os.path.join(d, "slow.pid")
                            if os.path.exists(pidfile):
                                os.unlink(pidfile)
                            c.send(b"Subject: gone\r\n\r\nslow\r\n.\r\n")
                            pid = int(wait_until(lambda: read_file(pidfile).strip(), 5,
                                                 what="the child's pid"))
                        if how == "rst":
                            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                              struct.pack("ii", 1, 0))
                    finally:
                        c.close()
                    if stage == "slow_child":
                        # The server lets the child go (SIGTERM) and reaps it: no zombie.
                        wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 10,
                                   what=f"child {pid} gone")
                    self.assertTrue(srv.alive())
        self.full_transaction(srv, mailfrom="after@b.example")
        self.assertEqual([r.mailfrom for r in read_records(d)], ["after@b.example"])
        srv.wait_log(r"client left during DATA")
        srv.wait_log(r"client left during the handler")

    def test_child_killed_mid_feed(self):
        """A delivery child that reads 100 bytes of a 1 MiB message and kills itself: 451, and
        the next message is served."""
        srv, d = self.start_hostile(expect_errors=[WARN_LINE])
        c = self.connect(srv, timeout=15)
        c.cmd(EHLO)
        body = b"Subject: big\r\n\r\n" + (b"y" * 1022 + b"\r\n") * 1024
        r = self.message(c, body + b".\r\n", rcpt="midfeed@d.example")
        self.assertEqual(r.code, 451, r)
        self.assertRegex(r.lines[-1], r"^451 4\.3\.0 ")
        r = self.message(c, b"Subject: next\r\n\r\nnext\r\n.\r\n", mailfrom="next@b.example")
        self.assertEqual(r.code, 250, r)
        self.assertEqual([x.mailfrom for x in wait_records(d, 1)], ["next@b.example"])

    def test_upstream_vanishes_at_every_state(self):
        """pureproxy's upstream hangs up before its greeting, after it, after EHLO, MAIL,
        RCPT, its 354 or mid-body: the client gets 451 4.4.1 at the step that needs the
        upstream, never 250 for the message, and its session goes on."""
        big = b"Subject: big\r\n\r\n" + (b"z" * 1022 + b"\r\n") * 1024
        # stage -> the client's step that gets the 451
        stages = {"accept": "mail", "greeting": "mail", "ehlo": "mail", "mail": "rcpt",
                  "rcpt": "end", "data": "end", "mid_body": "end"}
        for stage, failing in stages.items():
            with self.subTest(stage=stage):
                raw = RawServer(closing_upstream(stage))
                self.addCleanup(raw.close)
                proxy = self.start_server("pureproxy", remote=f"127.0.0.1:{raw.port}",
                                          expect_errors=[WARN_LINE])
                c = self.connect(proxy, timeout=15)
                c.cmd(EHLO)
                replies = {"mail": c.cmd("MAIL FROM:<a@b.example>")}
                replies["rcpt"] = c.cmd("RCPT TO:<c@d.example>")
                replies["data"] = c.cmd("DATA")
                if replies["data"].code == 354:
                    c.send(big + b".\r\n")
                    replies["end"] = c.reply(timeout=15)
                self.assertEqual(replies[failing].code, 451, replies)
                self.assertRegex(replies[failing].lines[-1], r"^451 4\.4\.1 ")
                self.assertNotEqual(replies.get("end") and replies["end"].code, 250, replies)
                for step in ("mail", "rcpt", "end"):
                    if step == failing:
                        break
                    self.assertEqual(replies[step].code, 250, (step, replies))
                raw.wait_event("hung up", timeout=5)
                self.assertEqual(c.cmd("NOOP").code, 250)
                self.assertTrue(proxy.alive())


if __name__ == "__main__":
    unittest.main()
