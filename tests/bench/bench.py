#!/usr/bin/python3
"""luasmtpd benchmark: luasmtpd against Postfix smtp-sink, Python's smtpd and aiosmtpd.

    /usr/bin/python3 tests/bench/bench.py [--quick] [--rounds N] [--only PEER,...]
                                          [--workload W,...] [--client C,...] [--json FILE]

Every measurement starts a fresh server (pinned to CPU 0), runs one load generator against it
(pinned to CPU 1), reads the server's CPU time and memory from /proc, and kills it. The peers
take turns within each round (A B C A B C ...), so the drift of a noisy machine falls on all of
them alike; the tables give the median of the rounds. See tests/bench/README.md.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PY = "/usr/bin/python3"
SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_CPU, CLIENT_CPU = 0, 1
NOFILE = 30000

# ---------------------------------------------------------------------------------------------
# peers

PY_SMTPD = r"""
import sys, warnings
warnings.simplefilter("ignore")
import asyncore, smtpd
port = int(sys.argv[1])
class Sink(smtpd.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        return None
Sink(("127.0.0.1", port), None)
asyncore.loop()
"""

# Python 3.11's PureProxy fails in bytes mode (decode_data=False); with decode_data=True it works.
PY_PUREPROXY = r"""
import sys, warnings
warnings.simplefilter("ignore")
import asyncore, smtpd
port, upstream = int(sys.argv[1]), int(sys.argv[2])
smtpd.PureProxy(("127.0.0.1", port), ("127.0.0.1", upstream), decode_data=True)
asyncore.loop()
"""


def sink_cmd(port):
    # -m: connections handled at once (default 256, too few for the idle workload);
    # -t: command timeout (default 100 s), as luasmtpd's and aiosmtpd's 300 s.
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # as root it must drop privileges
    return [SMTP_SINK] + user + ["-m", str(NOFILE), "-t", "300", "127.0.0.1:%d" % port, "1024"]


# luasmtpd's own limits, raised so that they do not cut the workloads short (the peers have
# none, but smtp-sink's -m above): connections at once, from one address, messages per
# connection. Given only when `luasmtpd --help` lists them.
LUA_LIMITS = [("--max-connections", str(NOFILE)), ("--max-per-client", str(NOFILE)),
              ("--max-messages", "1000000")]


def lua_limits(luasmtpd):
    try:
        out = subprocess.run([luasmtpd, "--help"], capture_output=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    text = out.decode(errors="replace")
    return [x for opt, val in LUA_LIMITS if opt in text for x in (opt, val)]


def peers(luasmtpd, limits=()):
    """name -> (kind, command(port, upstream_port)); kind: sink or relay. Every server's
    stdout goes to /dev/null (the debugging handler prints there), stderr to a log file."""
    lim = list(limits)
    return {
        "smtp-sink": ("sink", lambda p, u: sink_cmd(p)),
        "py-smtpd": ("sink", lambda p, u: [PY, "-c", PY_SMTPD, str(p)]),
        "aiosmtpd": ("sink", lambda p, u: [PY, "-m", "aiosmtpd", "-n", "-c",
                                           "aiosmtpd.handlers.Sink", "-l", "127.0.0.1:%d" % p]),
        "luasmtpd-sink": ("sink", lambda p, u: [luasmtpd, "-n", "-c", "sink"] + lim +
                                               ["127.0.0.1:%d" % p]),
        "luasmtpd-debugging": ("sink", lambda p, u: [luasmtpd, "-n", "-c", "debugging"] +
                                                    lim + ["127.0.0.1:%d" % p]),
        "py-pureproxy": ("relay", lambda p, u: [PY, "-c", PY_PUREPROXY, str(p), str(u)]),
        "luasmtpd-pureproxy": ("relay", lambda p, u: [luasmtpd, "-n", "-c", "pureproxy"] +
                                                     lim + ["127.0.0.1:%d" % p,
                                                            "127.0.0.1:%d" % u]),
    }


SINK_PEERS = ["smtp-sink", "py-smtpd", "aiosmtpd", "luasmtpd-sink", "luasmtpd-debugging"]
# smtp-sink (direct) is in the relay tables as the reference for "ratio vs smtp-sink".
RELAY_PEERS = ["smtp-sink", "py-pureproxy", "luasmtpd-pureproxy"]

# ---------------------------------------------------------------------------------------------
# workloads: sessions, messages in all, messages per connection (0: one connection each
# session, kept), size in bytes; full and --quick. --quick only checks that everything still
# runs: 2 connections rather than 10 there, because Python's smtpd listens with a backlog of 5
# and the SYNs it drops cost a second each.

WORKLOADS = {
    "1x1k": dict(title="1 KiB messages, one connection", peers=SINK_PEERS,
                 full=(1, 5000, 0, 1024), quick=(1, 50, 0, 1024)),
    "10x1k": dict(title="1 KiB messages, several connections", peers=SINK_PEERS,
                  full=(10, 10000, 0, 1024), quick=(2, 40, 0, 1024)),
    "4x100k": dict(title="100 KiB messages, several connections", peers=SINK_PEERS,
                   full=(4, 400, 0, 102400), quick=(2, 4, 0, 102400)),
    "1x10m": dict(title="one big message", peers=SINK_PEERS,
                  full=(1, 1, 0, 10 * 1048576), quick=(1, 1, 0, 1048576)),
    "conn": dict(title="connection set-up, one message per connection",
                 peers=SINK_PEERS, full=(10, 1000, 1, 1024), quick=(2, 20, 1, 1024)),
    "relay-1x1k": dict(title="relay to an smtp-sink, one connection",
                       peers=RELAY_PEERS, full=(1, 1000, 0, 1024), quick=(1, 20, 0, 1024)),
    "relay-10x1k": dict(title="relay to an smtp-sink, several connections",
                        peers=RELAY_PEERS, full=(10, 3000, 0, 1024), quick=(2, 20, 0, 1024)),
    "idle": dict(title="idle connections after EHLO", peers=SINK_PEERS,
                 full=10000, quick=50),
}
CLIENTS = ["smtp-source", "pipeline"]

# ---------------------------------------------------------------------------------------------
# processes: every server is remembered by its PID and killed, whatever happens

LIVE = {}  # pid -> Popen


def pin_server():
    try:
        os.sched_setaffinity(0, {SERVER_CPU})
    except OSError:
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    """Whether something listens on 127.0.0.1:port (from /proc/net/tcp; no connection made)."""
    want = ":%04X" % port
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1].endswith(want) and fields[3] == "0A":
                    return True
    except OSError:
        pass
    return False


class Server:
    def __init__(self, cmd, port, logdir, name, cpu=SERVER_CPU):
        self.port, self.name = port, name
        self.log = os.path.join(logdir, "%s-%d.log" % (name, port))
        self.logf = open(self.log, "wb")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.logf,
            start_new_session=True, cwd=REPO,
            preexec_fn=pin_server if cpu == SERVER_CPU else pin_client)
        LIVE[self.proc.pid] = self.proc
        self.pid = self.proc.pid

    def wait_ready(self, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s before listening: %s"
                                   % (self.name, self.proc.returncode, self.log_tail()))
            if listening(self.port):
                time.sleep(0.1)  # let it settle (imports done, first allocations made)
                return
            time.sleep(0.02)
        raise RuntimeError("%s did not listen on port %d within %.0f s"
                           % (self.name, self.port, timeout))

    def alive(self):
        return self.proc.poll() is None

    def cpu(self):
        """(utime + stime in clock ticks from /proc/PID/stat, on-CPU ns of its threads from
        /proc/PID/task/*/schedstat or None where the kernel keeps no schedstat)."""
        with open("/proc/%d/stat" % self.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        ns = 0
        try:
            for task in os.listdir("/proc/%d/task" % self.pid):
                with open("/proc/%d/task/%s/schedstat" % (self.pid, task)) as f:
                    ns += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            ns = None
        return ticks, ns

    def status_kb(self, key):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        return None

    def log_tail(self, lines=2):
        """The last lines of the server's stderr (a Python traceback ends with the error)."""
        try:
            self.logf.flush()
            with open(self.log, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 4096))
                text = f.read().decode(errors="replace").strip().splitlines()
            return " | ".join(l.strip() for l in text[-lines:])[:300]
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        LIVE.pop(self.pid, None)
        self.logf.close()
        try:
            os.unlink(self.log)
        except OSError:
            pass


def cpu_us(before, after):
    """Server CPU µs between two Server.cpu() readings: the schedstat nanoseconds where the
    kernel has them (and they moved at least as the ticks say), else the clock ticks."""
    ticks = (after[0] - before[0]) * 1e6 / CLK_TCK
    if before[1] is not None and after[1] is not None and after[1] > before[1]:
        ns = (after[1] - before[1]) / 1e3
        if ns >= ticks * 0.5 - 2e4:  # a thread that exited takes its schedstat along
            return ns
    return ticks


def pin_client():
    try:
        os.sched_setaffinity(0, {CLIENT_CPU})
    except OSError:
        pass


def kill_all():
    for pid, proc in list(LIVE.items()):
        if proc.poll() is None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        LIVE.pop(pid, None)


# ---------------------------------------------------------------------------------------------
# one throughput run


def client_cmd(client, pc_bin, sessions, msgs, per_conn, size, port, timeout, force_pipe):
    if client == "smtp-source":
        cmd = [SMTP_SOURCE, "-s", str(sessions), "-m", str(msgs), "-l", str(size),
               "-f", "bench@example.org", "-t", "sink@example.net", "-M", "bench.example"]
        if per_conn != 1:
            cmd.append("-d")  # keep the connection for the next message
        return cmd + ["127.0.0.1:%d" % port]
    cmd = [pc_bin, "-s", str(sessions), "-m", str(msgs), "-n", str(per_conn), "-l", str(size),
           "-t", str(timeout)]
    if force_pipe:
        cmd.append("-P")
    return cmd + ["127.0.0.1:%d" % port]


def throughput_run(ctx, wname, peer, client, rnd):
    sessions, msgs, per_conn, size = ctx.sizes[wname]
    kind, mkcmd = ctx.peers[peer]
    rec = dict(workload=wname, peer=peer, client=client, round=rnd, ok=False, msgs=msgs,
               size=size, sessions=sessions)
    servers = []
    try:
        upstream = None
        if WORKLOADS[wname]["peers"] is RELAY_PEERS and kind == "relay":
            uport = free_port()
            upstream = Server(sink_cmd(uport), uport, ctx.tmp, "upstream", cpu=CLIENT_CPU)
            servers.append(upstream)
            upstream.wait_ready()
        port = free_port()
        srv = Server(mkcmd(port, upstream.port if upstream else 0), port, ctx.tmp, peer)
        servers.append(srv)
        srv.wait_ready()
        rec["rss_idle_kb"] = srv.status_kb("VmRSS")
        cmd = client_cmd(client, ctx.pc_bin, sessions, msgs, per_conn, size, port,
                         ctx.run_timeout, ctx.args.force_pipelining)
        cpu0 = srv.cpu()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        try:
            out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                 timeout=ctx.run_timeout + 5, preexec_fn=pin_client)
        except subprocess.TimeoutExpired:
            rec["error"] = "client timed out after %d s" % ctx.run_timeout
            return rec
        secs = time.monotonic() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        rec["client_cpu_us_msg"] = ((ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime)
                                    * 1e6 / msgs)
        if not srv.alive():
            rec["error"] = "server exited (%s): %s" % (srv.proc.returncode, srv.log_tail())
            return rec
        cpu1 = srv.cpu()
        rec["hwm_kb"] = srv.status_kb("VmHWM")
        stdout = out.stdout.decode(errors="replace").strip()
        if out.returncode != 0:
            err = (out.stderr.decode(errors="replace").strip() or stdout).splitlines()
            rec["error"] = "client exit %d: %s" % (out.returncode, " | ".join(err[-3:])[:300])
            return rec
        if client == "pipeline":
            kv = dict(x.split("=", 1) for x in stdout.split())
            rec["pipelined"] = kv.get("pipelined")
            if int(kv["messages"]) != msgs:
                rec["error"] = "only %s of %d messages accepted" % (kv["messages"], msgs)
                return rec
        rec.update(ok=True, seconds=secs, msgs_s=msgs / secs, mb_s=msgs * size / secs / 1e6,
                   cpu_us_msg=cpu_us(cpu0, cpu1) / msgs,
                   cpu_ticks=cpu1[0] - cpu0[0])
        return rec
    except Exception as e:  # a peer that cannot run is recorded, not fatal
        rec["error"] = "%s: %s" % (type(e).__name__, e)
        return rec
    finally:
        for s in servers:
            s.stop()


# ---------------------------------------------------------------------------------------------
# idle connections


def open_idle(port, n, deadline, alive, window=4):
    """Opens n connections, each reads the greeting, sends EHLO and reads its reply.
    Returns (sockets that got there, error text or None)."""
    sel = selectors.EpollSelector()
    ready, started, failed, first_error = [], 0, 0, None
    state = {}  # sock -> [phase, buffer]
    try:
        while len(ready) + failed < n:
            if not alive():
                return ready, "the server exited"
            if time.monotonic() > deadline:
                return ready, "timed out with %d/%d connections after EHLO" % (len(ready), n)
            while started < n and len(state) < window:
                s = socket.socket()
                s.setblocking(False)
                started += 1
                try:
                    s.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
                except OSError as e:
                    s.close()
                    failed += 1
                    first_error = first_error or str(e)
                    continue
                state[s] = ["greeting", b"", time.monotonic()]
                sel.register(s, selectors.EVENT_READ)
            for key, _ in sel.select(timeout=0.5):
                s = key.fileobj
                st = state[s]
                try:
                    data = s.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    data, first_error = None, first_error or str(e)
                if not data:
                    sel.unregister(s)
                    s.close()
                    del state[s]
                    failed += 1
                    first_error = first_error or "closed by the server"
                    continue
                st[1] += data
                lines = st[1].split(b"\r\n")
                done = [l for l in lines[:-1] if len(l) < 4 or l[3:4] == b" "]
                if not done:
                    continue
                code = done[-1][:3]
                if st[0] == "greeting" and code == b"220":
                    st[0], st[1] = "ehlo", b""
                    s.send(b"EHLO idle.example\r\n")
                elif st[0] == "ehlo" and code == b"250":
                    sel.unregister(s)
                    del state[s]
                    ready.append(s)
                else:
                    sel.unregister(s)
                    s.close()
                    del state[s]
                    failed += 1
                    first_error = first_error or "reply %r" % done[-1][:80]
            # a connection stuck for 30 s (the server's backlog dropped it, or it hangs) fails
            now = time.monotonic()
            for s, st in list(state.items()):
                if now - st[2] > 30:
                    sel.unregister(s)
                    s.close()
                    del state[s]
                    failed += 1
                    first_error = first_error or "no %s reply within 30 s" % st[0]
            if failed > max(50, n // 100):
                break
    finally:
        for s in state:
            s.close()
        sel.close()
    err = None
    if len(ready) < n:
        err = "%d/%d connections got through EHLO (%s)" % (len(ready), n, first_error)
    return ready, err


def still_open(socks):
    n = 0
    for s in socks:
        try:
            data = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            if data:  # a 421 or similar: the server is closing it
                continue
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def latency_ms(ctx, port, tries):
    out = []
    for _ in range(tries):
        r = subprocess.run([ctx.pc_bin, "-m", "1", "-l", "1024", "-t", "30",
                            "127.0.0.1:%d" % port], capture_output=True, timeout=40,
                           preexec_fn=pin_client)
        if r.returncode != 0:
            return None
        kv = dict(x.split("=", 1) for x in r.stdout.decode().split())
        out.append(float(kv["seconds"]) * 1000)
    return statistics.median(out)


def idle_run(ctx, peer, rnd):
    n = ctx.sizes["idle"]
    _, mkcmd = ctx.peers[peer]
    rec = dict(workload="idle", peer=peer, client="bench", round=rnd, ok=False, conns=n)
    srv, socks = None, []
    try:
        port = free_port()
        srv = Server(mkcmd(port, 0), port, ctx.tmp, peer)
        srv.wait_ready()
        rec["latency0_ms"] = latency_ms(ctx, port, 1 if ctx.args.quick else 3)
        time.sleep(0.05 if ctx.args.quick else 0.2)
        rss0 = srv.status_kb("VmRSS")
        cpu0 = srv.cpu()
        t0 = time.monotonic()
        socks, err = open_idle(port, n, t0 + ctx.idle_timeout, srv.alive)
        rec["open_s"] = time.monotonic() - t0
        rec["held"] = len(socks)
        time.sleep(0.1 if ctx.args.quick else 0.5)  # let it settle (or, if it failed, die)
        if not srv.alive():
            rec["error"] = "server exited (%s) at %d connections: %s" % (
                srv.proc.returncode, len(socks), srv.log_tail(1))
            return rec
        rss1 = srv.status_kb("VmRSS")
        rec.update(rss_before_kb=rss0, rss_with_kb=rss1, hwm_kb=srv.status_kb("VmHWM"),
                   cpu_us_conn=cpu_us(cpu0, srv.cpu()) / max(1, len(socks)))
        if socks and rss0 is not None and rss1 is not None:
            rec["kb_per_conn"] = (rss1 - rss0) / len(socks)
        rec["latency_ms"] = latency_ms(ctx, port, 1 if ctx.args.quick else 5)
        rec["still_open"] = still_open(socks)
        if err:
            rec["error"] = err
        elif rec["latency_ms"] is None:
            rec["error"] = "the extra message failed while the connections were held"
        elif not srv.alive():
            rec["error"] = "server exited while the connections were held"
        else:
            rec["ok"] = True
        return rec
    except Exception as e:
        rec["error"] = "%s: %s" % (type(e).__name__, e)
        return rec
    finally:
        for s in socks:
            s.close()
        if srv:
            srv.stop()


# ---------------------------------------------------------------------------------------------
# reporting


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    if v is None:
        return "n/a"
    if digits == 0:
        return "{:,.0f}".format(v)
    return "{:,.{}f}".format(v, digits)


def mib(kb):
    return "n/a" if kb is None else "%.1f MiB" % (kb / 1024)


def summarize(runs, wname, client, peer):
    rs = [r for r in runs if r["workload"] == wname and r["client"] == client and
          r["peer"] == peer]
    ok = [r for r in rs if r["ok"]]
    if not rs:
        return None
    s = dict(runs=len(rs), ok=len(ok), errors=sorted({r["error"] for r in rs if not r["ok"]}))
    keys = ["msgs_s", "mb_s", "cpu_us_msg", "hwm_kb", "rss_idle_kb", "kb_per_conn",
            "latency_ms", "latency0_ms", "rss_before_kb", "rss_with_kb", "held", "open_s",
            "cpu_us_conn", "still_open"]
    for k in keys:
        s[k] = med([r.get(k) for r in ok])
    if wname == "idle" and not ok:  # show how far a failing peer got
        s["held"] = med([r.get("held") for r in rs])
    pipes = {r.get("pipelined") for r in ok if r.get("pipelined")}
    s["lockstep"] = bool(pipes) and all(p.split("/")[0] == "0" for p in pipes)
    return s


def ratio(a, b):
    if a is None or not b:
        return "n/a"
    r = a / b
    return "%.3f" % r if r < 0.1 else "%.2f" % r


def table_throughput(runs, wname, client, out):
    w = WORKLOADS[wname]
    sessions, msgs, per_conn, size = CTX.sizes[wname]
    relay = w["peers"] is RELAY_PEERS
    sz = "%d KiB" % (size // 1024) if size < 1048576 else "%d MiB" % (size // 1048576)
    desc = "%d message%s of %s" % (msgs, "s" if msgs > 1 else "", sz)
    if per_conn == 1:
        desc += ", a new connection for each, %d at a time" % sessions
    else:
        desc += " over %d connection%s" % (sessions, "s" if sessions > 1 else "")
    out.append("### %s, client %s: %s (%s)" % (wname, client, w["title"], desc))
    out.append("")
    head = ["peer", "msgs/s", "MB/s", "CPU µs/msg", "peak RSS"]
    if wname == "1x10m":
        head.append("peak above idle")
    head.append("ratio msgs/s vs smtp-sink")
    if relay:
        head.append("ratio vs py-pureproxy")
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    base = summarize(runs, wname, client, "smtp-sink")
    pbase = summarize(runs, wname, client, "py-pureproxy") if relay else None
    notes, lockstep = [], False
    for peer in CTX.peer_order(wname):
        s = summarize(runs, wname, client, peer)
        if s is None:
            continue
        name = peer + (" (direct)" if relay and peer == "smtp-sink" else "")
        if s["lockstep"]:
            name += " ¹"
            lockstep = True
        if s["ok"] == 0:
            row = [name, "failed"] + ["n/a"] * (len(head) - 2)
            notes.append("%s: %s" % (peer, "; ".join(s["errors"])[:400]))
        else:
            row = [name, fmt(s["msgs_s"]), fmt(s["mb_s"], 2), fmt(s["cpu_us_msg"]),
                   mib(s["hwm_kb"])]
            if wname == "1x10m":
                row.append(mib(s["hwm_kb"] - s["rss_idle_kb"]) if s["rss_idle_kb"] else "n/a")
            row.append(ratio(s["msgs_s"], base and base["ok"] and base["msgs_s"]))
            if relay:
                row.append(ratio(s["msgs_s"], pbase and pbase["ok"] and pbase["msgs_s"]))
            if s["ok"] < s["runs"]:
                row[0] += " (%d/%d runs ok)" % (s["ok"], s["runs"])
                notes.append("%s: %s" % (peer, "; ".join(s["errors"])[:400]))
        out.append("| " + " | ".join(row) + " |")
    if lockstep:
        notes.append("¹ does not advertise PIPELINING: the pipelining client went lock-step")
    for n in notes:
        out.append("")
        out.append("- " + n)
    out.append("")


def table_idle(runs, out):
    n = CTX.sizes["idle"]
    out.append("### idle: %d idle connections after EHLO" % n)
    out.append("")
    head = ["peer", "held", "RSS before", "RSS with", "KiB/conn", "CPU µs/conn",
            "1 msg latency idle", "1 msg latency with %d" % n, "ratio KiB/conn vs smtp-sink"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    base = summarize(runs, "idle", "bench", "smtp-sink")
    notes = []
    for peer in CTX.peer_order("idle"):
        s = summarize(runs, "idle", "bench", peer)
        if s is None:
            continue
        if s["ok"] == 0:
            held = "failed (%s/%d)" % (fmt(s["held"]), n) if s["held"] is not None else "failed"
            row = [peer, held] + ["n/a"] * (len(head) - 2)
            notes.append("%s: %s" % (peer, "; ".join(s["errors"])[:400]))
        else:
            row = [peer + ("" if s["ok"] == s["runs"] else " (%d/%d runs ok)" % (s["ok"], s["runs"])),
                   fmt(s["held"]), mib(s["rss_before_kb"]), mib(s["rss_with_kb"]),
                   fmt(s["kb_per_conn"], 1), fmt(s["cpu_us_conn"]),
                   fmt(s["latency0_ms"], 2) + " ms", fmt(s["latency_ms"], 2) + " ms",
                   ratio(s["kb_per_conn"], base and base["ok"] and base["kb_per_conn"])]
            if s["ok"] < s["runs"]:
                notes.append("%s: %s" % (peer, "; ".join(s["errors"])[:400]))
        out.append("| " + " | ".join(row) + " |")
    for note in notes:
        out.append("")
        out.append("- " + note)
    out.append("")


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return dict(nproc=os.cpu_count(), cpu=model, kernel=platform.release(),
                python=platform.python_version(),
                date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                loadavg=" ".join("%.2f" % x for x in os.getloadavg()))


# ---------------------------------------------------------------------------------------------


class Ctx:
    def peer_order(self, wname):
        return [p for p in WORKLOADS[wname]["peers"] if p in self.selected]


CTX = Ctx()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes, one round: a few seconds, to keep the bench working")
    ap.add_argument("--rounds", type=int, default=None, help="rounds for medians (default 3; "
                    "1 with --quick)")
    ap.add_argument("--only", default="", help="peers, comma-separated: " +
                    ", ".join(peers("luasmtpd")))
    ap.add_argument("--workload", default="", help="workloads, comma-separated: " +
                    ", ".join(WORKLOADS))
    ap.add_argument("--client", default="", help="load generators: smtp-source, pipeline")
    ap.add_argument("--json", metavar="FILE", help="save the raw numbers of every run")
    ap.add_argument("--luasmtpd", default=os.path.join(REPO, "build", "luasmtpd"))
    ap.add_argument("--idle-conns", type=int, default=None,
                    help="connections for the idle workload (default 10000; 200 with --quick)")
    ap.add_argument("--force-pipelining", action="store_true",
                    help="the pipelining client pipelines even where PIPELINING is not offered")
    ap.add_argument("--time-limit", type=float, default=3600,
                    help="start no new run after this many seconds (default 3600)")
    args = ap.parse_args()
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if not 1 <= rounds <= 50:
        ap.error("--rounds: 1 to 50")

    all_peers = peers(args.luasmtpd)
    selected = [p.strip() for p in args.only.split(",") if p.strip()] or list(all_peers)
    wl = [w.strip() for w in args.workload.split(",") if w.strip()] or list(WORKLOADS)
    clients = [c.strip() for c in args.client.split(",") if c.strip()] or CLIENTS
    for p in selected:
        if p not in all_peers:
            ap.error("unknown peer %r (%s)" % (p, ", ".join(all_peers)))
    for w in wl:
        if w not in WORKLOADS:
            ap.error("unknown workload %r (%s)" % (w, ", ".join(WORKLOADS)))
    for c in clients:
        if c not in CLIENTS:
            ap.error("unknown client %r (%s)" % (c, ", ".join(CLIENTS)))
    uses = {p for w in wl for p in WORKLOADS[w]["peers"] if p in selected}
    if any(p.startswith("luasmtpd") for p in uses) and not os.access(args.luasmtpd, os.X_OK):
        sys.exit("bench: %s not found; build it first (cd build && cmake .. && make)"
                 % args.luasmtpd)
    for tool in (SMTP_SINK, SMTP_SOURCE, PY):
        if not os.access(tool, os.X_OK):
            sys.exit("bench: %s is missing (Debian: apt-get install postfix python3)" % tool)

    CTX.lua_limits = lua_limits(args.luasmtpd) if os.access(args.luasmtpd, os.X_OK) else []
    all_peers = peers(args.luasmtpd, CTX.lua_limits)
    CTX.args, CTX.peers, CTX.selected = args, all_peers, selected
    CTX.sizes = {w: WORKLOADS[w]["quick" if args.quick else "full"] for w in WORKLOADS}
    if args.idle_conns is not None:
        CTX.sizes["idle"] = args.idle_conns
    CTX.run_timeout = 30 if args.quick else 180
    CTX.idle_timeout = 30 if args.quick else 240

    # the servers inherit the descriptor limit: raise it before starting any
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for lim in (NOFILE, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (lim, max(lim, hard)))
            break
        except (ValueError, OSError):
            continue
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if "idle" in wl and nofile < CTX.sizes["idle"] + 100:
        print("bench: descriptor limit %d is below the idle connections; lowering them" % nofile,
              file=sys.stderr)
        CTX.sizes["idle"] = max(10, nofile - 200)

    pinned = (os.cpu_count() or 1) >= 2
    global SERVER_CPU, CLIENT_CPU
    if not pinned:
        SERVER_CPU = CLIENT_CPU = 0
    os.sched_setaffinity(0, {CLIENT_CPU})  # this process and its clients

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    signal.signal(signal.SIGINT, on_term)  # even where it was inherited ignored

    tmp = tempfile.mkdtemp(prefix="luasmtpd-bench-")
    CTX.tmp = tmp
    runs = []
    m = machine()
    started = time.monotonic()
    interrupted = False
    try:
        CTX.pc_bin = os.path.join(tmp, "pipeline_client")
        cc = shutil.which("cc") or shutil.which("gcc")
        if not cc:
            sys.exit("bench: no C compiler (cc) for pipeline_client.c")
        subprocess.run([cc, "-O2", "-o", CTX.pc_bin, os.path.join(HERE, "pipeline_client.c")],
                       check=True)
        plan = []
        for w in wl:
            wpeers = CTX.peer_order(w)
            for rnd in range(rounds):
                if w == "idle":
                    plan += [(w, p, "bench", rnd) for p in wpeers]
                else:
                    plan += [(w, p, c, rnd) for c in clients for p in wpeers]
        print("bench: %d runs (%d round%s); server on CPU %d, clients on CPU %d" % (
            len(plan), rounds, "s" if rounds > 1 else "", SERVER_CPU, CLIENT_CPU),
            file=sys.stderr)
        for i, (w, p, c, rnd) in enumerate(plan):
            if time.monotonic() - started > args.time_limit:
                print("bench: --time-limit reached; %d runs not done" % (len(plan) - i),
                      file=sys.stderr)
                break
            t_run = time.monotonic()
            rec = idle_run(CTX, p, rnd) if w == "idle" else throughput_run(CTX, w, p, c, rnd)
            rec["wall_s"] = round(time.monotonic() - t_run, 2)
            runs.append(rec)
            if rec["ok"]:
                what = ("%.1f KiB/conn, %.2f ms" % (rec.get("kb_per_conn", 0), rec["latency_ms"])
                        if w == "idle" else "%.0f msgs/s, %.0f µs/msg" % (rec["msgs_s"],
                                                                          rec["cpu_us_msg"]))
            else:
                what = "FAILED: " + rec.get("error", "?")[:200]
            print("  [%d/%d] %-11s %-18s %-11s r%d %5.1fs  %s" % (
                i + 1, len(plan), w, p, c, rnd + 1, rec["wall_s"], what), file=sys.stderr)
    except KeyboardInterrupt:
        interrupted = True
        print("bench: interrupted; the tables below have the runs done so far", file=sys.stderr)
    finally:
        kill_all()
        shutil.rmtree(tmp, ignore_errors=True)

    m["loadavg_end"] = " ".join("%.2f" % x for x in os.getloadavg())
    m["elapsed_s"] = round(time.monotonic() - started, 1)
    out = ["## luasmtpd benchmark", "",
           "- date: %s" % m["date"],
           "- machine: %d CPUs, %s, Linux %s; load average %s at start, %s at end" % (
               m["nproc"], m["cpu"], m["kernel"], m["loadavg"], m["loadavg_end"]),
           "- server pinned to CPU %d, load generator to CPU %d; %d round%s, medians; "
           "%s; %.0f s in all" % (SERVER_CPU, CLIENT_CPU, rounds, "s" if rounds > 1 else "",
                                  "quick sizes" if args.quick else "full sizes", m["elapsed_s"]),
           "- luasmtpd limits raised: %s" % (" ".join(CTX.lua_limits) or "none (not offered)"),
           ""]
    if interrupted:
        out[-1:-1] = ["- **interrupted**: the tables have the runs done until then"]
    for w in wl:
        if w == "idle":
            table_idle(runs, out)
        else:
            for c in clients:
                table_throughput(runs, w, c, out)
    print("\n".join(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=m, args=vars(args), rounds=rounds,
                           sizes={w: CTX.sizes[w] for w in wl}, runs=runs,
                           summary={"%s/%s/%s" % (w, c, p): summarize(runs, w, c, p)
                                    for w in wl for c in (["bench"] if w == "idle" else clients)
                                    for p in CTX.peer_order(w)}),
                      f, indent=1)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
