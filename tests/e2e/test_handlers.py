"""The Lua handler contract: arguments, return values, errors, and the smtpd module."""

import os
import re
import shutil
import signal
import tempfile
import unittest

from harness import LOG_LINE, ServerTestCase, read_records, version

EHLO = "EHLO client.example"
BODY = b"Subject: t\r\n\r\nbody\r\n.\r\n"


class HandlerTestCase(ServerTestCase):
    def send_message(self, c, mailfrom="a@b.example", rcpts=("c@d.example",), body=BODY,
                     mail_params=""):
        self.assertEqual(c.cmd(f"MAIL FROM:<{mailfrom}>{mail_params}").code, 250)
        for r in rcpts:
            self.assertEqual(c.cmd(f"RCPT TO:<{r}>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(body)
        return c.reply()


class TestErrors(HandlerTestCase):
    def test_lua_error_gives_451_and_server_goes_on(self):
        srv = self.start_server("raise", expect_errors=[r"boom"])
        c = self.connect(srv)
        c.cmd(EHLO)
        r = self.send_message(c)
        self.assertEqual(r.code, 451, r.lines)
        self.assertRegex(r.lines[-1], r"^451 4\.3\.0 ")
        # The same connection goes on: another transaction, another 451.
        r = self.send_message(c, mailfrom="x@y.example")
        self.assertEqual(r.code, 451, r.lines)
        self.assertEqual(c.cmd("NOOP").code, 250)
        # A new connection is served too.
        c2 = self.connect(srv)
        c2.cmd(EHLO)
        self.assertEqual(self.send_message(c2).code, 451)
        self.assertTrue(srv.alive())
        # The error line may reach our stderr reader after the reply reached the client.
        line = srv.wait_log(r"luasmtpd\[\d+\] error: .*boom").string
        self.assertIn("traceback", line.lower(), "the error line has no traceback")
        self.assertIn("raise.lua", line, "the traceback does not name the script")

    def test_non_string_return_gives_451(self):
        srv = self.start_server("badreturn", expect_errors=[r"."])
        c = self.connect(srv)
        c.cmd(EHLO)
        r = self.send_message(c)
        self.assertEqual(r.code, 451, r.lines)
        self.assertRegex(r.lines[-1], r"^451 4\.3\.0 ")
        self.assertEqual(self.send_message(c).code, 451)
        self.assertEqual(c.cmd("NOOP").code, 250)

    def test_invalid_reply_strings_give_451(self):
        """DESIGN.md: a return value that is not nil or a valid reply line answers 451."""
        for reply in ("hello", "354 go ahead", "25 short", "250 ok\r250 smuggled",
                      "250-a\n550 b", "999 what", ""):
            with self.subTest(reply=reply):
                srv = self.start_server("reply", sets={"reply": reply}, expect_errors=[r"."])
                c = self.connect(srv)
                c.cmd(EHLO)
                r = self.send_message(c)
                self.assertEqual(r.code, 451, r.lines)
                self.assertRegex(r.lines[-1], r"^451 4\.3\.0 ")
                self.assertEqual(c.cmd("NOOP").lines, ["250 2.0.0 OK"])
                c.close()
                srv.close()


class TestReplies(HandlerTestCase):
    def test_default_custom_reply(self):
        srv = self.start_server("reply")
        c = self.connect(srv)
        c.cmd(EHLO)
        self.assertEqual(self.send_message(c).lines, ["554 5.7.1 custom refusal"])
        self.assertEqual(c.cmd("NOOP").code, 250)

    def test_replies_pass_verbatim(self):
        for reply, lines in [
            ("451 4.7.1 try again later", ["451 4.7.1 try again later"]),
            ("250 2.6.0 queued as 1234", ["250 2.6.0 queued as 1234"]),
            ("550 no enhanced code", ["550 no enhanced code"]),
            ("250-a\n250 b", ["250-a", "250 b"]),
            ("250-a\r\n250 b", ["250-a", "250 b"]),
            ("550-first\n550-second\n550 5.7.1 third", ["550-first", "550-second",
                                                          "550 5.7.1 third"]),
        ]:
            with self.subTest(reply=reply):
                srv = self.start_server("reply", sets={"reply": reply})
                c = self.connect(srv)
                c.cmd(EHLO)
                self.assertEqual(self.send_message(c).lines, lines)
                self.assertEqual(c.cmd("NOOP").lines, ["250 2.0.0 OK"])
                c.close()
                srv.close()

    def test_refusal_is_per_message(self):
        """After a refused message the next transaction starts clean."""
        srv = self.start_server("reply", sets={"reply": "550 5.7.1 no"})
        c = self.connect(srv)
        c.cmd(EHLO)
        self.assertEqual(self.send_message(c).code, 550)
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 503)  # envelope is gone
        self.assertEqual(self.send_message(c).code, 550)


class TestArguments(HandlerTestCase):
    def setUp(self):
        self.srv, self.dir = self.start_recording()

    def test_peer_helo_and_options(self):
        c = self.connect(self.srv)
        c.cmd("EHLO my.client.example")
        r = self.send_message(c, rcpts=("c@d.example", "e@f.example", "c@d.example"),
                              mail_params=" size=100 body=8bitmime")
        self.assertEqual(r.lines, ["250 2.0.0 OK"])
        rec = read_records(self.dir)[0]
        self.assertEqual(rec.peer, ("127.0.0.1", c.local_port()))
        self.assertEqual(rec.helo, "my.client.example")
        self.assertEqual(rec.mailfrom, "a@b.example")
        self.assertEqual(rec.rcpttos, ["c@d.example", "e@f.example", "c@d.example"])
        self.assertEqual(rec.mail_options, ["SIZE=100", "BODY=8BITMIME"])
        self.assertEqual(rec.rcpt_options, [])

    def test_helo_name_from_helo(self):
        c = self.connect(self.srv)
        c.cmd("HELO plain.client.example")
        self.send_message(c)
        rec = read_records(self.dir)[0]
        self.assertEqual(rec.helo, "plain.client.example")
        self.assertEqual(rec.mail_options, [])

    def test_null_sender_is_empty_string(self):
        c = self.connect(self.srv)
        c.cmd(EHLO)
        self.assertEqual(c.cmd("MAIL FROM:<>").code, 250)
        c.cmd("RCPT TO:<c@d.example>")
        c.cmd("DATA")
        c.send(BODY)
        self.assertEqual(c.reply().code, 250)
        self.assertEqual(read_records(self.dir)[0].mailfrom, "")

    def test_addresses_without_brackets_and_source_route(self):
        c = self.connect(self.srv)
        c.cmd(EHLO)
        self.assertEqual(c.cmd("MAIL FROM:<@relay.example:a@b.example>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:c@d.example").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<postmaster>").code, 250)
        c.cmd("DATA")
        c.send(BODY)
        self.assertEqual(c.reply().code, 250)
        rec = read_records(self.dir)[0]
        self.assertEqual(rec.mailfrom, "a@b.example")
        self.assertEqual(rec.rcpttos, ["c@d.example", "postmaster"])

    def test_quoted_local_part_kept(self):
        c = self.connect(self.srv)
        c.cmd(EHLO)
        self.assertEqual(c.cmd('MAIL FROM:<"a b"@b.example>').code, 250)
        c.cmd("RCPT TO:<c@d.example>")
        c.cmd("DATA")
        c.send(BODY)
        self.assertEqual(c.reply().code, 250)
        self.assertEqual(read_records(self.dir)[0].mailfrom, '"a b"@b.example')

    def test_smtputf8_option_passed(self):
        srv, d = self.start_recording(args=["-u"])
        c = self.connect(srv)
        c.cmd(EHLO)
        r = self.send_message(c, mailfrom="j\u00f6rg@b.example", mail_params=" SMTPUTF8",
                              rcpts=("\u00fcber@d.example",))
        self.assertEqual(r.code, 250)
        rec = read_records(d)[0]
        self.assertEqual(rec.mailfrom, "j\u00f6rg@b.example")
        self.assertEqual(rec.rcpttos, ["\u00fcber@d.example"])
        self.assertEqual(rec.mail_options, ["SMTPUTF8"])

    def test_record_handler_reply_setting(self):
        srv, d = self.start_recording(sets={"reply": "250 2.0.0 stored"})
        c = self.connect(srv)
        c.cmd(EHLO)
        self.assertEqual(self.send_message(c).lines, ["250 2.0.0 stored"])
        self.assertEqual(len(read_records(d)), 1)


class TestModule(HandlerTestCase):
    def test_settings_and_version(self):
        srv = self.start_server("settings", sets={"greeting": "hello-there"})
        c = self.connect(srv)
        c.cmd(EHLO)
        self.assertEqual(self.send_message(c).lines, [f"250 hello-there {version()}"])

    def test_missing_setting_is_a_lua_error(self):
        srv = self.start_server("settings", expect_errors=[r"."])
        c = self.connect(srv)
        c.cmd(EHLO)
        self.assertEqual(self.send_message(c).code, 451)

    def test_probe(self):
        srv = self.start_server("probe", sets={"a": "1", "b": "x=y"},
                                remote="127.0.0.1:2525")
        c = self.connect(srv)
        c.cmd(EHLO)
        r = self.send_message(c)
        self.assertEqual(r.code, 250, r.lines)
        m = re.match(r"^250 remote=(\S+) version=(\S+) settings=(\S*) types=(\S+)$", r.lines[0])
        self.assertTrue(m, r.lines)
        self.assertEqual(m.group(1), "127.0.0.1:2525")
        self.assertEqual(m.group(2), version())
        self.assertEqual(m.group(3), "a=1,b=x=y")
        self.assertEqual(m.group(4), "string,number,string,table,string,table,table,string,"
                                     "function,function")

    def test_default_remote(self):
        srv = self.start_server("probe")
        c = self.connect(srv)
        c.cmd(EHLO)
        r = self.send_message(c)
        self.assertRegex(r.lines[0], r"^250 remote=localhost:25 ")

    def test_log_and_debug(self):
        srv = self.start_server("log", args=["-d"])
        c = self.connect(srv)
        c.cmd(EHLO)
        self.assertEqual(self.send_message(c).code, 250)
        self.assertRegex(srv.wait_log(r"fixture-warn").string,
                         r"luasmtpd\[\d+\] warn: .*fixture-warn.*a@b\.example")
        self.assertRegex(srv.wait_log(r"fixture-info").string,
                         r"luasmtpd\[\d+\] info: .*fixture-info.*1")
        self.assertRegex(srv.wait_log(r"fixture-debug").string,
                         r"luasmtpd\[\d+\] debug: .*fixture-debug.*c@d\.example")

    def test_debug_is_quiet_without_d(self):
        srv = self.start_server("log")
        c = self.connect(srv)
        c.cmd(EHLO)
        self.assertEqual(self.send_message(c).code, 250)
        srv.wait_log(r"fixture-info")
        self.assertEqual(c.cmd("QUIT").code, 221)
        srv.stop()
        self.assertFalse([l for l in srv.log_lines() if "fixture-debug" in l])
        self.assertFalse(srv.log_lines("debug"))

    def test_log_line_format(self):
        srv = self.start_server("log")
        c = self.connect(srv)
        c.cmd(EHLO)
        self.send_message(c)
        srv.wait_log(r"fixture-info")
        for line in srv.log_lines():
            m = LOG_LINE.match(line)
            self.assertTrue(m, f"log line not in '<time> luasmtpd[pid] <level>: <text>' form: "
                               f"{line!r}")
            self.assertEqual(int(m.group(1)), srv.pid)



class TestReload(HandlerTestCase):
    """DESIGN.md, Hot reload: SIGHUP builds a new generation; a transaction in flight ends on
    the generation it began with; a broken script leaves the old one serving."""

    def write_script(self, path, text):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, path)  # atomic, so a watcher never reads half a script

    def script(self, reply):
        return f'function process_message() return "{reply}" end\n'

    def reload(self, srv, regex):
        mark = len(srv.log_lines())
        os.kill(srv.pid, signal.SIGHUP)
        return srv.wait_log(regex, timeout=5, start=mark)

    def test_sighup_reload(self):
        d = tempfile.mkdtemp(prefix="luasmtpd-reload-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "handler.lua")
        self.write_script(path, self.script("250 2.0.0 gen-one"))
        srv = self.start_server(path, expect_errors=[re.escape(path), r"reload failed"])
        c = self.connect(srv)
        c.cmd(EHLO)
        self.assertEqual(self.send_message(c).lines, ["250 2.0.0 gen-one"])

        inflight = self.connect(srv)
        inflight.cmd(EHLO)
        self.assertEqual(inflight.cmd("MAIL FROM:<inflight@b.example>").code, 250)
        self.assertEqual(inflight.cmd("RCPT TO:<c@d.example>").code, 250)

        self.write_script(path, self.script("250 2.0.0 gen-two"))
        self.reload(srv, r"generation \d+ loaded")
        self.assertEqual(self.send_message(c).lines, ["250 2.0.0 gen-two"])
        c2 = self.connect(srv)
        c2.cmd(EHLO)
        self.assertEqual(self.send_message(c2).lines, ["250 2.0.0 gen-two"])

        # The transaction that began before the reload ends on the old generation.
        self.assertEqual(inflight.cmd("DATA").code, 354)
        inflight.send(BODY)
        self.assertEqual(inflight.reply().lines, ["250 2.0.0 gen-one"])
        # Its next transaction uses the new one.
        self.assertEqual(self.send_message(inflight).lines, ["250 2.0.0 gen-two"])

        # A broken script is refused; the current generation goes on serving.
        self.write_script(path, "this is not lua(\n")
        self.reload(srv, r" error: .*reload failed|reload failed")
        self.assertEqual(self.send_message(c).lines, ["250 2.0.0 gen-two"])
        self.assertTrue(srv.alive())


if __name__ == "__main__":
    unittest.main()
