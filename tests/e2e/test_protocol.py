"""The SMTP dialogue, compared with Python's stdlib smtpd.

The table CASES holds command sequences; each runs on a fresh connection against Python 3.11's
smtpd.SMTPServer (decode_data=False, process_message returns None) and against luasmtpd with the
sink fixture. Reply codes must agree line for line, and so must the texts once luasmtpd's RFC 3463
enhanced code ("250 2.0.0 OK" -> "250 OK") is removed. One new case is one line in the table.

The intended differences (greeting, EHLO keywords, HELP's list after EHLO, DATA over the size
limit, '-' in parameter keywords, non-ASCII input, the recipient limit, addresses Python crashes
on, a second HELO/EHLO, NOOP's argument, SMTPUTF8 offered by default) are not compared: the
tests after the table assert luasmtpd's behaviour by itself. The table without SMTPUTF8 runs
luasmtpd with --no-smtputf8, as Python runs without enable_SMTPUTF8.
"""

import re
import select
import socket
import time
import os
import unittest
from unittest import mock

import test_pipe
from harness import (HOSTNAME, SANITIZED, Closed, LuaSmtpd, PythonSmtpd, ServerTestCase,
                     SMTPClient, Timeout, fixture, strip_enhanced, version)

MSG = object()     # step: send a small message and the final dot, read one reply
CLOSED = object()  # step: the server must close the connection (within 3 s)

HELO = "HELO client.example"
EHLO = "EHLO client.example"
MAIL = "MAIL FROM:<a@b.example>"
RCPT = "RCPT TO:<c@d.example>"
BODY = b"Subject: test\r\n\r\nbody line\r\n.\r\n"
TOPICS = ["EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY"]
STEP_TIMEOUT = 3.0


def pad(prefix, length):
    """A command line of exactly `length` bytes (CRLF not counted)."""
    return prefix + "x" * (length - len(prefix))


CASES = [
    # HELO / EHLO
    ("HELO", [HELO, "NOOP"]),
    ("HELO without argument", ["HELO"]),
    ("HELO with only spaces", ["HELO   "]),
    ("HELO lower case", ["helo client.example"]),
    ("EHLO", [EHLO, "NOOP"]),
    ("EHLO without argument", ["EHLO"]),
    ("EHLO mixed case", ["EhLo client.example"]),
    ("HELO with address literal", ["HELO [127.0.0.1]"]),
    # NOOP
    ("NOOP", ["NOOP"]),
    ("NOOP with trailing space", ["NOOP "]),
    ("NOOP mid-transaction", [EHLO, MAIL, "NOOP", RCPT, "DATA", MSG]),
    # QUIT
    ("QUIT", ["QUIT", CLOSED]),
    ("QUIT with argument", ["QUIT now", CLOSED]),
    ("QUIT after EHLO", [EHLO, "QUIT", CLOSED]),
    ("QUIT mid-transaction", [EHLO, MAIL, RCPT, "QUIT", CLOSED]),
    # RSET
    ("RSET", ["RSET"]),
    ("RSET with argument", ["RSET x"]),
    ("RSET with trailing space", ["RSET "]),
    ("RSET clears the envelope", [EHLO, MAIL, RCPT, "RSET", RCPT, "DATA"]),
    ("RSET keeps the greeting", [HELO, "RSET", MAIL]),
    ("RSET before HELO", ["RSET", MAIL]),
    ("MAIL again after RSET", [EHLO, MAIL, "RSET", MAIL, RCPT, "DATA", MSG]),
    # HELP
    ("HELP", ["HELP"]),
    *[(f"HELP {t}", [f"HELP {t}"]) for t in TOPICS],
    *[(f"HELP {t} after HELO", [HELO, f"HELP {t}"]) for t in ("MAIL", "RCPT")],
    *[(f"HELP {t} after EHLO", [EHLO, f"HELP {t}"]) for t in TOPICS],
    ("HELP lower-case topic", ["HELP mail"]),
    ("HELP unknown topic", ["HELP FOO"]),
    ("HELP EXPN", ["HELP EXPN"]),
    # VRFY
    ("VRFY without argument", ["VRFY"]),
    ("VRFY address", ["VRFY a@b.example"]),
    ("VRFY <address>", ["VRFY <a@b.example>"]),
    ("VRFY local part", ["VRFY postmaster"]),
    ("VRFY !!", ["VRFY !!"]),
    ("VRFY unparsable", ['VRFY ""']),
    ("VRFY after EHLO", [EHLO, "VRFY a@b.example"]),
    # EXPN
    ("EXPN", ["EXPN staff"]),
    ("EXPN without argument", ["EXPN"]),
    ("EXPN after EHLO", [EHLO, "EXPN staff"]),
    # MAIL
    ("MAIL before HELO", [MAIL]),
    ("MAIL without argument", [HELO, "MAIL"]),
    ("MAIL without argument after EHLO", [EHLO, "MAIL"]),
    ("MAIL without FROM:", [HELO, "MAIL <a@b.example>"]),
    ("MAIL FROM without colon", [HELO, "MAIL FROM <a@b.example>"]),
    ("MAIL TO:", [HELO, "MAIL TO:<a@b.example>"]),
    ("MAIL FROM: empty", [HELO, "MAIL FROM:"]),
    ("MAIL FROM: empty after EHLO", [EHLO, "MAIL FROM:"]),
    ("MAIL FROM: empty quoted string", [HELO, 'MAIL FROM:""']),
    ("MAIL FROM: unopened bracket", [HELO, "MAIL FROM:a@b.example>"]),
    ("MAIL FROM: two addresses", [EHLO, "MAIL FROM:<a@b.example> <c@d.example>"]),
    ("MAIL parameters after HELO", [HELO, MAIL + " SIZE=10"]),
    ("MAIL junk after address after HELO", [HELO, MAIL + "x"]),
    ("MAIL nested", [HELO, MAIL, "MAIL FROM:<c@d.example>"]),
    ("MAIL nested after EHLO", [EHLO, MAIL, "MAIL FROM:<c@d.example>"]),
    ("MAIL parameter with empty value", [EHLO, MAIL + " SIZE="]),
    ("MAIL parameter without keyword", [EHLO, MAIL + " =1"]),
    ("MAIL parameter keyword with underscore", [EHLO, MAIL + " X_Y=1"]),
    ("MAIL BODY=7BIT", [EHLO, MAIL + " BODY=7BIT"]),
    ("MAIL BODY=8BITMIME", [EHLO, MAIL + " BODY=8BITMIME"]),
    ("MAIL body=8bitmime lower case", [EHLO, MAIL + " body=8bitmime"]),
    ("MAIL BODY=BINARYMIME", [EHLO, MAIL + " BODY=BINARYMIME"]),
    ("MAIL BODY without value", [EHLO, MAIL + " BODY"]),
    ("MAIL SIZE not digits", [EHLO, MAIL + " SIZE=abc"]),
    ("MAIL SIZE negative", [EHLO, MAIL + " SIZE=-1"]),
    ("MAIL SIZE=0", [EHLO, MAIL + " SIZE=0"]),
    ("MAIL SIZE at the limit", [EHLO, MAIL + " SIZE=33554432"]),
    ("MAIL SIZE over the limit", [EHLO, MAIL + " SIZE=33554433"]),
    ("MAIL SIZE far over the limit", [EHLO, MAIL + " SIZE=99999999999"]),
    ("MAIL SIZE and BODY", [EHLO, MAIL + " SIZE=100 BODY=8BITMIME", RCPT, "DATA", MSG]),
    ("MAIL SMTPUTF8 not offered", [EHLO, MAIL + " SMTPUTF8"]),
    ("MAIL unknown parameter", [EHLO, MAIL + " FOO=bar"]),
    ("MAIL unknown flag", [EHLO, MAIL + " FOO"]),
    ("MAIL after a refused MAIL", [EHLO, MAIL + " FOO=bar", MAIL, RCPT, "DATA", MSG]),
    ("MAIL", [HELO, MAIL]),
    ("MAIL without brackets", [HELO, "MAIL FROM:a@b.example"]),
    ("MAIL space after colon", [HELO, "MAIL FROM: <a@b.example>"]),
    ("MAIL lower case", [HELO, "mail from:<a@b.example>"]),
    ("MAIL FROM:<>", [HELO, "MAIL FROM:<>"]),
    ("MAIL FROM:<> after EHLO", [EHLO, "MAIL FROM:<>", RCPT, "DATA", MSG]),
    ("MAIL source route", [HELO, "MAIL FROM:<@relay.example:a@b.example>"]),
    ("MAIL quoted local part", [HELO, 'MAIL FROM:<"a b"@b.example>']),
    ("MAIL after a message", [EHLO, MAIL, RCPT, "DATA", MSG, "MAIL FROM:<c@d.example>"]),
    # RCPT
    ("RCPT before HELO", [RCPT]),
    ("RCPT without MAIL", [HELO, RCPT]),
    ("RCPT without MAIL after EHLO", [EHLO, RCPT]),
    ("RCPT without argument", [HELO, MAIL, "RCPT"]),
    ("RCPT without argument after EHLO", [EHLO, MAIL, "RCPT"]),
    ("RCPT without TO:", [HELO, MAIL, "RCPT <c@d.example>"]),
    ("RCPT TO: empty", [HELO, MAIL, "RCPT TO:"]),
    ("RCPT TO: empty quoted string", [HELO, MAIL, 'RCPT TO:""']),
    ("RCPT parameters after HELO", [HELO, MAIL, RCPT + " NOTIFY=NEVER"]),
    ("RCPT junk after address after HELO", [HELO, MAIL, RCPT + " x"]),
    ("RCPT unknown parameter", [EHLO, MAIL, RCPT + " FOO=bar"]),
    ("RCPT parameter with empty value", [EHLO, MAIL, RCPT + " NOTIFY="]),
    ("RCPT after a refused RCPT", [EHLO, MAIL, RCPT + " FOO=bar", RCPT, "DATA", MSG]),
    ("RCPT", [HELO, MAIL, RCPT]),
    ("RCPT without brackets", [HELO, MAIL, "RCPT TO:c@d.example"]),
    ("RCPT space after colon", [HELO, MAIL, "RCPT TO: <c@d.example>"]),
    ("RCPT postmaster", [HELO, MAIL, "RCPT TO:<postmaster>"]),
    ("RCPT Postmaster mixed case", [HELO, MAIL, "RCPT TO:<Postmaster>"]),
    ("RCPT twice the same", [HELO, MAIL, RCPT, RCPT, "DATA", MSG]),
    ("RCPT lower case", [HELO, MAIL, "rcpt to:<c@d.example>"]),
    # DATA
    ("DATA before HELO", ["DATA"]),
    ("DATA without MAIL", [HELO, "DATA"]),
    ("DATA without RCPT", [HELO, MAIL, "DATA"]),
    ("DATA with argument", [HELO, MAIL, RCPT, "DATA x"]),
    ("DATA with argument and no RCPT", [HELO, MAIL, "DATA x"]),
    ("DATA", [HELO, MAIL, RCPT, "DATA", MSG, "NOOP"]),
    ("DATA after EHLO", [EHLO, MAIL, RCPT, "DATA", MSG]),
    ("DATA lower case", [HELO, MAIL, RCPT, "data", MSG]),
    ("message with dot lines", [EHLO, MAIL, RCPT, "DATA", b"..a\r\n...\r\n..\r\n\r\nz\r\n.\r\n"]),
    ("two messages", [EHLO, MAIL, RCPT, "DATA", MSG, MAIL, RCPT, RCPT, "DATA", MSG]),
    ("RCPT after a message needs MAIL", [EHLO, MAIL, RCPT, "DATA", MSG, RCPT]),
    ("DATA after a message needs RCPT", [EHLO, MAIL, RCPT, "DATA", MSG, "DATA"]),
    # unknown and empty commands
    ("unknown command", ["FOO"]),
    ("unknown command with argument", ["FOO bar baz"]),
    ("unknown command lower case", ["foo"]),
    ("unknown command after EHLO", [EHLO, "FOO", "NOOP"]),
    ("verb with a known prefix QUITX", ["QUITX", "NOOP"]),
    ("verb with a known prefix HELOX", ["HELOX client.example"]),
    ("TURN", ["TURN"]),
    ("empty line", [""]),
    ("empty line after EHLO", [EHLO, "", "NOOP"]),
    ("empty line in a transaction", [EHLO, MAIL, "", RCPT, "DATA", MSG]),
    # line length limits: 512 bytes; after EHLO MAIL +26 because SIZE is offered, and (not
    # compared: Python has no DSN) MAIL +100 and RCPT +500 for DSN, see test_dsn.py
    ("line of 512 bytes", [pad("HELP ", 512)]),
    ("line of 513 bytes", [pad("HELP ", 513), "NOOP"]),
    ("unknown command of 513 bytes", [pad("X", 513), "NOOP"]),
    ("1 MiB line", [pad("NOOP ", 1 << 20), "NOOP"]),
    ("MAIL of 512 bytes after HELO", [HELO, pad("MAIL ", 512)]),
    ("MAIL of 513 bytes after HELO", [HELO, pad("MAIL ", 513), MAIL]),
    ("MAIL of 538 bytes after EHLO", [EHLO, pad("MAIL ", 538)]),
    ("RCPT of 513 bytes after HELO", [HELO, MAIL, pad("RCPT ", 513), RCPT]),
    ("HELP of 513 bytes after EHLO", [EHLO, pad("HELP ", 513)]),
    ("long line keeps the transaction", [EHLO, MAIL, pad("NOOP ", 600), RCPT, "DATA", MSG]),
]

# Against both servers with SMTPUTF8 offered (luasmtpd's default, enable_SMTPUTF8=True).
UTF8_CASES = [
    ("EHLO with SMTPUTF8", [EHLO]),
    ("MAIL SMTPUTF8", [EHLO, MAIL + " SMTPUTF8", RCPT, "DATA", MSG]),
    ("MAIL smtputf8 lower case", [EHLO, MAIL + " smtputf8"]),
    ("MAIL SMTPUTF8=x", [EHLO, MAIL + " SMTPUTF8=x"]),
    ("MAIL SMTPUTF8 after HELO", [HELO, MAIL + " SMTPUTF8"]),
    ("MAIL SMTPUTF8 BODY SIZE", [EHLO, MAIL + " SMTPUTF8 BODY=8BITMIME SIZE=100"]),
    ("MAIL of 548 bytes after EHLO", [EHLO, pad("MAIL ", 548)]),
    ("MAIL of 513 bytes after HELO", [HELO, pad("MAIL ", 513)]),
    ("HELP MAIL after EHLO", [EHLO, "HELP MAIL"]),
    ("MAIL without SMTPUTF8", [EHLO, MAIL, RCPT, "DATA", MSG]),
]


def run_steps(port, steps):
    """Runs one case on a new connection; returns a list of (step, result) where result is a
    list of reply lines, or "<closed>", "<timeout>", "<open>" (for CLOSED)."""
    out = []
    c = SMTPClient(port, timeout=STEP_TIMEOUT, greeting=False)
    try:
        try:
            out.append(("<greeting>", c.reply().lines))
        except (Closed, Timeout) as e:
            out.append(("<greeting>", "<closed>" if isinstance(e, Closed) else "<timeout>"))
            return out
        for step in steps:
            if step is CLOSED:
                out.append(("<expect close>", "<closed>" if c.wait_closed(STEP_TIMEOUT)
                            else "<open>"))
                continue
            if step is MSG:
                data = BODY
            elif isinstance(step, bytes):
                data = step
            else:
                data = step.encode("utf-8") + b"\r\n"
            try:
                c.send(data)
                out.append((step, c.reply().lines))
            except (Closed, Timeout, OSError) as e:
                out.append((step, "<timeout>" if isinstance(e, Timeout) else "<closed>"))
                break
        return out
    finally:
        c.close()


def show(step):
    if step is MSG:
        return "<message>"
    s = repr(step)
    return s if len(s) < 70 else s[:60] + f"...({len(step)} bytes)"


def transcript(ours, theirs):
    lines = []
    for i in range(max(len(ours), len(theirs))):
        o = ours[i] if i < len(ours) else (None, None)
        t = theirs[i] if i < len(theirs) else (None, None)
        lines.append(f"  {show(o[0] if o[0] is not None else t[0])}\n"
                     f"      luasmtpd: {o[1]!r}\n      python:   {t[1]!r}")
    return "\n".join(lines)


def is_greeting_reply(step):
    return isinstance(step, str) and step[:4].upper() in ("HELO", "EHLO")


def expected_ehlo(size="SIZE 33554432", utf8=False):
    """luasmtpd's EHLO keywords (besides the first and last line), as a sorted list."""
    kw = [size, "8BITMIME", "DSN", "CHUNKING", "PIPELINING", "ENHANCEDSTATUSCODES"]
    if utf8:
        kw.append("SMTPUTF8")
    return sorted(kw)


class ComparisonMixin:
    """Starts Python's reference and luasmtpd once for the class and runs the table."""

    utf8 = False
    cases = ()

    @classmethod
    def setUpClass(cls):
        cls.py = PythonSmtpd("ref", utf8=cls.utf8)
        try:
            cls.ours = LuaSmtpd(fixture("sink"), args=[] if cls.utf8 else ["--no-smtputf8"])
        except Exception:
            cls.py.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.py.close()
        cls.ours.close()  # raises on an unexpected error line or an unclean exit

    def compare(self, name, steps):
        ours = run_steps(self.ours.port, steps)
        theirs = run_steps(self.py.port, steps)
        where = f"case {name!r}:\n{transcript(ours, theirs)}"
        self.assertEqual(len(ours), len(theirs), where)
        for i, ((step, o), (_, t)) in enumerate(zip(ours, theirs)):
            if i == 0:
                continue  # the greeting differs by design; see test_greeting
            if isinstance(o, str) or isinstance(t, str):
                self.assertEqual(o, t, where)
                continue
            codes_o = [l[:3] for l in o]
            codes_t = [l[:3] for l in t]
            if is_greeting_reply(step) and len(t) > 1 and len(o) > 1:
                # EHLO keywords differ by design: check ours against the spec.
                self.assertEqual(o[0], t[0], where)
                self.assertEqual(o[-1], "250 HELP", where)
                self.assertEqual(sorted(l[4:] for l in o[1:-1]), expected_ehlo(utf8=self.utf8),
                                 where)
                continue
            self.assertEqual(codes_o, codes_t, "codes differ in " + where)
            self.assertEqual([strip_enhanced(l) for l in o], t, "texts differ in " + where)
            # RFC 3463: every reply but the greeting, HELO/EHLO and 354 carries an enhanced
            # code whose class is the reply's first digit.
            if not is_greeting_reply(step) and codes_o[0] != "354":
                for line in o:
                    m = re.match(r"^(\d)\d\d[ -](\d)\.\d{1,3}\.\d{1,3} ", line)
                    self.assertTrue(m and m.group(1) == m.group(2),
                                    f"no matching enhanced code in {line!r}; " + where)

    def test_table(self):
        self.assertTrue(self.cases)
        for name, steps in self.cases:
            with self.subTest(case=name):
                self.compare(name, steps)


class TestCompareWithPython(ComparisonMixin, unittest.TestCase):
    cases = CASES


class TestCompareWithPythonSMTPUTF8(ComparisonMixin, unittest.TestCase):
    utf8 = True
    cases = UTF8_CASES


class TestIntendedDifferences(ServerTestCase):
    """What luasmtpd does where it departs from Python on purpose."""

    def test_greeting(self):
        srv = self.start_server("sink")
        c = self.connect(srv)
        self.assertEqual(c.greeting.lines, [f"220 {HOSTNAME} luasmtpd {version()} ESMTP"])
        with PythonSmtpd("ref") as py:
            with SMTPClient(py.port) as pc:
                self.assertEqual(pc.greeting.lines,
                                 [f"220 {HOSTNAME} Python SMTP proxy version 0.3"])

    def ehlo(self, args):
        srv = self.start_server("sink", args=args)
        r = self.connect(srv).cmd(EHLO)
        self.assertEqual(r.code, 250)
        self.assertEqual(r.lines[0], f"250-{HOSTNAME}")
        self.assertEqual(r.lines[-1], "250 HELP")
        self.assertTrue(all(l.startswith("250-") for l in r.lines[:-1]), r.lines)
        return sorted(l[4:] for l in r.lines[1:-1])

    def test_ehlo_keywords_default(self):
        """SMTPUTF8 is offered unless --no-smtputf8 (Python only with -u)."""
        self.assertEqual(self.ehlo([]), expected_ehlo(utf8=True))

    def test_ehlo_keywords_no_smtputf8(self):
        self.assertEqual(self.ehlo(["--no-smtputf8"]), expected_ehlo())
        self.assertEqual(self.ehlo(["-u", "--no-smtputf8"]), expected_ehlo())

    def test_ehlo_keywords_size_limit(self):
        self.assertEqual(self.ehlo(["-s", "1000"]), expected_ehlo(size="SIZE 1000", utf8=True))

    def test_ehlo_keywords_no_size_limit(self):
        self.assertEqual(self.ehlo(["-s", "0"]), expected_ehlo(size="SIZE", utf8=True))

    def test_ehlo_keywords_smtputf8(self):
        self.assertEqual(self.ehlo(["-u"]), expected_ehlo(utf8=True))

    def test_help_after_ehlo_lists_bdat(self):
        """After EHLO, HELP's list adds BDAT (CHUNKING is offered), where Python's has none."""
        python = "Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY"
        srv = self.start_server("sink")
        c = self.connect(srv)
        self.assertEqual(c.cmd("HELP BDAT").lines, [f"501 5.5.4 {python}"])
        c.cmd(EHLO)
        self.assertEqual(c.cmd("HELP").lines, [f"250 2.0.0 {python} BDAT"])
        self.assertEqual(c.cmd("HELP BAR").lines, [f"501 5.5.4 {python} BDAT"])
        self.assertEqual(c.cmd("HELP bdat").lines,
                         ["250 2.0.0 Syntax: BDAT chunk-size [LAST]"])
        with PythonSmtpd("ref") as py, SMTPClient(py.port) as pc:
            pc.cmd(EHLO)
            self.assertEqual(pc.cmd("HELP").lines, [f"250 {python}"])

    def test_helo_reply_has_no_enhanced_code(self):
        srv = self.start_server("sink")
        self.assertEqual(self.connect(srv).cmd(HELO).lines, [f"250 {HOSTNAME}"])

    def test_exact_replies(self):
        """A few replies spelled out in full, enhanced codes included."""
        srv = self.start_server("sink")
        c = self.connect(srv)
        self.assertEqual(c.cmd("").lines, ["500 5.5.2 Error: bad syntax"])
        self.assertEqual(c.cmd("FOO").lines, ['500 5.5.1 Error: command "FOO" not recognized'])
        self.assertEqual(c.cmd("HELO").lines, ["501 5.5.4 Syntax: HELO hostname"])
        self.assertEqual(c.cmd(EHLO).code, 250)
        self.assertEqual(c.cmd(HELO).lines, [f"250 {HOSTNAME}"])
        self.assertEqual(c.cmd("NOOP").lines, ["250 2.0.0 OK"])
        self.assertEqual(c.cmd("NOOP with an argument").lines, ["250 2.0.0 OK"])
        self.assertEqual(c.cmd(MAIL).lines, ["250 2.1.0 OK"])
        self.assertEqual(c.cmd(RCPT).lines, ["250 2.1.5 OK"])
        self.assertEqual(c.cmd("DATA").lines, ["354 End data with <CR><LF>.<CR><LF>"])
        c.send(BODY)
        self.assertEqual(c.reply().lines, ["250 2.0.0 OK"])
        self.assertEqual(c.cmd(pad("NOOP ", 513)).lines, ["500 5.5.2 Error: line too long"])
        self.assertEqual(c.cmd("QUIT").lines, ["221 2.0.0 Bye"])
        self.assertTrue(c.wait_closed(3))

    def test_parameter_keyword_with_hyphen(self):
        """RFC 5321 esmtp-keyword allows '-': an unknown but well-formed parameter is 555
        (Python says 501 because it wants isalnum())."""
        srv = self.start_server("sink")
        c = self.connect(srv)
        c.cmd(EHLO)
        r = c.cmd(MAIL + " X-FOO=1")
        self.assertEqual(r.code, 555, r.lines)
        self.assertEqual(strip_enhanced(r.lines[-1]),
                         "555 MAIL FROM parameters not recognized or not implemented")
        self.assertEqual(c.cmd(MAIL).code, 250)
        r = c.cmd(RCPT + " X-BAR=1")
        self.assertEqual(r.code, 555, r.lines)
        with PythonSmtpd("ref") as py, SMTPClient(py.port) as pc:
            pc.cmd(EHLO)
            self.assertEqual(pc.cmd(MAIL + " X-FOO=1").code, 501)

    def test_null_sender(self):
        """MAIL FROM:<> is 250 in both; the handler gets "" (see test_handlers)."""
        srv = self.start_server("sink")
        c = self.connect(srv)
        c.cmd(EHLO)
        self.assertEqual(c.cmd("MAIL FROM:<>").lines, ["250 2.1.0 OK"])

    def test_non_ascii_command(self):
        """Python drops the connection on a command that is not UTF-8; we answer (whatever the
        answer) and go on."""
        srv = self.start_server("sink")
        c = self.connect(srv)
        for raw in (b"NOOP \xff\xfe", b"\xc3\xa9HLO x", b"HELO caf\xe9", b"\x80"):
            c.send(raw + b"\r\n")
            r = c.reply()
            self.assertIn(r.code // 100, (2, 4, 5), f"{raw!r} -> {r.lines!r}")
            self.assertEqual(c.cmd("NOOP").code, 250)
        self.assertTrue(srv.alive())

    def test_replies_never_echo_raw_bytes(self):
        """RFC 5321 4.2: reply text is printable US-ASCII. Python echoes what the client sent;
        we write each byte outside 0x20-0x7e (and the backslash) as \\xNN."""
        srv = self.start_server("sink")
        c = self.connect(srv)
        cases = [
            (b"\x80", '500 5.5.1 Error: command "\\x80" not recognized'),
            (b"fo\xffo bar", '500 5.5.1 Error: command "FO\\xffO" not recognized'),
            (b"X\tY", '500 5.5.1 Error: command "X\\x09Y" not recognized'),
            (b"A\\x80", '500 5.5.1 Error: command "A\\x5cX80" not recognized'),
            (b"caf\xc3\xa9", '500 5.5.1 Error: command "CAF\\xc3\\xa9" not recognized'),
            (b'VRFY "" \x80\t!', '502 5.5.1 Could not VRFY "" \\x80\\x09!'),
            (b"VRFY <\xe9", "502 5.5.1 Could not VRFY <\\xe9"),
            # cut to fit 512 bytes, never inside an escape
            (b"VRFY <" + b"\xe9" * 200, None),
        ]
        for raw, want in cases:
            with self.subTest(raw=raw[:20]):
                c.send(raw + b"\r\n")
                r = c.reply()
                for line in r.lines:
                    self.assertTrue(all(0x20 <= ord(ch) <= 0x7e for ch in line), repr(line))
                    self.assertLessEqual(len(line) + 2, 512)
                if want is not None:
                    self.assertEqual(r.lines, [want])
                else:
                    self.assertRegex(r.lines[0], r"^502 5\.5\.1 Could not VRFY <(\\xe9)+\.\.\.$")
        self.assertEqual(c.cmd("NOOP").code, 250)

    def test_non_ascii_address_without_smtputf8(self):
        srv = self.start_server("sink")
        c = self.connect(srv)
        c.cmd(EHLO)
        r = c.cmd("MAIL FROM:<j\u00f6rg@b.example>")
        self.assertEqual(r.code, 553, r.lines)
        self.assertEqual(c.cmd(MAIL).code, 250)
        r = c.cmd("RCPT TO:<j\u00f6rg@d.example>")
        self.assertEqual(r.code, 553, r.lines)
        self.assertEqual(c.cmd(RCPT).code, 250)

    def test_non_ascii_address_with_smtputf8(self):
        srv = self.start_server("sink", args=["-u"])
        c = self.connect(srv)
        c.cmd(EHLO)
        # Offered, but not asked for in this transaction (RFC 6531 3.4): refused.
        self.assertEqual(c.cmd("MAIL FROM:<j\u00f6rg@b.example>").code, 553)
        self.assertEqual(c.cmd("MAIL FROM:<j\u00f6rg@b.example> SMTPUTF8").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<\u00fcber@d.example>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send("Subject: gr\u00fc\u00dfe\r\n\r\n\u2713\r\n.\r\n")
        self.assertEqual(c.reply().code, 250)

    def test_empty_message(self):
        """Python cannot take an empty message: its DATA terminator is CRLF.CRLF, and the CRLF
        of the DATA line is already used up, so "." alone hangs. Ours answers 250."""
        srv = self.start_server("sink")
        c = self.connect(srv)
        c.cmd(EHLO)
        c.cmd(MAIL)
        c.cmd(RCPT)
        self.assertEqual(c.cmd("DATA").code, 354)
        self.assertEqual(c.cmd(".").lines, ["250 2.0.0 OK"])
        self.assertEqual(c.cmd("NOOP").code, 250)

    def test_too_many_recipients(self):
        srv = self.start_server("sink", args=["--max-recipients", "3"])
        c = self.connect(srv)
        c.cmd(EHLO)
        c.cmd(MAIL)
        for i in range(3):
            self.assertEqual(c.cmd(f"RCPT TO:<r{i}@d.example>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<r3@d.example>").lines,
                         ["452 4.5.3 Error: too many recipients"])
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(BODY)
        self.assertEqual(c.reply().code, 250)

    def test_end_of_data_over_size_limit(self):
        """Python stays in DATA after 552; we answer 552 and the session goes on."""
        srv = self.start_server("sink", args=["-s", "1000"])
        c = self.connect(srv)
        c.cmd(EHLO)
        c.cmd(MAIL)
        c.cmd(RCPT)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 25 + b".\r\n")
        self.assertEqual(c.reply().lines, ["552 5.3.4 Error: Too much mail data"])
        self.assertEqual(c.cmd(MAIL).code, 250)
        self.assertEqual(c.cmd(RCPT).code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(BODY)
        self.assertEqual(c.reply().lines, ["250 2.0.0 OK"])

    def test_addresses_python_crashes_on(self):
        """Python's address parser raises on these and drops the connection; we answer."""
        srv = self.start_server("sink")
        c = self.connect(srv)
        c.cmd(EHLO)
        for arg in ("MAIL FROM:<", "MAIL FROM:@", "MAIL FROM:<<a@b.example>>",
                    "MAIL FROM:<a@b.example"):
            self.assertEqual(c.cmd(arg).code, 501, arg)
        for arg in ("VRFY <", "VRFY @", "VRFY a@"):
            r = c.cmd(arg)
            self.assertIn(r.code, (501, 502), f"{arg} -> {r.lines}")
        c.cmd(MAIL)
        self.assertEqual(c.cmd("RCPT TO:<").code, 501)
        self.assertEqual(c.cmd(RCPT).code, 250)


class TestLineLimits(ServerTestCase):
    def test_megabyte_line_without_crlf(self):
        srv = self.start_server("sink")
        c = self.connect(srv)
        chunk = b"x" * 65536
        for _ in range(16):
            c.send(chunk)
        # No reply before the line ends.
        c.sock.settimeout(0.3)
        with self.assertRaises(socket.timeout):
            c.sock.recv(1)
        c.send(b"\r\n")
        self.assertEqual(c.reply().lines, ["500 5.5.2 Error: line too long"])
        self.assertEqual(c.cmd("NOOP").lines, ["250 2.0.0 OK"])
        self.assertTrue(srv.alive())

    def test_mail_limit_with_smtputf8(self):
        """Python's 512 + 26 (SIZE) + 10 (SMTPUTF8) for MAIL, and RFC 3461's 100 for DSN,
        which Python does not offer; RCPT gets DSN's 500."""
        srv = self.start_server("sink", args=["-u"])
        c = self.connect(srv)
        c.cmd(EHLO)
        self.assertEqual(c.cmd(pad("MAIL ", 648)).code, 501)
        self.assertEqual(c.cmd(pad("MAIL ", 649)).lines, ["500 5.5.2 Error: line too long"])
        self.assertEqual(c.cmd(MAIL).code, 250)
        self.assertEqual(c.cmd(pad("RCPT ", 1012)).code, 501)
        self.assertEqual(c.cmd(pad("RCPT ", 1013)).lines, ["500 5.5.2 Error: line too long"])

    def test_mail_limit_without_size(self):
        """With -s 0 SIZE is still offered (bare), so MAIL keeps its 26 extra bytes (and
        without SMTPUTF8 no more)."""
        srv = self.start_server("sink", args=["-s", "0", "--no-smtputf8"])
        c = self.connect(srv)
        c.cmd(EHLO)
        self.assertEqual(c.cmd(pad("MAIL ", 638)).code, 501)
        self.assertEqual(c.cmd(pad("MAIL ", 639)).code, 500)

    def test_limits_are_per_session(self):
        """Python's limits live in a class-level dict shared by all sessions; ours don't: a
        HELO session next to an EHLO one keeps the 512-byte MAIL limit."""
        srv = self.start_server("sink", args=["-u"])
        a = self.connect(srv)
        b = self.connect(srv)
        a.cmd(EHLO)
        b.cmd(HELO)
        self.assertEqual(b.cmd(pad("MAIL ", 513)).code, 500)
        self.assertEqual(a.cmd(pad("MAIL ", 548)).code, 501)


class TestPipelining(ServerTestCase):
    def test_envelope_in_one_write(self):
        srv = self.start_server("sink")
        c = self.connect(srv)
        c.cmd(EHLO)
        c.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nDATA\r\n")
        rs = c.replies(4)
        self.assertEqual([r.lines for r in rs],
                         [["250 2.1.0 OK"], ["250 2.1.5 OK"], ["250 2.1.5 OK"],
                          ["354 End data with <CR><LF>.<CR><LF>"]])
        c.send(BODY + b"QUIT\r\n")
        self.assertEqual(c.reply().lines, ["250 2.0.0 OK"])
        self.assertEqual(c.reply().lines, ["221 2.0.0 Bye"])
        self.assertTrue(c.wait_closed(3))

    def test_whole_session_in_one_write(self):
        srv = self.start_server("sink")
        c = self.connect(srv)
        c.send(b"EHLO client.example\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n" + BODY +
               b"MAIL FROM:<e@f>\r\nRCPT TO:<g@h>\r\nDATA\r\n" + BODY + b"QUIT\r\n")
        rs = c.replies(10)
        self.assertEqual([r.code for r in rs], [250, 250, 250, 354, 250, 250, 250, 354, 250, 221])
        self.assertTrue(c.wait_closed(3))

    def test_errors_in_a_pipeline(self):
        """A refused command in a pipeline gets its own reply, in order."""
        srv = self.start_server("sink")
        c = self.connect(srv)
        c.cmd(EHLO)
        c.send(b"MAIL FROM:<a@b>\r\nRCPT TO:\r\nRCPT TO:<c@d>\r\nFOO\r\nDATA\r\n")
        rs = c.replies(5)
        self.assertEqual([r.code for r in rs], [250, 501, 250, 500, 354])
        c.send(BODY)
        self.assertEqual(c.reply().code, 250)


class TestTimeout(ServerTestCase):
    def test_silent_client_gets_421(self):
        srv = self.start_server("sink", args=["--timeout", "1"])
        c = self.connect(srv)
        t0 = time.monotonic()
        r = c.reply(timeout=5)
        self.assertEqual(r.code, 421, r.lines)
        self.assertRegex(r.lines[-1], r"^421 4\.4\.2 ")
        self.assertTrue(c.wait_closed(5), "connection not closed after 421")
        self.assertGreaterEqual(time.monotonic() - t0, 0.5)
        # The server goes on.
        c2 = self.connect(srv)
        self.assertEqual(c2.cmd("NOOP").code, 250)

    def test_silent_client_mid_transaction(self):
        srv = self.start_server("sink", args=["--timeout", "1", "--data-timeout", "1"])
        c = self.connect(srv)
        c.cmd(EHLO)
        c.cmd(MAIL)
        c.cmd(RCPT)
        c.cmd("DATA")
        c.send(b"Subject: half\r\n")
        r = c.reply(timeout=5)
        self.assertEqual(r.code, 421, r.lines)
        self.assertTrue(c.wait_closed(5))

    def test_active_client_is_not_timed_out(self):
        """--timeout 3 and a NOOP every second for 5 s: every command starts the timeout
        afresh, so the client is never cut off."""
        srv = self.start_server("sink", args=["--timeout", "3"])
        c = self.connect(srv)
        for _ in range(5):
            # A pause of 1 s in which the server says nothing (no 421, no close).
            self.assertEqual(select.select([c.sock], [], [], 1.0)[0], [], "the server spoke")
            self.assertEqual(c.cmd("NOOP").code, 250)


class TestCommandOutOfMemory(ServerTestCase):
    """Since the command table (issue 13), HELP and VRFY copy their argument for their proceed
    as the hooked commands do; a failed copy left s->cmd.arg NULL and crashed the process (the
    old HELP/VRFY read the line itself, and never failed). The test shim fails strdup for one
    word (LUASMTPD_SHIM_STRDUP_FAIL): the command gets 451 and the session goes on."""

    WORD = "NOMEMWORD"

    def start_failing(self):
        env = {"LD_PRELOAD": test_pipe.shim_path(), "LUASMTPD_SHIM_STRDUP_FAIL": self.WORD}
        if SANITIZED:  # the sanitizer runtime wants to be first; the shim needs nothing of it
            env["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"
        with mock.patch.dict(os.environ, env):
            return self.start_server("sink")

    def test_a_failed_copy_is_451_not_a_crash(self):
        srv = self.start_failing()
        c = self.connect(srv)
        out_of_memory = "451 4.3.0 Error: out of memory"
        # A refused EHLO records no name: the next one is no duplicate.
        self.assertReply(c.cmd(f"EHLO {self.WORD}.example"), 451, out_of_memory)
        self.assertReply(c.cmd(EHLO), 250)
        for line in (f"HELP {self.WORD}", f"VRFY {self.WORD}@d.example",
                     f"MAIL FROM:<{self.WORD}@b.example>"):
            self.assertReply(c.cmd(line), 451, out_of_memory, msg=line)
        # The refused MAIL began no transaction; a whole one goes through after.
        self.assertReply(c.cmd(RCPT), 503)
        replies = c.transaction("a@b.example", ["c@d.example"], b"Subject: t\r\n\r\nx\r\n",
                                helo=None)
        self.assertEqual([r.code for r in replies], [250, 250, 354, 250])
        self.assertReply(c.cmd("HELP MAIL"), 250)
        self.assertTrue(srv.alive())


if __name__ == "__main__":
    unittest.main()
