#!/usr/bin/python3
"""TLS benchmark: luasmtpd against aiosmtpd and Postfix's smtpd, STARTTLS and SMTPS.

    /usr/bin/python3 tests/bench/tls.py [--quick] [--rounds N] [--key rsa|ec] [--json FILE]

Two measures, each against a fresh server pinned to CPU 0 with the client on CPU 1:
new connections a second with a full TLS 1.3 handshake (implicit TLS and STARTTLS; plain TCP
beside them as the reference), and one big message over STARTTLS, timed from the DATA command
to its 250 (plain TCP beside it). The client is this script's own (Python's ssl, OpenSSL
underneath), the same code for every server, and `openssl s_time` beside it for SMTPS
handshakes. It makes its own certificate with `openssl req`. Postfix runs only as root.
See tests/bench/README.md.
"""

import argparse
import json
import multiprocessing
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402  (Server, free_port, listening, cpu_us, pinning, machine)
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
import postfix_instance  # noqa: E402  (the Postfix instance, shared with the e2e tests)

PY = bench.PY
PEERS = ["luasmtpd", "aiosmtpd", "postfix"]
MODES = ["plain", "smtps", "starttls"]  # handshake workloads; plain: TCP only, the reference
S_TIME = "smtps, s_time"  # the same SMTPS handshakes from `openssl s_time -new`, a C client
BIG_MODES = ["plain", "starttls"]

# aiosmtpd with its Sink handler (no handle_DATA: every message gets 250 and is dropped):
# STARTTLS on one port (tls_context), implicit TLS on the other (the event loop's ssl=, as
# aiosmtpd's own Controller does for SMTPS).
AIOSMTPD = r"""
import asyncio, ssl, sys, warnings
warnings.simplefilter("ignore")
from aiosmtpd.smtp import SMTP
from aiosmtpd.handlers import Sink
cert, key, port, sport = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
handler = Sink()
starttls = lambda: SMTP(handler, tls_context=ctx, hostname="bench.example", loop=loop)
smtps = lambda: SMTP(handler, hostname="bench.example", loop=loop)
loop.run_until_complete(loop.create_server(starttls, "127.0.0.1", port, backlog=1024))
loop.run_until_complete(loop.create_server(smtps, "127.0.0.1", sport, ssl=ctx, backlog=1024))
loop.run_forever()
"""


# Postfix's smtpd in an instance of its own (tests/e2e/postfix_instance.py), every message
# discarded by the discard transport once queued. Its 250 to DATA comes after cleanup has
# written (and fsync'ed) the queue file: Postfix's durability is in its number.
class PostfixServer:
    """The interface of bench.Server, for a Postfix instance: found, measured and killed
    through the master's PID."""

    def __init__(self, tmp, cert, key, port, sport):
        self.port, self.name = port, "postfix"
        self.proc = self  # bench.Server's callers read proc.returncode
        self.returncode = None
        self.pf = postfix_instance.PostfixInstance(
            tmp, services=[postfix_instance.smtpd_service(port),
                           postfix_instance.smtpd_service(sport, "smtpd_tls_wrappermode=yes")],
            main={"myhostname": "bench.example", "smtpd_tls_cert_file": cert,
                  "smtpd_tls_key_file": key, "smtpd_tls_security_level": "may",
                  "smtpd_tls_loglevel": 0},  # no log line a connection: as the others
            preexec_fn=bench.pin_server)  # the master and its children

    def wait_ready(self, timeout=15.0):
        self.pf.wait_ready(self.port, timeout)

    def alive(self):
        return self.pf.alive()

    def cpu(self):
        ticks, ns = 0, 0
        for pid in self.pf.pids():
            try:
                with open("/proc/%d/stat" % pid) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open("/proc/%d/schedstat" % pid) as f:
                    ns += int(f.read().split()[0])
                ticks += int(fields[11]) + int(fields[12])
            except (OSError, ValueError, IndexError):
                pass
        return ticks, ns

    def log_tail(self, lines=2):
        return self.pf.log_tail(lines)

    def stop(self):
        self.pf.stop()


def postfix_usable():
    return postfix_instance.postfix_usable() is None


def server_cmd(peer, luasmtpd, limits, cert, key, port, sport):
    if peer == "luasmtpd":
        return ([luasmtpd, "-n", "-c", "sink"] + list(limits) +
                ["--tlscert", cert, "--tlskey", key, "--smtpscert", cert, "--smtpskey", key,
                 "--smtps", "127.0.0.1:%d" % sport, "127.0.0.1:%d" % port])
    return [PY, "-c", AIOSMTPD, cert, key, str(port), str(sport)]


def make_cert(directory, kind):
    """A self-signed certificate and its key: RSA-2048 or ECDSA P-256."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    newkey = (["-newkey", "rsa:2048"] if kind == "rsa" else
              ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
    subprocess.run(["openssl", "req", "-x509"] + newkey +
                   ["-nodes", "-days", "2", "-subj", "/CN=bench.example", "-addext",
                    "subjectAltName=DNS:bench.example,IP:127.0.0.1", "-keyout", key,
                    "-out", cert], check=True, capture_output=True, timeout=60)
    return cert, key


# ---------------------------------------------------------------------------------------------
# the client


class ProtocolError(Exception):
    pass


def client_context():
    """TLS 1.3 only, nothing verified (the certificate is our own throwaway), and no session
    kept: every connection is a full handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    return ctx


class Lines:
    """Reads SMTP replies from a socket (plain or TLS)."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def reply(self, want):
        text = []
        for _ in range(1000):  # a reply of more lines than that is not one we sent for
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ProtocolError("closed after %r" % b"".join(text)[:80])
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            text.append(line)
            if line[3:4] != b"-":
                if not line.startswith(want):
                    raise ProtocolError("wanted %s, got %r" % (want.decode(), line[:120]))
                return b"\n".join(text)
        raise ProtocolError("endless reply")

    def command(self, line, want):
        self.sock.sendall(line + b"\r\n")
        return self.reply(want)


def open_session(mode, port, ctx, timeout):
    """Connects and gets as far as a session that may send MAIL: (socket, reader, TLS info)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = raw
    try:
        if mode == "smtps":
            sock = ctx.wrap_socket(raw, server_hostname="bench.example")
        r = Lines(sock)
        r.reply(b"220")
        if mode == "starttls":
            if b"STARTTLS" not in r.command(b"EHLO client.example", b"250").upper():
                raise ProtocolError("STARTTLS not offered")
            r.command(b"STARTTLS", b"220")
            if r.buf:
                raise ProtocolError("bytes after the 220 to STARTTLS")
            sock = ctx.wrap_socket(raw, server_hostname="bench.example")
            r = Lines(sock)
        r.command(b"EHLO client.example", b"250")
        info = None
        if mode != "plain":
            if sock.session_reused:
                raise ProtocolError("a TLS session was resumed: not a full handshake")
            info = "%s %s" % (sock.version(), sock.cipher()[0])
        return sock, r, info
    except BaseException:
        sock.close()
        raise


def handshake_worker(mode, port, count, timeout, deadline, start, results):
    """One client process: `count` connections one after the other (connect, handshake, EHLO,
    QUIT, close), stopping at `deadline` or after too many errors."""
    ctx = client_context()
    done, errors, last_error, info = 0, 0, None, None
    start.wait(30)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    for _ in range(count):
        if time.monotonic() > deadline or errors > max(3, count // 100):
            break
        try:
            sock, r, info = open_session(mode, port, ctx, timeout)
            try:
                r.command(b"QUIT", b"221")
            finally:
                sock.close()
            done += 1
        except (OSError, ProtocolError) as e:
            errors += 1
            last_error = "%s: %s" % (type(e).__name__, e)
    t1 = time.monotonic()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    results.put(dict(done=done, errors=errors, error=last_error, t0=t0, t1=t1, info=info,
                     cpu_s=ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime))


def cpu_jiffies():
    """(all, not idle) jiffies of the machine from /proc/stat: how busy both CPUs were,
    whoever kept them so (the other work on the machine included)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v[:8]), sum(v[:8]) - v[3] - v[4]


def busy_pct(j0, j1):
    return 100.0 * (j1[1] - j0[1]) / max(1, j1[0] - j0[0])


def handshakes(srv, mode, port, count, workers, timeout):
    mp = multiprocessing.get_context("fork")
    start, results = mp.Event(), mp.Queue()
    deadline = time.monotonic() + timeout * 4
    per = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
    procs = [mp.Process(target=handshake_worker, daemon=True,
                        args=(mode, port, n, timeout, deadline, start, results)) for n in per]
    for p in procs:
        p.start()
    cpu0, j0 = srv.cpu(), cpu_jiffies()
    start.set()
    got = []
    try:
        for _ in procs:
            got.append(results.get(timeout=timeout * 4 + 30))
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
    cpu1, j1 = srv.cpu(), cpu_jiffies()
    done = sum(g["done"] for g in got)
    rec = dict(done=done, errors=sum(g["errors"] for g in got), busy_pct=busy_pct(j0, j1),
               info=next((g["info"] for g in got if g["info"]), None))
    errs = [g["error"] for g in got if g["error"]]
    if errs:
        rec["error"] = errs[0]
    if done:
        secs = max(g["t1"] for g in got) - min(g["t0"] for g in got)
        rec.update(seconds=secs, conn_s=done / secs,
                   server_us=bench.cpu_us(cpu0, cpu1) / done,
                   client_us=sum(g["cpu_s"] for g in got) * 1e6 / done)
    rec["ok"] = done == count and not errs
    return rec


def s_time(srv, port, seconds):
    """`openssl s_time -new` for `seconds`: one connection at a time, each a full TLS 1.3
    handshake and a close (no SMTP said: it reads nothing, not even the greeting)."""
    cpu0, j0 = srv.cpu(), cpu_jiffies()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    out = subprocess.run(["openssl", "s_time", "-connect", "127.0.0.1:%d" % port, "-new",
                          "-tls1_3", "-time", str(seconds)], stdin=subprocess.DEVNULL,
                         capture_output=True, timeout=seconds + 60)
    secs = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu1, j1 = srv.cpu(), cpu_jiffies()
    text = out.stdout.decode(errors="replace")
    m = re.search(r"^(\d+) connections in [\d.]+s", text, re.M)
    if out.returncode != 0 or not m or int(m.group(1)) == 0:
        tail = (out.stderr.decode(errors="replace").strip() or text.strip()).splitlines()
        return dict(ok=False, error="s_time exit %d: %s" % (out.returncode,
                                                            " | ".join(tail[-2:])[:200]))
    done = int(m.group(1))
    return dict(ok=True, done=done, seconds=secs, conn_s=done / secs, busy_pct=busy_pct(j0, j1),
                server_us=bench.cpu_us(cpu0, cpu1) / done,
                client_us=(ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) * 1e6
                / done)


def message_bytes(size):
    """`size` bytes of message (headers included, lines of 78 characters), and the dot."""
    head = (b"From: <bench@example.org>\r\nTo: <sink@example.net>\r\n"
            b"Subject: TLS bench\r\n\r\n")
    full, rest = divmod(size - len(head), 80)
    body = b"x" * 78 + b"\r\n"
    tail = b"y" * (rest - 2) + b"\r\n" if rest >= 2 else b""
    return head + body * full + tail, b".\r\n"


def big_message(srv, mode, port, msg, timeout):
    """One message on a new connection: seconds from sending DATA to reading its 250."""
    ctx = client_context()
    sock, r, info = open_session(mode, port, ctx, timeout)
    try:
        r.command(b"MAIL FROM:<bench@example.org>", b"250")
        r.command(b"RCPT TO:<sink@example.net>", b"250")
        content, dot = msg
        cpu0 = srv.cpu()
        t0 = time.monotonic()
        r.command(b"DATA", b"354")
        sock.sendall(content)
        sock.sendall(dot)
        r.reply(b"250")
        secs = time.monotonic() - t0
        cpu1 = srv.cpu()
        r.command(b"QUIT", b"221")
        return dict(ok=True, seconds=secs, mb_s=len(content) / secs / 1e6, info=info,
                    server_ms=bench.cpu_us(cpu0, cpu1) / 1e3)
    finally:
        sock.close()


# ---------------------------------------------------------------------------------------------
# one round of one peer


def peer_round(ctx, peer, rnd):
    port, sport = bench.free_port(), bench.free_port()
    while sport == port:
        sport = bench.free_port()
    recs = []
    srv = None
    try:
        if peer == "postfix":
            srv = PostfixServer(ctx.tmp, ctx.cert, ctx.key, port, sport)
            ctx.postfix.append(srv)
        else:
            srv = bench.Server(server_cmd(peer, ctx.args.luasmtpd, ctx.limits, ctx.cert,
                                          ctx.key, port, sport), port, ctx.tmp, peer)
        srv.wait_ready()
        for _ in range(int(15 / 0.02)):  # the SMTPS port too, within 15 s
            if bench.listening(sport) or not srv.alive():
                break
            time.sleep(0.02)  # polling /proc/net/tcp, as bench.Server.wait_ready does
        for mode in MODES:
            rec = dict(kind="handshake", peer=peer, mode=mode, round=rnd)
            try:
                rec.update(handshakes(srv, mode, sport if mode == "smtps" else port,
                                      ctx.conns, ctx.workers, ctx.timeout))
            except Exception as e:  # recorded, not fatal
                rec.update(ok=False, error="%s: %s" % (type(e).__name__, e))
            if not srv.alive():
                rec.update(ok=False, error="server exited (%s): %s"
                           % (srv.proc.returncode, srv.log_tail()))
            recs.append(rec)
            report(rec)
        if ctx.s_time:
            rec = dict(kind="handshake", peer=peer, mode=S_TIME, round=rnd)
            try:
                rec.update(s_time(srv, sport, ctx.s_time))
            except Exception as e:
                rec.update(ok=False, error="%s: %s" % (type(e).__name__, e))
            recs.append(rec)
            report(rec)
        for mode in BIG_MODES:
            for rep in range(ctx.reps):
                rec = dict(kind="message", peer=peer, mode=mode, round=rnd, rep=rep,
                           size=ctx.size)
                try:
                    rec.update(big_message(srv, mode, port, ctx.msg, ctx.timeout))
                except Exception as e:
                    rec.update(ok=False, error="%s: %s" % (type(e).__name__, e))
                recs.append(rec)
                report(rec)
    except Exception as e:
        recs.append(dict(kind="start", peer=peer, round=rnd, ok=False,
                         error="%s: %s" % (type(e).__name__, e)))
        report(recs[-1])
    finally:
        if srv:
            srv.stop()
    return recs


def report(rec):
    if not rec["ok"]:
        what = "FAILED: " + str(rec.get("error"))[:200]
    elif rec["kind"] == "handshake":
        what = "%.0f conn/s, server %.0f µs/conn" % (rec["conn_s"], rec["server_us"])
    else:
        what = "%.1f MB/s, server %.1f ms" % (rec["mb_s"], rec["server_ms"])
    print("  r%d %-9s %-9s %-8s %s" % (rec["round"] + 1, rec["kind"], rec["peer"],
                                       rec.get("mode", ""), what), file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# tables


def med(values):
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    return "—" if v is None else "%.*f" % (digits, v)


def tables(runs, ctx):
    out = ["### New connections a second (connect, handshake, EHLO, QUIT)", "",
           "| server | mode | conn/s | server CPU µs/conn | = conn/s on one CPU "
           "| client CPU µs/conn | both CPUs busy | runs ok |",
           "|---|---|---|---|---|---|---|---|"]
    for peer in ctx.peers:
        for mode in MODES + ([S_TIME] if ctx.s_time else []):
            rs = [r for r in runs if r["kind"] == "handshake" and r["peer"] == peer
                  and r["mode"] == mode]
            ok = [r for r in rs if r["ok"]]
            us = med([r["server_us"] for r in ok])
            out.append("| %s | %s | %s | %s | %s | %s | %s%% | %d/%d |" % (
                peer, mode, fmt(med([r["conn_s"] for r in ok])), fmt(us),
                fmt(1e6 / us if us else None), fmt(med([r["client_us"] for r in ok])),
                fmt(med([r["busy_pct"] for r in ok])), len(ok), len(rs)))
    out += ["", "### One %s message: DATA to 250" % size_text(ctx.size), "",
            "| server | mode | MB/s median | min – max | server CPU ms/msg | runs ok |",
            "|---|---|---|---|---|---|"]
    for peer in ctx.peers:
        for mode in BIG_MODES:
            rs = [r for r in runs if r["kind"] == "message" and r["peer"] == peer
                  and r["mode"] == mode]
            ok = [r for r in rs if r["ok"]]
            speeds = [r["mb_s"] for r in ok]
            out.append("| %s | %s | %s | %s | %s | %d/%d |" % (
                peer, mode, fmt(med(speeds), 1),
                "%.1f – %.1f" % (min(speeds), max(speeds)) if speeds else "—",
                fmt(med([r["server_ms"] for r in ok]), 1), len(ok), len(rs)))
    failed = [r for r in runs if not r["ok"]]
    if failed:
        out += [""] + ["- failed: %s %s %s round %d: %s" % (
            r["kind"], r["peer"], r.get("mode", ""), r["round"] + 1, r.get("error"))
            for r in failed[:20]]
    return out


def size_text(size):
    return "%d MiB" % (size >> 20) if size % 1048576 == 0 else "%d KiB" % (size >> 10)


class Ctx:
    pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes, one round: a few seconds, to keep it working")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 3, 1 quick)")
    ap.add_argument("--conns", type=int, default=None,
                    help="connections per handshake run (default 1000, 20 quick)")
    ap.add_argument("--workers", type=int, default=None,
                    help="client processes making them at once (default 8, 2 quick)")
    ap.add_argument("--size", type=int, default=None,
                    help="the big message's bytes (default 10 MiB, 256 KiB quick)")
    ap.add_argument("--reps", type=int, default=None,
                    help="big messages per mode and round (default 3, 1 quick)")
    ap.add_argument("--s-time", type=float, default=None,
                    help="seconds of `openssl s_time` per round and server (default 5, 1 "
                         "quick; 0: none)")
    ap.add_argument("--key", choices=["rsa", "ec"], default="rsa",
                    help="server key: rsa (RSA-2048, default) or ec (ECDSA P-256)")
    ap.add_argument("--only", default="", help="servers, comma-separated: " + ", ".join(PEERS))
    ap.add_argument("--luasmtpd", default=os.path.join(bench.REPO, "build", "luasmtpd"))
    ap.add_argument("--json", metavar="FILE", help="save every run's raw numbers")
    args = ap.parse_args()
    q = args.quick
    ctx = Ctx()
    ctx.args = args
    ctx.rounds = args.rounds or (1 if q else 3)
    ctx.conns = args.conns or (20 if q else 1000)
    ctx.workers = args.workers or (2 if q else 8)
    ctx.size = args.size or (256 * 1024 if q else 10 * 1048576)
    ctx.reps = args.reps or (1 if q else 3)
    ctx.timeout = 30 if q else 120
    ctx.s_time = int(args.s_time if args.s_time is not None else (1 if q else 5))
    ctx.peers = [p.strip() for p in args.only.split(",") if p.strip()] or [
        p for p in PEERS if p != "postfix" or postfix_usable()]
    for p in ctx.peers:
        if p not in PEERS:
            ap.error("unknown server %r (%s)" % (p, ", ".join(PEERS)))
    if not (1 <= ctx.rounds <= 50 and 1 <= ctx.workers <= 64 and 1 <= ctx.reps <= 50 and
            ctx.workers <= ctx.conns <= 1000000 and 1024 <= ctx.size <= 1 << 30):
        ap.error("--rounds, --workers, --reps 1 to 50 (64 workers), --conns at least "
                 "--workers, --size 1 KiB to 1 GiB")
    if "luasmtpd" in ctx.peers and not os.access(args.luasmtpd, os.X_OK):
        sys.exit("tls: %s not found; build it first" % args.luasmtpd)
    if not shutil.which("openssl"):
        sys.exit("tls: openssl (the command) is needed to make the certificate")
    if "postfix" in ctx.peers and not postfix_usable():
        sys.exit("tls: running Postfix needs root, /usr/sbin/postfix and its postfix user")
    ctx.postfix = []  # instances started, stopped on any exit
    ctx.limits = bench.lua_limits(args.luasmtpd) if "luasmtpd" in ctx.peers else []
    ctx.msg = message_bytes(ctx.size)

    if (os.cpu_count() or 1) < 2:
        bench.SERVER_CPU = bench.CLIENT_CPU = 0
    os.sched_setaffinity(0, {bench.CLIENT_CPU})  # this process and its client processes

    def on_term(signum, frame):
        raise KeyboardInterrupt
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_term)

    ctx.tmp = tempfile.mkdtemp(prefix="luasmtpd-tlsbench-")
    m = bench.machine()
    started = time.monotonic()
    runs, interrupted = [], False
    try:
        ctx.cert, ctx.key = make_cert(ctx.tmp, args.key)
        for rnd in range(ctx.rounds):  # the servers take turns, so drift falls on both
            for peer in ctx.peers:
                runs += peer_round(ctx, peer, rnd)
    except KeyboardInterrupt:
        interrupted = True
        print("tls: interrupted; the tables have the runs done so far", file=sys.stderr)
    finally:
        for pf in ctx.postfix:
            pf.stop()
        bench.kill_all()
        shutil.rmtree(ctx.tmp, ignore_errors=True)

    m["loadavg_end"] = " ".join("%.2f" % x for x in os.getloadavg())
    m["elapsed_s"] = round(time.monotonic() - started, 1)
    info = next((r["info"] for r in runs if r.get("info")), "?")
    out = ["## luasmtpd TLS benchmark", "",
           "- date: %s" % m["date"],
           "- machine: %d CPUs, %s, Linux %s; load average %s at start, %s at end" % (
               m["nproc"], m["cpu"], m["kernel"], m["loadavg"], m["loadavg_end"]),
           "- %s, server key %s, full handshake every connection (no resumption); %s" % (
               info, "RSA-2048" if args.key == "rsa" else "ECDSA P-256", ssl.OPENSSL_VERSION),
           "- server on CPU %d, %d client processes on CPU %d; %d round%s, medians; "
           "%d connections a run, %d message%s a mode and round; %.0f s in all" % (
               bench.SERVER_CPU, ctx.workers, bench.CLIENT_CPU, ctx.rounds,
               "s" if ctx.rounds > 1 else "", ctx.conns, ctx.reps, "s" if ctx.reps > 1 else "",
               m["elapsed_s"]),
           "- luasmtpd limits raised: %s" % (" ".join(ctx.limits) or "none"), ""]
    if interrupted:
        out.insert(-1, "- **interrupted**: the tables have the runs done until then")
    print("\n".join(out + tables(runs, ctx)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=m, runs=runs), f, indent=1)
    return 1 if interrupted or any(not r["ok"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
