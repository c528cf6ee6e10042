"""--watchdog SECONDS: a process whose event loop is stuck (a Lua __gc that never returns: Lua
runs no hooks inside finalizers, so the instruction budget cannot end it) logs why and exits
with status 70; with --workers the supervisor starts a new worker. The client whose message was
in flight never got a 2xx for it. A busy or idle server does not trip it.
Fixture: handlers/watchdog_gc.lua."""
import re
import signal
import time

import harness
from harness import Closed, SMTPClient, ServerTestCase, bound, run_threads, failures
from test_limits import BODY, EHLO, HANDLER_FAILED

WATCHDOG = r"error: watchdog: the event loop has been stuck for (\d+) s \(a Lua finalizer"
STUCK_EXIT = 70
SERVED = re.compile(r"^250 2\.0\.0 served pid=(\d+)$")


def send(c, rcpt, timeout=None):
    """A transaction on an open connection; returns the final reply."""
    c.cmd("MAIL FROM:<a@b.example>")
    c.cmd(f"RCPT TO:<{rcpt}>")
    c.cmd("DATA")
    c.send(BODY + b".\r\n")
    return c.reply(timeout=timeout)


class TestWatchdog(ServerTestCase):
    def start_gc(self, watchdog, args=(), **kw):
        return self.start_server("watchdog_gc", args=["--watchdog", str(watchdog), *args],
                                 expect_errors=[WATCHDOG, HANDLER_FAILED], **kw)

    def assert_cut_off(self, c):
        """The stuck transaction's client: its connection ends with no reply at all."""
        with self.assertRaises(Closed):
            r = c.reply(timeout=60)
            self.fail(f"the client of the stuck transaction got {r.lines!r}")

    def test_stuck_finalizer_exits(self):
        """A finalizer looping for ever: within a bound of --watchdog 2 the log says the loop
        was stuck and the process exits 70; the client got no reply (it will retry)."""
        srv = self.start_gc(2)
        c = self.connect(srv)
        c.cmd(EHLO)
        self.assertEqual(send(c, "ok@d.example").code, 250)
        t0 = time.monotonic()
        c.cmd("MAIL FROM:<a@b.example>")
        c.cmd("RCPT TO:<gc@d.example>")
        c.cmd("DATA")
        c.send(BODY + b".\r\n")
        m = srv.wait_log(WATCHDOG, timeout=30)
        self.assertEqual(m.group(1), "2")
        srv.stopped_by_test = True  # it ends by itself
        self.assertEqual(srv.wait_exit(30), STUCK_EXIT)
        self.assertLess(time.monotonic() - t0, bound(30), "the watchdog took too long")
        self.assert_cut_off(c)

    def test_stuck_finalizer_at_exit(self):
        """A finalizer that loops when the state is closed (SIGTERM, after the loop ended):
        the process still exits, with status 70, instead of hanging for ever."""
        srv = self.start_gc(2, sets={"gc_at_close": "1"})
        srv.send_signal(signal.SIGTERM)
        srv.wait_log(r"info: stopped")
        srv.wait_log(WATCHDOG, timeout=30)
        self.assertEqual(srv.wait_exit(30), STUCK_EXIT)

    def test_worker_restarted(self):
        """--workers 2: the stuck worker exits 70, the supervisor says so and starts a new one
        (logged), and new clients are served, by the new worker too."""
        srv = self.start_gc(2, args=["--workers", "2"])
        for w in (1, 2):
            _, m = srv.log.wait(rf"worker {w} started \(pid (\d+)\)")
            srv.log.wait(rf"luasmtpd\[{m.group(1)}\] info: generation 1 loaded")
        c = self.connect(srv)
        c.cmd(EHLO)
        stuck_pid = int(SERVED.match(send(c, "ok@d.example").lines[-1]).group(1))
        c.cmd("MAIL FROM:<a@b.example>")
        c.cmd("RCPT TO:<gc@d.example>")
        c.cmd("DATA")
        c.send(BODY + b".\r\n")
        srv.wait_log(rf"luasmtpd\[{stuck_pid}\] " + WATCHDOG, timeout=30)
        m = srv.wait_log(rf"warn: worker (\d) \(pid {stuck_pid}\) exited with status 70: its "
                         r"watchdog found its loop stuck; restarting it in \d+ s")
        w = m.group(1)
        _, m = srv.log.wait(rf"worker {w} restarted \(pid (\d+)\)", 30)
        new_pid = int(m.group(1))
        self.assert_cut_off(c)
        seen = set()
        for _ in range(200):  # SO_REUSEPORT spreads clients: the new worker gets one soon
            with SMTPClient(srv.port) as other:
                other.cmd(EHLO)
                r = send(other, "ok@d.example")
                other.cmd("QUIT")
            self.assertEqual(r.code, 250, r)
            seen.add(int(SERVED.match(r.lines[-1]).group(1)))
            if new_pid in seen:
                break
        self.assertIn(new_pid, seen)
        self.assertNotIn(stuck_pid, seen)

    def test_busy_and_idle_server_does_not_trip(self):
        """Four clients sending messages, some of them running to the end of the instruction
        budget (--lua-instructions 20000000, ~0.2 s each), then an idle spell: with --watchdog
        3 (scaled by the slowdown) no watchdog line, and the server still serves. The idle
        spell is two whole periods with no traffic, so only the loop's own re-arming keeps
        it alive."""
        limit = max(3, int(bound(3)))
        srv = self.start_gc(limit, args=["--lua-instructions", "20000000"])

        def client(i):
            with SMTPClient(srv.port) as c:
                c.cmd(EHLO)
                codes = [send(c, ("loop" if n % 3 == 0 else "ok") + "@d.example",
                              timeout=60).code for n in range(12)]
                c.cmd("QUIT")
            return codes

        results = run_threads(4, client, timeout=120)
        self.assertEqual(failures(results), [])
        for _, codes in results:
            self.assertEqual(codes, [451 if n % 3 == 0 else 250 for n in range(12)])
        # Two whole watchdog periods of quiet after the traffic (6 s, scaled as `limit` is).
        srv.assert_no_log(WATCHDOG, watch=6)
        self.assertTrue(srv.alive())
        c = self.connect(srv)
        c.cmd(EHLO)
        self.assertEqual(send(c, "ok@d.example").code, 250)


if __name__ == "__main__":
    import unittest
    unittest.main()
