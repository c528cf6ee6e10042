"""The command line and the process: flags, exit statuses, addresses, privilege drop, signals."""

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

from harness import (Closed, LuaSmtpd, ServerTestCase, SMTPClient, binary, fixture,
                     on_free_port, read_records, version, wait_until)

EHLO = "EHLO client.example"
BODY = b"Subject: t\r\n\r\nbody\r\n.\r\n"


def run(args, timeout=10, env=None):
    """Runs luasmtpd to completion; a process still running after `timeout` is killed and
    fails the test."""
    try:
        return subprocess.run([binary()] + args, capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"luasmtpd {' '.join(args)} still running after {timeout}s "
                             f"(killed); stderr: {e.stderr!r}")


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class TestArguments(unittest.TestCase):
    maxDiff = None

    def test_version(self):
        p = run(["-V"])
        self.assertEqual(p.returncode, 0, p)
        self.assertRegex(p.stdout.decode(), r"^luasmtpd \d+\.\d+\.\d+\S*\n$")
        self.assertEqual(run(["--version"]).stdout, p.stdout)

    def test_help(self):
        for flag in ("-h", "--help"):
            with self.subTest(flag=flag):
                p = run([flag])
                self.assertEqual(p.returncode, 0, p)
                out = (p.stdout + p.stderr).decode()
                self.assertRegex(out, r"(?i)usage")
                for option in ("-n", "-c", "-s", "-d", "-u", "-V", "-h"):
                    self.assertIn(option, out)

    def test_bad_arguments_exit_2_with_usage(self):
        cases = [
            ["-n", "h:x"],                                  # bad port
            ["-n", "127.0.0.1"],                            # no port
            ["-n", "127.0.0.1:99999"],                      # port out of range
            ["-n", "127.0.0.1:0", "127.0.0.1:25", "extra"],  # 3 positionals
            ["-n", "127.0.0.1:0", "h:x"],                   # bad remote
            ["-n", "--no-such-option", "127.0.0.1:0"],      # unknown long option
            ["-n", "-Q", "127.0.0.1:0"],                    # unknown short option
            ["-n", "-s", "abc", "127.0.0.1:0"],             # bad size
            ["-n", "-s", "-5", "127.0.0.1:0"],
            ["-n", "-c"],                                   # missing argument
            ["-n", "--set", "novalue", "127.0.0.1:0"],
            ["-n", "--timeout", "x", "127.0.0.1:0"],
            ["-n", "--max-recipients", "x", "127.0.0.1:0"],
        ]
        for args in cases:
            with self.subTest(args=args):
                p = run(args)
                self.assertEqual(p.returncode, 2, f"{args}: {p}")
                self.assertRegex(p.stderr.decode(), r"(?i)usage", args)

    def test_port_in_use(self):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            port = s.getsockname()[1]
            p = run(["-n", "-c", fixture("sink"), f"127.0.0.1:{port}"])
        self.assertEqual(p.returncode, 1, p)
        self.assertIn("in use", p.stderr.decode())

    def test_handler_not_available(self):
        """A bundled handler whose script is missing from the install (here: a lua directory
        without it, through LUASMTPD_LUA_DIR) gets a clear "not available", exit 2."""
        empty = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, empty)
        for name in ("mailman", "MailmanProxy", "pureproxy", "PureProxy"):
            with self.subTest(name=name):
                p = run(["-n", "-c", name, "127.0.0.1:0"], env={**os.environ, "LUASMTPD_LUA_DIR": empty})
                self.assertEqual(p.returncode, 2, p)
                self.assertIn("not available", p.stderr.decode())

    def test_bundled_relaying_handlers_start(self):
        for name in ("mailman", "MailmanProxy"):
            with self.subTest(name=name):
                p = run(["--check", name])
                self.assertEqual(p.returncode, 0, p)
                self.assertIn("mailman.lua: ok", p.stdout.decode())

    def test_unknown_handler(self):
        for name in ("nosuch", "/nonexistent/handler.lua", "nosuch.lua"):
            with self.subTest(name=name):
                p = run(["-n", "-c", name, "127.0.0.1:0"])
                self.assertEqual(p.returncode, 2, p)
                self.assertIn(name, p.stderr.decode())

    def test_broken_script(self):
        """A script that does not compile, or that defines no process_message, cannot serve:
        the server logs why (naming the script) and exits with an error status."""
        for text in ("this is not lua(\n", "local x = 1\n", "error('at load time')\n"):
            with self.subTest(text=text):
                fd, path = tempfile.mkstemp(suffix=".lua")
                self.addCleanup(os.unlink, path)
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                try:
                    p = run(["-n", "-c", path, "127.0.0.1:0"], timeout=5)
                except subprocess.TimeoutExpired as e:
                    self.fail(f"still running 5 s after start with a broken script; "
                              f"stderr: {e.stderr!r}")
                self.assertNotEqual(p.returncode, 0, p)
                self.assertRegex(p.stderr.decode(), r" error: .*" + re.escape(path), p)


class TestProcess(ServerTestCase):
    def test_pureproxy_starts(self):
        """-c pureproxy / PureProxy serve."""
        for name in ("pureproxy", "PureProxy"):
            with self.subTest(name=name):
                srv = self.start_server(name, remote="127.0.0.1:9")
                self.assertEqual(self.connect(srv).cmd("NOOP").code, 250)
                srv.close()

    def test_script_path(self):
        srv = self.start_server(fixture("sink"))
        c = self.connect(srv)
        c.cmd(EHLO)
        c.cmd("MAIL FROM:<a@b>")
        c.cmd("RCPT TO:<c@d>")
        c.cmd("DATA")
        c.send(BODY)
        self.assertEqual(c.reply().code, 250)

    def test_relative_script_path(self):
        here = os.path.dirname(os.path.abspath(__file__))
        srv = LuaSmtpd("handlers/sink.lua", start=False)
        self.addCleanup(srv.close)
        old = os.getcwd()
        os.chdir(here)
        try:
            srv.start()
        finally:
            os.chdir(old)
        self.assertEqual(self.connect(srv).cmd("NOOP").code, 250)

    def test_default_hostname(self):
        """Without --hostname the name is Python's socket.getfqdn(), and a name without a dot
        is warned about at start (an upstream checking HELO would refuse our relay)."""
        fqdn = socket.getfqdn()
        warning = r"warn: this host's name '.*' is not fully qualified"
        srv = self.start_server("sink", hostname=None, expect_errors=[warning])
        c = self.connect(srv)
        self.assertEqual(c.greeting.lines, [f"220 {fqdn} luasmtpd {version()} ESMTP"])
        self.assertEqual(c.cmd("HELO x").lines, [f"250 {fqdn}"])
        self.assertEqual(c.cmd("EHLO x").lines[0], f"250-{fqdn}")
        if "." in fqdn:
            srv.assert_no_log(warning, 0)  # said before the listening line, if at all
        else:
            self.assertIn(f"'{fqdn}'", srv.wait_log(warning).string)
        # A name given is taken as it is, unwarned: the user chose it.
        for name in ("mx.example.org", "vm"):
            named = self.start_server("sink", hostname=name)
            self.assertEqual(self.connect(named).greeting.lines[0].split()[1], name)
            named.assert_no_log(warning, 0)

    def test_listening_line_names_the_port(self):
        srv = self.start_server("sink")
        self.assertEqual(srv.host, "127.0.0.1")
        self.assertGreater(srv.port, 0)
        self.assertEqual(self.connect(srv).greeting.code, 220)

    def test_fixed_port(self):
        ports = []

        def start(port):
            ports.append(port)
            return self.start_server("sink", listen=f"127.0.0.1:{port}")
        srv = on_free_port(start, "luasmtpd")
        self.assertEqual(srv.port, ports[-1])

    def test_ipv6_loopback(self):
        if not ipv6_loopback():
            self.skipTest("no IPv6 loopback")
        srv = self.start_server("sink", listen="[::1]:0")
        self.assertEqual(srv.host, "::1")
        c = SMTPClient(srv.port, host="::1")
        self.addCleanup(c.close)
        self.assertEqual(c.greeting.code, 220)
        c.cmd(EHLO)
        c.cmd("MAIL FROM:<a@b>")
        c.cmd("RCPT TO:<c@d>")
        c.cmd("DATA")
        c.send(BODY)
        self.assertEqual(c.reply().code, 250)

    def test_setuid_nobody(self):
        if os.geteuid() != 0:
            self.skipTest("not root")
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            self.skipTest("no user nobody")
        srv = self.start_server(fixture("sink"), nosetuid=False)

        def status_if_dropped():
            # The drop may come just after the listening line: poll, bounded.
            with open(f"/proc/{srv.pid}/status") as f:
                status = f.read()
            uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", status, re.M).groups()
            return status if [int(u) for u in uids] == [nobody.pw_uid] * 4 else None
        try:
            status = wait_until(status_if_dropped, 5, what="uid nobody")
        except AssertionError:
            with open(f"/proc/{srv.pid}/status") as f:
                self.fail("uid is not nobody's 5 s after start:\n" + f.read()[:400])
        gids = re.search(r"^Gid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", status, re.M).groups()
        self.assertNotIn(0, [int(g) for g in gids], "still in group root: " + status)
        groups = re.search(r"^Groups:\s*(.*)$", status, re.M).group(1).split()
        self.assertNotIn("0", groups, "supplementary group root kept")
        # It still serves.
        c = self.connect(srv)
        c.cmd(EHLO)
        c.cmd("MAIL FROM:<a@b>")
        c.cmd("RCPT TO:<c@d>")
        c.cmd("DATA")
        c.send(BODY)
        self.assertEqual(c.reply().code, 250)

    def test_nosetuid_keeps_uid(self):
        srv = self.start_server(fixture("sink"))
        with open(f"/proc/{srv.pid}/status") as f:
            uid = int(re.search(r"^Uid:\s+(\d+)", f.read(), re.M).group(1))
        self.assertEqual(uid, os.getuid())


class TestSignals(ServerTestCase):
    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def check_prompt_exit(self, probe, handler="sink"):
        for sig in self.SIGNALS:
            with self.subTest(signal=sig.name):
                srv = self.start_server(handler, probe=probe)
                srv.send_signal(sig)
                self.assertEqual(srv.wait_exit(10), 0)

    def test_idle_server_exits_promptly(self):
        self.check_prompt_exit(probe=True)

    def test_signal_right_after_listening_line(self):
        """Signalled as soon as the listening line is logged, as a supervisor might: the stop
        is graceful (exit 0), not death by the signal's default action."""
        self.check_prompt_exit(probe=False)

    def spawn_loading(self, args=()):
        """A server whose script is still loading (handlers/loadgate.lua waits for its gate
        file); returns (server, function that opens the gate of a pid)."""
        d = tempfile.mkdtemp(prefix="luasmtpd-gate-")
        self.addCleanup(shutil.rmtree, d, True)
        gate = os.path.join(d, "gate")
        srv = LuaSmtpd(fixture("loadgate"), sets={"gate": gate}, args=args, start=False,
                       probe=False)
        self.addCleanup(srv.close)
        srv.spawn()

        def open_gate(pid):
            open(f"{gate}.{pid}", "w").close()
        return srv, open_gate

    def test_stop_signal_while_the_script_loads(self):
        """SIGTERM or SIGINT while the script is still loading (nothing is in flight): the
        process stops at once, exit 0, not death by the signal; the gate is never opened."""
        for sig in self.SIGNALS:
            with self.subTest(signal=sig.name):
                srv, _ = self.spawn_loading()
                srv.wait_log(rf"fixture: loading in pid {srv.pid}$")
                srv.send_signal(sig)
                self.assertEqual(srv.wait_exit(20), 0, srv.log.text())
                srv.wait_log(r"stop signal while loading the script: exiting")

    def test_sighup_while_the_script_loads(self):
        """SIGHUP while the script is still loading: once loaded the server serves and the
        SIGHUP is a reload, not the end of the process."""
        srv, open_gate = self.spawn_loading()
        srv.wait_log(rf"fixture: loading in pid {srv.pid}$")
        srv.send_signal(signal.SIGHUP)
        open_gate(srv.pid)
        srv.wait_listening()
        srv.wait_log(r"SIGHUP: reloading")
        srv.wait_log(r"generation 2 loaded", timeout=20)
        c = self.connect(srv)
        self.assertEqual(c.cmd(EHLO).code, 250)
        self.assertTrue(srv.alive())
        srv.stopped_by_test = False  # the end of its life is checked as usual

    def test_sighup_while_a_worker_loads(self):
        """--workers 2: a SIGHUP that the supervisor passes on while a worker is still loading
        its script reloads that worker once it has loaded; it does not kill it."""
        srv, open_gate = self.spawn_loading(args=["--workers", "2"])
        srv.wait_log(rf"fixture: loading in pid {srv.pid}$")  # the supervisor's check
        open_gate(srv.pid)
        srv.wait_listening()
        workers = [int(srv.wait_log(rf"worker {w} started \(pid (\d+)\)").group(1))
                   for w in (1, 2)]
        for pid in workers:
            srv.wait_log(rf"luasmtpd\[{pid}\] info: .*fixture: loading in pid {pid}$")
        srv.send_signal(signal.SIGHUP)
        for pid in workers:
            open_gate(pid)
        for pid in workers:
            srv.wait_log(rf"luasmtpd\[{pid}\] info: SIGHUP: reloading", timeout=20)
            srv.wait_log(rf"luasmtpd\[{pid}\] info: generation 2 loaded", timeout=20)
        self.assertEqual(self.connect(srv).cmd(EHLO).code, 250)
        srv.stopped_by_test = False

    def test_idle_client_gets_421(self):
        for sig in self.SIGNALS:
            with self.subTest(signal=sig.name):
                srv = self.start_server("sink")
                c = self.connect(srv)
                self.assertEqual(c.cmd(EHLO).code, 250)
                idle = self.connect(srv)  # greeted, nothing sent
                srv.send_signal(sig)
                for client in (c, idle):
                    r = client.reply(timeout=5)
                    self.assertEqual(r.code, 421, r.lines)
                    self.assertRegex(r.lines[-1], r"^421 4\.\d\.\d+ ")
                    self.assertTrue(client.wait_closed(5))
                self.assertEqual(srv.wait_exit(5), 0)

    def stops_listening(self, srv, sig):
        """After the signal the server takes no new connection: it says so, and its listening
        socket is gone. (Not tried with a connect: once the port is free, another process may
        listen on it.)"""
        srv.wait_log(rf"{sig.name}: no new connections")
        wait_until(lambda: not srv.listens(), 10, what="the listening socket closed")

    def test_transaction_in_flight_finishes(self):
        for sig in self.SIGNALS:
            with self.subTest(signal=sig.name):
                srv, d = self.start_recording(shutdown_timeout=10)
                c = self.connect(srv)
                c.cmd(EHLO)
                self.assertEqual(c.cmd("MAIL FROM:<inflight@b.example>").code, 250)
                self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)
                t0 = time.monotonic()
                srv.send_signal(sig)
                self.stops_listening(srv, sig)
                self.assertTrue(srv.alive(), "exited with a transaction in flight")
                self.assertEqual(c.cmd("DATA").code, 354)
                c.send(BODY)
                self.assertEqual(c.reply().lines, ["250 2.0.0 OK"])
                # The transaction is over: the session is closed (possibly after a 421).
                try:
                    r = c.reply(timeout=5)
                    self.assertEqual(r.code, 421, r.lines)
                except Closed:
                    pass
                self.assertTrue(c.wait_closed(5))
                self.assertEqual(srv.wait_exit(10), 0)
                self.assertLess(time.monotonic() - t0, 10)
                recs = read_records(d)
                self.assertEqual([r.mailfrom for r in recs], ["inflight@b.example"])

    def test_shutdown_timeout_ends_a_stuck_transaction(self):
        srv = self.start_server("sink", shutdown_timeout=1)
        c = self.connect(srv)
        c.cmd(EHLO)
        c.cmd("MAIL FROM:<a@b>")
        c.cmd("RCPT TO:<c@d>")
        c.cmd("DATA")
        c.send(b"Subject: never finished\r\n")
        t0 = time.monotonic()
        srv.send_signal(signal.SIGTERM)
        self.assertEqual(srv.wait_exit(6), 0)
        self.assertLess(time.monotonic() - t0, 5)
        self.assertGreater(time.monotonic() - t0, 0.5)
        # The client was told (421) or just closed.
        try:
            r = c.reply(timeout=2)
            self.assertEqual(r.code, 421, r.lines)
        except Closed:
            pass


class TestInstall(ServerTestCase):
    def test_installed_binary_finds_its_bundled_scripts(self):
        """cmake --install puts the binary and lua/ under a prefix; the installed binary (moved
        away from the build tree) finds the bundled handlers there."""
        build_dir = os.path.dirname(os.path.realpath(binary()))
        prefix = tempfile.mkdtemp(prefix="luasmtpd-install-")
        self.addCleanup(shutil.rmtree, prefix, True)
        p = subprocess.run(["cmake", "--install", build_dir, "--prefix", prefix],
                           capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 0, p)
        installed = os.path.join(prefix, "bin", "luasmtpd")
        for name in ("debugging", "sink", "pureproxy", "mailman"):
            with self.subTest(name=name):
                self.assertTrue(os.path.exists(
                    os.path.join(prefix, "share", "luasmtpd", "lua", name + ".lua")))
                c = subprocess.run([installed, "--check", name], capture_output=True, timeout=10)
                self.assertEqual(c.returncode, 0, c)
                self.assertIn(os.path.join(prefix, "bin", "..", "share", "luasmtpd", "lua",
                                           name + ".lua") + ": ok", c.stdout.decode())


if __name__ == "__main__":
    unittest.main()
