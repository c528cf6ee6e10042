"""A scriptable hostile SMTP/LMTP upstream: a test fixture for proving "exactly once".

HostileUpstream is a TCP server on 127.0.0.1 (a free port; upstreams.RawServer underneath) that
speaks SMTP (or LMTP) the way its plan says, command by command, and records what it got: every
command line, and every transaction with its sender, recipients, message bytes and whether it
acknowledged the message with a 2xx (then it keeps a copy, as a real server delivers).

The plan maps a stage to an action:

    stages   "greeting", "ehlo" (EHLO, HELO and LHLO), "mail", "rcpt", "data" (the DATA command),
             "end" (the end of the message; over LMTP asked once per accepted recipient),
             "rset", "quit", "noop", "other"
    actions  "ok"        the stage's normal answer (also what a stage left out of the plan gets)
             "4xx", "5xx" a refusal (421/451/450, 554/550)
             "wrong"     a reply of the wrong class: 354 to a command, 250 to DATA, 354 to the
                         end of the message
             "multiline" the normal answer over three lines
             "long"      the normal code with a 600-byte text (RFC 5321 allows 512 a line)
             "control"   the normal code with control bytes, a NUL and non-ASCII in its text
             "extra"     the normal answer and, in the same write, a 250 nobody asked for
             "silence"   no answer, ever; the connection is read until the client goes
             "close"     the connection closed instead of an answer
             "reset"     the connection reset (SO_LINGER 0) instead of an answer
             "250 2.0.0 any text"  a reply given literally ("\\n" between lines, CRLF added)
             b"raw bytes\\r\\n"    sent exactly as they are
             Delay(seconds, action)  the action after a pause (a slow answer)

A plan is a dict {stage: action} where an action may also be a list (the n-th time the stage
comes on this server it takes the n-th item; the last one repeats), or a callable
plan(step) -> action (None for "ok"), given a Step (stage, line, conn, occurrence,
transaction), which is how a seeded random plan drives it:

    import random
    rng = random.Random(seed)
    up = HostileUpstream(lambda step: rng.choice(HostileUpstream.KINDS))

Examples:

    up = HostileUpstream({"data": "wrong"})          # DATA answered 250: nothing may count
    ... relay one message through luasmtpd to up.port, read the client's reply ...
    assert up.copies() == []                         # no copy kept

    up = HostileUpstream({"end": Delay(3, "ok")})    # a final reply slower than `timeout`
    up.wait_event("delivered")
    assert len(up.copies()) == 1                     # exactly one copy

    up = HostileUpstream(lmtp=True, extensions=())   # an LMTP server offering nothing

Events (noted as they happen, with bounded waits: up.wait_event(event, n, timeout)):
"accepted" (a connection), ("cmd", stage) for each command read, "message" (a whole message
read), "delivered" (a 2xx given to the end of a message; once per transaction), "acked"
(each such 2xx: once per recipient over LMTP), "eof" (the client closed its side),
("gone before reply", stage) (a Delay ran out and the client had already closed), "replied
after delay" (it had not), "closed" (a connection's handling ended, whoever closed).

What it records: up.commands() -> [(conn, line)], up.transactions() -> [Transaction] (from each
MAIL answered 2xx), up.copies() -> [(mail_from, rcpt, data)] for every recipient a message was
acknowledged for. Nothing here sleeps to synchronise: tests wait on events.

Written for test_relay_hostile.py; the pureproxy, mailman and property tests import it too.
"""

import socket
import struct
import threading

from upstreams import RawServer

__all__ = ["HostileUpstream", "Delay", "Step", "Transaction", "STAGES"]

STAGES = ("greeting", "ehlo", "mail", "rcpt", "data", "end", "rset", "quit", "noop", "other")

DEFAULT_EXTENSIONS = ("PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 10485760",
                      "ENHANCEDSTATUSCODES")


class Delay:
    """An action taken after `seconds` (a slow upstream)."""

    def __init__(self, seconds, action="ok"):
        self.seconds = seconds
        self.action = action

    def __repr__(self):
        return f"Delay({self.seconds!r}, {self.action!r})"


class Step:
    """What a callable plan is asked about: the stage, the command line (bytes; b"" for the
    greeting and the end of a message), the connection's number (from 1), how many times this
    stage came on this server before (from 0), the open Transaction (or None) and, for
    the end of a message over LMTP, the recipient it answers for."""

    def __init__(self, stage, line, conn, occurrence, transaction, rcpt=None):
        self.stage = stage
        self.line = line
        self.conn = conn
        self.occurrence = occurrence
        self.transaction = transaction
        self.rcpt = rcpt

    def __repr__(self):
        return f"Step({self.stage!r}, {self.line!r}, conn={self.conn}, #{self.occurrence})"


class Transaction:
    """One transaction as the upstream saw it, from a MAIL it answered 2xx.

    conn: the connection's number. mail_from, mail_params: as sent (str, UTF-8 with
    surrogateescape). rcpts: recipients answered 2xx, in order; refused: the others.
    data: the message (bytes, dot-unstuffed, CRLF line ends) once its end arrived, else None.
    end_codes: the code given to the end of the message (one per accepted recipient over
    LMTP; None where the plan gave no answer). heard: whether the client was still there for
    each of those answers."""

    def __init__(self, conn, mail_from, mail_params, lmtp=False):
        self.conn = conn
        self.lmtp = lmtp
        self.mail_from = mail_from
        self.mail_params = mail_params
        self.rcpts = []
        self.refused = []
        self.data = None
        self.end_codes = []
        self.heard = []

    @property
    def received(self):
        return self.data is not None

    @property
    def delivered(self):
        """The upstream keeps a copy: it answered the end of the message 2xx."""
        return any(c is not None and 200 <= c < 300 for c in self.end_codes)

    def delivered_to(self):
        """The recipients a copy was kept for."""
        if not self.lmtp:  # one answer for all
            return list(self.rcpts) if self.delivered else []
        return [r for r, c in zip(self.rcpts, self.end_codes)
                if c is not None and 200 <= c < 300]

    def __repr__(self):
        return (f"Transaction(conn={self.conn}, from={self.mail_from!r}, to={self.rcpts!r}, "
                f"data={None if self.data is None else len(self.data)}, "
                f"end={self.end_codes!r})")


class _Gone(Exception):
    """The connection is over (closed, reset, silent): stop handling it."""


def _split_path(arg):
    """'<"a>b"@x> SIZE=1' -> ('"a>b"@x', 'SIZE=1'): the path ends at the first '>' outside
    a quoted string."""
    arg = arg.lstrip()
    if not arg.startswith("<"):
        address, _, params = arg.partition(" ")
        return address, params.strip()
    quoted = False
    i = 1
    while i < len(arg):
        c = arg[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ">":
            break
        i += 1
    return arg[1:i], arg[i + 1:].strip()


def _code_of(data):
    """The reply code at the start of `data` (bytes), or None."""
    head = data[:3]
    return int(head) if len(head) == 3 and head.isdigit() else None


def _peer_gone(sock):
    """Whether the client has closed (or reset) its side, without taking any of its bytes.
    (A socket with a timeout would wait for readability first, MSG_DONTWAIT or not.)"""
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.settimeout(timeout)


class HostileUpstream(RawServer):
    """An SMTP (lmtp=True: LMTP) server on 127.0.0.1:self.port that follows `plan` (see the
    module's docstring). extensions: the EHLO keywords it offers. idle_timeout: seconds it
    waits for a command before it gives a connection up (noted as "idle timeout")."""

    KINDS = ("ok", "4xx", "5xx", "wrong", "multiline", "long", "control", "extra", "silence",
             "close", "reset")

    def __init__(self, plan=None, lmtp=False, extensions=DEFAULT_EXTENSIONS,
                 hostname="hostile.example", idle_timeout=120):
        self.plan = plan if plan is not None else {}
        if isinstance(self.plan, dict):
            unknown = set(self.plan) - set(STAGES)
            if unknown:
                raise ValueError(f"no such stage: {sorted(unknown)}")
        self.lmtp = lmtp
        self.extensions = tuple(extensions)
        self.hostname = hostname
        self.idle_timeout = idle_timeout
        self._rec_lock = threading.RLock()
        self._occurrences = {}
        self._commands = []
        self._transactions = []
        self._conn_count = 0
        self._stop = threading.Event()
        super().__init__(self._handle)

    # ---- what it got ----

    def commands(self):
        """[(conn, line)] for every command line read (bytes, without CRLF)."""
        with self._rec_lock:
            return list(self._commands)

    def command_lines(self, verb=None):
        """The command lines read, optionally only those starting with `verb` (str)."""
        prefix = verb.upper().encode() if verb else b""
        return [l for _, l in self.commands() if l.upper().startswith(prefix)]

    def transactions(self):
        with self._rec_lock:
            return list(self._transactions)

    def delivered(self):
        """The transactions a copy was kept for."""
        return [t for t in self.transactions() if t.delivered]

    def copies(self, rcpt=None):
        """[(mail_from, rcpt, data)], one per recipient a copy was kept for."""
        out = []
        for t in self.transactions():
            for r in t.delivered_to():
                if rcpt is None or r == rcpt:
                    out.append((t.mail_from, r, t.data))
        return out

    def wait_transactions(self, n, timeout=10):
        """Waits until n messages were read whole (acknowledged or not); returns them."""
        self.wait_event("message", n, timeout)
        return [t for t in self.transactions() if t.received]

    def close(self):
        self._stop.set()
        super().close()

    # ---- the plan ----

    def _action(self, stage, line, conn_no, txn, rcpt=None):
        with self._rec_lock:
            occurrence = self._occurrences.get(stage, 0)
            self._occurrences[stage] = occurrence + 1
        plan = self.plan
        if callable(plan):
            action = plan(Step(stage, line, conn_no, occurrence, txn, rcpt))
        else:
            action = plan.get(stage)
            if isinstance(action, (list, tuple)):
                action = action[min(occurrence, len(action) - 1)] if action else None
        return "ok" if action is None else action

    def _normal(self, stage, line, rcpt, txn_no):
        """(code, text lines) of the stage's proper answer."""
        name = self.hostname
        if stage == "greeting":
            return 220, [f"{name} {'LMTP' if self.lmtp else 'ESMTP'} hostile"]
        if stage == "ehlo":
            if line[:4].upper() == b"HELO":
                return 250, [name]
            return 250, [name] + list(self.extensions)
        if stage == "mail":
            return 250, ["2.1.0 Sender ok"]
        if stage == "rcpt":
            return 250, ["2.1.5 Recipient ok"]
        if stage == "data":
            return 354, ["End data with <CR><LF>.<CR><LF>"]
        if stage == "end":
            if self.lmtp:
                return 250, [f"2.1.5 <{rcpt}> delivered as H{txn_no}"]
            return 250, [f"2.0.0 Ok: queued as H{txn_no}"]
        if stage == "quit":
            return 221, ["2.0.0 Bye"]
        if stage in ("rset", "noop"):
            return 250, ["2.0.0 Ok"]
        return 502, ["5.5.2 Command not recognized"]

    @staticmethod
    def _wire(code, lines):
        out = b""
        for i, text in enumerate(lines):
            sep = b" " if i == len(lines) - 1 else b"-"
            body = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
            out += str(code).encode() + sep + body + b"\r\n"
        return out

    def _render(self, action, stage, line, rcpt, txn_no):
        """The bytes an action sends, or "silence"/"close"/"reset"."""
        if isinstance(action, bytes):
            return action
        if action in ("silence", "close", "reset"):
            return action
        if not isinstance(action, str):
            raise ValueError(f"not an action: {action!r}")
        code, lines = self._normal(stage, line, rcpt, txn_no)
        if action == "ok":
            return self._wire(code, lines)
        if action == "4xx":
            return self._wire(421 if stage == "greeting" else 450 if stage == "rcpt" else 451,
                              ["4.3.0 hostile says try again later"])
        if action == "5xx":
            return self._wire(550 if stage in ("mail", "rcpt") else 554,
                              ["5.7.1 hostile says no"])
        if action == "wrong":
            if stage == "data":
                return self._wire(250, ["2.0.0 Ok, but DATA wanted 354"])
            return self._wire(354, ["go ahead (the wrong class of reply)"])
        if action == "multiline":
            return self._wire(code, [f"{self.hostname} says", "more text"] + lines[-1:]
                              if len(lines) == 1 else lines)
        if action == "long":
            return self._wire(code, lines[:-1] + [lines[-1] + " " + "x" * 600])
        if action == "control":
            return self._wire(code, lines[:-1] + [lines[-1].encode() +
                                                  b" \x01\x1b[31m\x00\x7f\xc3\xa9\xff\x08"])
        if action == "extra":
            return self._wire(code, lines) + b"250 2.0.0 an extra reply nobody asked for\r\n"
        if len(action) >= 3 and action[:3].isdigit():
            return "".join(l + "\r\n" for l in action.split("\n")).encode("utf-8",
                                                                           "surrogateescape")
        raise ValueError(f"not an action: {action!r}")

    def _act(self, conn, action, stage, line, conn_no, txn, rcpt=None):
        """Carries an action out; returns the code it answered with (None for no answer).
        Raises _Gone when the connection is over."""
        heard = True
        while isinstance(action, Delay):
            if self._stop.wait(action.seconds):
                raise _Gone()
            if _peer_gone(conn.sock):
                heard = False
                self.note(("gone before reply", stage))
            else:
                self.note("replied after delay")
            action = action.action
        with self._rec_lock:
            txn_no = len(self._transactions)
        out = self._render(action, stage, line, rcpt, txn_no)
        if stage == "end" and txn is not None:
            with self._rec_lock:
                txn.end_codes.append(_code_of(out) if isinstance(out, bytes) else None)
                txn.heard.append(heard and isinstance(out, bytes))
        if out == "silence":
            conn.wait_eof()
            self.note("eof")
            raise _Gone()
        if out == "close":
            conn.close()
            raise _Gone()
        if out == "reset":
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            raise _Gone()
        try:
            conn.send(out)
        except OSError:
            raise _Gone()
        return _code_of(out)

    # ---- one connection ----

    def _handle(self, server, conn):
        with self._rec_lock:
            self._conn_count += 1
            conn_no = self._conn_count
        conn.sock.settimeout(self.idle_timeout)
        try:
            self._session(conn, conn_no)
        except _Gone:
            pass
        except socket.timeout:
            self.note("idle timeout")
        except (EOFError, OSError):  # the client closed or reset, or close() shut us down
            self.note("eof")
        finally:
            conn.close()
            self.note("closed")

    def _session(self, conn, conn_no):
        self._act(conn, self._action("greeting", b"", conn_no, None), "greeting", b"", conn_no,
                  None)
        txn = None
        while True:
            line = conn.readline()
            with self._rec_lock:
                self._commands.append((conn_no, line))
            verb = line.split(b" ", 1)[0].upper()
            text = line.decode("utf-8", "surrogateescape")
            stage = {b"EHLO": "ehlo", b"HELO": "ehlo", b"LHLO": "ehlo", b"MAIL": "mail",
                     b"RCPT": "rcpt", b"DATA": "data", b"RSET": "rset", b"QUIT": "quit",
                     b"NOOP": "noop"}.get(verb, "other")
            self.note(("cmd", stage))
            code = self._act(conn, self._action(stage, line, conn_no, txn), stage, line,
                             conn_no, txn)
            ok = code is not None and 200 <= code < 300
            if stage in ("ehlo", "rset"):
                txn = None
            elif stage == "mail":
                txn = None
                if ok:
                    address, params = _split_path(text[5:].partition(":")[2])
                    txn = Transaction(conn_no, address, params, self.lmtp)
                    with self._rec_lock:
                        self._transactions.append(txn)
            elif stage == "rcpt" and txn is not None:
                address, _ = _split_path(text[5:].partition(":")[2])
                with self._rec_lock:
                    (txn.rcpts if ok else txn.refused).append(address)
            elif stage == "data" and code is not None and code // 100 == 3:
                self._message(conn, conn_no, txn)
                txn = None
            elif stage == "quit":
                raise _Gone()

    def _message(self, conn, conn_no, txn):
        """Reads a message to its final dot and answers it."""
        lines = []
        while True:
            line = conn.readline()
            if line == b".":
                break
            lines.append(line[1:] if line.startswith(b".") else line)
        data = b"".join(l + b"\r\n" for l in lines)
        if txn is None:  # DATA without a transaction: read, answered, recorded nowhere
            txn = Transaction(conn_no, None, "")
        with self._rec_lock:
            txn.data = data
        self.note("message")
        targets = txn.rcpts if self.lmtp else [None]
        for rcpt in targets:
            code = self._act(conn, self._action("end", b"", conn_no, txn, rcpt), "end", b"",
                             conn_no, txn, rcpt)
            if code is not None and 200 <= code < 300:
                self.note("acked")
        if txn.delivered:
            self.note("delivered")
