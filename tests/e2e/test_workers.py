"""--workers N: processes sharing the port, each with its own loop and Lua state; script edits
and SIGHUP reach all of them, SIGTERM stops them all gracefully, and a worker that dies is
restarted."""
import os
import re
import signal
import tempfile
import unittest

from harness import SMTPClient, ServerTestCase, wait_until

SCRIPT = """
local pid = io.open("/proc/self/stat"):read("n")
function process_message()
  return "250 2.0.0 %s pid=" .. pid
end
"""

WORKER_STARTED = re.compile(r"worker (\d+) (?:started|restarted) \(pid (\d+)\)")


def message(port, text=b"Subject: w\r\n\r\nhi\r\n"):
    with SMTPClient(port) as c:
        replies = c.transaction("a@b.example", ["c@d.example"], text)
        c.cmd("QUIT")
    final = replies[-1]
    m = re.search(r"(v\d+) pid=(\d+)", final.text)
    assert final.code == 250 and m, final
    return m.group(1), int(m.group(2))


class WorkersTestCase(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="luasmtpd-workers-")
        self.script = os.path.join(self.dir, "h.lua")
        self.save("v1")

    def tearDown(self):
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)

    def save(self, version):
        tmp = self.script + ".tmp"
        with open(tmp, "w") as f:
            f.write(SCRIPT % version)
        os.replace(tmp, self.script)

    def start_workers(self, n=2, args=()):
        """The server with n workers, each of which has loaded its script (and so watches
        it: a worker set up after an edit would load the new script as its first
        generation). Returns (server, {worker number: pid})."""
        srv = self.start_server(self.script, args=["--workers", str(n), *args])
        workers = {}
        for w in range(1, n + 1):
            _, m = srv.log.wait(rf"worker {w} started \(pid (\d+)\)")
            workers[w] = int(m.group(1))
        for pid in workers.values():
            srv.log.wait(rf"luasmtpd\[{pid}\] info: generation 1 loaded")
        return srv, workers

    def worker_pids(self, srv):
        pids = {}
        for line in srv.log.snapshot():
            m = WORKER_STARTED.search(line)
            if m:
                pids[int(m.group(1))] = int(m.group(2))
        return pids

    def loaded_count(self, srv, generation):
        pat = re.compile(rf"luasmtpd\[(\d+)\] info: generation {generation} loaded")
        return {m.group(1) for m in map(pat.search, srv.log.snapshot()) if m}


class TestWorkers(WorkersTestCase):
    def test_both_workers_serve(self):
        srv, workers = self.start_workers(2)
        seen = set()
        for _ in range(200):
            _, pid = message(srv.port)
            seen.add(pid)
            if len(seen) == 2:
                break
        self.assertEqual(seen, set(workers.values()))
        self.assertNotIn(srv.pid, seen)

    def test_script_edit_reaches_every_worker(self):
        srv, workers = self.start_workers(2)
        self.save("v2")
        wait_until(lambda: len(self.loaded_count(srv, 2)) == 2, 10, what="both workers reloaded")
        for _ in range(20):
            self.assertEqual(message(srv.port)[0], "v2")

    def test_sighup_reaches_every_worker(self):
        srv, workers = self.start_workers(2, args=["--no-reload"])
        self.save("v2")
        self.assertEqual(message(srv.port)[0], "v1")
        srv.send_signal(signal.SIGHUP)
        wait_until(lambda: len(self.loaded_count(srv, 2)) == 2, 10, what="both workers reloaded")
        self.assertEqual(self.loaded_count(srv, 2), {str(p) for p in workers.values()})
        for _ in range(20):
            self.assertEqual(message(srv.port)[0], "v2")

    def test_a_dead_worker_is_restarted(self):
        srv, workers = self.start_workers(2)
        os.kill(workers[1], signal.SIGKILL)
        srv.log.wait(re.compile(r"worker 1 \(pid \d+\) killed by signal 9"))
        srv.log.wait(re.compile(r"worker 1 restarted \(pid (\d+)\)"))
        new_pid = self.worker_pids(srv)[1]
        self.assertNotEqual(new_pid, workers[1])
        seen = set()
        for _ in range(200):
            seen.add(message(srv.port)[1])
            if new_pid in seen:
                break
        self.assertIn(new_pid, seen)
        self.assertNotIn(workers[1], seen)

    def test_a_worker_that_keeps_dying_backs_off(self):
        """A worker that dies soon after its start waits longer each time: the script broke
        on disk (--no-reload keeps the running workers on the old one), so each new worker 1
        fails to load and exits 1; the supervisor says it restarts it in 1, then 2, then 4 s.
        (Clients are not asked meanwhile: those the kernel queues on worker 1's socket wait
        for a worker 1 that cannot load.)"""
        srv, workers = self.start_workers(2, args=["--no-reload"])
        srv.expect_errors.append(re.compile(r"error: .*h\.lua"))
        with open(self.script, "w") as f:
            f.write("this is not Lua\n")
        os.kill(workers[1], signal.SIGKILL)
        start = 0
        for delay in (1, 2, 4):
            m = srv.wait_log(rf"warn: worker 1 \(pid \d+\) (?:killed by signal 9|exited with "
                             rf"status 1); restarting it in (\d+) s", timeout=30, start=start)
            self.assertEqual(int(m.group(1)), delay, m.string)
            start = srv.log.snapshot().index(m.string) + 1

    def test_sigterm_stops_every_worker_after_its_transaction(self):
        srv, workers = self.start_workers(2)
        c = SMTPClient(srv.port)
        self.addCleanup(c.close)
        c.cmd("EHLO client.example")
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)
        srv.send_signal(signal.SIGTERM)
        srv.log.wait(re.compile(r"SIGTERM: stopping 2 worker"))
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(b"Subject: late\r\n\r\nstill taken\r\n.\r\n")
        self.assertEqual(c.reply().code, 250)
        self.assertEqual(srv.wait_exit(15), 0)
        for pid in workers.values():
            self.assertFalse(os.path.exists(f"/proc/{pid}"), f"worker {pid} still there")


if __name__ == "__main__":
    unittest.main()
