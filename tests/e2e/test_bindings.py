"""The one dialect of the `smtpd` bindings (issue 13, item 4), through the real binary and the
fixture handlers/bind_returns.lua: every failure a script should handle returns three values,
nil, message, code, with code the SMTP reply code the failure calls for (the upstream's
refusal; 451 for a child that failed; nil when there was no reply). Misuse of an options table
is in test_relay.TestMisuse."""

import re
import unittest

from harness import ServerTestCase, free_port
from hostile_upstream import HostileUpstream

EHLO = "EHLO client.example"
RESULT = re.compile(r"^250 2\.0\.0 n=(\d+) first=(\S+) code=(\S+) msg=(.*)$")


class TestFailureReturns(ServerTestCase):
    def server(self, plan=None):
        up = HostileUpstream(plan or {})
        self.addCleanup(up.close)
        return self.start_server("bind_returns", sets={"dead_port": str(free_port())},
                                 remote=f"127.0.0.1:{up.port}", expect_errors=[r" warn: "])

    def run_case(self, srv, case):
        """(n, first, code, msg): what the binding the case names returned."""
        c = self.connect(srv, timeout=30)
        c.cmd(EHLO)
        self.assertEqual(c.cmd(f"MAIL FROM:<{case}@b.example>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
        reply = c.reply()
        m = RESULT.match(reply.lines[-1])
        self.assertTrue(m, f"{case}: {reply.lines!r}")
        n, first, code, msg = m.groups()
        return int(n), first, code, msg

    def test_no_reply_means_nil_code(self):
        srv = self.server()
        for case, msg in (("relay-down", r"^could not connect: "),
                          ("connect-down", r"^could not connect: "),
                          ("after-close", r"^the upstream connection is closed$")):
            with self.subTest(case=case):
                n, first, code, got = self.run_case(srv, case)
                self.assertEqual((n, first, code), (3, "nil", "nil"), got)
                self.assertRegex(got, msg)

    def test_wrong_class_and_timeout_close_the_upstream_with_nil_code(self):
        # a 354 to MAIL is a reply, but of the wrong class: its code must never be passed on
        for plan, case, msg in (({"mail": "wrong"}, "mail-wrong-class", r"^protocol error: "),
                                ({"mail": "silence"}, "mail-timeout", r"^timed out: ")):
            with self.subTest(case=case):
                srv = self.server(plan)
                n, first, code, got = self.run_case(srv, case)
                self.assertEqual((n, first, code), (3, "nil", "nil"), got)
                self.assertRegex(got, msg)

    def test_refusals(self):
        # a whole relay refused gives the upstream's code; a method refused is an answer
        srv = self.server({"mail": "5xx"})
        n, first, code, msg = self.run_case(srv, "relay-refused")
        self.assertEqual((n, first), (3, "nil"), msg)
        self.assertRegex(code, r"^5\d\d$")
        self.assertRegex(msg, rf"^refused permanently: {code} ")
        n, first, code, msg = self.run_case(srv, "mail-refused")
        self.assertEqual(n, 2, msg)
        self.assertRegex(first, r"^5\d\d$")

    def test_pipe_failures_are_451(self):
        srv = self.server()
        for case, msg in (("pipe-timeout", r"^timed out after 1 s$"),
                          ("pipe-signal", r"^killed by signal 9$"),
                          ("pipe-missing", r"^cannot run /nonexistent/luasmtpd-bind-returns: "
                                           r".*No such file or directory")):
            with self.subTest(case=case):
                n, first, code, got = self.run_case(srv, case)
                self.assertEqual((n, first, code), (3, "nil", "451"), got)
                self.assertRegex(got, msg)


if __name__ == "__main__":
    unittest.main()
