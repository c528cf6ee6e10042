"""End-to-end test harness: runs the real luasmtpd binary (and, for comparisons, Python's stdlib
smtpd) on 127.0.0.1 and talks to it with a raw-socket SMTP client.

Every wait is bounded; every process started here is stopped by its PID (SIGTERM, then SIGKILL)
when its test ends, and its stderr is checked for log lines at level error the test did not
expect. Only the standard library is used.
"""

import atexit
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
HANDLERS = os.path.join(HERE, "handlers")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
HOSTNAME = "test.example"

# Set by ctest for the sanitizer build: memory figures then measure ASan, not the server.
SANITIZED = os.environ.get("LUASMTPD_SANITIZED") == "1"


def _slowdown():
    """How much slower than a plain build the server under test runs: $LUASMTPD_TEST_SLOWDOWN,
    else 10 under a $LUASMTPD_WRAPPER (valgrind), 3 under the sanitizers, 1 otherwise. Every
    bound on waiting for the server is scaled by it, so a loaded machine or a checker makes a
    test slower, never red."""
    given = os.environ.get("LUASMTPD_TEST_SLOWDOWN")
    if given:
        return max(1.0, float(given))
    if os.environ.get("LUASMTPD_WRAPPER"):
        return 10.0
    return 3.0 if SANITIZED else 1.0


SLOWDOWN = _slowdown()


def bound(seconds):
    """A bound on waiting for the server (seconds), scaled by SLOWDOWN."""
    return seconds * SLOWDOWN


START_TIMEOUT = bound(10.0)   # seconds for a server to report its port
REPLY_TIMEOUT = bound(10.0)   # seconds for one SMTP reply
STOP_TIMEOUT = bound(10.0)    # seconds between SIGTERM and SIGKILL

# "<time> luasmtpd[pid] <level>: <text>"
LOG_LINE = re.compile(r"^\S+ luasmtpd\[(\d+)\] (error|warn|info|debug): (.*)$")
LISTENING = re.compile(r"listening on (?:\[([0-9A-Fa-f:.%a-z]+)\]|([^\s\[\]:]+)):(\d+)")
# Reports of the sanitizers the suite may run under.
LOG_ERROR = re.compile(r"luasmtpd\[\d+\] error: ")
SANITIZER = re.compile(r"ERROR: \w+Sanitizer|runtime error: |LeakSanitizer")

ENHANCED = re.compile(r"^(\d{3})([ -])\d\.\d{1,3}\.\d{1,3} ")


def binary():
    """The luasmtpd under test: $LUASMTPD, else the build tree's."""
    path = os.environ.get("LUASMTPD") or os.path.join(HERE, "..", "..", "build", "luasmtpd")
    path = os.path.abspath(path)
    if not os.access(path, os.X_OK):
        raise AssertionError(f"luasmtpd binary not found at {path} (set $LUASMTPD)")
    return path


def fixture(name):
    """Path of a fixture handler in tests/e2e/handlers/."""
    path = os.path.join(HANDLERS, name if name.endswith(".lua") else name + ".lua")
    assert os.path.exists(path), path
    return path


def strip_enhanced(line):
    """'250 2.0.0 OK' -> '250 OK'; lines without an enhanced code are returned unchanged."""
    return ENHANCED.sub(r"\1\2", line)


def free_port(host="127.0.0.1"):
    """A port that was free a moment ago (bind port 0, read it, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def on_free_port(start, what, attempts=5):
    """Runs start(port) with a port that was free a moment ago, again with another port when
    someone took it in between (start raises); returns what start returned."""
    last = None
    for _ in range(attempts):
        try:
            return start(free_port())
        except Exception as e:  # noqa: BLE001 -- servers raise many kinds for a taken port
            last = e
    raise AssertionError(f"{what} did not start on a free port in {attempts} tries: {last!r}")


def proc_status(pid, field):
    """A field of /proc/PID/status in KiB: VmRSS (now), VmHWM (the peak so far)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def tcp_sockets(tables=("/proc/net/tcp", "/proc/net/tcp6")):
    """This machine's TCP sockets, one list of /proc/net/tcp fields each: [1] local and [2]
    remote address:port (hex), [3] state (01 ESTABLISHED, 08 CLOSE_WAIT, 0A LISTEN), [4]
    tx_queue:rx_queue, [9] inode."""
    for table in tables:
        try:
            with open(table) as f:
                rows = f.readlines()[1:]
        except OSError:
            continue
        for row in rows:
            yield row.split()


def tcp_queues(local_port, remote_port):
    """(tx_queue, rx_queue) of the 127.0.0.1 TCP socket local_port <-> remote_port: bytes
    written and not yet acknowledged by the peer, bytes received and not yet read by the
    socket's owner."""
    want = (f"0100007F:{local_port:04X}", f"0100007F:{remote_port:04X}")
    for fields in tcp_sockets(("/proc/net/tcp",)):
        if (fields[1], fields[2]) == want:
            tx, rx = fields[4].split(":")
            return int(tx, 16), int(rx, 16)
    raise AssertionError(f"no socket 127.0.0.1:{local_port} <-> :{remote_port}")


def run_threads(n, target, timeout=60):
    """Runs target(i) in n threads released together; returns the list of results: the
    exception a thread raised, or ("ok", value) for the value it returned."""
    barrier = threading.Barrier(n)
    results = [AssertionError("did not finish")] * n

    def run(i):
        try:
            barrier.wait(bound(10))
            results[i] = ("ok", target(i))
        except BaseException as e:  # reported by the caller
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + bound(timeout)
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise AssertionError(f"client threads still running after {bound(timeout)}s")
    return results


def failures(results):
    """The exceptions among run_threads' results."""
    return [r for r in results if isinstance(r, BaseException)]


class Events:
    """A list of things that happened (in another thread), with bounded waits on them."""

    def __init__(self):
        self._cond = threading.Condition()
        self.events = []

    def note(self, event):
        with self._cond:
            self.events.append((time.monotonic(), event))
            self._cond.notify_all()

    def count(self, event):
        with self._cond:
            return sum(1 for _, e in self.events if e == event)

    def times(self, event):
        with self._cond:
            return [t for t, e in self.events if e == event]

    def wait_event(self, event, n=1, timeout=10):
        """Waits until `event` (or any in a list of them) happened at least n times; returns
        the times it happened."""
        wanted = event if isinstance(event, list) else [event]
        timeout = bound(timeout)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [t for t, e in self.events if e in wanted]
                if len(got) >= n:
                    return got
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {n} x "
                                         f"{event!r}; events: {[e for _, e in self.events]}")
                self._cond.wait(remaining)


def wait_until(predicate, timeout, interval=0.02, what="condition"):
    """Polls predicate() until it returns something true; returns that value or raises."""
    timeout = bound(timeout)
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def version():
    """The version `luasmtpd -V` prints ("luasmtpd X.Y.Z")."""
    out = subprocess.run([binary(), "-V"], capture_output=True, timeout=10)
    m = re.match(rb"^luasmtpd (\S+)\n?$", out.stdout)
    assert m, f"-V printed {out.stdout!r} / {out.stderr!r}"
    return m.group(1).decode()


# Every process started here, so a crashed test run still kills them by PID at exit.
_live = {}
_live_lock = threading.Lock()


def register_process(proc):
    with _live_lock:
        _live[proc.pid] = proc


def unregister_process(proc):
    with _live_lock:
        _live.pop(proc.pid, None)


@atexit.register
def _kill_leftovers():
    with _live_lock:
        procs = list(_live.values())
    for proc in procs:
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass


def stop_process(proc, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
    """Sends `sig` to proc by PID, waits up to `timeout`, then SIGKILLs. Returns
    (returncode, killed)."""
    killed = False
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            killed = True
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    unregister_process(proc)
    return proc.returncode, killed


class StderrLog:
    """Reads a process's stderr in a background thread into a list of lines."""

    def __init__(self, stream):
        self.lines = []
        self.eof = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream):
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        finally:
            stream.close()
            with self._cond:
                self.eof = True
                self._cond.notify_all()

    def wait(self, regex, timeout=10.0, start=0):
        """Waits for a line at index >= start matching regex; returns (index, match). The
        timeout is scaled by SLOWDOWN."""
        pattern = re.compile(regex)
        timeout = bound(timeout)
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.lines):
                    m = pattern.search(self.lines[i])
                    if m:
                        return i, m
                    i += 1
                remaining = deadline - time.monotonic()
                if self.eof or remaining <= 0:
                    why = "stderr closed" if self.eof else f"timed out after {timeout}s"
                    raise AssertionError(f"no stderr line matching {regex!r} ({why}); "
                                         f"stderr:\n{self.text()}")
                self._cond.wait(remaining)

    def join(self, timeout=5):
        self._thread.join(timeout)

    def snapshot(self):
        with self._cond:
            return list(self.lines)

    def text(self, last=60):
        lines = self.lines[-last:]
        return "\n".join("    " + l for l in lines)


class ServerStartError(AssertionError):
    pass


class LuaSmtpd:
    """One luasmtpd process: `luasmtpd -n -c HANDLER [--set k=v ...] [args] 127.0.0.1:0`.

    Attributes: proc, pid, host, port, log (StderrLog), stdout_path (a file; the debugging
    handler prints there), workdir (a temporary directory removed by close()).
    """

    def __init__(self, handler, sets=None, args=(), listen="127.0.0.1:0", remote=None,
                 nosetuid=True, hostname=HOSTNAME, shutdown_timeout=5, expect_errors=(),
                 start=True, probe=True):
        self.handler = handler
        self.expect_errors = [re.compile(p) for p in expect_errors]
        self.workdir = tempfile.mkdtemp(prefix="luasmtpd-e2e-")
        os.chmod(self.workdir, 0o755)
        self.stdout_path = os.path.join(self.workdir, "stdout")
        # $LUASMTPD_WRAPPER (e.g. "valgrind --error-exitcode=99 ...") runs the server under a
        # checker; the exit status at stop() then tells whether it found anything.
        cmd = shlex.split(os.environ.get("LUASMTPD_WRAPPER", "")) + [binary()]
        if nosetuid:
            cmd.append("-n")
        if handler is not None:  # None: the server's default handler
            cmd += ["-c", handler]
        if hostname is not None:
            cmd += ["--hostname", hostname]
        if shutdown_timeout is not None:
            cmd += ["--shutdown-timeout", str(shutdown_timeout)]
        for key, value in (sets or {}).items():
            cmd += ["--set", f"{key}={value}"]
        cmd += list(args)
        cmd.append(listen)
        if remote:
            cmd.append(remote)
        self.cmd = cmd
        self.proc = None
        self.returncode = None
        self.killed = False
        self.stopped_by_test = False
        self.host = self.port = None
        self.probe = probe
        if start:
            try:
                self.start()
            except BaseException:
                shutil.rmtree(self.workdir, ignore_errors=True)
                raise

    def spawn(self):
        """Starts the process and its stderr reader, and returns at once (start() also waits
        for it to listen)."""
        with open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.PIPE, start_new_session=True)
        register_process(self.proc)
        self.pid = self.proc.pid
        self.log = StderrLog(self.proc.stderr)
        return self

    def start(self):
        self.spawn()
        return self.wait_listening()

    def wait_listening(self):
        try:
            _, m = self.log.wait(LISTENING, 10.0)
        except AssertionError as e:
            rc, _ = stop_process(self.proc, signal.SIGKILL, 5)
            raise ServerStartError(f"{' '.join(self.cmd)} did not start (exit {rc}): {e}")
        self.host = m.group(1) or m.group(2)
        self.port = int(m.group(3))
        if self.probe:
            self._probe()
        return self

    def _probe(self):
        """A greeting proves a loop serves the port. A single process logs its listening
        line once its loop can answer; with --workers the supervisor logs it when the sockets
        are bound, before any worker has loaded its script."""
        deadline = time.monotonic() + START_TIMEOUT
        buf = b""
        try:
            with socket.create_connection((self.host, self.port), timeout=START_TIMEOUT) as s:
                while b"\r\n" not in buf and time.monotonic() < deadline:
                    s.settimeout(max(0.01, deadline - time.monotonic()))
                    chunk = s.recv(512)
                    if not chunk:
                        break
                    buf += chunk
        except OSError as e:
            buf += f" ({e})".encode()
        if not buf.startswith(b"220"):
            rc, _ = stop_process(self.proc, signal.SIGKILL, 5)
            raise ServerStartError(f"{' '.join(self.cmd)}: no 220 greeting on port "
                                   f"{self.port} (got {buf!r}, exit {rc}); stderr:\n"
                                   f"{self.log.text()}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(check=exc[0] is None)
        return False

    def alive(self):
        return self.proc.poll() is None

    def wait_log(self, regex, timeout=10.0, start=0):
        """Waits for a stderr line matching regex (timeout scaled by SLOWDOWN); returns the
        re.Match (its .string is the whole line)."""
        return self.log.wait(regex, timeout, start)[1]

    def client_sockets(self):
        """How many TCP connections to this server's port it still holds open (ESTABLISHED,
        or CLOSE_WAIT: the client has gone, the server has not let go)."""
        port = f":{self.port:04X}"
        return sum(1 for f in tcp_sockets() if f[1].endswith(port) and f[3] in ("01", "08"))

    def listens(self):
        """Whether this process still holds a listening socket on its port (its own socket
        inodes against the LISTEN rows), whoever else may listen there now."""
        inodes = set()
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
        port = f":{self.port:04X}"
        return any(f[1].endswith(port) and f[3] == "0A" and f[9] in inodes
                   for f in tcp_sockets())

    def fd_count(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def assert_no_log(self, regex, watch, start=0):
        """Fails if a stderr line at index >= start matches regex within `watch` seconds
        (scaled by SLOWDOWN): the caller says why that long is enough."""
        try:
            _, m = self.log.wait(regex, watch, start)
        except AssertionError:
            return
        raise AssertionError(f"unexpected stderr line {m.string!r}; stderr:\n{self.log.text()}")

    def log_lines(self, level=None):
        lines = self.log.snapshot()
        if level is None:
            return lines
        out = []
        for line in lines:
            m = LOG_LINE.match(line)
            if m and m.group(2) == level:
                out.append(line)
        return out

    def stdout(self):
        with open(self.stdout_path, "rb") as f:
            return f.read()

    def send_signal(self, sig):
        self.stopped_by_test = True
        os.kill(self.pid, sig)

    def wait_exit(self, timeout):
        """Waits for the process to end by itself; returns its exit status or raises."""
        timeout = bound(timeout)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"luasmtpd[{self.pid}] still running after {timeout}s; "
                                 f"stderr:\n{self.log.text()}")
        unregister_process(self.proc)
        self.returncode = rc
        return rc

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """SIGTERM (or `sig`), wait up to `timeout`, then SIGKILL. Returns the exit status."""
        if self.proc is None:
            return None
        rc, killed = stop_process(self.proc, sig, timeout)
        self.killed = self.killed or killed
        self.returncode = rc
        self.log.join()
        return rc

    def unexpected_errors(self):
        """Lines at level error that no expect_errors pattern matches, plus sanitizer reports."""
        bad = []
        for line in self.log.snapshot():
            if SANITIZER.search(line):
                bad.append(line)
            elif LOG_ERROR.search(line) and not any(p.search(line) for p in self.expect_errors):
                bad.append(line)
        return bad

    def check(self):
        """Asserts the end of this server's life was clean: exit 0 on SIGTERM within the
        timeout (unless the test signalled it itself) and no unexpected error lines."""
        problems = []
        if not self.stopped_by_test:
            if self.killed:
                problems.append(f"did not exit within {STOP_TIMEOUT}s of SIGTERM; killed")
            elif self.returncode != 0:
                problems.append(f"exit status {self.returncode} after SIGTERM")
        bad = self.unexpected_errors()
        if bad:
            problems.append("unexpected error lines:\n" + "\n".join("    " + l for l in bad))
        if problems:
            raise AssertionError(f"luasmtpd[{self.pid}] ({' '.join(self.cmd[1:])}): " +
                                 "; ".join(problems) + f"\nstderr:\n{self.log.text()}")

    def close(self, check=True):
        """Stops the server, removes its work directory, and (if check) runs check()."""
        try:
            if self.proc is not None:
                self.stop()
            if check and self.proc is not None:
                self.check()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


def wait_greeting(proc, host, port, what, stderr):
    """Waits (bounded) until a server process we started greets with 220 on host:port."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}: {stderr()!r}")
        try:
            with socket.create_connection((host, port), timeout=1) as s:
                s.settimeout(2)
                if s.recv(512).startswith(b"220"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{what} did not greet on port {port} within {START_TIMEOUT}s")


class PythonSmtpd:
    """Python 3.11's stdlib smtpd in a subprocess, for comparisons.

    mode "ref":   an SMTPServer subclass whose process_message returns None (decode_data=False,
                  bytes mode, as `python -m smtpd` runs), data_size_limit 33554432 (the class
                  default, as luasmtpd's default -s), optionally enable_SMTPUTF8.
    mode "debug": smtpd.DebuggingServer(..., decode_data=True); it prints to stdout_path.
    socket.getfqdn is replaced so the server's name is `hostname`, as luasmtpd --hostname.
    """

    SCRIPT = r"""
import sys, socket, warnings
warnings.simplefilter("ignore")
import asyncore, smtpd
mode, port, hostname, utf8, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
socket.getfqdn = lambda *a: hostname
class Reference(smtpd.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        return None
if mode == "ref":
    Reference(("127.0.0.1", port), None, data_size_limit=size, enable_SMTPUTF8=utf8, decode_data=False)
else:
    smtpd.DebuggingServer(("127.0.0.1", port), None, decode_data=True)
asyncore.loop()
"""

    def __init__(self, mode="ref", hostname=HOSTNAME, utf8=False, size=33554432):
        self.workdir = tempfile.mkdtemp(prefix="pysmtpd-e2e-")
        self.stdout_path = os.path.join(self.workdir, "stdout")
        self.stderr_path = os.path.join(self.workdir, "stderr")
        self.host = "127.0.0.1"

        def start(port):
            self.port = port
            with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
                self.proc = subprocess.Popen(
                    [PYTHON, "-u", "-c", self.SCRIPT, mode, str(port), hostname,
                     "1" if utf8 else "0", str(size)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
            register_process(self.proc)
            try:
                self._wait_ready()
            except AssertionError:
                stop_process(self.proc, signal.SIGKILL, 5)
                raise

        try:
            on_free_port(start, "python smtpd")
        except AssertionError:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise

    def _wait_ready(self):
        wait_greeting(self.proc, self.host, self.port, "python smtpd", self.stderr)

    def stdout(self):
        with open(self.stdout_path, "rb") as f:
            return f.read()

    def stderr(self):
        with open(self.stderr_path, "rb") as f:
            return f.read()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        stop_process(self.proc, signal.SIGTERM, 5)
        shutil.rmtree(self.workdir, ignore_errors=True)


class Closed(Exception):
    """The server closed the connection."""


class Timeout(AssertionError):
    pass


class Reply:
    def __init__(self, lines):
        self.lines = lines                  # without CRLF, decoded (UTF-8, surrogateescape)
        self.code = int(lines[-1][:3])

    @property
    def text(self):
        return "\n".join(self.lines)

    def __repr__(self):
        return f"Reply({self.lines!r})"


class SMTPClient:
    """A raw-socket SMTP client: connect, send bytes, read replies, all with timeouts."""

    def __init__(self, port, host="127.0.0.1", timeout=None, greeting=True, source=None):
        """Every timeout given to a client (here or per call) is scaled by SLOWDOWN; the
        default is REPLY_TIMEOUT. `source`: the client address (another of 127.0.0.0/8)."""
        self.timeout = REPLY_TIMEOUT if timeout is None else bound(timeout)
        self.sock = socket.create_connection((host, port), timeout=self.timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = b""
        self.greeting = self.reply() if greeting else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def reset(self):
        """Closes with a reset (SO_LINGER 0) instead of a FIN: the client is gone for sure (a
        FIN alone is a half-close, after which the server still answers what it read)."""
        if self.sock is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close()

    def _bound(self, timeout):
        return self.timeout if timeout is None else bound(timeout)

    def local_port(self):
        return self.sock.getsockname()[1]

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"no complete reply within the timeout; have {self.buf[:200]!r}")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise Timeout(f"no complete reply within the timeout; have {self.buf[:200]!r}")
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise Closed(f"connection closed; unread {self.buf!r}")
        self.buf += chunk

    def read_line(self, timeout=None):
        return self._line_by(time.monotonic() + self._bound(timeout))

    def _line_by(self, deadline):
        while b"\r\n" not in self.buf:
            self._fill(deadline)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self, timeout=None):
        """Reads one (possibly multi-line) reply. A reply ends at a line whose 4th char is a
        space (or that is just the code)."""
        deadline = time.monotonic() + self._bound(timeout)
        lines = []
        while True:
            raw = self._line_by(deadline)
            line = raw.decode("utf-8", "surrogateescape")
            if not re.match(r"^\d{3}([ -]|$)", line):
                raise AssertionError(f"malformed reply line {raw!r} after {lines!r}")
            lines.append(line)
            if len(line) == 3 or line[3] == " ":
                return Reply(lines)

    def replies(self, n, timeout=None):
        return [self.reply(timeout) for _ in range(n)]

    def cmd(self, line, timeout=None):
        """Sends one command line (CRLF added) and reads its reply."""
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + b"\r\n")
        return self.reply(timeout)

    def wait_closed(self, timeout=None):
        """True when the server closes the connection within the timeout (any bytes it sends
        meanwhile are kept in self.buf); False on timeout."""
        deadline = time.monotonic() + self._bound(timeout)
        try:
            while True:
                self._fill(deadline)
        except Closed:
            return True
        except Timeout:
            return False

    def transaction(self, mailfrom, rcpts, body, helo="EHLO client.example"):
        """helo (if given), MAIL, RCPT..., DATA, body (raw bytes, must end with CRLF) and the
        final dot; returns the list of replies."""
        out = []
        if helo:
            out.append(self.cmd(helo))
        out.append(self.cmd(f"MAIL FROM:<{mailfrom}>"))
        for r in rcpts:
            out.append(self.cmd(f"RCPT TO:<{r}>"))
        out.append(self.cmd("DATA"))
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.send(body + b".\r\n")
        out.append(self.reply())
        return out


class Record:
    """One message written by handlers/record.lua: data (bytes) and the envelope."""

    def __init__(self, base):
        self.name = os.path.basename(base)
        with open(base + ".eml", "rb") as f:
            self.data = f.read()
        self.peer = None
        self.helo = None
        self.mailfrom = None
        self.rcpttos = []
        self.mail_options = []
        self.rcpt_options = []
        with open(base + ".env", "rb") as f:
            for raw in f.read().decode("utf-8", "surrogateescape").split("\n"):
                if not raw:
                    continue
                key, _, value = raw.partition(" ")
                if key == "peer":
                    addr, _, port = value.rpartition(" ")
                    self.peer = (addr, int(port))
                elif key == "helo":
                    self.helo = value
                elif key == "from":
                    self.mailfrom = value
                elif key == "rcpt":
                    self.rcpttos.append(value)
                elif key == "mail_option":
                    self.mail_options.append(value)
                elif key == "rcpt_option":
                    self.rcpt_options.append(value)

    def __repr__(self):
        return (f"Record({self.name}, from={self.mailfrom!r}, to={self.rcpttos!r}, "
                f"data={self.data[:60]!r}...)")


def drip_until_reply(case, c, byte, timeout, most=120):
    """Sends `byte` on client c once a second from a thread (at most `most` times) until the
    server answers; returns (reply, seconds from the first byte, bytes sent). The thread ends
    with the call, or at the test's cleanup if the reply never came."""
    stop = threading.Event()
    sent = []

    def drip():
        for _ in range(most):
            if stop.is_set():
                return
            try:
                c.sock.send(byte)
            except OSError:
                return
            sent.append(time.monotonic())
            stop.wait(1.0)

    t0 = time.monotonic()
    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    case.addCleanup(dripper.join, 5)
    case.addCleanup(stop.set)
    try:
        r = c.reply(timeout=timeout)
    finally:
        stop.set()
    return r, time.monotonic() - t0, len(sent)


def stuff(data):
    """Dot-stuffs a message for a raw client (RFC 5321 4.5.2)."""
    return b"".join(b"." + line if line.startswith(b".") else line
                    for line in data.splitlines(keepends=True))


RECEIVED = re.compile(rb"^Received: from \S+ \(.*?\) by \S+ with \w+ id \S+(?:\s+for <[^>]*>)?;"
                      rb" \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}$", re.S)


def without_received(data, eol=b"\r\n"):
    """A message that a relaying handler passed on, less the Received: field it put on top
    (lua/smtpd/received.lua), which must be there and well formed; lines end in `eol`."""
    end = 0
    while True:
        end = data.index(eol, end) + len(eol)
        if data[end:end + 1] not in (b" ", b"\t"):  # not a folded continuation line
            break
    field = re.sub(rb"\r?\n[ \t]+", b" ", data[:end - len(eol)])  # unfolded
    assert RECEIVED.match(field), f"no Received: field on top: {data[:200]!r}"
    return data[end:]


def read_records(directory):
    """The messages record.lua wrote into `directory`, in order. A message counts once its .env
    file exists (record.lua renames it into place after the .eml)."""
    names = sorted(n[:-4] for n in os.listdir(directory) if n.endswith(".env"))
    return [Record(os.path.join(directory, n)) for n in names]


def wait_records(directory, count, timeout=10):
    """Waits until at least `count` messages are recorded; returns them all."""
    wait_until(lambda: len(read_records(directory)) >= count, timeout,
               what=f"{count} recorded messages in {directory}")
    return read_records(directory)


class ServerTestCase(unittest.TestCase):
    """Starts servers and clients that are stopped and checked when the test ends."""

    maxDiff = None

    def start_server(self, handler="sink", sets=None, args=(), **kw):
        if handler is not None and os.path.sep not in handler and \
                not handler.endswith(".lua") and \
                os.path.exists(os.path.join(HANDLERS, handler + ".lua")):
            handler = fixture(handler)
        srv = LuaSmtpd(handler, sets=sets, args=args, **kw)
        self.addCleanup(srv.close)
        return srv

    def start_recording(self, args=(), sets=None, **kw):
        """A server with record.lua; returns (server, directory)."""
        d = tempfile.mkdtemp(prefix="luasmtpd-rec-")
        self.addCleanup(shutil.rmtree, d, True)
        sets = dict(sets or {})
        sets["dir"] = d
        return self.start_server("record", sets=sets, args=args, **kw), d

    def connect(self, srv, **kw):
        c = SMTPClient(srv.port, host=srv.host, **kw)
        self.addCleanup(c.close)
        return c

    def assertReply(self, reply, code, text=None, msg=None):
        """code must match; text (if given) is compared with the whole last line, or, if it is
        a compiled regex, searched for in it."""
        self.assertEqual(reply.code, code, msg or f"reply {reply.lines!r}")
        if text is None:
            return
        if isinstance(text, re.Pattern):
            self.assertRegex(reply.lines[-1], text, msg)
        else:
            self.assertEqual(reply.lines[-1], text, msg)
