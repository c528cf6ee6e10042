"""The server's limits, each a command-line option: command and DATA timeouts, the minimum
DATA rate, connection caps (total and per client), recipients, messages and errors per
connection, the greeting delay, and the Lua instruction budget and memory cap. Fixtures:
handlers/limits_trace.lua (notes every Lua entry point, to show a refused connection ran none),
limits_runaway.lua (scripts that never end or eat memory) and record.lua."""

import os
import select
import shutil
import socket
import tempfile
import time
import unittest

import harness
from harness import SMTPClient, ServerTestCase, proc_status, read_records, wait_records, \
    wait_until

EHLO = "EHLO client.example"
BODY = b"Subject: limits\r\n\r\nbody\r\n"
# A handler that fails is logged at level error, with its traceback.
HANDLER_FAILED = r"error: session \d+: (process_message|on_rcpt) failed"


class TraceTestCase(ServerTestCase):
    """A server with limits_trace.lua, its trace file, and helpers to read it."""

    def start_traced(self, args=()):
        self.trace = os.path.join(self.tmpdir(), "trace")
        srv = self.start_server("limits_trace", sets={"trace": self.trace}, args=args,
                                expect_errors=[])
        # The harness's probe connection counts against the caps until the server has let it
        # go: wait for its on_disconnect.
        self.wait_trace(lambda t: any(w == "on_disconnect" for w, _, _ in t), "probe closed")
        return srv

    def tmpdir(self):
        d = tempfile.mkdtemp(prefix="luasmtpd-limits-")
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def trace_lines(self):
        """[(hook, session id, client port)] so far."""
        try:
            with open(self.trace) as f:
                return [(w, int(i), int(p)) for w, i, p in (l.split() for l in f if l.strip())]
        except FileNotFoundError:
            return []

    def wait_trace(self, predicate, what, timeout=5):
        return wait_until(lambda: predicate(self.trace_lines()), timeout, what=what)

    def hooks_for(self, port):
        return [w for w, _, p in self.trace_lines() if p == port]


class TestTimeouts(ServerTestCase):
    def test_command_timeout(self):
        """--timeout 1: a client silent after a greeting, or after half a command, gets
        `421 4.4.2 <host> Error: timeout exceeded` about a second after the prompt (the EHLO
        reply; half a command does not extend it) and is closed."""
        srv = self.start_server("sink", args=["--timeout", "1"])
        for partial in (b"", b"MAIL FROM:<a@"):
            with self.subTest(partial=partial):
                c = self.connect(srv)
                self.assertEqual(c.cmd(EHLO).code, 250)
                if partial:
                    c.send(partial)
                t0 = time.monotonic()
                r = c.reply(timeout=5)
                elapsed = time.monotonic() - t0
                self.assertEqual(r.lines, ["421 4.4.2 test.example Error: timeout exceeded"])
                self.assertTrue(c.wait_closed(3), "still open after the 421")
                self.assertGreater(elapsed, 0.8)
                self.assertLess(elapsed, 1 + harness.bound(4), "not the 1 s timeout")
        srv.wait_log(r"info: session \d+: timeout, closing")

    def test_data_timeout_is_between_pieces(self):
        """--timeout 1 --data-timeout 2: a DATA whose pieces come every 0.5 s lives on past
        both (the timeout is between two pieces, and DATA has its own); once the pieces stop,
        421 about 2 s later, and the unfinished message is not recorded."""
        srv, d = self.start_recording(args=["--timeout", "1", "--data-timeout", "2"])
        c = self.connect(srv)
        c.cmd(EHLO)
        c.cmd("MAIL FROM:<a@b.example>")
        c.cmd("RCPT TO:<c@d.example>")
        self.assertEqual(c.cmd("DATA").code, 354)
        start = time.monotonic()
        while time.monotonic() - start < 3:
            c.send(b"piece\r\n")
            last = time.monotonic()
            # Nothing may come back meanwhile: a reply within 0.5 s (the pace of the pieces,
            # which must stay under the 2 s data timeout) fails the test.
            self.assertEqual(select.select([c.sock], [], [], 0.5)[0], [], "a reply came")
        r = c.reply(timeout=6)
        elapsed = time.monotonic() - last
        self.assertEqual(r.lines, ["421 4.4.2 test.example Error: timeout exceeded"])
        self.assertTrue(c.wait_closed(3))
        self.assertGreater(elapsed, 1.5)
        self.assertLess(elapsed, 2 + harness.bound(4), "not the 2 s data timeout")
        self.assertEqual(read_records(d), [])

    def test_data_timeout_shorter_than_command_timeout(self):
        """--data-timeout 1 with the default --timeout (300): a client silent in DATA gets 421
        about a second after its last byte, not when the command timeout would have run
        out."""
        srv, d = self.start_recording(args=["--data-timeout", "1"])
        c = self.connect(srv)
        c.cmd(EHLO)
        c.cmd("MAIL FROM:<a@b.example>")
        c.cmd("RCPT TO:<c@d.example>")
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(b"Subject: half\r\n")
        t0 = time.monotonic()
        r = c.reply(timeout=4)
        elapsed = time.monotonic() - t0
        self.assertEqual(r.lines, ["421 4.4.2 test.example Error: timeout exceeded"])
        self.assertTrue(c.wait_closed(3))
        self.assertGreater(elapsed, 0.8)
        self.assertLess(elapsed, 1 + harness.bound(4), "not the 1 s data timeout")
        self.assertEqual(read_records(d), [])

    def test_min_data_rate(self):
        """--min-data-rate 1000 with a client dripping one byte a second (so --data-timeout
        never fires): once the DATA has run 30 s it is too slow, and the check, every 5 s,
        ends it with 421 between 30 and 40 s after the 354. Nothing is recorded. (The only
        slow test here: the 30 s grace is fixed.)"""
        srv, d = self.start_recording(args=["--min-data-rate", "1000", "--data-timeout", "10"])
        c = self.connect(srv, timeout=5)
        c.cmd(EHLO)
        c.cmd("MAIL FROM:<a@b.example>")
        c.cmd("RCPT TO:<c@d.example>")
        self.assertEqual(c.cmd("DATA").code, 354)
        r, elapsed, n_sent = harness.drip_until_reply(self, c, b"x", 41)
        self.assertEqual(r.lines, ["421 4.4.2 test.example Error: timeout exceeded"])
        self.assertGreaterEqual(elapsed, 29.5)
        self.assertLess(elapsed, 35 + harness.bound(10), "not the rate check")
        self.assertGreater(n_sent, 25, "the drip did not keep going")
        self.assertTrue(c.wait_closed(3))
        srv.wait_log(r"info: session \d+: data rate too low, closing")
        self.assertEqual(read_records(d), [])


class TestConnectionCaps(TraceTestCase):
    def test_max_connections(self):
        """--max-connections 3: the fourth connection gets 421 4.7.0 and is closed, and no Lua
        runs for it; once one of the three has gone, a new connection is served."""
        srv = self.start_traced(args=["--max-connections", "3"])
        held = [self.connect(srv) for _ in range(3)]
        for c in held:
            self.assertEqual(c.greeting.code, 220, c.greeting)
        self.wait_trace(lambda t: sum(w == "on_connect" for w, _, _ in t) == 4,
                        "on_connect of the three")  # the probe's and the three
        refused = self.connect(srv)
        self.assertEqual(refused.greeting.lines, [
            "421 4.7.0 test.example Error: too many connections, try again later"])
        self.assertTrue(refused.wait_closed(3))
        srv.wait_log(r"warn: session \d+: refused 127\.0\.0\.1: too many connections$")
        self.assertEqual(self.hooks_for(refused.local_port()), [])
        # The held ones are unharmed.
        self.assertEqual(held[0].cmd("NOOP").code, 250)
        # One goes; a new connection is served again (once the server has seen the close).
        gone = held.pop()
        gone_port = gone.local_port()
        gone.close()
        self.wait_trace(lambda t: any(w == "on_disconnect" and p == gone_port for w, _, p in t),
                        "on_disconnect of the closed client")
        c = self.connect(srv)
        self.assertEqual(c.greeting.code, 220, c.greeting)
        self.assertEqual(c.cmd(EHLO).code, 250)
        self.assertEqual(self.hooks_for(c.local_port()), ["on_connect", "on_helo"])
        self.assertEqual(self.hooks_for(refused.local_port()), [])

    def test_max_per_client(self):
        """--max-per-client 2 (no network trusted, so loopback is limited too): the third
        connection from 127.0.0.1 gets 421 4.7.0 (no Lua runs for it), while another address
        (127.0.0.2, also loopback) is still served; once one closes, 127.0.0.1 is served
        again."""
        srv = self.start_traced(args=["--max-per-client", "2", "--max-connections", "100",
                                      "--trusted-networks", ""])
        held = [self.connect(srv) for _ in range(2)]
        for c in held:
            self.assertEqual(c.greeting.code, 220, c.greeting)
        refused = self.connect(srv)
        self.assertEqual(refused.greeting.lines, [
            "421 4.7.0 test.example Error: too many connections from your address, "
            "try again later"])
        self.assertTrue(refused.wait_closed(3))
        srv.wait_log(r"warn: session \d+: refused 127\.0\.0\.1: too many connections from "
                     r"this client")
        self.assertEqual(self.hooks_for(refused.local_port()), [])
        other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(other.close)
        try:
            other.bind(("127.0.0.2", 0))
        except OSError as e:
            other = None
            print(f"(127.0.0.2 not usable here, part skipped: {e})")
        if other is not None:
            other.settimeout(5)
            other.connect((srv.host, srv.port))
            greeting = b""
            while b"\r\n" not in greeting:
                chunk = other.recv(512)
                self.assertTrue(chunk, "closed without a greeting")
                greeting += chunk
            self.assertTrue(greeting.startswith(b"220 "), greeting)
        gone = held.pop()
        gone_port = gone.local_port()
        gone.close()
        self.wait_trace(lambda t: any(w == "on_disconnect" and p == gone_port for w, _, p in t),
                        "on_disconnect of the closed client")
        c = self.connect(srv)
        self.assertEqual(c.greeting.code, 220, c.greeting)
        self.assertEqual(c.cmd(EHLO).code, 250)
        self.assertEqual(self.hooks_for(refused.local_port()), [])


class TestConnectionCapsOfZero(TraceTestCase):
    def test_max_per_client_zero(self):
        """--max-per-client 0 with no network trusted: 140 connections from 127.0.0.1 (past
        the default cap of 128) are all served; --max-connections 0 is what the descriptors
        fit, said at start."""
        srv = self.start_traced(args=["--max-per-client", "0", "--max-connections", "0",
                                      "--trusted-networks", ""])
        srv.wait_log(r"info: at most \d+ connections at once \(what the descriptor limit fits\)")
        held = [self.connect(srv) for _ in range(140)]
        self.assertEqual([c.greeting.code for c in held], [220] * 140)
        self.assertEqual(held[-1].cmd(EHLO).code, 250)


class TestPerConnectionCaps(ServerTestCase):
    def send_message(self, c, mailfrom="a@b.example", rcpts=("c@d.example",), body=BODY):
        out = [c.cmd(f"MAIL FROM:<{mailfrom}>")]
        for r in rcpts:
            out.append(c.cmd(f"RCPT TO:<{r}>"))
        out.append(c.cmd("DATA"))
        if out[-1].code == 354:
            c.send(body + b".\r\n")
            out.append(c.reply())
        return out

    def test_max_recipients(self):
        """--max-recipients 3: the fourth RCPT gets 452 4.5.3; the message goes to the three;
        the next message may have three again."""
        srv, d = self.start_recording(args=["--max-recipients", "3"])
        c = self.connect(srv)
        c.cmd(EHLO)
        for n in range(2):
            rcpts = [f"r{n}{i}@d.example" for i in range(4)]
            r = self.send_message(c, rcpts=rcpts)
            self.assertEqual([x.code for x in r], [250, 250, 250, 250, 452, 354, 250], r)
            self.assertEqual(r[4].lines, ["452 4.5.3 Error: too many recipients"])
        recs = read_records(d)
        self.assertEqual([x.rcpttos for x in recs],
                         [[f"r{n}{i}@d.example" for i in range(3)] for n in range(2)])

    def test_too_many_recipients_is_no_error_until_the_overshoot(self):
        """--max-recipients 5 --max-errors 3: the 452 4.5.3 for recipients over the limit
        asks the client to send them in another transaction, so it does not count as an
        error, or the connection could not carry the rest; past another 5 such refusals in
        the session (Postfix's recipient overshoot limit) each counts, and the third closes."""
        srv, d = self.start_recording(args=["--max-recipients", "5", "--max-errors", "3"])
        c = self.connect(srv)
        c.cmd(EHLO)
        rcpts = [f"r{i}@d.example" for i in range(9)]
        r = self.send_message(c, rcpts=rcpts)
        self.assertEqual([x.code for x in r], [250] + [250] * 5 + [452] * 4 + [354, 250], r)
        self.assertEqual(c.cmd("MAIL FROM:<b@b.example>").code, 250)
        for i in range(5):
            self.assertEqual(c.cmd(f"RCPT TO:<s{i}@d.example>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<over0@d.example>").code, 452)  # the 5th overshoot
        self.assertEqual(c.cmd("RCPT TO:<over1@d.example>").code, 452)  # error 1
        self.assertEqual(c.cmd("RCPT TO:<over2@d.example>").code, 452)  # error 2
        c.send(b"RCPT TO:<over3@d.example>\r\n")                     # error 3
        self.assertEqual(c.reply().code, 452)
        self.assertEqual(c.reply().code, 421)
        self.assertTrue(c.wait_closed(10))
        self.assertEqual([x.rcpttos for x in wait_records(d, 1)], [rcpts[:5]])

    def test_max_messages(self):
        """--max-messages 2: the MAIL after two messages gets 421 4.7.0 and the connection
        closes; the limit is per connection, so a new one may send again."""
        srv, d = self.start_recording(args=["--max-messages", "2", "--trusted-networks", ""])
        c = self.connect(srv)
        c.cmd(EHLO)
        for i in range(2):
            r = self.send_message(c, mailfrom=f"m{i}@b.example")
            self.assertEqual([x.code for x in r], [250, 250, 354, 250], r)
        r = c.cmd("MAIL FROM:<m2@b.example>")
        self.assertEqual(r.lines, ["421 4.7.0 test.example Error: too many messages in this "
                                   "connection, closing"])
        self.assertTrue(c.wait_closed(3))
        c2 = self.connect(srv)
        c2.cmd(EHLO)
        r = self.send_message(c2, mailfrom="again@b.example")
        self.assertEqual([x.code for x in r], [250, 250, 354, 250], r)
        self.assertEqual([x.mailfrom for x in read_records(d)],
                         ["m0@b.example", "m1@b.example", "again@b.example"])

    def test_max_messages_zero_is_no_limit(self):
        """--max-messages 0: 1001 messages (past the default of 1000) in one connection, sent
        pipelined in batches, are all taken."""
        srv = self.start_server("sink", args=["--max-messages", "0"])
        c = self.connect(srv, timeout=10)
        c.cmd(EHLO)
        one = (b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n" + BODY +
               b".\r\n")
        total, batch = 1001, 77
        done = 0
        while done < total:
            n = min(batch, total - done)
            c.send(one * n)
            codes = [x.code for x in c.replies(4 * n)]
            self.assertEqual(codes, [250, 250, 354, 250] * n, f"after {done} messages")
            done += n
        self.assertEqual(c.cmd("NOOP").code, 250)
        srv.wait_log(r"info: session \d+: message 1001 from <a@b\.example>")

    def test_max_errors(self):
        """--max-errors 3: the third error reply (good commands between do not reset the
        count) is followed by 421 4.7.0 and the close."""
        srv = self.start_server("sink", args=["--max-errors", "3"])
        c = self.connect(srv)
        self.assertEqual(c.cmd("FOO").code, 500)
        self.assertEqual(c.cmd("NOOP").code, 250)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 503)  # before HELO
        self.assertEqual(c.cmd(EHLO).code, 250)
        c.send(b"RCPT TO:<c@d.example>\r\n")
        r = c.reply()
        self.assertEqual(r.lines, ["503 5.5.1 Error: need MAIL command"])
        r = c.reply()
        self.assertEqual(r.lines, ["421 4.7.0 test.example Error: too many errors, closing "
                                   "connection"])
        self.assertTrue(c.wait_closed(3))
        srv.wait_log(r"info: session \d+: 3 errors, closing")

    def test_zero_is_no_limit(self):
        """0 for none (issue 15): --max-errors 0 takes 60 errors (three times the default)
        and the connection stays; --max-recipients 0 takes 1200 recipients (past the default
        1000) in one message."""
        srv, d = self.start_recording(args=["--max-errors", "0", "--max-recipients", "0"])
        c = self.connect(srv, timeout=20)
        c.send(b"BAD\r\n" * 60)
        self.assertEqual([r.code for r in c.replies(60)], [500] * 60)
        self.assertEqual(c.cmd(EHLO).code, 250)
        rcpts = [f"r{i}@d.example" for i in range(1200)]
        c.send(b"MAIL FROM:<a@b.example>\r\n" +
               b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpts))
        self.assertEqual([r.code for r in c.replies(1201)], [250] * 1201)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(BODY + b".\r\n")
        self.assertEqual(c.reply().code, 250)
        self.assertEqual(wait_records(d, 1)[0].rcpttos, rcpts)

    def test_refused_messages_are_not_command_errors(self):
        """--max-errors 2: the handler refusing three messages (550 after DATA) is not the
        client's error; two bad commands are."""
        srv, d = self.start_recording(args=["--max-errors", "2"],
                                      sets={"reply": "550 5.7.1 not this one"})
        c = self.connect(srv)
        c.cmd(EHLO)
        for i in range(3):
            r = self.send_message(c)
            self.assertEqual([x.code for x in r], [250, 250, 354, 550], r)
        self.assertEqual(c.cmd("NOOP").code, 250)
        self.assertEqual(c.cmd("BAD").code, 500)
        c.send(b"WORSE\r\n")
        self.assertEqual(c.reply().code, 500)
        self.assertEqual(c.reply().code, 421)
        self.assertTrue(c.wait_closed(3))


class TestGreetDelay(TraceTestCase):
    def test_client_that_talks_first(self):
        """--greet-delay 5000: a client that sends before the greeting gets 554 5.5.0 at once
        (well before the 5 s are over, and no 220), is closed, and no command of it reaches
        Lua."""
        srv = self.start_traced(args=["--greet-delay", "5000"])
        c = SMTPClient(srv.port, greeting=False)
        self.addCleanup(c.close)
        t0 = time.monotonic()
        c.send(b"EHLO rude.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
               b"DATA\r\nSubject: x\r\n\r\nx\r\n.\r\n")
        r = c.reply()
        self.assertEqual(r.lines, ["554 5.5.0 test.example Error: talked before the greeting"])
        self.assertLess(time.monotonic() - t0, 4.0, "the 554 waited for the greet delay")
        self.assertTrue(c.wait_closed(3))
        self.assertEqual(c.buf, b"", "more than the 554")
        srv.wait_log(r"info: session \d+: 127\.0\.0\.1 talked before the greeting, refused")
        port = c.local_port()
        self.wait_trace(lambda t: any(w == "on_disconnect" and p == port for w, _, p in t),
                        "the session's end")
        self.assertEqual(self.hooks_for(port), ["on_connect", "on_disconnect"])

    def test_patient_client(self):
        """--greet-delay 800: a client that waits gets 220 after about 0.8 s, then is served."""
        srv = self.start_traced(args=["--greet-delay", "800"])
        t0 = time.monotonic()
        c = SMTPClient(srv.port, greeting=False)
        self.addCleanup(c.close)
        r = c.reply(timeout=5)
        elapsed = time.monotonic() - t0
        self.assertEqual(r.code, 220, r)
        self.assertGreater(elapsed, 0.75)
        self.assertLess(elapsed, 0.8 + harness.bound(4), "not the 0.8 s greet delay")
        c.cmd(EHLO)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(BODY + b".\r\n")
        self.assertEqual(c.reply().code, 250)
        self.assertEqual(self.hooks_for(c.local_port()),
                         ["on_connect", "on_helo", "on_mail", "on_rcpt", "process_message"])


class TestLuaBudget(ServerTestCase):
    def start_runaway(self, args=()):
        return self.start_server("limits_runaway", args=args, expect_errors=[HANDLER_FAILED])

    def message(self, c, rcpt, timeout=10):
        """A whole transaction to `rcpt`; returns (final reply, seconds from the dot to it)."""
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 250)
        self.assertEqual(c.cmd(f"RCPT TO:<{rcpt}>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(BODY + b".\r\n")
        t0 = time.monotonic()
        r = c.reply(timeout=timeout)
        return r, time.monotonic() - t0

    def test_endless_handlers(self):
        """The default budget (50M instructions): `while true do end`, and a loop around a
        pcall of an endless function, each answer 451 4.3.0 (the log says the budget ended
        them); the next message on the same connection, and on another, is served."""
        srv = self.start_runaway()
        c = self.connect(srv)
        c.cmd(EHLO)
        for what in ("loop", "pcall"):
            with self.subTest(what=what):
                r, _ = self.message(c, f"{what}@d.example", timeout=60)
                self.assertEqual(r.lines,
                                 ["451 4.3.0 Error: the message handler failed; try again later"])
                r, _ = self.message(c, "ok@d.example")
                self.assertEqual(r.lines, ["250 2.0.0 served ok"])
        other = self.connect(srv)
        other.cmd(EHLO)
        r, _ = self.message(other, "ok@d.example")
        self.assertEqual(r.lines, ["250 2.0.0 served ok"])
        srv.wait_log(r"error: session \d+: process_message failed .*budget of 50000000 Lua "
                     r"instructions")

    def test_endless_hook(self):
        """on_rcpt looping for ever refuses that RCPT with 451 4.3.0; the transaction goes on
        with the other recipients."""
        srv = self.start_runaway()
        c = self.connect(srv)
        c.cmd(EHLO)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 250)
        r = c.cmd("RCPT TO:<hookloop@d.example>", timeout=60)
        self.assertEqual(r.lines, ["451 4.3.0 Error: the script failed; try again later"])
        self.assertEqual(c.cmd("RCPT TO:<fine@d.example>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(BODY + b".\r\n")
        self.assertEqual(c.reply().lines, ["250 2.0.0 served fine"])
        srv.wait_log(r"error: session \d+: on_rcpt failed .*budget")

    def test_small_budget(self):
        """--lua-instructions 1000000: the loop fails sooner, and an ordinary handler still
        fits."""
        srv = self.start_runaway(args=["--lua-instructions", "1000000"])
        c = self.connect(srv)
        c.cmd(EHLO)
        r, _ = self.message(c, "loop@d.example")
        self.assertEqual(r.code, 451, r)
        r, _ = self.message(c, "ok@d.example")
        self.assertEqual(r.lines, ["250 2.0.0 served ok"])
        srv.wait_log(r"budget of 1000000 Lua instructions")

    def test_memory_cap(self):
        """--lua-memory 64: a handler filling a table answers 451, the server's resident size
        stays under three times the cap (at its peak too), and the next message is served."""
        cap_mib = 64
        srv = self.start_runaway(args=["--lua-memory", str(cap_mib)])
        c = self.connect(srv)
        c.cmd(EHLO)
        for round_ in range(2):
            r, elapsed = self.message(c, "memory@d.example", timeout=30)
            self.assertEqual(r.lines,
                             ["451 4.3.0 Error: the message handler failed; try again later"])
            rss, hwm = proc_status(srv.pid, "VmRSS"), proc_status(srv.pid, "VmHWM")
            if not harness.SANITIZED:  # ASan's quarantine and shadow memory, not ours
                self.assertLess(hwm, 3 * cap_mib * 1024, f"peak RSS {hwm} KiB")
            if not harness.SANITIZED:  # ASan's quarantine and shadow memory, not ours
                self.assertLess(rss, 3 * cap_mib * 1024, f"RSS {rss} KiB")
            r, _ = self.message(c, "ok@d.example")
            self.assertEqual(r.lines, ["250 2.0.0 served ok"])
        srv.wait_log(r"error: session \d+: process_message failed .*not enough memory")
        self.assertTrue(srv.alive())


if __name__ == "__main__":
    unittest.main()
