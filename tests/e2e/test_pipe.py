"""smtpd.pipe against real commands (fixtures handlers/pipe_run.lua and pipe_delivery.lua, whose
commands handlers/pipe_cmds.lua picks by recipient): what the child gets on stdin, in its
environment and among its descriptors; exit statuses, signals and timeouts; output caps; big
messages; many children at once; clients that leave while their child runs. And what
lua/smtpd/delivery.lua makes of each outcome."""

import hashlib
import os
import re
import shutil
import signal
import socket
import threading
import tempfile
import time
import unittest

from harness import (SANITIZED, ServerTestCase, binary, bound, run_threads, stuff, tcp_sockets,
                     wait_until)
from upstreams import RawServer, scripted_handler

EHLO = "EHLO client.example"
MESSAGE = (b"Subject: pipe test\r\nFrom: a@example.org\r\n\r\n"
           b"first line\r\n..dotted\r\n\xc3\xa9 8-bit\r\nlast line\r\n")
# pipe.c and the pipe_run fixture log timeouts and kills at level warn
WARN = r" warn: "

# "250 2.0.0 status=0 code=nil len=12 out=<...>" or "250 2.0.0 status=nil code=451 msg=<...>"
RESULT = re.compile(r"^250 2\.0\.0 status=(\S+) code=(\S+)"
                    r"(?: len=(\d+) out=<(.*)>| msg=<(.*)>)$")



def proc_state(pid):
    """The state letter of process `pid` ('Z' for a zombie), or None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rindex(b")") + 2:].split()[0].decode()


def children_of(ppid):
    """[(pid, state, comm)] of the processes whose parent is `ppid`, zombies included."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        close = stat.rindex(b")")
        fields = stat[close + 2:].split()
        if int(fields[1]) == ppid:
            out.append((int(name), fields[0].decode(), stat[stat.index(b"(") + 1:close].decode()))
    return out


class PipeTestCase(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="luasmtpd-pipe-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def start(self, handler="pipe_run", **sets):
        sets.setdefault("dir", self.dir)
        return self.start_server(handler, sets=sets, expect_errors=[WARN])

    def run_cmd(self, srv, cmd, data=MESSAGE, reply_timeout=15):
        """Sends to cmd@ and parses the fixture's report: (status, code, len, out, msg)."""
        c = self.connect(srv, timeout=reply_timeout)
        c.cmd(EHLO)
        self.assertEqual(c.cmd("MAIL FROM:<sender@example.org>").code, 250)
        self.assertEqual(c.cmd(f"RCPT TO:<{cmd}@pipe.example>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(stuff(data) + b".\r\n")
        reply = c.reply()
        m = RESULT.match(reply.lines[-1])
        self.assertTrue(m, f"{cmd}: unexpected reply {reply.lines!r}")
        status, code, length, out, msg = m.groups()
        return status, code, int(length) if length else None, out, msg

    def read(self, name):
        with open(os.path.join(self.dir, name), "rb") as f:
            return f.read()

    def pid_from(self, name, timeout=10):
        path = os.path.join(self.dir, name)
        wait_until(lambda: os.path.exists(path) and self.read(name).strip(), timeout,
                   what=f"{path} written")
        return int(self.read(name).strip())

    def assertGone(self, pid, timeout=5):
        """The process is neither running nor a zombie (it was reaped) within `timeout`."""
        wait_until(lambda: proc_state(pid) is None, timeout,
                   what=f"pid {pid} gone (state now {proc_state(pid)!r})")

    def assertNoChildren(self, srv, timeout=5):
        wait_until(lambda: not children_of(srv.pid), timeout,
                   what=f"luasmtpd[{srv.pid}] without children: {children_of(srv.pid)}")


class TestPipe(PipeTestCase):
    def test_cat_into_file_gets_the_message(self):
        srv = self.start()
        status, code, length, out, _ = self.run_cmd(srv, "cat")
        self.assertEqual((status, code, length, out), ("0", "nil", 0, ""))
        self.assertEqual(self.read("cat.eml"), MESSAGE)
        self.assertNoChildren(srv)

    def test_exit_statuses_and_output(self):
        srv = self.start()
        self.assertEqual(self.run_cmd(srv, "exit75")[:4], ("75", "nil", 13, r"mailbox busy\n"))
        # stderr is merged into the output
        self.assertEqual(self.run_cmd(srv, "exit1")[:4], ("1", "nil", 9, r"it broke\n"))
        self.assertNoChildren(srv)

    def test_killed_by_signal(self):
        srv = self.start()
        status, code, _, _, msg = self.run_cmd(srv, "signal")
        self.assertEqual((status, code), ("nil", "451"))
        self.assertEqual(msg, "killed by signal 9")
        self.assertNoChildren(srv)

    def test_timeout_kills_a_child_that_never_reads(self):
        # 256 KiB: more than a pipe holds, so the server's writes block on the child too.
        srv = self.start(timeout="1")
        data = MESSAGE + (b"y" * 1022 + b"\r\n") * 256
        t0 = time.monotonic()
        status, code, _, _, msg = self.run_cmd(srv, "hang", data)
        elapsed = time.monotonic() - t0
        self.assertEqual((status, code), ("nil", "451"), msg)
        self.assertEqual(msg, "timed out after 1 s")
        self.assertGreater(elapsed, 0.8)
        self.assertGone(self.pid_from("hang.pid"))
        self.assertNoChildren(srv)
        srv.wait_log(r"warn: pipe: sh \(pid \d+\) timed out: sending SIGTERM")
        # the server goes on serving
        self.assertEqual(self.run_cmd(srv, "exit0")[0], "0")

    def test_timeout_escalates_to_sigkill(self):
        srv = self.start(timeout="1")
        t0 = time.monotonic()
        status, code, _, _, _ = self.run_cmd(srv, "stubborn")
        elapsed = time.monotonic() - t0
        self.assertEqual((status, code), ("nil", "451"))
        # SIGTERM at 1 s is ignored; SIGKILL follows after pipe.c's 2 s grace (the log lines
        # below say which signal ended it)
        self.assertGreater(elapsed, 2.5)
        self.assertGone(self.pid_from("stubborn.pid"))
        self.assertNoChildren(srv)
        srv.wait_log(r"warn: pipe: sh \(pid \d+\) ignored SIGTERM: sending SIGKILL")

    def test_output_is_capped_and_the_child_not_blocked(self):
        for limit, expect in ((None, 64 * 1024), ("1000", 1000)):
            with self.subTest(output_limit=limit):
                sets = {"timeout": "60"}
                if limit:
                    sets["output_limit"] = limit
                srv = self.start(**sets)
                status, code, length, out, _ = self.run_cmd(srv, "loud", reply_timeout=90)
                # Status 0, not a timeout: the child was not left blocked on a full output
                # pipe (it would have been killed at the 60 s timeout).
                self.assertEqual((status, code, length), ("0", "nil", expect))
                self.assertEqual(out, "x" * 200)
                self.assertEqual(self.read("loud.out"), b"x" * expect)
                self.assertNoChildren(srv)
                srv.close()

    def test_30_mib_message_through_sha256sum(self):
        srv = self.start(timeout="60")
        line = bytes(range(0x21, 0x7f)) * 10 + b"\r\n"  # 942 bytes
        data = b"Subject: big\r\n\r\n" + line * (30 * 1024 * 1024 // len(line))
        self.assertGreater(len(data), 30 * 1000 * 1000)
        status, code, _, out, _ = self.run_cmd(srv, "sha", data, reply_timeout=60)
        self.assertEqual((status, code), ("0", "nil"))
        self.assertEqual(out, hashlib.sha256(data).hexdigest() + r"  -\n")
        self.assertNoChildren(srv)

    def test_50_concurrent_pipes(self):
        """50 messages at once, each through a child that exits 0 only when 32 children of its
        kind have started: pipe.c runs 32 at once (its default limit) and queues the rest."""
        srv = self.start(timeout="90")
        n = 50

        def one(i):
            return self.run_cmd(srv, "together", reply_timeout=120)[:2]

        results = run_threads(n, one, timeout=180)
        for r in results:
            self.assertEqual(r, ("ok", ("0", "nil")))
        self.assertNoChildren(srv)

    def test_environment_is_only_path_and_opts_env(self):
        key = "LUASMTPD_SERVER_SECRET"
        old = os.environ.get(key)
        os.environ[key] = "must-not-leak"
        try:
            srv = self.start()
        finally:
            if old is None:
                del os.environ[key]
            else:
                os.environ[key] = old
        with open(f"/proc/{srv.pid}/environ", "rb") as f:
            self.assertIn(f"{key}=must-not-leak".encode(), f.read().split(b"\0"))
        status, _, _, _, _ = self.run_cmd(srv, "env")
        self.assertEqual(status, "0")
        env = dict(line.split("=", 1) for line in self.read("env.out").decode().splitlines())
        self.assertEqual(sorted(env), ["LUASMTPD_FROM_OPTS", "PATH"], env)
        self.assertEqual(env["LUASMTPD_FROM_OPTS"], "from-opts")
        self.assertTrue(env["PATH"])

    def test_child_gets_no_server_descriptors(self):
        srv = self.start()
        # Open some connections so the server holds more descriptors than its listener.
        others = [self.connect(srv) for _ in range(3)]
        status, _, _, _, _ = self.run_cmd(srv, "fds")
        self.assertEqual(status, "0")
        listing = self.read("fds.out").decode()
        fds = dict((int(m.group(1)), m.group(2))
                   for m in re.finditer(r" (\d+) -> (.*)$", listing, re.M))
        self.assertEqual(sorted(fds)[:3], [0, 1, 2], listing)
        self.assertEqual(len(fds), 4, f"the child has descriptors beyond 0-2 and ls's own:\n"
                                      f"{listing}")
        (extra,) = [fd for fd in fds if fd > 2]
        self.assertRegex(fds[extra], r"^/proc/\d+/fd$", listing)  # the directory ls reads
        self.assertRegex(fds[0], r"^pipe:")
        self.assertRegex(fds[1], r"^pipe:")
        self.assertEqual(fds[1], fds[2])
        self.assertNotEqual(fds[0], fds[1])
        for c in others:
            c.close()

    def test_client_gone_while_child_runs(self):
        srv = self.start(timeout="60")
        c = self.connect(srv)
        c.cmd(EHLO)
        c.cmd("MAIL FROM:<sender@example.org>")
        c.cmd("RCPT TO:<slowpid@pipe.example>")
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(stuff(MESSAGE) + b".\r\n")
        pid = self.pid_from("slowpid.pid")
        self.assertNotIn(proc_state(pid), (None, "Z"), "the child should still be running")
        c.reset()  # gone for sure: a FIN alone would be a half-close, answered in the end
        # the child is killed (SIGTERM ends `sleep` at once) and reaped
        self.assertGone(pid, timeout=5)
        self.assertNoChildren(srv)
        self.assertTrue(srv.alive())
        self.assertEqual(self.run_cmd(srv, "exit0")[:2], ("0", "nil"))

    def test_server_stops_while_a_cancelled_child_dies(self):
        """A client resets while its child ignores SIGTERM, and the server is stopped within
        the 2 s before SIGKILL would follow: the server exits cleanly (its memory freed: the
        sanitizer build checks) and takes the child with it, no orphan left running."""
        srv = self.start(timeout="60")
        c = self.connect(srv)
        c.cmd(EHLO)
        c.cmd("MAIL FROM:<sender@example.org>")
        c.cmd("RCPT TO:<stubborn@pipe.example>")
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(stuff(MESSAGE) + b".\r\n")
        pid = self.pid_from("stubborn.pid")
        c.reset()
        srv.wait_log(r"client left during the handler")
        self.assertEqual(srv.stop(), 0)
        self.assertGone(pid)

    def test_cancel_stops_the_feed_before_lua_frees_the_message(self):
        """Issue 12 item 6. A 1 MiB message goes to a child that reads nothing (a pipe holds
        64 KiB, so most of it is still to feed); a reload leaves the transaction on generation
        1; the client resets, so the cancel lets go of the message and generation 1 closes,
        freeing it. The child then starts reading (SIGTERM is its cue): it must get nothing
        more, and never an end of input, or a truncated message would look complete. The
        sanitizer build also sees any read of the freed message."""
        srv = self.start(timeout="60")
        data = MESSAGE + (b"z" * 1022 + b"\r\n") * 1024
        c = self.connect(srv)
        c.cmd(EHLO)
        self.assertEqual(c.cmd("MAIL FROM:<sender@example.org>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<termread@pipe.example>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(stuff(data) + b".\r\n")
        pid = self.pid_from("termread.pid")
        os.kill(srv.pid, signal.SIGHUP)
        srv.wait_log(r"generation 2 loaded")
        c.reset()
        srv.wait_log(r"client left during the handler")
        srv.wait_log(r"generation 1 closed")
        # SIGTERM at the cancel is caught; pipe.c's SIGKILL follows 2 s later
        self.assertGone(pid, timeout=bound(10))
        self.assertNoChildren(srv)
        state_path = os.path.join(self.dir, "termread.state")
        state = self.read("termread.state") if os.path.exists(state_path) else b""
        self.assertNotIn(b"eof", state, "the child saw the end of a message cut short")
        got = os.path.getsize(os.path.join(self.dir, "termread.in")) \
            if os.path.exists(os.path.join(self.dir, "termread.in")) else 0
        self.assertLess(got, len(data), "the child was fed after the cancel")
        self.assertTrue(srv.alive())
        self.assertEqual(self.run_cmd(srv, "exit0")[:2], ("0", "nil"))

    def test_command_that_does_not_exist(self):
        srv = self.start()
        for cmd, name in (("missing", "/nonexistent/luasmtpd-no-such-command"),
                          ("missingpath", "luasmtpd-no-such-command-in-path")):
            with self.subTest(cmd=cmd):
                status, code, _, _, msg = self.run_cmd(srv, cmd)
                self.assertEqual((status, code), ("nil", "451"), msg)
                self.assertIn(name, msg)
                self.assertIn("No such file or directory", msg)
        self.assertNoChildren(srv)


O_CLOEXEC = 0o2000000  # in the octal "flags:" of /proc/PID/fdinfo/FD


def shim_path():
    """The test-only LD_PRELOAD library that refuses close_range (tests/shim)."""
    path = os.environ.get("LUASMTPD_TEST_SHIM") or os.path.join(
        os.path.dirname(binary()), "tests", "libno_close_range.so")
    if not os.path.exists(path):
        raise AssertionError(f"{path} not found: build the no_close_range target "
                             f"(or set $LUASMTPD_TEST_SHIM)")
    return path


def descriptors(pid):
    """{fd: (target, flags)} of process `pid`, from /proc (a descriptor closed meanwhile is
    left out)."""
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
            with open(f"/proc/{pid}/fdinfo/{name}") as f:
                info = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        out[int(name)] = (target, int(info["flags"].strip(), 8))
    return out


class TestChildDescriptors(PipeTestCase):
    """Issue 12 item 7: a child inherits none of the server's descriptors, even where
    close_range is refused; and the server opens its own close-on-exec, so only what a script
    opens (io.open) depends on the closing in the child. The fixture (handlers/pipe_fds.lua)
    holds an upstream connection and a file while its child runs."""

    def start_fds(self, env=None):
        up = RawServer(scripted_handler(None))
        self.addCleanup(up.close)
        env = dict(env or {})
        if env.get("LD_PRELOAD") and SANITIZED:
            # the sanitizer runtime wants to be first; the shim needs nothing of it
            env["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            srv = self.start_server("pipe_fds", sets={"dir": self.dir},
                                    remote=f"127.0.0.1:{up.port}")
        finally:
            for k, v in saved.items():
                if v is None:
                    del os.environ[k]
                else:
                    os.environ[k] = v
        return srv

    def start_child(self, srv):
        """Sends a message; returns the client once the child waits for DIR/go."""
        c = self.connect(srv, timeout=bound(30))
        c.cmd(EHLO)
        self.assertEqual(c.cmd("MAIL FROM:<sender@example.org>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<fds@pipe.example>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(stuff(MESSAGE) + b".\r\n")
        self.pid_from("fds.pid")
        return c

    def child_listing(self, c):
        """Lets the child go on; returns {fd: target} of what it listed."""
        open(os.path.join(self.dir, "go"), "w").close()
        reply = c.reply()
        self.assertReply(reply, 250, "250 2.0.0 listed")
        listing = self.read("fds.out").decode()
        return dict((int(m.group(1)), m.group(2))
                    for m in re.finditer(r" (\d+) -> (.*)$", listing, re.M)), listing

    def assertOnlyStdio(self, fds, listing):
        extra = {fd: t for fd, t in fds.items() if fd > 2 and not re.match(r"^/proc/\d+/fd$", t)}
        self.assertEqual(extra, {}, f"the child inherited descriptors:\n{listing}")
        self.assertEqual(sorted(fd for fd in fds if fd <= 2), [0, 1, 2], listing)

    def test_server_descriptors_are_close_on_exec(self):
        srv = self.start_fds()
        c = self.start_child(srv)
        fds = descriptors(srv.pid)
        held = [fd for fd, (target, _) in fds.items() if target.endswith("/held.txt")]
        self.assertEqual(len(held), 1, fds)
        # Lua's io.open asks for no close-on-exec: what the closing in the child is for
        self.assertFalse(fds[held[0]][1] & O_CLOEXEC)
        self.assertTrue(any(t.startswith("socket:") for t, _ in fds.values()), fds)
        leaky = {fd: target for fd, (target, flags) in fds.items()
                 if fd > 2 and fd not in held and not flags & O_CLOEXEC}
        self.assertEqual(leaky, {}, f"server descriptors without O_CLOEXEC: {leaky}")
        self.assertOnlyStdio(*self.child_listing(c))

    def test_child_gets_nothing_when_close_range_is_refused(self):
        shim = shim_path()
        for name, env in (("ENOSYS", {}), ("EPERM", {"LUASMTPD_SHIM_CLOSE_RANGE": "EPERM"}),
                          ("ENOSYS, no /proc/self/fd", {"LUASMTPD_SHIM_PROC_FD": "refuse"})):
            with self.subTest(close_range=name):
                env["LD_PRELOAD"] = shim
                srv = self.start_fds(env)
                with open(f"/proc/{srv.pid}/maps") as f:
                    self.assertIn(shim, f.read(), "the shim is not loaded")
                c = self.start_child(srv)
                self.assertOnlyStdio(*self.child_listing(c))
                srv.close()
                os.unlink(os.path.join(self.dir, "go"))
                os.unlink(os.path.join(self.dir, "fds.pid"))


def stalling_upstream(gate):
    """A RawServer handler: answers everything up to DATA's 354, then reads nothing until
    `gate` is set; then reads to the end of the message or of the connection. Events: "354",
    then "dot" (the whole message came) or "eof" (the client closed before its end)."""

    def handler(server, conn):
        conn.send("220 stall.example ESMTP\r\n")
        while True:
            verb = conn.readline()[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                conn.send("250-stall.example\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                conn.send("354 go ahead\r\n")
                server.note("354")
                if not gate.wait(bound(60)):
                    return
                tail = conn.buf[-5:]
                try:
                    while not tail.endswith(b"\r\n.\r\n"):
                        chunk = conn.sock.recv(1 << 20)
                        if not chunk:
                            raise EOFError
                        tail = (tail + chunk)[-5:]
                except (EOFError, OSError):
                    server.note("eof")
                    return
                server.note("dot")
                conn.send("250 2.0.0 ok\r\n")
            else:
                conn.send("250 2.0.0 ok\r\n")

    return handler


class TestCancelAfterReload(ServerTestCase):
    """The rule above lrt_wait, for the relay bindings (smtpd.pipe's case is
    TestPipe.test_cancel_stops_the_feed_before_lua_frees_the_message): a client that leaves
    while its message is half way to the upstream cancels the relay, and when a reload has
    made its generation old, that generation closes and frees the message at once. The relay
    client must send nothing more of it (the sanitizer build sees any read of it), and the
    upstream must see the connection end without the final dot."""

    def check_cancel(self, handler):
        gate = threading.Event()
        self.addCleanup(gate.set)
        up = RawServer(stalling_upstream(gate))
        self.addCleanup(up.close)
        # A small receive window, so most of the message waits in the server, not in the kernel
        up.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        srv = self.start_server(handler, remote=f"127.0.0.1:{up.port}")
        data = MESSAGE + (b"r" * 1022 + b"\r\n") * (8 * 1024)  # 8 MiB
        c = self.connect(srv, timeout=bound(30))
        c.cmd(EHLO)
        self.assertEqual(c.cmd("MAIL FROM:<sender@example.org>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<rcpt@example.net>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(stuff(data) + b".\r\n")
        up.wait_event("354", timeout=bound(30))

        def upstream_queue():
            """Bytes the upstream's socket holds unread."""
            rows = [f for f in tcp_sockets(("/proc/net/tcp",))
                    if f[1] == f"0100007F:{up.port:04X}" and f[3] == "01"]
            return int(rows[0][4].split(":")[1], 16) if rows else 0

        # the body is on its way: the upstream's window is full, the rest waits in the server
        wait_until(lambda: upstream_queue() >= 32 * 1024, bound(30), what="body in flight")
        os.kill(srv.pid, signal.SIGHUP)
        srv.wait_log(r"generation 2 loaded")
        c.reset()
        srv.wait_log(r"client left during the handler")
        srv.wait_log(r"generation 1 closed")
        gate.set()
        up.wait_event("eof", timeout=bound(30))
        self.assertEqual(up.count("dot"), 0)
        self.assertTrue(srv.alive())

    def test_relay(self):
        self.check_cancel("relay_oneshot")

    def test_connect_data(self):
        self.check_cancel("relay_connect")


class TestDeliveryMapping(PipeTestCase):
    """lua/smtpd/delivery.lua: the sysexits reading of a delivery agent's result."""

    CASES = [
        ("exit0", 250, r"^250 2\.0\.0 "),
        ("exit75", 451, r"^451 4\.3\.0 Delivery deferred: mailbox busy$"),
        ("signal", 451, r"^451 4\.3\.0 .*killed by signal 9"),
        ("hang", 451, r"^451 4\.3\.0 .*timed out"),
        ("missing", 451, r"^451 4\.3\.0 .*cannot run"),
        ("exit67", 550, r"^550 5\.1\.1 Delivery failed \(exit status 67\): no such user here$"),
        ("exit1", 554, r"^554 5\.3\.0 Delivery failed \(exit status 1\): it broke$"),
    ]

    def test_reply_for_each_outcome(self):
        srv = self.start("pipe_delivery", timeout="1")
        for cmd, code, text in self.CASES:
            with self.subTest(cmd=cmd):
                c = self.connect(srv)
                replies = c.transaction("sender@example.org", [f"{cmd}@pipe.example"],
                                        stuff(MESSAGE), helo=EHLO)
                self.assertReply(replies[-1], code, re.compile(text))
        self.assertNoChildren(srv)


if __name__ == "__main__":
    unittest.main()
