"""The optional hooks on_connect, on_helo, on_mail, on_rcpt: refusals, custom acceptance, the
per-connection session table, hooks that raise, and hooks that yield (smtpd.connect) while the
server goes on serving everyone else."""

import threading
import unittest

from harness import SMTPClient, ServerTestCase, bound, free_port, run_threads
from upstreams import AioUpstream

EHLO = "EHLO client.example"
BODY = b"Subject: hooks\r\n\r\nbody\r\n"
WARN_LINE = r"^\S+ luasmtpd\[\d+\] warn: "


def report(reply):
    """hooks_all.lua's process_message reply -> {key: value}, plus "first" (its first line)."""
    lines = [l[4:] for l in reply.lines]
    out = {"first": lines[0]}
    for line in lines[1:]:
        key, _, value = line.partition("=")
        out[key] = value
    return out


class HookTestCase(ServerTestCase):
    def data(self, c, body=BODY):
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(body + b".\r\n")
        return c.reply()


class TestConnectHook(HookTestCase):
    def test_refusal_replaces_greeting_and_closes(self):
        for sets, line in [({"connect": "refuse"}, "554 5.7.1 no thanks"),
                           ({"connect": "refuse", "connect_reply": "421 4.7.0 too busy"},
                            "421 4.7.0 too busy")]:
            with self.subTest(line=line):
                srv = self.start_server("hooks_all", sets=sets, probe=False)
                for _ in range(2):  # every connection, and the server stays up
                    c = self.connect(srv)
                    self.assertEqual(c.greeting.lines, [line])
                    self.assertTrue(c.wait_closed(5), "the connection stayed open")
                self.assertTrue(srv.alive())

    def test_raising_gives_421_and_closes(self):
        srv = self.start_server("hooks_all", sets={"connect": "raise"}, probe=False,
                                expect_errors=[r"connect hook boom"])
        c = self.connect(srv)
        self.assertEqual(c.greeting.code, 421, c.greeting)
        self.assertRegex(c.greeting.lines[-1], r"^421 4\.3\.0 ")
        self.assertTrue(c.wait_closed(5), "the connection stayed open")
        line = srv.wait_log(r"connect hook boom").string
        self.assertRegex(line, r" error: ")
        self.assertIn("hooks_all.lua", line)
        self.assertTrue(srv.alive())


class TestHeloHook(HookTestCase):
    def test_refusal(self):
        srv = self.start_server("hooks_all")
        c = self.connect(srv)
        self.assertEqual(c.cmd("EHLO refused.example").lines,
                         ["550 5.7.1 not you, refused.example"])
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 503)  # not greeted
        self.assertEqual(c.cmd("HELO refused.example").code, 550)
        self.assertEqual(c.cmd("EHLO good.example").code, 250)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)
        rep = report(self.data(c))
        self.assertEqual(rep["helo"], "good.example")
        self.assertEqual(rep["helo_at_mail"], "good.example")

    def test_raising_gives_451_and_the_session_goes_on(self):
        srv = self.start_server("hooks_all", expect_errors=[r"helo hook boom"])
        c = self.connect(srv)
        r = c.cmd("EHLO raise.example")
        self.assertEqual(r.code, 451, r)
        self.assertRegex(r.lines[-1], r"^451 4\.3\.0 ")
        self.assertEqual(c.cmd(EHLO).code, 250)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 250)
        srv.wait_log(r"error: .*helo hook boom")


class TestSecondGreeting(HookTestCase):
    """RFC 5321 4.1.4: a second HELO/EHLO resets the session as RSET does, and its name is the
    one from then on; a refused one leaves the session as it was."""

    def test_second_ehlo_resets_and_renames(self):
        srv = self.start_server("hooks_all")
        c = self.connect(srv)
        self.assertEqual(c.cmd("EHLO first.example").code, 250)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)
        r = c.cmd("HELO second.example")
        self.assertEqual(r.lines, ["250 test.example"])
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 503)  # the transaction is gone
        r = c.cmd("EHLO third.example")
        self.assertEqual((r.code, r.lines[-1]), (250, "250 HELP"), r.lines)
        self.assertEqual(c.cmd("MAIL FROM:<x@b.example>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<y@d.example>").code, 250)
        rep = report(self.data(c))
        self.assertEqual(rep["helo"], "third.example")
        self.assertEqual(rep["helo_at_mail"], "third.example")
        self.assertEqual(rep["rcpttos"], "y@d.example")
        self.assertEqual(rep["seen"].split(" | ")[1:], [
            "helo first.example",
            "mail a@b.example []",
            "rcpt c@d.example",
            "helo second.example (was first.example)",
            "helo third.example (was second.example)",
            "mail x@b.example []",
            "rcpt y@d.example",
        ])

    def test_refused_second_ehlo_keeps_the_session(self):
        srv = self.start_server("hooks_all")
        c = self.connect(srv)
        self.assertEqual(c.cmd("EHLO first.example").code, 250)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 250)
        self.assertEqual(c.cmd("EHLO refused.example").code, 550)
        self.assertEqual(c.cmd("EHLO").code, 501)
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)  # MAIL still holds
        rep = report(self.data(c))
        self.assertEqual(rep["helo"], "first.example")
        self.assertEqual(rep["rcpttos"], "c@d.example")


class TestMailRcptHooks(HookTestCase):
    def test_mail_refusals_and_custom_acceptance(self):
        srv = self.start_server("hooks_all")
        c = self.connect(srv)
        c.cmd(EHLO)
        self.assertEqual(c.cmd("MAIL FROM:<refused@b.example>").lines,
                         ["550 5.7.1 sender refused"])
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 503)  # no transaction
        self.assertEqual(c.cmd("MAIL FROM:<later@b.example>").lines, ["451 4.7.1 sender later"])
        self.assertEqual(c.cmd("MAIL FROM:<custom@b.example>").lines,
                         ["250 2.1.0 custom sender ok"])
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)
        rep = report(self.data(c))
        self.assertEqual(rep["first"], "2.0.0 stored")
        self.assertEqual(rep["rcpttos"], "c@d.example")

    def test_rcpt_refusals_and_custom_acceptance(self):
        srv = self.start_server("hooks_all")
        c = self.connect(srv)
        c.cmd(EHLO)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<refused@d.example>").lines, ["550 5.1.1 no such user"])
        self.assertEqual(c.cmd("RCPT TO:<later@d.example>").lines, ["452 4.2.2 mailbox full"])
        self.assertEqual(c.cmd("RCPT TO:<custom@d.example>").lines,
                         ["250-2.1.5 custom recipient ok", "250 2.1.5 second line"])
        self.assertEqual(c.cmd("RCPT TO:<ok@d.example>").code, 250)
        rep = report(self.data(c))
        self.assertEqual(rep["rcpttos"], "custom@d.example,ok@d.example")

    def test_params_are_upper_cased(self):
        srv = self.start_server("hooks_all")
        c = self.connect(srv)
        c.cmd(EHLO)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example> size=100 body=8bitmime").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)
        rep = report(self.data(c))
        self.assertIn("mail a@b.example [SIZE=100,BODY=8BITMIME]", rep["seen"].split(" | "))

    def test_raising_hooks_give_451_and_the_session_goes_on(self):
        srv = self.start_server("hooks_all",
                                expect_errors=[r"rcpt hook boom", r"mail hook boom"])
        c = self.connect(srv)
        c.cmd(EHLO)
        r = c.cmd("MAIL FROM:<raise@b.example>")
        self.assertEqual(r.code, 451, r)
        self.assertRegex(r.lines[-1], r"^451 4\.3\.0 ")
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 250)
        r = c.cmd("RCPT TO:<raise@d.example>")
        self.assertEqual(r.code, 451, r)
        self.assertRegex(r.lines[-1], r"^451 4\.3\.0 ")
        self.assertEqual(c.cmd("RCPT TO:<ok@d.example>").code, 250)
        rep = report(self.data(c))
        self.assertEqual(rep["rcpttos"], "ok@d.example")
        for what in ("mail", "rcpt"):
            line = srv.wait_log(rf"{what} hook boom").string
            self.assertRegex(line, r" error: ")
            self.assertIn("hooks_all.lua", line)


class TestSessionTable(HookTestCase):
    def test_persists_across_hooks_and_transactions(self):
        srv = self.start_server("hooks_all")
        c = self.connect(srv)
        port = c.local_port()
        c.cmd(EHLO)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example> SIZE=100").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)
        first = report(self.data(c))
        self.assertEqual(first["peer"], f"127.0.0.1:{port}")
        self.assertEqual(first["helo"], "client.example")
        self.assertEqual(first["helo_at_mail"], "client.example")
        self.assertEqual(first["messages"], "1")
        self.assertEqual(first["seen"].split(" | "), [
            f"connect 127.0.0.1:{port}",
            "helo client.example",
            "mail a@b.example [SIZE=100]",
            "rcpt c@d.example",
        ])
        # The next transaction on the same connection sees the same table.
        self.assertEqual(c.cmd("MAIL FROM:<x@b.example>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<y@d.example>").code, 250)
        second = report(self.data(c))
        self.assertEqual(second["id"], first["id"])
        self.assertEqual(second["messages"], "2")
        self.assertEqual(second["seen"].split(" | ")[4:],
                         ["mail x@b.example []", "rcpt y@d.example"])
        # Another connection has a table of its own.
        c2 = self.connect(srv)
        port2 = c2.local_port()
        c2.cmd("HELO other.example")
        self.assertEqual(c2.cmd("MAIL FROM:<a@b.example>").code, 250)
        self.assertEqual(c2.cmd("RCPT TO:<c@d.example>").code, 250)
        other = report(self.data(c2))
        self.assertNotEqual(other["id"], first["id"])
        self.assertEqual(other["messages"], "1")
        self.assertEqual(other["peer"], f"127.0.0.1:{port2}")
        self.assertEqual(other["helo"], "other.example")
        self.assertEqual(other["seen"].split(" | ")[0], f"connect 127.0.0.1:{port2}")


class TestYieldingHooks(HookTestCase):
    def test_on_rcpt_asks_a_second_luasmtpd(self):
        up = self.start_server("hooks_upstream", sets={"refuse_rcpt": "bad@d.example"})
        direct = self.connect(up)
        direct.cmd(EHLO)
        direct.cmd("MAIL FROM:<a@b.example>")
        ok_text = direct.cmd("RCPT TO:<ok@d.example>").lines[0][4:]
        srv = self.start_server("hooks_yield", remote=f"127.0.0.1:{up.port}")
        c = self.connect(srv)
        c.cmd(EHLO)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<bad@d.example>").lines, ["550 5.1.1 no such user"])
        self.assertEqual(c.cmd("RCPT TO:<ok@d.example>").lines,
                         [f"250 2.1.5 verified: {ok_text}"])
        self.assertEqual(self.data(c).lines, ["250 2.0.0 delivered to ok@d.example"])

    def test_on_rcpt_with_upstream_down(self):
        srv = self.start_server("hooks_yield", remote=f"127.0.0.1:{free_port()}")
        c = self.connect(srv)
        c.cmd(EHLO)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>").code, 250)
        r = c.cmd("RCPT TO:<ok@d.example>")
        self.assertRegex(r.lines[-1], r"^451 4\.4\.1 upstream unavailable: ")
        self.assertEqual(c.cmd("NOOP").code, 250)

    def test_others_are_served_while_hooks_wait(self):
        """Five clients whose on_rcpt waits on an upstream that holds its RCPT replies until
        the test lets them go: all five are waiting at the upstream at once, a sixth client is
        served meanwhile, and then each gets its own answer."""
        release = threading.Event()
        up = AioUpstream(hold_rcpt=release,
                         refuse_rcpt={"bad@d.example": "550 5.1.1 no such user here"})
        self.addCleanup(up.close)
        self.addCleanup(release.set)
        srv = self.start_server("hooks_yield", remote=f"127.0.0.1:{up.port}")
        n = 5

        def client(i):
            with SMTPClient(srv.port, timeout=30) as c:
                c.cmd(EHLO)
                assert c.cmd("MAIL FROM:<a@b.example>").code == 250
                rcpt = "bad@d.example" if i % 2 else f"ok{i}@d.example"
                return rcpt, c.cmd(f"RCPT TO:<{rcpt}>").lines

        results = []
        runner = threading.Thread(target=lambda: results.extend(run_threads(n, client, 60)),
                                  daemon=True)
        runner.start()
        # Every on_rcpt now waits on the upstream at the same time (one upstream connection
        # each); the server serves another client all the same.
        up.wait_event([("rcpt", "bad@d.example")] + [("rcpt", f"ok{i}@d.example")
                                                      for i in range(n)], n=n, timeout=20)
        other = self.connect(srv)
        self.assertEqual(other.cmd(EHLO).code, 250)
        self.assertEqual(other.cmd("NOOP").code, 250)
        self.assertEqual(other.cmd("MAIL FROM:<x@b.example>").code, 250)
        release.set()
        runner.join(bound(60))
        self.assertFalse(runner.is_alive())
        self.assertEqual(len(results), n)
        for res in results:
            self.assertIsInstance(res, tuple, res)
            rcpt, lines = res[1]
            if rcpt == "bad@d.example":
                self.assertEqual(lines, ["550 5.1.1 no such user here"])
            else:
                self.assertEqual(lines, ["250 2.1.5 verified: 2.1.5 OK"])
        self.assertEqual(up.count("hold expired"), 0)

if __name__ == "__main__":
    unittest.main()
