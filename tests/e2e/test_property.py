"""The relay property test (issue 11, "The proof"): CI's fixed seeds through pureproxy, mailman
with a Mailman 2 wrapper and mailman with Mailman 3 over LMTP, each against hostile upstreams
and clients driven by its seeded random plan (property_plan.py), and the delivery rule checked
per transaction. A failure names each violation's seed, the transaction's whole story (client
commands and replies, upstream actions, what was found where, the server's log meanwhile) and
`tests/property-run --seed N` to replay it; tests/property-run runs any number of seeds.

One seed is one lane: its own luasmtpd (pureproxy, mailman with a stand-in Mailman 2 wrapper, or
mailman with a HostileUpstream as Mailman 3's LMTP server, as the seed says), its own hostile
relay upstream, and a handful of client sessions run one after another, so that the seed replays
the same story (tests/property-run --seed N); some seeds run their sessions three at a time
instead (the same transactions, an interleaving that may vary). Lanes run in parallel, so the
seconds that silent upstreams cost overlap.

The rule, checked per transaction once the lane is over (every upstream connection closed):
- the client got 2xx after the final dot => each recipient it had accepted got exactly one copy
  (at the upstream, at Mailman 3, or as one wrapper run), with this transaction's sender and
  message, and nobody else got one;
- 4xx/5xx after the dot, or no dot sent (RSET, refused DATA, a client that vanished mid-DATA)
  => no copy; the one exception is an upstream that answered 2xx only after the relay's wait
  for it was over (it got the whole message, its answer came too late to be read): then at
  most one copy each, and luasmtpd's log must say that it "may have" been delivered;
- the client sent the dot and left (or gave up waiting) => at most one copy each, only to
  recipients it had accepted;
- no copy carries another transaction's sender or recipients, and no copy is untraceable;
- every command a client sent got its reply before the server closed (after a half-close
  too), unless the server said 421 first; no reply ever takes longer than the bounds here.
A 452 at RCPT (mailman: a recipient needing a second destination) is a recipient not accepted;
the client sends it again in a transaction of its own, as a client must.
"""

import os
import shutil
import stat
import sys
import tempfile
import threading
import time
import traceback
import unittest
from datetime import datetime, timezone

from harness import SLOWDOWN, LuaSmtpd, bound, without_received
from hostile_upstream import Delay, HostileUpstream
from property_plan import (DATA_TIMEOUT, END_LATE, LIST_DOMAIN, LISTS, LUA, MARKER, MAYBE,
                           MESSAGE_LINE, RELAY_RCPT, RELAY_TIMEOUT, SENDER_OF, SETTLE_WAIT,
                           SIZE_LIMIT, WRAPPER, WRAPPER_SLEEP, WRAPPER_TIMEOUT, Config, Planner,
                           Session, SessionPlan, TxnPlan, destinations, relay_key, wrapper_runs)


# ---- one lane ----

class Copy:
    def __init__(self, kind, key, rcpt, sender, data, source, action=None):
        self.kind = kind          # relay, lmtp, mm2
        self.key = key            # the destination's identity (see destinations())
        self.rcpt = rcpt
        self.sender = sender      # None for the wrapper: it gets no envelope
        self.data = data
        self.source = source      # the upstream Transaction, or the wrapper's argv
        self.action = action      # what the upstream did with the end of the message
        m = MARKER.search(data or b"")
        self.t = int(m.group(2)) if m else None
        self.seed = int(m.group(1)) if m else None

    def __repr__(self):
        who = f"{self.kind} {self.key[1]!r}"
        return (f"<copy at {who} from {self.sender!r}, {len(self.data or b'')} bytes, "
                f"marker t={self.t}, end action {self.action}>")


class Violation:
    def __init__(self, cfg, rec, what, story):
        self.seed = cfg.seed
        self.cfg = cfg
        self.t = rec.plan.t if rec else None
        self.what = what
        self.story = story

    def __str__(self):
        return (f"VIOLATION seed {self.seed} ({self.cfg.handler}), transaction "
                f"{self.t}: {self.what}\n  replay: {self.cfg.replay()}\n{self.story}")


class SeedResult:
    def __init__(self, cfg):
        self.cfg = cfg
        self.transactions = 0
        self.copies = 0
        self.outcomes = {}
        self.violations = []
        self.seconds = 0.0


class Lane:
    """Runs one seed: servers up, the sessions one after another, everything settled, checked."""

    def __init__(self, seed, handler=None):
        self.cfg = Config(seed, handler)
        self.plans = {}
        self.records = []
        self.client_problems = []
        self.sessions = {}
        self.next_followup = 1000
        self.lock = threading.Lock()
        self.srv = None

    def plan_of(self, t, halfclosed=False):
        with self.lock:
            if t not in self.plans:
                self.plans[t] = TxnPlan(self.cfg, t, halfclosed=halfclosed)
            return self.plans[t]

    def followup(self, rec):
        with self.lock:
            t = self.next_followup
            self.next_followup += 1
            self.plans[t] = TxnPlan(self.cfg, t, rcpts=list(rec.deferred),
                                    followup_of=rec.plan.t)
        return t

    def t_of_sender(self, sender):
        m = SENDER_OF.match(sender)
        if m and int(m.group(1)) == self.cfg.seed:
            return int(m.group(2))
        return None

    def may_give_up(self, plan):
        """Whether the client waits only PATIENCE for the final reply: where an upstream's
        silence after the message would otherwise hold it for 600 s."""
        if not self.cfg.relay_end_bounded and "silence" in plan.relay["end"]:
            return True
        if self.cfg.handler == "mailman3" and not self.cfg.lmtp_end_bounded and any(
                "silence" in v for v in plan.lmtp["end"].values()):
            return True
        return False

    def write_exits(self, plan):
        if self.cfg.handler == "mailman2":
            with open(os.path.join(self.calls_dir, f"exit.{plan.marker}"), "w") as f:
                f.write("".join(f"{c}\n" for c in plan.wrapper_exits))

    # -- servers --

    def start(self):
        cfg = self.cfg
        self.tmp = tempfile.mkdtemp(prefix="luasmtpd-prop-")
        self.relay_planner = Planner(self, "relay")
        self.relay_up = HostileUpstream(self.relay_planner, extensions=cfg.relay_ext,
                                        hostname="relay.hostile.example")
        self.lmtp_up = None
        sets = {"relay_timeout": str(RELAY_TIMEOUT)}
        for name in cfg.relay_dt + cfg.lmtp_dt:
            sets[name] = str(DATA_TIMEOUT)
        handler = os.path.join(LUA, "pureproxy.lua")
        if cfg.handler != "pureproxy":
            handler = os.path.join(LUA, "mailman.lua")
            if cfg.domains:
                sets["mailman_domains"] = LIST_DOMAIN
            lists = os.path.join(self.tmp, "lists")
            os.mkdir(lists)
            for name in LISTS:
                os.mkdir(os.path.join(lists, name))
            self.calls_dir = os.path.join(self.tmp, "calls")
            os.mkdir(self.calls_dir)
            os.chmod(self.tmp, 0o755)
            os.chmod(self.calls_dir, 0o777)
            wrapper = os.path.join(self.tmp, "wrapper")
            with open(wrapper, "w") as f:
                f.write(WRAPPER.replace("@DIR@", self.calls_dir).replace(
                    "@SLEEP@", str(int(bound(WRAPPER_TIMEOUT) + WRAPPER_SLEEP))))
            os.chmod(wrapper, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH |
                     stat.S_IXOTH)
            sets["mailman_wrapper"] = wrapper
            sets["mailman_lists"] = lists
            sets["mailman_timeout"] = str(bound(WRAPPER_TIMEOUT))
        if cfg.handler == "mailman3":
            self.lmtp_planner = Planner(self, "lmtp")
            self.lmtp_up = HostileUpstream(self.lmtp_planner, lmtp=True,
                                           extensions=cfg.lmtp_ext,
                                           hostname="lmtp.hostile.example")
            sets["mailman_lmtp"] = f"127.0.0.1:{self.lmtp_up.port}"
            sets["mailman_timeout"] = str(RELAY_TIMEOUT)
        self.sets = sets
        self.srv = LuaSmtpd(handler, sets=sets, args=["-s", str(SIZE_LIMIT)],
                            remote=f"127.0.0.1:{self.relay_up.port}")

    def settle(self, up, what):
        """Waits until the upstream is done with every connection it accepted: what it recorded
        then is all it will ever record. False (and a problem noted) if it is not."""
        try:
            up.wait_event("closed", n=up.count("accepted"), timeout=SETTLE_WAIT)
            return True
        except AssertionError:
            self.client_problems.append(
                (None, None, f"{what}: connections still open {bound(SETTLE_WAIT):.0f}s after "
                             "every client left"))
            return False

    def close(self):
        for up in (self.relay_up, self.lmtp_up):
            if up is not None:
                up.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- running --

    def run(self):
        result = SeedResult(self.cfg)
        started = time.monotonic()
        try:
            self.start()
            try:
                for s in range(self.cfg.sessions):
                    self.sessions[s] = Session(self, SessionPlan(self.cfg, s))
                p = self.cfg.parallel
                if p == 1:
                    for s in range(self.cfg.sessions):
                        self.sessions[s].run()
                else:
                    def group(k):
                        for s in range(k, self.cfg.sessions, p):
                            self.sessions[s].run()
                    threads = [threading.Thread(target=group, args=(k,), daemon=True)
                               for k in range(p)]
                    for th in threads:
                        th.start()
                    for th in threads:  # each session's every wait is bounded
                        th.join()
                if self.srv.proc.poll() is not None:
                    self.client_problems.append(
                        (None, None, f"luasmtpd ended (exit status {self.srv.proc.returncode}) "
                                     "before the test stopped it: its log says why, unless "
                                     "something outside sent it a signal"))
                self.settle(self.relay_up, "relay upstream")
                if self.lmtp_up is not None:
                    self.settle(self.lmtp_up, "LMTP upstream")
            finally:
                self.srv.stop()
            Checker(self, result).check()
        except Exception:  # a fault of this test, reported like a finding so it is seen
            result.violations.append(Violation(self.cfg, None, "the property test itself failed",
                                               traceback.format_exc()))
        finally:
            if self.srv is not None:
                shutil.rmtree(self.srv.workdir, ignore_errors=True)
            self.close()
        result.seconds = time.monotonic() - started
        return result


# ---- the checker ----

def _drop_headers(data, names):
    """data with the header fields `names` (lower case) taken out of its header section."""
    sep = b"\r\n\r\n" if b"\r\n\r\n" in data else b"\n\n"
    head, found, body = data.partition(sep)
    eol = sep[:len(sep) // 2]
    lines = head.split(eol)
    kept, skipping = [], False
    for line in lines:
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        name = line.split(b":", 1)[0].strip().lower().decode("ascii", "replace")
        skipping = name in names
        if not skipping:
            kept.append(line)
    return eol.join(kept) + found + body


def _log_time(line):
    try:
        stamp = line.split(" ", 1)[0]
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


class Checker:
    def __init__(self, lane, result):
        self.lane = lane
        self.cfg = lane.cfg
        self.result = result
        self.log = lane.srv.log.snapshot()

    def copies(self):
        out = []
        ups = [("relay", self.lane.relay_up, self.lane.relay_planner)]
        if self.lane.lmtp_up is not None:
            ups.append(("lmtp", self.lane.lmtp_up, self.lane.lmtp_planner))
        for kind, up, planner in ups:
            for txn in up.transactions():
                rcpts = txn.delivered_to()
                if not rcpts:
                    continue
                for r in rcpts:
                    key = relay_key(r) if kind == "relay" else r.lower()
                    action = planner.end_action(txn, r if txn.lmtp else None)
                    out.append(Copy(kind, (kind, key), r, txn.mail_from, txn.data, txn, action))
        if self.cfg.handler == "mailman2":
            for argv, data, code in wrapper_runs(self.lane.calls_dir):
                if code in ("0", "sleep-after") and len(argv) == 2:
                    out.append(Copy("mm2", ("mm2", (argv[0], argv[1])), " ".join(argv), None,
                                    data, argv, code))
        return out

    def check(self):
        lane, res = self.lane, self.result
        copies = self.copies()
        by_t = {}
        for cp in copies:
            by_t.setdefault(cp.t, []).append(cp)
        recs = {rec.plan.t: rec for rec in lane.records}
        for rec in lane.records:
            if not rec.started:
                continue
            res.transactions += 1
            kind = rec.outcome.split(" (")[0]
            res.outcomes[kind] = res.outcomes.get(kind, 0) + 1
            mine = by_t.get(rec.plan.t, [])
            if mine and rec.final is not None and rec.final.code >= 300:
                res.outcomes["(of which a copy kept after a lost answer)"] = \
                    res.outcomes.get("(of which a copy kept after a lost answer)", 0) + 1
            res.copies += len(mine)
            found = self.check_txn(rec, mine)
            if found:
                what = found[0] if len(found) == 1 else f"{len(found)} problems:" + "".join(
                    f"\n  - {w}" for w in found)
                res.violations.append(Violation(self.cfg, rec, what, self.story(rec, mine)))
        for cp in copies:
            if cp.t is None or cp.seed != self.cfg.seed or cp.t not in recs:
                res.violations.append(Violation(
                    self.cfg, None, f"a copy no transaction of this seed sent: {cp!r}",
                    f"  data: {cp.data[:400]!r}"))
        for what, txn in self.unoffered():
            t = lane.t_of_sender(txn.mail_from or "")
            rec = recs.get(t)
            res.violations.append(Violation(self.cfg, rec, what, self.story(
                rec, by_t.get(t, [])) if rec else self.server_story()))
        for t, s, text in lane.client_problems:
            rec = recs.get(t)
            res.violations.append(Violation(self.cfg, rec, text,
                                            self.story(rec, by_t.get(t, [])) if rec else
                                            self.server_story()))
        srv = lane.srv
        if srv.returncode != 0 or srv.killed:
            res.violations.append(Violation(self.cfg, None,
                                            f"luasmtpd exit status {srv.returncode} after "
                                            f"SIGTERM{' (killed)' if srv.killed else ''}",
                                            self.server_story()))
        bad = srv.unexpected_errors()
        if bad:
            res.violations.append(Violation(self.cfg, None, "error lines in luasmtpd's log",
                                            "\n".join("    " + l for l in bad[:40])))

    def unoffered(self):
        """What an upstream got that it had not offered (issue 11 item 7): 8-bit data without
        8BITMIME (or SMTPUTF8 in use), a MAIL parameter for an extension it did not name, more
        than its SIZE. An upstream that was greeted with HELO (its EHLO refused) offered
        nothing. Yields (problem, upstream transaction)."""
        ups = [("relay", self.lane.relay_up, self.cfg.relay_ext)]
        if self.lane.lmtp_up is not None:
            ups.append(("LMTP", self.lane.lmtp_up, self.cfg.lmtp_ext))
        needs = {"BODY": "8BITMIME", "SIZE": "SIZE", "SMTPUTF8": "SMTPUTF8"}
        for name, up, ext in ups:
            helo = {conn for conn, line in up.commands() if line[:4].upper() == b"HELO"}
            for txn in up.transactions():
                offered = {} if txn.conn in helo else {
                    e.split()[0].upper(): e.split()[1:] for e in ext}
                params = [p.split("=", 1)[0].upper() for p in txn.mail_params.split()]
                for p in params:
                    if needs.get(p, p) not in offered:
                        yield (f"the {name} upstream got MAIL FROM:<{txn.mail_from}> with {p}, "
                               f"an extension it did not offer (offered: {sorted(offered)})",
                               txn)
                if txn.data is None:
                    continue
                eight = any(b >= 0x80 for b in txn.data)
                if eight and "8BITMIME" not in offered and not (
                        "SMTPUTF8" in offered and "SMTPUTF8" in params):
                    yield (f"the {name} upstream got an 8-bit message from {txn.mail_from} "
                           f"without offering 8BITMIME (offered: {sorted(offered)})", txn)
                limit = offered.get("SIZE")
                if limit and limit[0].isdigit() and len(txn.data) > int(limit[0]):
                    yield (f"the {name} upstream got {len(txn.data)} bytes from "
                           f"{txn.mail_from}, over its SIZE {limit[0]}", txn)

    def check_txn(self, rec, copies):
        plan = rec.plan
        out = []
        accepted = rec.accepted
        allowed = set()
        for r in accepted:
            allowed |= destinations(r)
        # Each copy on its own: sender, content, recipient.
        for cp in copies:
            if cp.sender is not None and cp.sender != plan.sender:
                out.append(f"{cp!r} carries sender {cp.sender!r}, not this transaction's "
                           f"{plan.sender!r}")
            problem = self.content_problem(cp, rec.message)
            if problem:
                out.append(f"{cp!r}: {problem}")
            if cp.key not in allowed:
                out.append(f"{cp!r} went to {cp.rcpt!r}, not a recipient accepted in this "
                           f"transaction (accepted: {accepted})")
        # Never two copies at one destination.
        seen = {}
        for cp in copies:
            seen.setdefault(cp.key, []).append(cp)
        for key, cps in seen.items():
            if len(cps) > 1:
                out.append(f"{len(cps)} copies at {key[0]} for {key[1]!r}: {cps!r}")
        # The upstream transactions that took this sender: no recipient of another transaction.
        for name, up in (("relay", self.lane.relay_up), ("lmtp", self.lane.lmtp_up)):
            if up is None:
                continue
            for txn in up.transactions():
                if txn.mail_from != plan.sender or not txn.delivered:
                    continue
                mine = {relay_key(r) for r in plan.rcpts} | {r.lower() for r in plan.rcpts}
                for r in txn.rcpts:
                    if relay_key(r) not in mine and r.lower() not in mine:
                        m = RELAY_RCPT.match(r)
                        out.append(f"the {name} upstream's transaction from {plan.sender} "
                                   f"carried {r}, which this transaction never gave" +
                                   (f" (a recipient of transaction {m.group(1)})" if m else ""))
        final = rec.final
        if final is not None and 200 <= final.code < 300:
            if not accepted:
                out.append(f"final reply {final.code} with no recipient accepted")
            for r in accepted:
                n = sum(len(seen.get(k, [])) for k in destinations(r))
                if n == 0:
                    out.append(f"client got {final.code} but {r!r} got no copy anywhere "
                               f"(copies: {copies!r})")
                elif n > 1:
                    out.append(f"{r!r} got {n} copies: " +
                               repr([cp for k in destinations(r) for cp in seen.get(k, [])]))
        elif final is not None:
            for cp in copies:
                # A lost answer: the upstream's 2xx came after the relay stopped waiting for it,
                # or the wrapper was killed after it had the message (planned, or a run the
                # load made slow: the server's log says which).
                lost = (cp.kind in ("relay", "lmtp") and isinstance(cp.action, Delay) and
                        cp.action.seconds >= END_LATE and self.cfg_end_bounded(cp.kind)) or (
                        cp.kind == "mm2" and (cp.action == "sleep-after" or
                                              self.said_maybe(rec)))
                if not lost:
                    why = ("the wrapper exited 0" if cp.kind == "mm2" else
                           f"the upstream acknowledged it with {cp.action} (within the relay's "
                           "wait)")
                    out.append(f"client got {final.code} but {cp!r} was kept: {why}")
            if copies and not any("was kept" in o for o in out) and not self.said_maybe(rec):
                out.append(f"client got {final.code}, a copy was kept after a lost answer, "
                           "and the log does not say it may have been delivered")
        elif not rec.dot_sent:
            for cp in copies:
                out.append(f"no message was sent (outcome: {rec.outcome}) but {cp!r} exists")
        # else: the client left after the dot; at most one copy each, checked above.
        return out

    def cfg_end_bounded(self, kind):
        return self.cfg.relay_end_bounded if kind == "relay" else self.cfg.lmtp_end_bounded

    def content_problem(self, cp, message):
        data = cp.data or b""
        eol = b"\r\n" if b"\r\n" in data else b"\n"
        try:
            rest = without_received(data, eol)
        except (AssertionError, ValueError) as e:
            return f"no well-formed Received: on top ({str(e)[:200]})"
        drop = {"x-peer"} | ({"subject"} if cp.kind == "mm2" else set())
        got = _drop_headers(rest, drop).replace(b"\r\n", b"\n")
        want = _drop_headers(message, drop).replace(b"\r\n", b"\n")
        if got != want:
            i = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]),
                     min(len(got), len(want)))
            return (f"the message differs from what the client sent ({len(got)} vs "
                    f"{len(want)} bytes; first difference at {i}: {got[i:i + 60]!r} vs "
                    f"{want[i:i + 60]!r})")
        return None

    def said_maybe(self, rec):
        """Whether the log says, for this transaction, that a copy may have been kept: a "may
        have" line after the previous transaction's message line and before this one's (with
        sessions in parallel: one logged while the transaction ran)."""
        if self.cfg.parallel > 1:
            w0, w1 = (rec.w0 or 0) - 0.05, (rec.w1 or time.time()) + 0.05
            return any(MAYBE.search(l) and w0 <= (_log_time(l) or 0) <= w1 for l in self.log)
        prev = -1
        for i, line in enumerate(self.log):
            m = MESSAGE_LINE.search(line)
            if not m:
                continue
            if m.group(2) == rec.plan.sender:
                return any(MAYBE.search(l) for l in self.log[prev + 1:i])
            prev = i
        return False

    def server_story(self):
        return "  luasmtpd's log (last lines):\n" + "\n".join(
            "    " + l for l in self.log[-30:])

    def story(self, rec, copies):
        """All of one transaction: the plan, the dialogue, what the upstreams did, what was
        found where, and luasmtpd's log while it ran."""
        plan = rec.plan
        out = [f"  config: {self.cfg.describe()}",
               f"  session {rec.session}, transaction {plan.t}" +
               (f" (a follow-up of {plan.followup_of} for its 452 recipients)"
                if plan.followup_of is not None else "") + f"; outcome: {rec.outcome}"]
        out += ["  " + l for l in plan.describe()]
        if self.cfg.handler == "mailman3":
            out.append(f"  lmtp plan: {plan.lmtp}")
        if self.cfg.handler == "mailman2":
            out.append(f"  wrapper exit statuses: {plan.wrapper_exits}")
        out.append(f"  accepted: {rec.accepted}; 452: {rec.deferred}; final: "
                   f"{rec.final.lines if rec.final else None}")
        sess = self.lane.sessions.get(rec.session)
        if sess is not None:
            out.append(f"  session {rec.session} ({sess.plan.mode}, ends {sess.plan.end}, "
                       f"transactions {sess.plan.txns}); its own lines:")
            out += ["    " + l for l in sess.dialogue]
        out.append("  this transaction's dialogue:")
        out += ["    " + l for l in rec.dialogue]
        t0, t1 = rec.t0 or 0, (rec.t1 or time.monotonic()) + 0.5
        planners = [("relay", self.lane.relay_planner)]
        if self.lane.lmtp_up is not None:
            planners.append(("lmtp", self.lane.lmtp_planner))
        for name, planner in planners:
            # This transaction's commands, those of any upstream transaction that kept one of
            # its copies (another transaction's, when they got mixed up), and the connections'
            # own steps (greeting, EHLO, RSET, QUIT) meanwhile.
            sources = [cp.source for cp in copies if cp.kind == name]
            conns = {d.conn for d in planner.log
                     if d.t == plan.t or any(d.txn is src for src in sources)}
            busy = {d.conn for d in planner.log if d.t is not None}
            rows = [d for d in planner.log
                    if d.t == plan.t or any(d.txn is src for src in sources) or (
                        d.t is None and t0 <= d.when <= t1 and
                        (d.conn in conns or d.conn not in busy)) or (
                        d.conn in conns and d.stage == "mail" and d.t is not None)]
            out.append(f"  {name} upstream actions:")
            for d in rows:
                shown = d.line[:80].decode("utf-8", "replace")
                out.append(f"    +{d.when - t0:6.2f}s conn {d.conn} {d.stage} {shown!r}"
                           f"{' for ' + d.rcpt if d.rcpt else ''} -> {d.action}")
        for name, up in (("relay", self.lane.relay_up), ("lmtp", self.lane.lmtp_up)):
            if up is None:
                continue
            mine = [txn for txn in up.transactions() if txn.mail_from == plan.sender]
            out.append(f"  {name} upstream transactions from this sender: {mine!r}")
        out.append(f"  copies found with this transaction's marker: {copies!r}")
        w0, w1 = (rec.w0 or 0) - 0.05, (rec.w1 or time.time()) + 0.5
        lines = [l for l in self.log if (lambda x: x is not None and w0 <= x <= w1)(
            _log_time(l))]
        out.append("  luasmtpd's log meanwhile:")
        out += ["    " + l for l in lines[:60]]
        return "\n".join(out)


# ---- many lanes ----

def run_seed(seed, handler=None):
    return Lane(seed, handler).run()


def run_seeds(seeds, handler=None, lanes=12, deadline=None, on_result=None):
    """Runs the seeds (an iterable; stopped early at `deadline`, a monotonic time) in `lanes`
    parallel lanes; returns the SeedResults in the order they finished."""
    results = []
    lock = threading.Lock()
    it = iter(seeds)

    def worker():
        while True:
            with lock:
                if deadline is not None and time.monotonic() >= deadline:
                    return
                try:
                    seed = next(it)
                except StopIteration:
                    return
            r = run_seed(seed, handler)
            with lock:
                results.append(r)
                if on_result:
                    on_result(r)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def summary(results):
    txns = sum(r.transactions for r in results)
    outcomes = {}
    for r in results:
        for k, v in r.outcomes.items():
            outcomes[k] = outcomes.get(k, 0) + v
    violations = [v for r in results for v in r.violations]
    failing = sorted({(r.cfg.seed, r.cfg.replay()) for r in results if r.violations})
    per = {}
    for r in results:
        per[r.cfg.handler] = per.get(r.cfg.handler, 0) + r.transactions
    lines = [f"{len(results)} seeds, {txns} transactions checked ("
             + ", ".join(f"{k} {v}" for k, v in sorted(per.items())) + "), "
             f"{sum(r.copies for r in results)} copies traced, {len(violations)} "
             f"violations in {len(failing)} seeds",
             "outcomes: " + ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))]
    for seed, replay in failing:
        n = sum(len(r.violations) for r in results if r.cfg.seed == seed)
        lines.append(f"  failing seed {seed}: {n} violation(s); replay: {replay}")
    return "\n".join(lines)


# ---- CI ----

# Seeds 1..CI_SEEDS; seed % 3 picks the handler, so each gets a third. About 16 transactions a
# seed: at least 2,000 in all, checked below.
CI_SEEDS = 150
MIN_TRANSACTIONS = 2000
# Seeds run at once. Most of a lane's time is waiting on timeouts, so many overlap well even
# on 2 cores; fewer under the sanitizers, whose servers use the CPU.
LANES = int(os.environ.get("PROPERTY_LANES") or (12 if SLOWDOWN <= 1 else 8))


class TestProperty(unittest.TestCase):
    def test_ci_seeds(self):
        started = time.monotonic()
        results = run_seeds(range(1, CI_SEEDS + 1), lanes=LANES)
        told = summary(results)
        print(f"\n{told}\n{time.monotonic() - started:.0f}s with {LANES} lanes", file=sys.stderr)
        self.assertEqual(len(results), CI_SEEDS)
        violations = [v for r in results for v in r.violations]
        # The stories first, then the summary: the summary names every failing seed.
        self.assertEqual(violations, [], "\n\n".join(map(str, violations)) + "\n\n" + told)
        self.assertGreaterEqual(sum(r.transactions for r in results), MIN_TRANSACTIONS, told)


if __name__ == "__main__":
    unittest.main()
