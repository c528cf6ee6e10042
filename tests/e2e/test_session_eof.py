"""A client that half-closes (shutdown SHUT_WR) after pipelining its commands gets an answer to
every command it sent, in order, also to those behind a hook or handler that waits (a child, a
relay), and to the message itself; then the connection is closed (issue 11 item 6). A client
that is really gone (reset) cancels the work in flight cleanly. EOF inside DATA discards the
message. Each transaction has an id, given to Lua as options.id and session.transaction_id and
written in the transaction's log line."""

import re
import socket
import struct
import threading
import time
import unittest

from harness import ServerTestCase, wait_until, without_received
from upstreams import AioUpstream, SmtpSink, parse_sink_dump, sink_body

WARN_LINE = r"^\S+ luasmtpd\[\d+\] warn: "
BODY = b"Subject: half-closed\r\nFrom: a@b.example\r\n\r\nfirst line\r\n..dot\r\nlast\r\n"
# The transaction's log line: "... message N from <a> for R recipient(s), B bytes, id X: ..."
MESSAGE_ID = r"message \d+ from <%s> for \d+ recipient\(s\), \d+ bytes, id ([!-~]+): (\d{3}) "
ID_FORMAT = re.compile(r"^[0-9A-F]{15,24}$")


def transaction(mailfrom="a@b.example", rcpts=("c@d.example",), body=BODY, ehlo=True):
    """The bytes of one pipelined transaction (body already dot-stuffed, ends in CRLF)."""
    out = b"EHLO client.example\r\n" if ehlo else b""
    out += b"MAIL FROM:<%s>\r\n" % mailfrom.encode()
    for r in rcpts:
        out += b"RCPT TO:<%s>\r\n" % r.encode()
    return out + b"DATA\r\n" + body + b".\r\n"


def parse_replies(raw):
    """Splits what the server sent into replies: lists of lines (without CRLF)."""
    replies, lines = [], []
    for line in raw.split(b"\r\n")[:-1]:
        text = line.decode("utf-8", "replace")
        lines.append(text)
        if len(text) < 4 or text[3] == " ":
            replies.append(lines)
            lines = []
    assert raw.endswith(b"\r\n") or raw == b"", f"unterminated reply at the end: {raw[-200:]!r}"
    assert not lines, f"unfinished multi-line reply: {lines!r}"
    return replies


def with_peer(data):
    """BODY as pureproxy passes it on: dot-unstuffed, X-Peer at the end of the header."""
    return data.replace(b"\r\n..", b"\r\n.").replace(b"\r\n\r\n", b"\r\nX-Peer: 127.0.0.1\r\n\r\n", 1)


def codes(replies):
    return [int(r[-1][:3]) for r in replies]


class HalfClosed:
    """A raw client: waits for the greeting, sends `data` from a thread (it may be more than
    the server reads at once), half-closes, and reads everything until the server closes."""

    def __init__(self, port, data, rcvbuf=None, timeout=30):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.timeout = timeout
        self.raw = b""
        while b"\r\n" not in self.raw:  # RFC 5321 3.1: talking first would be refused
            chunk = self.sock.recv(4096)
            assert chunk, "closed before the greeting"
            self.raw += chunk
        self.greeting, self.raw = self.raw.split(b"\r\n", 1)
        assert self.greeting.startswith(b"220"), self.greeting
        self.send_error = None
        self.sender = threading.Thread(target=self._send, args=(data,), daemon=True)
        self.sender.start()

    def _send(self, data):
        try:
            self.sock.sendall(data)
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.send_error = e

    def read_all(self):
        """Everything up to the server's close; raises when it does not close in time."""
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                complete = self.raw[:self.raw.rfind(b"\r\n") + 2]
                raise AssertionError(f"the server did not close within {self.timeout}s; got "
                                     f"{parse_replies(complete)!r}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                break
            self.raw += chunk
        self.sender.join(self.timeout)
        assert not self.sender.is_alive(), "the sender is still blocked"
        assert self.send_error is None, self.send_error
        return parse_replies(self.raw)

    def reset(self):
        """Closes with a reset (SO_LINGER 0): the socket is really gone."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self):
        self.sock.close()


class EofTestCase(ServerTestCase):
    def half_closed(self, srv, data, **kw):
        c = HalfClosed(srv.port, data, **kw)
        self.addCleanup(c.close)
        return c

    def start_aio(self, **kw):
        up = AioUpstream(**kw)
        self.addCleanup(up.close)
        return up

    def start_sink(self):
        sink = SmtpSink()
        self.addCleanup(sink.close)
        return sink

    def start_proxy(self, upstream_port):
        # pureproxy logs upstream trouble at level warn; such lines may hold "error: ".
        return self.start_server("pureproxy", remote=f"127.0.0.1:{upstream_port}",
                                 expect_errors=[WARN_LINE])


class TestPipelinedHalfClose(EofTestCase):
    """The whole dialogue pipelined, then SHUT_WR: every command is answered, then 221."""

    EXPECTED = [250, 250, 250, 354, 250, 221]

    def test_sink(self):
        srv = self.start_server("sink")
        c = self.half_closed(srv, transaction() + b"QUIT\r\n")
        self.assertEqual(codes(c.read_all()), self.EXPECTED)

    def test_yielding_hooks_and_handler(self):
        """on_mail, on_rcpt and process_message each wait on a child: two transactions and
        QUIT, all answered in order after the client half-closed."""
        srv = self.start_server("eof_yield")
        data = (transaction("one@b.example") + transaction("two@b.example", ehlo=False) +
                b"NOOP\r\nQUIT\r\n")
        c = self.half_closed(srv, data)
        replies = c.read_all()
        self.assertEqual(codes(replies),
                         [250, 250, 250, 354, 250, 250, 250, 354, 250, 250, 221], replies)
        srv.wait_log(r"script: eof message id=\S+ txn=\S+ from=one@b\.example size=%d$"
                     % (len(BODY) - 1))
        srv.wait_log(r"script: eof message id=\S+ txn=\S+ from=two@b\.example ")

    def test_without_quit(self):
        """No QUIT: the message is still answered, then the server closes."""
        srv = self.start_server("eof_yield")
        c = self.half_closed(srv, transaction("noquit@b.example"))
        self.assertEqual(codes(c.read_all()), [250, 250, 250, 354, 250])
        srv.wait_log(r"script: eof message id=\S+ txn=\S+ from=noquit@b\.example ")

    def test_input_bigger_than_one_read(self):
        """A 1 MiB message pipelined behind a waiting on_mail: the server stops reading at its
        input cap meanwhile, so the EOF comes only after it read the rest."""
        srv = self.start_server("eof_yield")
        line = b"x" * 1022 + b"\r\n"
        body = b"Subject: big\r\n\r\n" + line * 1024
        c = self.half_closed(srv, transaction("big@b.example", body=body) + b"QUIT\r\n")
        self.assertEqual(codes(c.read_all()), self.EXPECTED)
        srv.wait_log(r"script: eof message id=\S+ txn=\S+ from=big@b\.example size=%d$"
                     % len(body))

    def test_pureproxy_to_aiosmtpd(self):
        up = self.start_aio()
        srv = self.start_proxy(up.port)
        c = self.half_closed(srv, transaction("proxy@b.example") + b"QUIT\r\n")
        replies = c.read_all()
        self.assertEqual(codes(replies), self.EXPECTED, replies)
        # pureproxy answers 250 only after the upstream took the message, so it is there now;
        # and with the proxy stopped no later copy can arrive.
        srv.stop()
        self.assertEqual([(m["mail_from"], m["rcpt_tos"]) for m in up.messages],
                         [("proxy@b.example", ["c@d.example"])])
        data = up.messages[0]["data"]
        self.assertEqual(without_received(data), with_peer(BODY))
        # The Received: field names the transaction by the id of our log line.
        logged = srv.wait_log(MESSAGE_ID % re.escape("proxy@b.example")).group(1)
        field = data[:len(data) - len(without_received(data))].decode()
        self.assertRegex(re.sub(r"\r\n[ \t]+", " ", field), r" id %s[;\s]" % logged)

    def test_pureproxy_to_smtp_sink(self):
        sink = self.start_sink()
        srv = self.start_proxy(sink.port)
        c = self.half_closed(srv, transaction("sink@b.example") + b"QUIT\r\n")
        replies = c.read_all()
        self.assertEqual(codes(replies), self.EXPECTED, replies)
        wait_until(lambda: len(sink.dumps()) >= 1, 10, what="smtp-sink's dump")
        srv.stop()
        dumps = sink.dumps()
        self.assertEqual(len(dumps), 1, dumps)
        fields, body = parse_sink_dump(dumps[0])
        self.assertEqual(without_received(body, eol=b"\n"), sink_body(with_peer(BODY)))


class TestEndOfInput(EofTestCase):
    def test_eof_in_data_discards_the_message(self):
        """No final dot: the replies up to 354 come, the message never reaches
        process_message, the log says it was discarded, and the server closes."""
        srv = self.start_server("eof_yield")
        data = transaction("cut@b.example")[:-len(b".\r\n")] + b"half a line"
        c = self.half_closed(srv, data)
        self.assertEqual(codes(c.read_all()), [250, 250, 250, 354])
        i, _ = srv.log.wait(r"client left during DATA: message from <cut@b\.example> "
                            r"discarded after \d+ bytes, id [0-9A-F]+$")
        # process_message would have been called in the same pump that logged the discard,
        # so the log is complete on this point.
        self.assertFalse([l for l in srv.log_lines() if "eof message" in l])
        srv.stop()
        self.assertFalse([l for l in srv.log_lines() if "eof message" in l])

    def test_eof_right_after_354(self):
        """Command by command, then SHUT_WR as soon as 354 came: nothing of the message was
        sent; the server discards it and closes (it once spun on the empty input here)."""
        srv = self.start_server("eof_yield", sets={"delay": "0"})
        c = self.connect(srv)
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<empty@b.example>")
        c.cmd("RCPT TO:<c@d.example>")
        self.assertEqual(c.cmd("DATA").code, 354)
        c.sock.shutdown(socket.SHUT_WR)
        self.assertTrue(c.wait_closed(10))
        srv.wait_log(r"client left during DATA: message from <empty@b\.example> discarded "
                     r"after 0 bytes, id [0-9A-F]+$")
        # The server still serves: the loop is not stuck.
        c2 = self.half_closed(srv, transaction("after@b.example") + b"QUIT\r\n")
        self.assertEqual(codes(c2.read_all()), TestPipelinedHalfClose.EXPECTED)

    def test_unterminated_last_command(self):
        """Bytes after the last CRLF are no command: EHLO answered, "QUIT" without CRLF not."""
        srv = self.start_server("eof_yield")
        c = self.half_closed(srv, b"EHLO client.example\r\nNOOP\r\nQUIT")
        self.assertEqual(codes(c.read_all()), [250, 250])

    def test_half_closed_client_that_never_reads(self):
        """Pipelined RCPTs whose replies (50 kB each, 45 MB in all) are far more than the
        socket buffers hold (4 MB here), then SHUT_WR, and the client reads nothing: the
        command timeout still ends the session, and it is dropped once closing has waited as
        long again."""
        srv = self.start_server("eof_chatty", args=["--timeout", "2"])
        data = b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n"
        data += b"".join(b"RCPT TO:<r%d@d.example>\r\n" % i for i in range(900))
        c = self.half_closed(srv, data, rcvbuf=4096)
        srv.wait_log(r"session \d+: timeout, closing", timeout=30)
        srv.wait_log(r"session \d+: the client does not read its replies, dropped", timeout=30)
        c.close()

    def test_reset_while_hooks_wait(self):
        """Pipelined, half-closed, then reset while on_mail waits (2 s; the client resets as
        soon as the EHLO reply is in): the server notices when it writes MAIL's reply, cancels
        the hook that waits then (on_rcpt's child is let go), delivers nothing and goes on."""
        srv = self.start_server("eof_yield", sets={"delay": "2"})
        c = self.half_closed(srv, transaction("reset@b.example") + b"QUIT\r\n")
        self.read_first_reply(c)
        c.sender.join(10)
        c.reset()
        srv.wait_log(r"client left during a hook, id [0-9A-F]+$", timeout=20)
        # A new client is served as ever.
        c2 = self.half_closed(srv, transaction("after@b.example") + b"QUIT\r\n")
        self.assertEqual(codes(c2.read_all()), TestPipelinedHalfClose.EXPECTED)
        srv.wait_log(r"script: eof message id=\S+ txn=\S+ from=after@b\.example ")
        self.assertFalse([l for l in srv.log_lines() if "from=reset@b.example" in l])

    def test_reset_while_pureproxy_waits(self):
        """The same through pureproxy: reset while on_rcpt waits 3 s for the upstream. The
        server learns it on its next write (RCPT's reply), and then hands no message to
        process_message: nothing is relayed for a client that would never hear the answer. The
        next client's message goes through, once."""
        up = self.start_aio(rcpt_delay=3.0)
        srv = self.start_proxy(up.port)
        c = self.half_closed(srv, transaction("reset@b.example") + b"QUIT\r\n")
        up.wait_event(("rcpt", "c@d.example"), timeout=10)
        c.sender.join(10)
        c.reset()
        srv.wait_log(r"client left before its message was handled: message from "
                     r"<reset@b\.example> discarded, \d+ bytes, id [0-9A-F]+$", timeout=20)
        up.rcpt_delay = 0
        c2 = self.half_closed(srv, transaction("after@b.example") + b"QUIT\r\n")
        self.assertEqual(codes(c2.read_all()), TestPipelinedHalfClose.EXPECTED)
        srv.stop()
        self.assertEqual([m["mail_from"] for m in up.messages], ["after@b.example"])

    @staticmethod
    def read_first_reply(c, timeout=10):
        deadline = time.monotonic() + timeout
        while b"\r\n" not in c.raw and time.monotonic() < deadline:
            chunk = c.sock.recv(4096)
            if not chunk:
                break
            c.raw += chunk


class TestTransactionId(EofTestCase):
    def ids_of(self, srv, mailfrom):
        m = srv.wait_log(MESSAGE_ID % re.escape(mailfrom))
        logged = m.group(1)
        seen = srv.wait_log(r"script: eof message id=(\S+) txn=(\S+) from=%s "
                            % re.escape(mailfrom))
        mail = srv.wait_log(r"script: eof mail <%s> txn=(\S+)$" % re.escape(mailfrom))
        return logged, seen.group(1), seen.group(2), mail.group(1)

    def test_id_in_options_session_and_log(self):
        srv = self.start_server("eof_yield", sets={"delay": "0"})
        senders = [f"id{i}@b.example" for i in range(3)]
        data = b"".join(transaction(s, ehlo=(i == 0)) for i, s in enumerate(senders))
        c = self.half_closed(srv, data + b"QUIT\r\n")
        self.assertEqual(codes(c.read_all())[-2:], [250, 221])
        c2 = self.half_closed(srv, transaction("other@b.example") + b"QUIT\r\n")
        self.assertEqual(codes(c2.read_all())[-2:], [250, 221])
        ids = []
        for s in senders + ["other@b.example"]:
            logged, option, session_field, at_mail = self.ids_of(srv, s)
            self.assertRegex(logged, ID_FORMAT)
            self.assertEqual((option, session_field, at_mail), (logged, logged, logged), s)
            ids.append(logged)
        self.assertEqual(len(set(ids)), len(ids), ids)

    def test_id_in_the_refusal_line(self):
        """A message over the size limit: its refusal line carries the id on_mail saw."""
        srv = self.start_server("eof_yield", sets={"delay": "0"}, args=["-s", "100"])
        body = b"Subject: big\r\n\r\n" + b"y" * 200 + b"\r\n"
        c = self.half_closed(srv, transaction("over@b.example", body=body) + b"QUIT\r\n")
        self.assertEqual(codes(c.read_all()), [250, 250, 250, 354, 552, 221])
        m = srv.wait_log(r"message from <over@b\.example> refused: \d+ bytes over the size "
                         r"limit, id (\S+)$")
        mail = srv.wait_log(r"script: eof mail <over@b\.example> txn=(\S+)$")
        self.assertEqual(m.group(1), mail.group(1))
        self.assertRegex(m.group(1), ID_FORMAT)

    def test_ids_unique_across_workers(self):
        srv = self.start_server("eof_yield", sets={"delay": "0"}, args=["--workers", "2"])
        n = 12
        for i in range(n):
            c = self.half_closed(srv, transaction(f"w{i}@b.example") + b"QUIT\r\n")
            self.assertEqual(codes(c.read_all())[-2:], [250, 221])
        ids = {}
        for i in range(n):
            m = srv.wait_log(r"luasmtpd\[(\d+)\] info: session \d+: " +
                             MESSAGE_ID % re.escape(f"w{i}@b.example"))
            ids[m.group(2)] = m.group(1)
            self.assertRegex(m.group(2), ID_FORMAT)
        self.assertEqual(len(ids), n, ids)


if __name__ == "__main__":
    unittest.main()
