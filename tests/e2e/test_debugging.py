"""The bundled debugging handler against Python's smtpd.DebuggingServer(decode_data=True): the
same messages must print the same stdout, line for line."""

import unittest

from harness import PythonSmtpd, ServerTestCase, SMTPClient, wait_until

BEGIN = "---------- MESSAGE FOLLOWS ----------"
END = "------------ END MESSAGE ------------"
OUTPUT_TIMEOUT = 10

# Raw message bodies as sent after the 354 (dot-stuffed where needed), without the final dot.
MESSAGES = [
    # headers, an empty line, a body
    b"From: a@b.example\r\nTo: c@d.example\r\nSubject: first\r\n\r\nHello.\r\nSecond line.\r\n",
    # no empty line: no X-Peer at all
    b"just a line\r\nanother line\r\n",
    # dot lines ("..", "...x", ".y" arrive as ".", "..x", "y")
    b"Subject: dots\r\n\r\n..\r\n...x\r\n.y\r\nmiddle . dot\r\n",
    # UTF-8 text
    "Subject: gr\u00fc\u00dfe\r\n\r\nna\u00efve caf\u00e9 \u2713 \U0001F600\r\n".encode(),
    # several empty lines: X-Peer goes before the first one only
    b"Subject: blanks\r\n\r\n\r\nafter two blanks\r\n\r\nend\r\n",
    # folded header, tabs, trailing spaces
    b"Subject: folded\r\n  continued\r\nX-Tab:\tvalue  \r\n\r\na\tb  \r\n",
    # a body line only
    b"x\r\n",
    # a long line
    b"Subject: long\r\n\r\n" + b"L" * 900 + b"\r\n",
    # something that looks like the markers
    b"Subject: markers\r\n\r\n" + END.encode() + b"\r\n" + BEGIN.encode() + b"\r\n",
]


def end_lines(messages):
    """How many END MESSAGE lines the messages print (one each, plus any in their text)."""
    return len(messages) + sum(m.count(END.encode()) for m in messages)


def deliver(port, messages, helo="HELO client.example", mail="MAIL FROM:<a@b.example>"):
    """Sends each raw message in its own transaction on one connection."""
    with SMTPClient(port) as c:
        assert c.cmd(helo).code == 250
        for body in messages:
            r = c.cmd(mail)
            assert r.code == 250, r
            assert c.cmd("RCPT TO:<c@d.example>").code == 250
            assert c.cmd("RCPT TO:<e@f.example>").code == 250
            assert c.cmd("DATA").code == 354
            c.send(body + b".\r\n")
            r = c.reply()
            assert r.code == 250, r
        c.cmd("QUIT")


def wait_output(server, count):
    """Polls the server's stdout file until it holds `count` END MESSAGE lines."""
    def ready():
        text = server.stdout().decode("utf-8", "replace")
        return text if text.count(END + "\n") >= count else None
    try:
        return wait_until(ready, OUTPUT_TIMEOUT, what=f"{count} END MESSAGE lines on stdout")
    except AssertionError as e:
        raise AssertionError(f"{e}; stdout so far:\n{server.stdout()!r}")


class TestDebugging(ServerTestCase):
    @classmethod
    def setUpClass(cls):
        cls.py = PythonSmtpd("debug")
        try:
            deliver(cls.py.port, MESSAGES)
            cls.expected = wait_output(cls.py, end_lines(MESSAGES))
        except Exception:
            cls.py.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.py.close()

    def compare(self, handler):
        srv = self.start_server(handler)
        deliver(srv.port, MESSAGES)
        got = wait_output(srv, end_lines(MESSAGES))
        self.assertEqual(got.splitlines(), self.expected.splitlines())
        self.assertEqual(got, self.expected)

    def test_same_output_as_python(self):
        self.compare("debugging")

    def test_alias_DebuggingServer(self):
        self.compare("DebuggingServer")

    def test_alias_smtpd_DebuggingServer(self):
        self.compare("smtpd.DebuggingServer")

    def test_default_handler_is_debugging(self):
        self.compare(None)

    def test_reference_sanity(self):
        """The reference output has the shape PYTHON_SMTPD.md b.4 describes."""
        lines = self.expected.splitlines()
        self.assertEqual(lines[:7], [BEGIN, "From: a@b.example", "To: c@d.example",
                                     "Subject: first", "X-Peer: 127.0.0.1", "", "Hello."])
        second = lines[lines.index(END) + 1:]
        self.assertEqual(second[:4], [BEGIN, "just a line", "another line", END])

    def test_mail_options_line(self):
        """With mail options luasmtpd prints Python's bytes-mode line right after the first
        marker (decode_data=True Python prints none, so this is checked by itself)."""
        srv = self.start_server("debugging")
        deliver(srv.port, [b"Subject: opts\r\n\r\nbody\r\n"], helo="EHLO client.example",
                mail="MAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME")
        lines = wait_output(srv, 1).splitlines()
        self.assertEqual(lines, [BEGIN, "mail options: ['SIZE=100', 'BODY=8BITMIME']",
                                 "Subject: opts", "X-Peer: 127.0.0.1", "", "body", END])

    def test_mail_options_are_upper_cased(self):
        srv = self.start_server("debugging")
        deliver(srv.port, [b"b\r\n"], helo="EHLO client.example",
                mail="MAIL FROM:<a@b.example> body=8bitmime")
        lines = wait_output(srv, 1).splitlines()
        self.assertEqual(lines[:3], [BEGIN, "mail options: ['BODY=8BITMIME']", "b"])

    def test_output_is_flushed_per_message(self):
        """Each message is readable on stdout as soon as its 250 arrives (stdout is a file
        here, so a buffered print would hold it back)."""
        srv = self.start_server("debugging")
        for i in range(3):
            deliver(srv.port, [b"Subject: %d\r\n\r\nn\r\n" % i])
            self.assertIn(f"Subject: {i}", wait_output(srv, i + 1))


if __name__ == "__main__":
    unittest.main()
