"""Fake and real upstream servers for the relay tests (smtpd.relay, smtpd.connect, pureproxy).

- SmtpSink: Postfix's /usr/sbin/smtp-sink dumping each message into a directory.
- AioUpstream: aiosmtpd (SMTP or LMTP) in a thread of this process, recording what it got, with
  optional delays and refusals.
- RawServer: a bare TCP server whose connections a Python function handles (silent upstreams,
  upstreams that hang up mid-DATA).

Every wait is bounded; every process started here is stopped by its PID.
"""

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

from harness import (Events, START_TIMEOUT, on_free_port, register_process, stop_process,
                     wait_greeting)

SMTP_SINK = "/usr/sbin/smtp-sink"

logging.getLogger("mail.log").setLevel(logging.CRITICAL)  # aiosmtpd's chatter on our stderr

def _stop(proc, timeout=5):
    stop_process(proc, signal.SIGTERM, timeout)


# ---- smtp-sink ----

class SmtpSink:
    """/usr/sbin/smtp-sink on 127.0.0.1, dumping every message into its own file in self.dir
    (`-d DIR/%M.`). As root it runs as nobody (`-u nobody`), so the directory is mode 777."""

    def __init__(self, args=()):
        if not os.access(SMTP_SINK, os.X_OK):
            raise AssertionError(f"{SMTP_SINK} not found (package postfix; .ci/setup installs "
                                 "it)")
        self.dir = tempfile.mkdtemp(prefix="smtp-sink-")
        os.chmod(self.dir, 0o777)
        self.host = "127.0.0.1"
        self.stderr_path = os.path.join(tempfile.gettempdir(),
                                        f"smtp-sink-{os.getpid()}-{id(self)}.err")

        def start(port):
            self.port = port
            cmd = [SMTP_SINK]
            if os.geteuid() == 0:
                cmd += ["-u", "nobody"]
            cmd += ["-d", os.path.join(self.dir, "%M."), *args, f"{self.host}:{port}", "64"]
            with open(self.stderr_path, "wb") as err:
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=err,
                                             start_new_session=True)
            register_process(self.proc)
            try:
                self._wait_ready()
            except AssertionError:
                _stop(self.proc)
                raise

        try:
            on_free_port(start, "smtp-sink")
        except AssertionError:
            self._cleanup()
            raise

    def _wait_ready(self):
        wait_greeting(self.proc, self.host, self.port, "smtp-sink", self.stderr)

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read()
        except OSError:
            return b""

    def dumps(self):
        """The dump files' contents, oldest first (by name within the minute; tests sort by
        content when they send several)."""
        out = []
        for name in sorted(os.listdir(self.dir)):
            with open(os.path.join(self.dir, name), "rb") as f:
                out.append(f.read())
        return out

    def close(self):
        _stop(self.proc)
        self._cleanup()

    def _cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            os.unlink(self.stderr_path)
        except OSError:
            pass


def parse_sink_dump(raw):
    """Splits one smtp-sink dump into (fields, body): fields maps X-Client-Addr, X-Helo-Args,
    X-Mail-Args, X-Rcpt-Args, ... to lists of values; body is the message as dumped (lines
    ending in LF, dot-unstuffed, followed by one empty line)."""
    fields = {}
    lines = raw.split(b"\n")
    i = 0
    while i < len(lines) and not lines[i].startswith(b"Received: "):
        name, _, value = lines[i].partition(b": ")
        fields.setdefault(name.decode("utf-8", "replace"), []).append(
            value.decode("utf-8", "surrogateescape"))
        i += 1
    i += 1  # Received: line
    while i < len(lines) and lines[i].startswith(b"\t"):
        i += 1
    return fields, b"\n".join(lines[i:])


def sink_body(data):
    """What smtp-sink dumps for a message whose data (dot-unstuffed, CRLF) is `data`."""
    return data.replace(b"\r\n", b"\n") + b"\n"


# ---- aiosmtpd ----

class AioUpstream(Events):
    """aiosmtpd's SMTP (or LMTP) server in a thread, recording each message.

    rcpt_delay / data_delay: seconds handle_RCPT / handle_DATA sleep before answering.
    hold_rcpt / hold_data: a threading.Event that handle_RCPT / handle_DATA wait for before
      answering (for a test that needs the upstream busy until it says so; bounded: after
      `hold_limit` seconds the reply goes out anyway and "hold expired" is noted).
    refuse_rcpt: {address: reply} refused at RCPT, or a function address -> reply or None.
    data_replies: (LMTP) {address: reply} given after DATA for that recipient (default 250).
    ssl_context: implicit TLS from the first byte (aiosmtpd's Controller ssl_context).
    smtp_kwargs: passed to aiosmtpd's SMTP (tls_context, require_starttls, authenticator, ...).
    Events noted: ("rcpt", address), "data" (end of data seen), "data_done" (the delay is over and
    the reply is about to go out), "delivered", "data_cancelled" (the client hung up during the
    delay).
    self.messages: dicts with mail_from, rcpt_tos, data (bytes as received, dot-unstuffed),
    mail_options, helo, tls (whether the session ran inside TLS), auth (the login, bytes, or
    None), started, done (monotonic times).
    """

    def __init__(self, lmtp=False, rcpt_delay=0.0, data_delay=0.0, refuse_rcpt=None,
                 data_replies=None, hostname="aio.example", hold_rcpt=None, hold_data=None,
                 hold_limit=60, ssl_context=None, smtp_kwargs=None):
        super().__init__()
        from aiosmtpd.controller import Controller
        from aiosmtpd.lmtp import LMTP
        from aiosmtpd.smtp import SMTP

        self.lmtp = lmtp
        self.rcpt_delay = rcpt_delay
        self.data_delay = data_delay
        self.hold_rcpt = hold_rcpt
        self.hold_data = hold_data
        self.hold_limit = hold_limit
        refuse = refuse_rcpt or {}
        self.refuse_rcpt = refuse if callable(refuse) else dict(refuse).get
        self.data_replies = dict(data_replies or {})
        self.messages = []
        self.host = "127.0.0.1"
        server_class = LMTP if lmtp else SMTP

        class _Controller(Controller):
            def factory(self):
                return server_class(self.handler, **self.SMTP_kwargs)

        def start(port):
            ctl = _Controller(_AioHandler(self), hostname=self.host, port=port,
                              server_hostname=hostname, ready_timeout=START_TIMEOUT,
                              ssl_context=ssl_context, **(smtp_kwargs or {}))
            ctl.start()
            self.port = port
            return ctl

        self.controller = on_free_port(start, "aiosmtpd")

    def wait_messages(self, n, timeout=10):
        self.wait_event("delivered", n, timeout)
        with self._cond:
            return list(self.messages)

    def close(self):
        self.controller.stop()


class _AioHandler:
    def __init__(self, up):
        self.up = up

    async def _hold(self, gate):
        deadline = time.monotonic() + self.up.hold_limit
        while not gate.is_set():
            if time.monotonic() > deadline:
                self.up.note("hold expired")
                return
            await asyncio.sleep(0.01)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        up = self.up
        up.note(("rcpt", address))
        if up.rcpt_delay:
            await asyncio.sleep(up.rcpt_delay)
        if up.hold_rcpt is not None:
            await self._hold(up.hold_rcpt)
        refusal = up.refuse_rcpt(address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        up = self.up
        started = time.monotonic()
        up.note("data")
        try:
            if up.data_delay:
                await asyncio.sleep(up.data_delay)
            if up.hold_data is not None:
                await self._hold(up.hold_data)
        except asyncio.CancelledError:  # aiosmtpd cancels when the client hangs up
            up.note("data_cancelled")
            raise
        msg = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "data": envelope.original_content,
            "mail_options": list(envelope.mail_options),
            "helo": session.host_name,
            "tls": session.ssl is not None,
            "auth": getattr(session.auth_data, "login", None) if session.authenticated else None,
            "started": started,
            "done": time.monotonic(),
        }
        with up._cond:
            up.messages.append(msg)
        up.note("data_done")
        up.note("delivered")
        if up.lmtp:
            return "\r\n".join(up.data_replies.get(r, f"250 2.0.0 <{r}> delivered")
                               for r in envelope.rcpt_tos)
        return "250 2.0.0 queued as aio"


# ---- raw TCP servers ----

class Conn:
    """One accepted connection of a RawServer: line reads with timeouts."""

    def __init__(self, sock, timeout=10):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("peer closed")
        self.buf += chunk

    def readline(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_bytes(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_until(self, marker):
        while marker not in self.buf:
            self._fill()
        data, self.buf = self.buf.split(marker, 1)
        return data + marker

    def wait_eof(self):
        """Blocks until the peer closes (or the server closes this socket)."""
        self.sock.settimeout(None)  # RawServer.close() shuts the socket down to wake us
        try:
            while True:
                self._fill()
        except (EOFError, OSError):
            return

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class RawServer(Events):
    """A TCP server on 127.0.0.1 (a free port) that runs handler(server, conn) in a thread
    for each connection. Events: "accepted", whatever handlers note, "handler error: ..."."""

    def __init__(self, handler):
        super().__init__()
        self.handler = handler
        self.host = "127.0.0.1"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((self.host, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)  # so close() is seen even if shutdown does not wake accept
        self.port = self.sock.getsockname()[1]
        self._stopping = False
        self._conns = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self):
        while not self._stopping:
            try:
                sock, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self._stopping:
                sock.close()
                return
            conn = Conn(sock)
            with self._lock:
                self._conns.append(conn)
            self.note("accepted")
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        try:
            self.handler(self, conn)
        except Exception as e:  # a test looks at the events
            self.note(f"handler error: {e!r}")

    def close(self):
        self._stopping = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(5)
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()


def silent_handler(server, conn):
    """Accepts and never writes; notes "peer closed" when the client gives up."""
    conn.wait_eof()
    server.note("peer closed")


def scripted_handler(hangup):
    """An SMTP server that answers properly, then hangs up at the point `hangup` names:
    "data_command" (instead of answering DATA), "mid_body" (after reading part of the body),
    "before_reply" (after the whole body, instead of the final reply), or None (never).
    Events: "hung up", "delivered", "rset", "quit" (the client said QUIT), "peer closed" (the
    client closed without QUIT)."""

    def handler(server, conn):
        conn.send("220 raw.example ESMTP\r\n")
        try:
            while True:
                line = conn.readline()
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    conn.send("250-raw.example\r\n250 8BITMIME\r\n")
                elif verb == b"MAIL":
                    conn.send("250 2.1.0 ok\r\n")
                elif verb == b"RCPT":
                    conn.send("250 2.1.5 ok\r\n")
                elif verb == b"DATA":
                    if hangup == "data_command":
                        server.note("hung up")
                        conn.close()
                        return
                    conn.send("354 go ahead\r\n")
                    if hangup == "mid_body":
                        conn.read_bytes(4096)
                        server.note("hung up")
                        conn.close()
                        return
                    conn.read_until(b"\r\n.\r\n")
                    if hangup == "before_reply":
                        server.note("hung up")
                        conn.close()
                        return
                    conn.send("250 2.0.0 ok\r\n")
                    server.note("delivered")
                elif verb == b"QUIT":
                    conn.send("221 2.0.0 bye\r\n")
                    conn.close()
                    server.note("quit")
                    return
                elif verb == b"RSET":
                    conn.send("250 2.0.0 ok\r\n")
                    server.note("rset")
                else:
                    conn.send("250 2.0.0 ok\r\n")
        except socket.timeout:
            server.note("idle timeout")  # ours: the client said nothing for 10 s
        except (EOFError, OSError):
            server.note("peer closed")

    return handler
