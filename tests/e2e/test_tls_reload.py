"""Certificates read again while the server runs: when their files change (inotify, no SIGHUP
needed), with the settle rule for a pair replaced one file at a time (the mismatch is logged
once, the old pair serves until the second file lands); the implicit-TLS pair too; workers,
and a worker restarted after a change; and a certificate swapped under load, by SIGHUP and by
a file change, with a broken pair swapped in last. test_tls has the SIGHUP basics."""

import os
import re
import signal
import smtplib
import socket
import ssl
import threading
import time
import unittest

from harness import (REPLY_TIMEOUT, Events, bound, failures, run_threads, wait_records,
                     wait_until)
from test_tls import NOT_RELOADED, RELOADED, TlsCase, client_context, make_cert

SMTPS_RELOADED = r"SMTPS certificate reloaded"
SMTPS_NOT_RELOADED = r"SMTPS certificate not reloaded, the old one stays"


def der(cert_path):
    """A PEM certificate file's DER bytes: what getpeercert(True) gives for it."""
    with open(cert_path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


class ReloadCase(TlsCase):
    def setUp(self):
        super().setUp()
        # The pairs swapped in later, made now so no test waits on openssl between steps.
        self.pairs = {name: make_cert(self.dir, name, f"{name}.test") for name in ("b",)}
        # Kept before the swaps rename (or break) the files.
        self.a_der, self.b_der = der(self.cert), der(self.pairs["b"][0])

    def served(self, srv):
        """The DER certificate a new STARTTLS handshake presents."""
        c = self.connect(srv)
        c.cmd("EHLO fresh.example")
        self.starttls_raw(c)
        cert = c.sock.getpeercert(True)
        c.close()
        return cert

    def put(self, name, which):
        """Renames pair `name`'s cert or key (or both) into place, as a deploy tool does."""
        cert, key = self.pairs[name]
        if which in ("key", "both"):
            os.replace(key, self.key)
        if which in ("cert", "both"):
            os.replace(cert, self.cert)

    def log_mark(self, srv):
        return len(srv.log.snapshot())

    def count(self, srv, regex, start=0):
        return sum(1 for line in srv.log.snapshot()[start:] if re.search(regex, line))


class TestFileChange(ReloadCase):
    def test_pair_replaced_one_file_at_a_time(self):
        srv = self.start_server("sink", args=self.tls_args(), expect_errors=[NOT_RELOADED])
        a, b = self.a_der, self.b_der
        self.assertEqual(self.served(srv), a)
        mark = self.log_mark(srv)
        self.put("b", "key")
        # The new key with the old certificate: logged, and the old pair goes on serving.
        srv.log.wait(NOT_RELOADED + r": key \(.*mismatch", start=mark)
        self.assertEqual(self.served(srv), a)
        self.put("b", "cert")
        srv.log.wait(RELOADED.pattern, start=mark)
        self.assertEqual(self.served(srv), b)
        self.assertEqual(self.count(srv, NOT_RELOADED, mark), 1, "the mismatch logged once")
        srv.log.wait(r"a certificate or key changed", start=mark)

    def test_rewritten_in_place_and_broken(self):
        srv = self.start_server("sink", args=self.tls_args(), expect_errors=[NOT_RELOADED])
        b_cert, b_key = self.pairs["b"]
        mark = self.log_mark(srv)
        # Written over in place (same inode), key first: each file's close is an event.
        for src, dst in ((b_key, self.key), (b_cert, self.cert)):
            with open(src, "rb") as f, open(dst, "wb") as out:
                out.write(f.read())
        srv.log.wait(RELOADED.pattern, start=mark)
        self.assertEqual(self.served(srv), self.b_der)
        mark = self.log_mark(srv)
        with open(self.cert, "w") as f:
            f.write("not a certificate\n")
        srv.log.wait(NOT_RELOADED + r": certificate \(", start=mark)
        self.assertEqual(self.served(srv), self.b_der)

    def test_implicit_tls_pair_is_watched(self):
        # A split of the two renames over the settle time is a mismatch, logged and retried.
        srv = self.start_server("sink", args=self.tls_args(smtps=True),
                                expect_errors=[NOT_RELOADED, SMTPS_NOT_RELOADED])
        port = self.smtps_port(srv)
        mark = self.log_mark(srv)
        self.put("b", "both")
        # One pair of files behind both kinds: each is read again.
        srv.log.wait(SMTPS_RELOADED, start=mark)
        srv.log.wait(RELOADED.pattern, start=mark)
        raw = socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT)
        with client_context().wrap_socket(raw) as s:
            self.assertEqual(s.getpeercert(True), self.b_der)
        self.assertEqual(self.served(srv), self.b_der)

    def test_no_reload_watches_nothing(self):
        srv = self.start_server("sink", args=self.tls_args(extra=["--no-reload"]))
        a = self.a_der
        mark = self.log_mark(srv)
        self.put("b", "both")
        # The watcher's settle time is 20 ms: a second is fifty of them, on a loaded machine.
        srv.assert_no_log(r"certificate reloaded|certificate or key changed", 1.0, start=mark)
        self.assertEqual(self.served(srv), a)
        os.kill(srv.pid, signal.SIGHUP)
        srv.log.wait(RELOADED.pattern, start=mark)
        self.assertEqual(self.served(srv), self.b_der)

    def test_workers_and_a_restarted_worker(self):
        srv = self.start_server("sink", args=self.tls_args(extra=["--workers", "2"]),
                                expect_errors=[r"worker 1 \(pid \d+\) killed by signal 9",
                                               NOT_RELOADED])
        pid = int(srv.wait_log(r"worker 1 started \(pid (\d+)\)").group(1))
        srv.wait_log(r"worker 2 started")
        mark = self.log_mark(srv)
        self.put("b", "both")
        # Each worker watches the files (no SIGHUP here, so the supervisor read nothing).
        wait_until(lambda: self.count(srv, RELOADED.pattern, mark) >= 2, 30,
                   what="both workers reloaded their certificate")
        os.kill(pid, signal.SIGKILL)
        srv.wait_log(r"worker 1 restarted \(pid \d+\)", timeout=30)
        # The restarted worker, forked from a supervisor holding pair A, reads B as it starts;
        # the kernel spreads new connections by port: 24 all miss it once in 2**24 runs.
        srv.log.wait(RELOADED.pattern, start=srv.log.wait(r"worker 1 restarted")[0] + 1)
        served = {self.served(srv) for _ in range(24)}
        self.assertEqual(served, {self.b_der})


class TestUnderLoad(ReloadCase):
    """Clients doing STARTTLS and one message in a loop while the pair is swapped: no
    connection fails, every message is accepted and recorded once, and every handshake that
    began after the server logged the swap presents the new certificate."""

    THREADS = 4
    MOST = 150  # messages a thread sends at most; the swaps are done long before that

    def run_load(self, swap_by_sighup):
        args = self.tls_args(extra=["--no-reload"] if swap_by_sighup else [])
        srv, rec = self.start_recording(args=args, expect_errors=[NOT_RELOADED])
        stop = threading.Event()
        events = Events()
        seen = []  # (thread, n, handshake started at, certificate)
        lock = threading.Lock()

        def client(i):
            sent = 0
            while not stop.is_set() and sent < self.MOST:
                c = smtplib.SMTP("127.0.0.1", srv.port, timeout=REPLY_TIMEOUT)
                try:
                    c.ehlo("load.example")
                    started = time.monotonic()
                    self.assertEqual(c.starttls(context=client_context())[0], 220)
                    cert = c.sock.getpeercert(True)
                    c.ehlo("load.example")
                    self.assertEqual(c.sendmail("a@b.example", ["c@d.example"],
                                                f"Subject: t{i}-{sent}\r\n\r\nx\r\n"), {})
                    c.quit()
                finally:
                    c.close()
                with lock:
                    seen.append((i, sent, started, cert))
                sent += 1
                events.note("msg")
            return sent

        def swap(pair, outcome):
            n = events.count("msg")
            mark = self.log_mark(srv)
            if pair == "broken":
                with open(self.cert, "w") as f:
                    f.write("not a certificate\n")
            else:
                self.put(pair, "both")
            if swap_by_sighup:
                os.kill(srv.pid, signal.SIGHUP)
            srv.log.wait(outcome, start=mark, timeout=30)
            logged = time.monotonic()
            # Handshakes on either side of it, before the next swap.
            events.wait_event("msg", n=n + 5 * self.THREADS, timeout=60)
            return logged

        result = {}

        def swapper():
            try:
                events.wait_event("msg", n=2 * self.THREADS, timeout=60)
                result["b"] = swap("b", RELOADED.pattern)
                result["broken"] = swap("broken", NOT_RELOADED)
            except BaseException as e:  # reported below
                result["error"] = e
            finally:
                stop.set()

        t = threading.Thread(target=swapper, daemon=True)
        t.start()
        results = run_threads(self.THREADS, client, timeout=180)
        t.join(bound(60))
        self.assertNotIn("error", result, result.get("error"))
        self.assertEqual(failures(results), [])
        total = sum(r[1] for r in results)
        self.assertEqual(total, len(seen))
        records = wait_records(rec, total, timeout=30)
        got = sorted(line for r in records for line in r.data.split(b"\r\n")
                     if line.startswith(b"Subject: t"))
        want = sorted(f"Subject: t{i}-{n}".encode() for i, n, _, _ in seen)
        self.assertEqual(got, want, "every message recorded exactly once")
        a, b = self.a_der, self.b_der
        self.assertTrue(any(s[3] == a for s in seen), "no handshake before the swap")
        after = [s[3] for s in seen if s[2] > result["b"]]
        # The broken pair swapped in last changes nothing: B serves to the end.
        after_broken = [s[3] for s in seen if s[2] > result["broken"]]
        self.assertTrue(after_broken, "no handshake after the broken pair")
        self.assertEqual(set(after), {b}, "a handshake after the swap had the old certificate")
        self.assertEqual({s[3] for s in seen}, {a, b})

    def test_swapped_by_sighup(self):
        self.run_load(swap_by_sighup=True)

    def test_swapped_by_file_change(self):
        self.run_load(swap_by_sighup=False)


if __name__ == "__main__":
    unittest.main()
