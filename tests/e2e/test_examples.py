"""The scripts and the unit file in examples/, run for real so none of them rots: each against
the upstreams, directories and web hook it is made for."""

import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import unittest

from harness import ServerTestCase, binary, free_port, stuff, wait_until
from upstreams import SmtpSink, parse_sink_dump, sink_body

EXAMPLES = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                         "examples"))
EHLO = "EHLO client.example"
WARN = r" warn: "
SENDER = "sender@example.org"
MESSAGE = (b"From: Alice <alice@example.org>\r\nSubject: example test\r\n"
           b"Message-ID: <e1@example.org>\r\n\r\nhello\r\n..dotted line\r\n\xc3\xa9t\xc3\xa9\r\n")


def example(name):
    path = os.path.join(EXAMPLES, name)
    assert os.path.exists(path), path
    return path



class ExampleTestCase(ServerTestCase):
    def tempdir(self, prefix):
        d = tempfile.mkdtemp(prefix=prefix)
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def start_sink(self):
        sink = SmtpSink()
        self.addCleanup(sink.close)
        return sink

    def start_example(self, name, sets, remote=None, expect_errors=(WARN,)):
        return self.start_server(example(name), sets=sets, remote=remote,
                                 expect_errors=list(expect_errors))

    def send(self, srv, rcpts, data=MESSAGE, mailfrom=SENDER):
        c = self.connect(srv, timeout=15)
        return c.transaction(mailfrom, rcpts, stuff(data), helo=EHLO)

    def wait_dumps(self, sink, n=1):
        wait_until(lambda: len(sink.dumps()) >= n, 10, what=f"{n} messages at the sink")
        return [parse_sink_dump(d) for d in sink.dumps()]


class TestMaildir(ExampleTestCase):
    NAME = re.compile(r"^(\d+)\.M\d+R[0-9a-f]{8}\.test\.example$")

    def maildir(self):
        d = self.tempdir("maildir-")
        for sub in ("tmp", "new", "cur"):
            os.mkdir(os.path.join(d, sub))
        return d

    def test_one_file_per_message_in_new(self):
        d = self.maildir()
        srv = self.start_example("maildir.lua", {"maildir": d})
        bodies = [MESSAGE, b"Subject: second\r\n\r\nshort\r\n", b"Subject: third\r\n\r\n.\r\n"]
        for body in bodies:
            self.assertEqual(self.send(srv, ["bob@example.net"], body)[-1].code, 250)
        self.assertEqual(os.listdir(os.path.join(d, "tmp")), [])
        self.assertEqual(os.listdir(os.path.join(d, "cur")), [])
        names = os.listdir(os.path.join(d, "new"))
        self.assertEqual(len(names), 3)
        for name in names:
            self.assertRegex(name, self.NAME)
        contents = []
        for name in names:
            with open(os.path.join(d, "new", name), "rb") as f:
                contents.append(f.read())
        expected = [b"Return-Path: <" + SENDER.encode() + b">\n" + b.replace(b"\r\n", b"\n")
                    for b in bodies]
        self.assertEqual(sorted(contents), sorted(expected))

    def test_failure_to_write_is_451(self):
        cases = {
            "no such directory": os.path.join(self.tempdir("maildir-"), "missing"),
            "no new/ to rename into": self.tempdir("maildir-"),
        }
        os.mkdir(os.path.join(cases["no new/ to rename into"], "tmp"))
        for what, d in cases.items():
            with self.subTest(what):
                srv = self.start_example("maildir.lua", {"maildir": d},
                                         expect_errors=["maildir delivery failed"])
                replies = self.send(srv, ["bob@example.net"])
                self.assertReply(replies[-1], 451)
                srv.wait_log(r"error: script: maildir delivery failed")
                if os.path.isdir(os.path.join(d, "tmp")):
                    self.assertEqual(os.listdir(os.path.join(d, "tmp")), [],
                                     "a failed delivery left its file in tmp/")
                srv.close()


class TestRouteByDomain(ExampleTestCase):
    def test_each_domain_to_its_upstream(self):
        org, net = self.start_sink(), self.start_sink()
        srv = self.start_example("route_by_domain.lua", {
            "routes": f"example.org=127.0.0.1:{org.port},EXAMPLE.net=127.0.0.1:{net.port}"})
        replies = self.send(srv, ["a@example.org", "b@example.net", "c@Example.ORG"])
        for r in replies:
            self.assertIn(r.code, (250, 354), replies)
        ((org_fields, org_body),) = self.wait_dumps(org)
        ((net_fields, net_body),) = self.wait_dumps(net)
        self.assertEqual(org_fields["X-Rcpt-Args"], ["<a@example.org>", "<c@Example.ORG>"])
        self.assertEqual(net_fields["X-Rcpt-Args"], ["<b@example.net>"])
        # smtpd.relay adds BODY=8BITMIME for this 8-bit message when the upstream offers it
        self.assertRegex(org_fields["X-Mail-Args"][0], rf"^<{re.escape(SENDER)}>( |$)")
        self.assertEqual(org_body, sink_body(MESSAGE))
        self.assertEqual(net_body, sink_body(MESSAGE))

    def test_unknown_domain_refused_at_rcpt(self):
        org = self.start_sink()
        srv = self.start_example("route_by_domain.lua",
                                 {"routes": f"example.org=127.0.0.1:{org.port}"})
        c = self.connect(srv)
        c.cmd(EHLO)
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd("RCPT TO:<x@example.com>"), 550, re.compile(r"^550 5\.1\.2 "))
        self.assertReply(c.cmd("RCPT TO:<x@sub.example.org>"), 550, re.compile(r"^550 5\.1\.2 "))
        self.assertReply(c.cmd("RCPT TO:<a@example.org>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(stuff(MESSAGE) + b".\r\n")
        self.assertReply(c.reply(), 250)
        ((fields, _),) = self.wait_dumps(org)
        self.assertEqual(fields["X-Rcpt-Args"], ["<a@example.org>"])

    def test_upstream_down_is_451(self):
        org = self.start_sink()
        srv = self.start_example("route_by_domain.lua", {
            "routes": f"example.org=127.0.0.1:{org.port},example.net=127.0.0.1:{free_port()}",
            "relay_timeout": "5"})
        replies = self.send(srv, ["a@example.org", "b@example.net"])
        self.assertReply(replies[-1], 451, re.compile(r"^451 4\.4\.1 .*example\.net"))
        srv.wait_log(r"warn: script: route example\.net via 127\.0\.0\.1:\d+:")
        # the live upstream got its recipient all the same (the retry will repeat it)
        ((fields, _),) = self.wait_dumps(org)
        self.assertEqual(fields["X-Rcpt-Args"], ["<a@example.org>"])


class TestAllowlist(ExampleTestCase):
    LIST = "# who may get mail\n\nalice@example.org\n  Bob@Example.ORG  \n@team.example\n" \
           "# carol@example.org\n"

    def start_allowlist(self, remote):
        d = self.tempdir("allowlist-")
        path = os.path.join(d, "allowed")
        with open(path, "w") as f:
            f.write(self.LIST)
        return self.start_example("allowlist.lua", {"allowlist": path}, remote=remote)

    def test_only_listed_recipients(self):
        sink = self.start_sink()
        srv = self.start_allowlist(f"127.0.0.1:{sink.port}")
        c = self.connect(srv)
        c.cmd(EHLO)
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        for rcpt, code in (("alice@example.org", 250), ("ALICE@example.org", 250),
                           ("bob@example.org", 250), ("eve@example.org", 550),
                           ("carol@example.org", 550), ("dave@team.example", 250),
                           ("dave@sub.team.example", 550), ("alice@example.org.evil", 550)):
            reply = c.cmd(f"RCPT TO:<{rcpt}>")
            if code == 550:
                self.assertReply(reply, 550, re.compile(r"^550 5\.1\.1 "), rcpt)
            else:
                self.assertReply(reply, 250, None, rcpt)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(stuff(MESSAGE) + b".\r\n")
        self.assertReply(c.reply(), 250)
        ((fields, body),) = self.wait_dumps(sink)
        self.assertEqual(fields["X-Rcpt-Args"], ["<alice@example.org>", "<ALICE@example.org>",
                                                 "<bob@example.org>", "<dave@team.example>"])
        self.assertEqual(body, sink_body(MESSAGE))

    def test_upstream_down_is_451(self):
        srv = self.start_allowlist(f"127.0.0.1:{free_port()}")
        replies = self.send(srv, ["alice@example.org"])
        self.assertReply(replies[-1], 451)


class Hook:
    """A web hook on 127.0.0.1 that records each POST (path, headers, body) and answers with
    `status`."""

    def __init__(self, status=200):
        self.status = status
        self.posts = []
        self.cond = threading.Condition()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with hook.cond:
                    hook.posts.append((self.path, dict(self.headers), body))
                    hook.cond.notify_all()
                self.send_response(hook.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={
            "poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def url(self, path="/mail"):
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class TestWebhook(ExampleTestCase):
    def start_hook(self, status=200):
        hook = Hook(status)
        self.addCleanup(hook.close)
        return hook

    def test_posts_envelope_and_headers(self):
        hook = self.start_hook()
        srv = self.start_example("webhook.lua", {"url": hook.url("/mail?x=1")})
        data = (b"From: Alice <alice@example.org>\r\nSubject: caf\xc3\xa9 \"quoted\" \\ tab\t\r\n"
                b"X-Folded: first\r\n\tsecond\r\n  third\r\nX-Latin1: \xe9t\xe9\r\n"
                b"\r\nbody: not a header\r\n")
        replies = self.send(srv, ["bob@example.net", "carol@example.net"], data)
        self.assertReply(replies[-1], 250)
        ((path, headers, body),) = self.posts(hook)
        self.assertEqual(path, "/mail?x=1")
        self.assertEqual(headers.get("Content-Type"), "application/json")
        doc = json.loads(body.decode("utf-8"))
        self.assertEqual(doc["mail_from"], SENDER)
        self.assertEqual(doc["rcpt_to"], ["bob@example.net", "carol@example.net"])
        self.assertEqual(doc["peer"], "127.0.0.1")
        self.assertEqual(doc["helo"], "client.example")
        self.assertEqual(doc["size"], len(data))
        self.assertEqual(doc["headers"], [
            ["From", "Alice <alice@example.org>"],
            ["Subject", "café \"quoted\" \\ tab\t"],
            ["X-Folded", "first second third"],
            ["X-Latin1", "été"],  # not UTF-8: read as Latin-1
        ])

    def posts(self, hook, n=1):
        with hook.cond:
            hook.cond.wait_for(lambda: len(hook.posts) >= n, 10)
            return list(hook.posts)

    def test_hook_failure_is_451(self):
        hook = self.start_hook(status=500)
        for what, url in (("HTTP 500", hook.url()),
                          ("nobody listening", f"http://127.0.0.1:{free_port()}/mail")):
            with self.subTest(what):
                srv = self.start_example("webhook.lua", {"url": url})
                replies = self.send(srv, ["bob@example.net"])
                self.assertReply(replies[-1], 451)
                srv.wait_log(r"warn: script: webhook http://127\.0\.0\.1:\d+/mail: (22|7) ")
                srv.close()
        self.assertEqual(len(hook.posts), 1)


class TestServiceUnit(ExampleTestCase):
    UNIT = example("luasmtpd.service")

    def parse(self):
        """{section: [(key, value)]}, with backslash continuations joined."""
        sections, current = {}, None
        with open(self.UNIT) as f:
            text = f.read().replace("\\\n", " ")
        for line in text.splitlines():
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                current = sections.setdefault(line.strip("[]"), [])
                continue
            key, _, value = line.partition("=")
            current.append((key.strip(), value.strip()))
        return sections

    def service(self):
        out = {}
        for key, value in self.parse()["Service"]:
            out.setdefault(key, []).append(value)
        return out

    def test_systemd_analyze_verify(self):
        tool = shutil.which("systemd-analyze")
        if tool is None:
            self.skipTest("systemd-analyze not installed (the unit is still checked below)")
        d = self.tempdir("unit-")
        copy = os.path.join(d, "luasmtpd.service")
        with open(self.UNIT) as f:
            text = f.read()
        exec_start = shlex.split(self.service()["ExecStart"][0])
        # verify wants the binary to exist: point the copy at the one under test
        with open(copy, "w") as f:
            f.write(text.replace(exec_start[0], binary()))
        out = subprocess.run([tool, "verify", copy], capture_output=True, text=True, timeout=60)
        about_us = [l for l in (out.stdout + out.stderr).splitlines() if "luasmtpd" in l]
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertEqual(about_us, [], "systemd-analyze verify complained")

    def test_hardening_and_restart(self):
        svc = self.service()
        self.assertEqual(svc.get("Restart"), ["on-failure"])
        self.assertEqual(svc.get("ExecReload"), ["/bin/kill -HUP $MAINPID"])
        self.assertEqual(svc.get("NoNewPrivileges"), ["yes"])
        self.assertEqual(svc.get("ProtectSystem"), ["strict"])
        self.assertTrue(svc.get("DynamicUser") == ["yes"] or svc.get("User"), svc)

    def test_exec_start_runs_and_reloads(self):
        """Runs ExecStartPre and ExecStart as written, with the binary under test, the script
        from examples/, the state directory in a temporary one and a free port; then reloads it
        as ExecReload does."""
        svc = self.service()
        state = "/var/lib/" + svc["StateDirectory"][0]
        tmp_state = self.tempdir("unit-state-")

        def local(arg):
            return arg.replace(state, tmp_state)

        for pre in svc.get("ExecStartPre", []):
            argv = [local(a) for a in shlex.split(pre.lstrip("-@:+!"))]
            subprocess.run(argv, check=True, timeout=10)
        argv = shlex.split(svc["ExecStart"][0])
        self.assertEqual(os.path.basename(argv[0]), "luasmtpd")
        flags = [local(a) for a in argv[1:-1]]
        listen = argv[-1]
        self.assertRegex(listen, r"^[\w.:\[\]]+:\d+$")
        # the handler script is one of the examples
        script = flags[flags.index("-c") + 1]
        mine = example(os.path.basename(script))
        flags[flags.index("-c") + 1] = mine
        sets = [a for i, a in enumerate(flags) if i > 0 and flags[i - 1] == "--set"]
        check = subprocess.run([binary(), *sum((["--set", s] for s in sets), []), "--check", mine],
                               capture_output=True, text=True, timeout=10)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)

        srv = self.start_server(None, nosetuid=False, hostname=None, shutdown_timeout=None,
                                args=flags)
        self.assertEqual(self.send(srv, ["bob@example.net"])[-1].code, 250)
        wait_until(lambda: os.listdir(os.path.join(tmp_state, "Maildir", "new")), 5,
                   what="the message in the Maildir")
        reload = shlex.split(svc["ExecReload"][0].replace("$MAINPID", str(srv.pid)))
        subprocess.run(reload, check=True, timeout=10)
        srv.wait_log(r"info: generation 2 loaded from ")
        self.assertEqual(self.send(srv, ["bob@example.net"])[-1].code, 250)
        self.assertEqual(len(os.listdir(os.path.join(tmp_state, "Maildir", "new"))), 2)


if __name__ == "__main__":
    unittest.main()
