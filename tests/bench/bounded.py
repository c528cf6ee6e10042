#!/usr/bin/env python3
"""The load test of issue 12: limits hold in sum.

One luasmtpd under a descriptor limit, a DATA budget and three kinds of client at once:
  - TRICKLERS connections that open a DATA, push a burst, then trickle on forever (each
    reconnects a second after the server ends it);
  - IDLERS connections that say EHLO and then nothing (each reconnects a second after it is
    closed);
  - one well-behaved client that sends a small message every PERIOD s and times each step.
It samples the server's RSS, CPU and log the whole time and prints what it measured. Exit
status 1 when a limit did not hold: the peak RSS above the DATA budget plus the stated
overhead, a well-behaved transaction that got no answer (or a 2xx that was not the last
reply), or more log lines than the readable bound; with --strict also a well-behaved step
slower than a second (a timing claim: this is a benchmark, not a ctest).

  tests/bench/bounded.py [--quick] [--strict] [--luasmtpd build/luasmtpd]
"""
import argparse
import collections
import os
import re
import multiprocessing
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

LISTENING = re.compile(r"listening on (?:\[([^\]]+)\]|([^ :]+)):(\d+)")
HOSTNAME = "bench.example"
TICK = os.sysconf("SC_CLK_TCK")


def proc_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Server:
    """luasmtpd started under RLIMIT_NOFILE = nofile, its stderr counted and kept."""

    def __init__(self, binary, nofile, args):
        def limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        cmd = [binary, "-n", "-c", "sink", "--hostname", HOSTNAME] + args + ["127.0.0.1:0"]
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=limit,
                                     start_new_session=True)
        self.lines = []
        self.listening = threading.Event()
        self.port = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.listening.wait(30):
            self.kill()
            sys.exit(f"{' '.join(cmd)} did not start: {self.lines[-10:]}")

    def _read(self):
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append((time.monotonic(), line))
            m = LISTENING.search(line)
            if m and self.port is None:
                self.port = int(m.group(3))
                self.listening.set()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


class Conn:
    """One attacking connection, a small state machine on a shared selector."""

    def __init__(self, load, kind, index):
        self.load, self.kind, self.index = load, kind, index
        self.sock = None
        self.inbuf = b""
        self.out = b""
        self.state = "down"
        self.retry_at = 0.0
        self.next_trickle = 0.0
        self.burst_left = 0

    def source(self):
        # Spread over 127.0.1.0/24.. so that no address passes --max-per-client (128).
        n = self.index if self.kind == "trickle" else self.index + self.load.args.tricklers
        return f"127.0.{1 + n // 100 % 200}.{1 + n % 100}"

    def connect(self, now):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.bind((self.source(), 0))
            s.connect_ex(("127.0.0.1", self.load.port))
        except OSError:
            s.close()
            self.down(now)
            return
        self.sock = s
        self.state = "greeting"
        self.inbuf = b""
        self.out = b""
        self.load.sel.register(s, selectors.EVENT_READ, self)
        self.load.counts[f"{self.kind} connects"] += 1

    def down(self, now):
        if self.sock is not None:
            try:
                self.load.sel.unregister(self.sock)
            except (KeyError, ValueError):
                pass
            self.sock.close()
            self.sock = None
        self.state = "down"
        self.retry_at = now + 1.0

    def send(self, data):
        self.out += data
        self.flush()

    def flush(self):
        if not self.out or self.sock is None:
            return
        try:
            n = self.sock.send(self.out)
            self.out = self.out[n:]
        except BlockingIOError:
            pass
        except OSError:
            self.down(time.monotonic())
            return
        # A burst wants to know when it may write more, even once all it queued went out.
        writing = self.out or self.state == "burst"
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
        self.load.sel.modify(self.sock, events, self)

    def on_event(self, mask, now):
        if mask & selectors.EVENT_WRITE:
            self.flush()
            if self.sock is None:
                return
            if not self.out and self.state == "burst":
                self.push_burst()
        if mask & selectors.EVENT_READ and self.sock is not None:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.load.counts[f"{self.kind} closed by server"] += 1
                self.down(now)
                return
            self.inbuf += data
            while b"\r\n" in self.inbuf and self.sock is not None:
                line, self.inbuf = self.inbuf.split(b"\r\n", 1)
                if line[3:4] != b"-":
                    self.on_reply(line, now)

    def on_reply(self, line, now):
        code = line[:3].decode(errors="replace")
        if code.startswith("4") or code.startswith("5"):
            self.load.counts[f"{self.kind} got {line[:9].decode(errors='replace')}"] += 1
        if code == "421":
            self.down(now)
            return
        if self.state == "greeting":
            self.state = "ehlo"
            self.send(b"EHLO attacker.example\r\n")
        elif self.state == "ehlo":
            if self.kind == "idle":
                self.state = "idle"
                self.load.counts["idle held"] += 1
                return
            self.state = "mail"
            self.send(b"MAIL FROM:<a@attacker.example>\r\n")
        elif self.state == "mail":
            self.state = "rcpt"
            self.send(b"RCPT TO:<b@victim.example>\r\n")
        elif self.state == "rcpt":
            self.state = "data"
            self.send(b"DATA\r\n")
        elif self.state == "data":
            if code == "354":
                self.state = "burst"
                self.burst_left = self.load.args.burst
                self.push_burst()
            else:  # 452 4.3.1 (the budget is in use): try again in a second
                self.down(now)
        # Replies in "burst"/"trickle" can only be the 421 that ends the transfer.

    def push_burst(self):
        chunk = min(self.burst_left, 65536)
        if chunk == 0:
            self.state = "trickle"
            self.next_trickle = time.monotonic() + 1.0
            self.flush()
            return
        self.burst_left -= chunk
        self.load.counts["trickle bytes"] += chunk
        self.send(b"x" * (chunk - 2) + b"\r\n")

    def tick(self, now):
        if self.state == "down" and now >= self.retry_at:
            self.connect(now)
        elif self.state == "trickle" and now >= self.next_trickle:
            self.next_trickle = now + 1.0
            rate = self.load.args.trickle_rate
            self.load.counts["trickle bytes"] += rate
            self.send(b"y" * (rate - 2) + b"\r\n")


class Load:
    def __init__(self, args, port):
        self.args, self.port = args, port
        self.sel = selectors.DefaultSelector()
        self.counts = collections.Counter()
        self.conns = [Conn(self, "trickle", i) for i in range(args.tricklers)]
        self.conns += [Conn(self, "idle", i) for i in range(args.idlers)]

    def run(self, until, report):
        # Runs in a process of its own, so that the well-behaved client's timings do not
        # include waits for this one's interpreter lock. Timers are looked at every 100 ms;
        # at most 100 new connections a turn: the listen backlog is finite, and a SYN flood
        # is not what this measures.
        next_tick = 0.0
        while time.monotonic() < until:
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + 0.1
                opened = 0
                for c in self.conns:
                    if c.state == "down" and now >= c.retry_at:
                        if opened >= 100:
                            continue
                        opened += 1
                    c.tick(now)
            for key, mask in self.sel.select(timeout=max(0.0, next_tick - now)):
                key.data.on_event(mask, time.monotonic())
        for c in self.conns:
            c.down(time.monotonic())
        report.send(dict(self.counts))


def good_transaction(port, timeout, serial, source="127.0.250.1"):
    """One well-behaved client: connect, EHLO, MAIL, RCPT, DATA, 1 KiB, QUIT. Returns
    (final reply line, {step: seconds})."""
    steps = {}
    t = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                 source_address=(source, 0))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""

    def reply():
        nonlocal buf
        while True:
            while b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                if line[3:4] != b"-":
                    return line.decode(errors="replace")
            chunk = s.recv(4096)
            if not chunk:
                return "(closed)"
            buf += chunk

    try:
        for step, line in (("greeting", None), ("EHLO", b"EHLO good.example"),
                           ("MAIL", b"MAIL FROM:<good@example.org>"),
                           ("RCPT", b"RCPT TO:<someone@example.org>"), ("DATA", b"DATA"),
                           ("message", b"Subject: good %d\r\n\r\n" % serial +
                            b"z" * 1000 + b"\r\n.")):
            t = time.monotonic()
            if line is not None:
                s.sendall(line + b"\r\n")
            r = reply()
            steps[step] = time.monotonic() - t
            if not r.startswith(("2", "3")):
                return r, steps
        s.sendall(b"QUIT\r\n")
        return r, steps
    finally:
        s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--luasmtpd", default="build/luasmtpd")
    ap.add_argument("--quick", action="store_true", help="200 + 200 connections, 20 s")
    ap.add_argument("--strict", action="store_true",
                    help="also fail when a well-behaved step took over a second")
    ap.add_argument("--tricklers", type=int, default=1000)
    ap.add_argument("--idlers", type=int, default=1000)
    ap.add_argument("--nofile", type=int, default=1024, help="the server's RLIMIT_NOFILE")
    ap.add_argument("--data-memory", type=int, default=64, help="the DATA budget, MiB")
    ap.add_argument("--burst", type=int, default=1024 * 1024, help="bytes each trickler pushes first")
    ap.add_argument("--trickle-rate", type=int, default=1024, help="bytes a second after the burst")
    ap.add_argument("--duration", type=float, default=90)
    ap.add_argument("--period", type=float, default=1.0, help="seconds between good messages")
    ap.add_argument("--overhead", type=int, default=24,
                    help="MiB above the budget the peak RSS may reach (idle RSS, connections, "
                         "allocator slack)")
    ap.add_argument("--max-log-lines-per-s", type=float, default=50)
    ap.add_argument("--server-arg", action="append", default=[],
                    help="one more argument for luasmtpd (repeatable)")
    args = ap.parse_args()
    if args.quick:
        args.tricklers, args.idlers, args.duration, args.nofile = 200, 200, 20, 256
        args.data_memory = 16

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.tricklers + args.idlers + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    # --data-memory 0: run without the option, as against a binary older than the budget.
    server_args = ["--data-memory", str(args.data_memory)] if args.data_memory else []
    server_args += args.server_arg
    srv = Server(args.luasmtpd, args.nofile, server_args)
    try:
        return run(args, srv)
    finally:
        srv.kill()


def run(args, srv):
    idle_rss = proc_kib(srv.proc.pid, "VmRSS")
    cpu0 = proc_cpu_seconds(srv.proc.pid)
    log0 = len(srv.lines)
    # The well-behaved client is a regular: it had a message accepted before the attack, as a
    # server's correspondents have (the server serves such clients first when it is full).
    before, _ = good_transaction(srv.port, 10.0, 0)
    if not before.startswith("250"):
        sys.exit(f"the first message, before any load, got {before!r}")
    load = Load(args, srv.port)
    started = time.monotonic()
    until = started + args.duration
    report, report_w = multiprocessing.Pipe(duplex=False)
    driver = multiprocessing.get_context("fork").Process(target=load.run,
                                                         args=(until, report_w), daemon=True)
    driver.start()

    good = []  # (when, final reply, steps)
    newcomers = []  # final replies
    rss = []
    serial = 0
    # The first good message goes once the attack had a few seconds to fill the server.
    next_good = started + min(5.0, args.duration / 4)
    while time.monotonic() < until and srv.proc.poll() is None:
        now = time.monotonic()
        rss.append(proc_kib(srv.proc.pid, "VmRSS"))
        if now >= next_good:
            serial += 1
            try:
                final, steps = good_transaction(srv.port, 10.0, serial)
            except OSError as e:
                final, steps = f"(error: {e})", {}
            good.append((now - started, final, steps))
            # And a newcomer, from an address the server has never seen: it competes with the
            # attack for the slots the attack's own waits free.
            try:
                greeting, _ = good_transaction(srv.port, 10.0, serial,
                                               f"127.0.251.{1 + serial % 250}")
            except OSError as e:
                greeting = f"(error: {e})"
            newcomers.append(greeting)
            next_good = time.monotonic() + args.period
        else:
            time.sleep(min(0.2, max(0.0, next_good - now)))  # pacing, not a wait on an event
    counts = report.recv() if report.poll(60) else {"(load process gave no report)": 1}
    driver.join(30)
    if driver.is_alive():
        driver.kill()
    alive = srv.proc.poll() is None
    peak = proc_kib(srv.proc.pid, "VmHWM") if alive else max(rss, default=0)
    cpu = proc_cpu_seconds(srv.proc.pid) - cpu0 if alive else float("nan")
    elapsed = time.monotonic() - started
    log_lines = len(srv.lines) - log0

    budget_kib = (args.data_memory or 1024) * 1024
    limit_kib = budget_kib + args.overhead * 1024
    slowest = max((max(st.values()) for _, _, st in good if st), default=float("nan"))
    accepted = sum(1 for _, f, _ in good if f.startswith("250"))
    refused_4xx = sum(1 for _, f, _ in good if f.startswith("4"))
    unanswered = [(t, f) for t, f, _ in good if not f[:1].isdigit()]
    wrong = [(t, f) for t, f, _ in good if f[:1].isdigit() and not f.startswith(("250", "4"))]

    print(f"# bounded: {args.tricklers} trickling + {args.idlers} idle connections, "
          f"RLIMIT_NOFILE {args.nofile}, --data-memory {args.data_memory} MiB, {elapsed:.0f} s")
    print(f"server: {' '.join(srv.cmd)}")
    print("| measure | value |\n|---|---|")
    print(f"| RSS idle | {idle_rss / 1024:.1f} MiB |")
    print(f"| peak RSS (VmHWM) | {peak / 1024:.1f} MiB (limit {limit_kib / 1024:.0f} = budget "
          f"{args.data_memory} + overhead {args.overhead}) |")
    print(f"| server CPU | {cpu:.1f} s in {elapsed:.0f} s ({100 * cpu / elapsed:.0f}%) |")
    print(f"| log lines | {log_lines} ({log_lines / elapsed:.1f}/s) |")
    print(f"| well-behaved transactions | {len(good)}: {accepted} accepted (250), "
          f"{refused_4xx} refused 4xx, {len(unanswered)} unanswered, {len(wrong)} other |")
    print(f"| slowest well-behaved step | {slowest * 1000:.0f} ms |")
    for step in ("greeting", "EHLO", "MAIL", "RCPT", "DATA", "message"):
        times = sorted(st[step] for _, _, st in good if step in st)
        if times:
            print(f"| {step} median / max | {times[len(times) // 2] * 1000:.1f} / "
                  f"{times[-1] * 1000:.1f} ms |")
    for key in sorted(counts):
        print(f"| {key} | {counts[key]} |")
    print(f"| newcomers (a fresh address each) | {len(newcomers)}: "
          f"{dict(collections.Counter(f[:9] for f in newcomers))} |")
    timeline = " ".join(f"{t:.0f}s:{f[:3]}" for t, f, _ in good)
    print(f"| well-behaved timeline | {timeline} |")
    finals = collections.Counter(f[:9] for _, f, _ in good)
    print(f"| well-behaved final replies | {dict(finals)} |")
    levels = collections.Counter()
    for _, line in srv.lines[log0:]:
        m = re.search(r"\b(debug|info|warn|warning|error)\b", line)
        levels[m.group(1) if m else "?"] += 1
    print(f"| log lines by level | {dict(levels)} |")
    print("warn and error lines (first 12):")
    for _, line in [x for x in srv.lines[log0:] if re.search(r"\b(warn|error):", x[1])][:12]:
        print("    " + line)

    failed = []
    if not alive:
        failed.append(f"the server exited ({srv.proc.returncode})")
    if peak > limit_kib:
        failed.append(f"peak RSS {peak} KiB over {limit_kib} KiB")
    if unanswered or wrong:
        failed.append(f"well-behaved transactions without a proper answer: {unanswered + wrong}")
    if not good or accepted == 0:
        failed.append("no well-behaved message was accepted")
    if log_lines / elapsed > args.max_log_lines_per_s:
        failed.append(f"{log_lines} log lines in {elapsed:.0f} s")
    if args.strict and slowest > 1.0:
        failed.append(f"a well-behaved step took {slowest:.2f} s")
    for f in failed:
        print("FAILED: " + f)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
