"""Connections under attack (issue 12, items 3 and 4): a command line must be whole within
--timeout of its prompt however its bytes trickle in; junk commands count as errors past
--max-junk; accept() out of descriptors pauses instead of spinning; the descriptor limit is
raised to the hard limit and --max-connections fitted to it; a full server closes the session
that has waited longest on its client to serve a newcomer. Fixtures: sink.lua, record.lua,
limits_hostile.lua (a delivery child that sleeps), fd_hog.lua (holds descriptors)."""

import os
import re
import select
import shutil
import signal
import socket
import tempfile
import time
import unittest

import harness
from harness import SMTPClient, ServerTestCase, wait_records, wait_until

EHLO = "EHLO client.example"
BODY = b"Subject: conn\r\n\r\nbody\r\n"
TIMEOUT_421 = "421 4.4.2 test.example Error: timeout exceeded"
TOO_BUSY_421 = "421 4.3.2 test.example Too busy, closing idle connection; try again later"
ACCEPT_FAILED = r"warn: accept failed: "


def cpu_seconds(pid):
    """utime + stime of a process so far (/proc/PID/stat fields 14 and 15), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # fields[0] is field 3, the state
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nofile_limits(pid):
    """(soft, hard) of the process's "Max open files" in /proc/PID/limits."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError(f"no Max open files in /proc/{pid}/limits")


def read_pid(path):
    """The pid a fixture wrote to `path`, or None while it is not there (yet)."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def quiet(socks, watch):
    """The sockets among `socks` that have something to read (or were closed) within `watch`
    seconds."""
    deadline = time.monotonic() + watch
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return []
        ready = select.select(socks, [], [], remaining)[0]
        if ready:
            return ready


class ConnTestCase(ServerTestCase):
    def start_limited(self, nofile, handler="sink", **kw):
        """A server started under `prlimit --nofile=SOFT:HARD` (nofile "SOFT:HARD"); prlimit
        execs it, so the pid is the server's."""
        srv = self.start_server(handler, start=False, **kw)
        srv.cmd[:0] = ["prlimit", f"--nofile={nofile}", "--"]
        srv.start()
        return srv

    def send_message(self, c, mailfrom="a@b.example", rcpt="c@d.example", helo=None):
        replies = c.transaction(mailfrom, [rcpt], BODY, helo=helo)
        self.assertEqual([r.code for r in replies], [250] * (len(replies) - 2) + [354, 250],
                         replies)


class TestCommandTimeout(ConnTestCase):
    def drip_until_reply(self, c, wait):
        """Sends one byte of a command line ("N") a second from a thread, never a line end,
        until the server answers; returns (reply, seconds from now, bytes sent)."""
        return harness.drip_until_reply(self, c, b"N", wait)

    def test_byte_a_second_is_cut(self):
        """--timeout 3 and a client that sends a byte of a command every second, after the
        greeting or after a message (where the timer was last set for DATA's timeout of 60
        s): cut with 421 4.4.2 about 3 s after the prompt, the bytes still coming (before,
        each byte restarted the timeout, and the client held its slot for ever)."""
        srv = self.start_server("sink", args=["--timeout", "3", "--data-timeout", "60",
                                              "--min-data-rate", "0"])
        for after in ("EHLO", "a message"):
            with self.subTest(after=after):
                c = self.connect(srv)
                self.assertEqual(c.cmd(EHLO).code, 250)
                if after == "a message":
                    self.send_message(c)
                r, elapsed, sent = self.drip_until_reply(c, 3 + harness.bound(4) + 2)
                print(f"(cut {elapsed:.2f} s after the prompt, {sent} bytes sent)")
                self.assertEqual(r.lines, [TIMEOUT_421])
                self.assertTrue(c.wait_closed(3), "still open after the 421")
                self.assertGreater(elapsed, 2.5)
                self.assertLess(elapsed, 3 + harness.bound(4), "not the 3 s of the prompt")
                self.assertGreaterEqual(sent, 2, "the bytes did not keep coming")
        srv.wait_log(r"info: session \d+: timeout, closing")

    def test_whole_commands_each_start_the_timeout(self):
        """--timeout 3: a command line completed in pieces within the 3 s is answered, and the
        next 3 s start from its reply."""
        srv = self.start_server("sink", args=["--timeout", "3"])
        c = self.connect(srv)
        for _ in range(3):
            c.send(b"NO")
            # A pause of 1 s in which the server says nothing (no 421, no close).
            self.assertEqual(select.select([c.sock], [], [], 1.0)[0], [], "the server spoke")
            self.assertEqual(c.cmd("OP").code, 250)


class TestJunkCommands(ConnTestCase):
    JUNK = ["NOOP", "RSET", "HELP", "VRFY <a@b.example>"]

    def test_noop_loop_ends(self):
        """With the defaults (--max-junk 100, --max-errors 20), a client that sends nothing but
        NOOP gets 120 answers and then 421 4.7.0 (before, it could go on for ever)."""
        srv = self.start_server("sink")
        c = self.connect(srv)
        c.send(b"NOOP\r\n" * 121)
        codes = [r.code for r in c.replies(121)]
        self.assertEqual(codes, [250] * 120 + [421])
        self.assertTrue(c.wait_closed(3))

    def test_junk_limit(self):
        """--max-junk 5 --max-errors 3: EHLO and four more junk commands are free, the next
        ones count as errors, so the eighth (5 + 3) is answered and then 421 4.7.0 closes the
        connection."""
        srv = self.start_server("sink", args=["--max-junk", "5", "--max-errors", "3"])
        c = self.connect(srv)
        codes = [c.cmd(EHLO).code] + [c.cmd(self.JUNK[i % 4]).code for i in range(7)]
        self.assertEqual(codes, [250, 250, 250, 250, 252, 250, 250, 250])
        self.assertEqual(c.reply().lines,
                         ["421 4.7.0 test.example Error: too many errors, closing connection"])
        self.assertTrue(c.wait_closed(3))
        srv.wait_log(r"info: session \d+: 3 errors, closing")

    def test_accepted_message_restarts_the_count(self):
        """--max-junk 5 --max-errors 3: after EHLO and four NOOPs (the five free ones) a
        message is accepted; then seven NOOPs pass (five free again, two errors) and the
        eighth ends the connection."""
        srv = self.start_server("sink", args=["--max-junk", "5", "--max-errors", "3"])
        c = self.connect(srv)
        self.assertEqual([c.cmd(EHLO).code] + [c.cmd("NOOP").code for _ in range(4)],
                         [250] * 5)
        self.send_message(c)
        self.assertEqual([c.cmd("NOOP").code for _ in range(8)], [250] * 8)
        self.assertEqual(c.reply().code, 421)
        self.assertTrue(c.wait_closed(3))


# valgrind keeps descriptors of its own and shows its client a hard limit equal to the soft one.
UNDER_WRAPPER = unittest.skipIf(os.environ.get("LUASMTPD_WRAPPER"),
                                "the wrapper (valgrind) manages the descriptor limit itself")


class TestDescriptors(ConnTestCase):
    def test_out_of_descriptors_pauses_accepts(self):
        """A limit of 256 descriptors, 200 of them held by the script: of 80 clients the
        server accepts what fits and then accept() fails with EMFILE. It pauses instead of
        spinning: over 3 s it uses under half a core and logs under 20 accept failures (it
        spun at 100% with a line per loop turn), and still answers the clients it has; once
        they leave, the client that waited is served."""
        srv = self.start_limited("256:256", "fd_hog", sets={"files": "200"},
                                 args=["--max-children", "1"])
        held = [socket.create_connection((srv.host, srv.port), timeout=harness.REPLY_TIMEOUT)
                for _ in range(80)]
        for s in held:
            self.addCleanup(s.close)
        _, m = srv.log.wait(r"warn: accept failed: Too many open files", 10)
        waiting = SMTPClient(srv.port, host=srv.host, greeting=False)
        self.addCleanup(waiting.close)
        start_line = len(srv.log.snapshot())
        cpu0, t0 = cpu_seconds(srv.pid), time.monotonic()
        # Watched 3 s: the waiting client stays in the backlog (the server has no descriptor
        # for it), and the window is six accept pauses long, where a spinning server burns
        # all of it.
        self.assertEqual(quiet([waiting.sock], 3.0), [], "greeted with no descriptor free")
        cpu = cpu_seconds(srv.pid) - cpu0
        window = time.monotonic() - t0
        failures = [l for l in srv.log.snapshot()[start_line:] if re.search(ACCEPT_FAILED, l)]
        print(f"(out of descriptors: {cpu:.2f} s CPU in {window:.1f} s, {len(failures)} "
              f"accept failure lines)")
        self.assertLess(cpu, 0.5 * window, "the server spins")
        self.assertLess(len(failures), 20, "accept failures flood the log")
        # The clients it accepted are served meanwhile: the first one in is the oldest.
        first = held[0]
        first.settimeout(harness.REPLY_TIMEOUT)
        self.assertTrue(first.recv(512).startswith(b"220 "))
        first.sendall(b"NOOP\r\n")
        self.assertTrue(first.recv(512).startswith(b"250 "))
        for s in held:
            s.close()
        # Once their descriptors are free, the next pause ends with the waiting client served.
        waiting.greeting = waiting.reply(timeout=10)
        self.assertEqual(waiting.greeting.code, 220, waiting.greeting)
        self.send_message(waiting, helo=EHLO)

    @UNDER_WRAPPER
    def test_limit_raised_and_connections_fitted(self):
        """Started with a soft limit of 256 and a hard one of 512: the server raises its soft
        limit to 512 and says so, and warns that --max-connections 10000 does not fit: 1 per
        connection and 64 + 3 x --max-children 1 kept leave room for 512 - 67 = 445."""
        srv = self.start_limited("256:512", "sink", args=["--max-children", "1"])
        srv.wait_log(r"info: descriptor limit 512 \(raised from 256 to the hard limit\)$")
        srv.wait_log(r"warn: --max-connections 10000 does not fit in the descriptor limit 512 "
                     r"\(1 per connection, 67 kept .*\): at most 445 connections at once$")
        self.assertEqual(nofile_limits(srv.pid), (512, 512))

    @UNDER_WRAPPER
    def test_fitted_cap_is_enforced(self):
        """A hard limit of 100 (the reserve then takes at most half: 50 of it): at most 50
        connections. Held before their greeting (--greet-delay 60 s: not idle, so none may be
        closed to make room), 50 are taken and the 51st is refused with 421 4.7.0."""
        srv = self.start_limited("100:100", "sink", probe=False,
                                 args=["--max-children", "1", "--greet-delay", "60000", "-d"])
        srv.wait_log(r"warn: --max-connections 10000 does not fit .*: at most 50 connections")
        held = [socket.create_connection((srv.host, srv.port), timeout=harness.REPLY_TIMEOUT)
                for _ in range(50)]
        for s in held:
            self.addCleanup(s.close)
        srv.wait_log(r"debug: session 50: connection from ")
        refused = self.connect(srv)
        self.assertEqual(refused.greeting.lines, [
            "421 4.7.0 test.example Error: too many connections, try again later"])
        self.assertTrue(refused.wait_closed(3))
        # The refusal was sent at once, so 1 s is ample for a 421 to a held one to show.
        self.assertEqual(quiet(held, 1.0), [], "a held connection was answered")


class TestMakeRoom(ConnTestCase):
    def test_full_server_closes_the_longest_waiting(self):
        """--max-connections 20, all taken: one session whose handler runs (a delivery child
        that sleeps), one in DATA, 18 idle after EHLO, all waiting more than 5 s. A newcomer is
        served (220, a whole message, 250) and exactly the idle session that has waited longest
        gets 421 4.3.2 and is closed: an idle one goes before the DATA, though the DATA began
        first. Once no idle session has waited 5 s, the next newcomer takes the DATA's slot and
        its message is not recorded. The session whose handler runs is never chosen, and gets
        its own answer when its child ends."""
        d = self.make_dir()
        srv = self.start_server("limits_hostile", sets={"dir": d},
                                args=["--max-connections", "20"])
        # The harness's probe connection counts until the server has let it go.
        wait_until(lambda: srv.client_sockets() == 0, 10, what="the probe connection closed")
        busy = self.connect(srv)
        busy.cmd(EHLO)
        busy.cmd("MAIL FROM:<slow@b.example>")
        busy.cmd("RCPT TO:<slow@d.example>")
        self.assertEqual(busy.cmd("DATA").code, 354)
        busy.send(BODY + b".\r\n")
        pid_file = os.path.join(d, "slow.pid")
        child = wait_until(lambda: read_pid(pid_file), 10, what="the delivery child's pid")
        indata = self.connect(srv)
        indata.cmd(EHLO)
        indata.cmd("MAIL FROM:<indata@b.example>")
        indata.cmd("RCPT TO:<c@d.example>")
        self.assertEqual(indata.cmd("DATA").code, 354)
        indata.send(b"Subject: never ends\r\n")
        idle = [self.connect(srv) for _ in range(18)]
        for c in idle:
            self.assertEqual(c.cmd(EHLO).code, 250)
        everyone = [busy, indata] + idle
        # Watched 6 s, more than the 5 s a session must wait to be a candidate: a full server
        # with no newcomer closes nobody.
        self.assertEqual(quiet([c.sock for c in everyone], 6.0), [], "closed with no newcomer")

        new = self.connect(srv)
        self.assertEqual(new.greeting.code, 220, new.greeting)
        self.send_message(new, mailfrom="new@b.example", helo=EHLO)
        self.assertEqual(idle[0].reply().lines, [TOO_BUSY_421])
        self.assertTrue(idle[0].wait_closed(3))
        srv.wait_log(r"info: session \d+: closed to make room for a new connection: waited "
                     r"\d+ s for a command$")
        # The 421 went out before the newcomer's greeting: 1 s is ample for another to show.
        self.assertEqual(quiet([c.sock for c in [busy, indata] + idle[1:]], 1.0), [],
                         "another was closed")

        # A NOOP makes each idle one start waiting anew, so none has waited 5 s (the test
        # gets the next greeting in well under that): the DATA is the only candidate.
        for c in idle[1:]:
            self.assertEqual(c.cmd("NOOP").code, 250)
        second = self.connect(srv)
        self.assertEqual(second.greeting.code, 220, second.greeting)
        self.assertEqual(indata.reply().lines, [TOO_BUSY_421])
        self.assertTrue(indata.wait_closed(3))
        srv.wait_log(r"info: session \d+: closed to make room for a new connection: in DATA "
                     r"for \d+ s, message from <indata@b.example> discarded after \d+ bytes")
        self.assertEqual(quiet([c.sock for c in [busy, new] + idle[1:]], 1.0), [],
                         "another was closed")
        self.assertEqual(idle[1].cmd("NOOP").code, 250)

        # The busy session was never a candidate; its child killed, it gets the handler's 4xx.
        os.kill(child, signal.SIGKILL)
        self.assertEqual(busy.reply().code // 100, 4)
        self.assertEqual([r.mailfrom for r in wait_records(d, 1)], ["new@b.example"])

    def test_proven_client_goes_first(self):
        """A client that had a message accepted is served ahead of sessions that never sent
        one: with the server full of idle sessions that waited over a second but under the
        5 s anyone may take, a newcomer from another address is refused, and one from the
        proven address takes the oldest idle slot and delivers."""
        srv = self.start_server("sink", args=["--max-connections", "4"])
        wait_until(lambda: srv.client_sockets() == 0, 10, what="the probe connection closed")
        with SMTPClient(srv.port, source="127.0.0.3") as first:
            self.send_message(first, helo=EHLO)
            first.cmd("QUIT")
        wait_until(lambda: srv.client_sockets() == 0, 10, what="the first client gone")
        idle = [self.connect(srv) for _ in range(4)]
        for c in idle:
            self.assertEqual(c.cmd(EHLO).code, 250)
        # Watched 1.5 s: the server is full and nobody came, so nobody is closed; it is also
        # the second a proven newcomer needs the idle ones to have waited.
        self.assertEqual(quiet([c.sock for c in idle], 1.5), [], "closed with no newcomer")
        # The idle ones have waited about 1.5 s, well under 5 s: an unknown address waits.
        with SMTPClient(srv.port, source="127.0.0.2") as unknown:
            self.assertEqual(unknown.greeting.code, 421, unknown.greeting)
        with SMTPClient(srv.port, source="127.0.0.3") as proven:
            self.assertEqual(proven.greeting.code, 220, proven.greeting)
            self.assertEqual(idle[0].reply().lines, [TOO_BUSY_421])
            self.send_message(proven, helo=EHLO)
        self.assertEqual(idle[1].cmd("NOOP").code, 250)

    def make_dir(self):
        d = tempfile.mkdtemp(prefix="luasmtpd-conn-")
        self.addCleanup(shutil.rmtree, d, True)
        return d


if __name__ == "__main__":
    unittest.main()
