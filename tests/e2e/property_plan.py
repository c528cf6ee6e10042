"""The property test's plans and players (issue 11, "The proof"): what each seed runs (Config),
each client transaction and what the upstreams do with it (TxnPlan), each client session
(SessionPlan), the hostile upstreams' callable plan (Planner), the Mailman 2 stand-in, and the
client that follows a plan and records what it saw (Session). test_property.py runs a seed's
lane and checks the delivery rule; tests/property-run runs it for as long as asked.

Every transaction has its own sender (s<seed>.t<n>@src.example) and a marker in its body
(PROPMARK-<seed>-<n>), and its relayed recipients are its own (r<n>n<j>@dest.example), so every
copy found anywhere is traced to one transaction. The upstreams' actions are drawn per
transaction (MAIL, each RCPT, DATA, the end of the message) from the transaction's own random
generator, and per connection (greeting, EHLO, RSET, QUIT) from the connection's number, so a
transaction meets the same upstream every time its seed runs.
"""

import os
import random
import re
import socket
import struct
import threading
import time

from harness import Closed, SMTPClient, Timeout, bound, stuff
from hostile_upstream import Delay

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
# The handlers under test: the tree's, or $PROPERTY_LUA_DIR's (to run the test against another
# version of them, as when checking that it catches what was fixed).
LUA = os.environ.get("PROPERTY_LUA_DIR") or os.path.join(ROOT, "lua")

HANDLERS = ("pureproxy", "mailman2", "mailman3")

# Timeouts of the server under test (seconds). Small, so silence costs little; the upstreams'
# slow answers keep a wide margin from each (a late or early reply only changes the story,
# never the rule, but the margins keep the story the plan meant).
RELAY_TIMEOUT = 2          # relay_timeout (and mailman_timeout for LMTP): per command
DATA_TIMEOUT = 8           # the wait for the reply after the message, where it can be set
CMD_SLOW = RELAY_TIMEOUT + 1.5   # an answer slower than the per-command timeout
END_SLOW = RELAY_TIMEOUT + 1.5   # a final answer slower than that, within DATA_TIMEOUT
END_LATE = DATA_TIMEOUT + 2.5    # a final answer after the relay stopped waiting
PATIENCE = 6               # a client that gives up on a final reply that may take 600 s
WRAPPER_TIMEOUT = 3        # mailman_timeout with Mailman 2 (scaled by SLOWDOWN)
WRAPPER_SLEEP = 5          # how much longer than that a slow wrapper takes
SIZE_LIMIT = 65536         # -s: a bigger message gets 552 from the core itself
# Bounds on the client's waits (scaled by harness.SLOWDOWN): the longest chain of upstream
# steps behind one reply (RSET, connect, greeting, EHLO, HELO, MAIL, and once more after a
# dead reused connection) is about 9 x RELAY_TIMEOUT.
REPLY_WAIT = 60
FINAL_WAIT = 60
SETTLE_WAIT = 60

LISTS = ("test", "foo", "foo-bar")
LIST_DOMAIN = "lists.example"
RELAY_DOMAIN = "dest.example"
SUFFIXES = ("admin", "owner", "request", "join", "leave", "bounces", "confirm", "subscribe",
            "unsubscribe")
LIST_ADDRESSES = ("test", "TEST", "Test", "test-request", "test-admin", "test-join",
                  "foo", "Foo", "foo-bar", "FOO-BAR", "foo-bar-admin", "foo-owner",
                  "test-confirm+abc123")

MAYBE = re.compile(r"may have")
MESSAGE_LINE = re.compile(r"session (\d+): message \d+ from <([^>]*)>")
MARKER = re.compile(rb"PROPMARK-(\d+)-(\d+)")
SENDER_OF = re.compile(r"^s(\d+)\.t(\d+)@src\.example$", re.I)
RELAY_RCPT = re.compile(r"^r(\d+)n(\d+)@", re.I)

# Extension sets the relay upstream offers (one per seed).
RELAY_EXTENSIONS = (
    ("PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 10485760", "ENHANCEDSTATUSCODES"),
    ("PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 10485760", "ENHANCEDSTATUSCODES"),
    ("8BITMIME", "ENHANCEDSTATUSCODES"),                  # no PIPELINING: one at a time
    ("PIPELINING", "SIZE 10485760"),                      # no 8BITMIME: 8-bit mail refused
    ("PIPELINING", "8BITMIME", "SIZE 3000"),              # small SIZE: big mail refused
)
LMTP_EXTENSIONS = (
    ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"),
    ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"),
    ("ENHANCEDSTATUSCODES",),
)

# What an upstream does with one command: (weight, action). "slow" and "late" become Delays.
# "ok" is common enough that most transactions get as far as the end of the message, where
# the outcome is decided; every other action still comes up hundreds of times in CI's seeds.
COMMAND_ACTIONS = [(62, "ok"), (6, "4xx"), (6, "5xx"), (2, "wrong"), (5, "multiline"),
                   (3, "long"), (3, "control"), (3, "extra"), (2, "silence"), (2, "close"),
                   (2, "reset"), (2, "slow")]
END_ACTIONS = [(40, "ok"), (6, "4xx"), (6, "5xx"), (3, "wrong"), (5, "multiline"),
               (5, "long"), (5, "control"), (4, "extra"), (4, "close"), (4, "reset"),
               (8, "slow"), (2, "silence"), (3, "late")]
CONN_ACTIONS = [(88, "ok"), (2, "4xx"), (2, "5xx"), (1, "wrong"), (2, "multiline"), (1, "long"),
                (1, "control"), (1, "extra"), (1, "silence"), (1, "close"), (1, "reset")]
LATER_ACTIONS = [(80, "ok"), (4, "4xx"), (3, "5xx"), (2, "wrong"), (2, "multiline"),
                 (1, "long"), (1, "control"), (2, "extra"), (1, "silence"), (2, "close"),
                 (2, "reset")]
NOT_A_LIST = [(85, "5xx"), (8, "ok"), (5, "4xx"), (2, "silence")]
# What the Mailman 2 wrapper does: exit with a status, or outlive mailman_timeout before it
# takes the message (killed: no copy) or after it delivered it (killed: a copy, the answer lost).
WRAPPER_EXITS = [(64, "0"), (13, "75"), (13, "1"), (4, "sleep-before"), (6, "sleep-after")]


def pick(rng, table):
    total = sum(w for w, _ in table)
    x = rng.random() * total
    for w, item in table:
        x -= w
        if x < 0:
            return item
    return table[-1][1]


def setting_names(path):
    """The data-timeout settings a handler file reads (smtpd.settings.<...data_timeout...>)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return []
    return sorted(set(re.findall(r"settings\s*(?:\.|\[\s*[\"'])(\w*data_timeout\w*)", text)))


# ---- addresses and where a copy for one goes ----

def relay_key(address):
    """pureproxy's identity of a recipient: the local part exactly, the domain in any case."""
    local, at, domain = address.rpartition("@")
    return (local + at + domain.lower()) if at else address


def list_command(address):
    """(command, list) the wrapper runs for a Mailman 2 list address, or None (mailman.lua's
    rule: the longest existing list name, a known suffix or none; '+...' ignored)."""
    local = address.rpartition("@")[0].lower()
    local = local.split("+", 1)[0]
    if not re.match(r"^\w[\w._-]*$", local, re.A):
        return None
    parts = local.split("-")
    for i in range(len(parts), 0, -1):
        name, rest = "-".join(parts[:i]), "-".join(parts[i:])
        if rest == "" or rest in SUFFIXES:
            if name in LISTS:
                return ("post" if rest == "" else rest, name)
    return None


def destinations(address):
    """Every place a copy for `address` may legitimately be, as (kind, key)."""
    out = {("relay", relay_key(address)), ("lmtp", address.lower())}
    cmd = list_command(address)
    if cmd:
        out.add(("mm2", cmd))
    return out


# ---- the plan ----

class Config:
    """What a seed's lane runs: the handler and the servers' settings."""

    def __init__(self, seed, handler=None):
        rng = random.Random(f"{seed}:config")
        self.seed = seed
        self.handler = handler or HANDLERS[seed % len(HANDLERS)]
        self.forced = handler is not None
        self.domains = self.handler != "pureproxy" and rng.random() < 0.6
        self.relay_ext = rng.choice(RELAY_EXTENSIONS)
        self.lmtp_ext = rng.choice(LMTP_EXTENSIONS)
        self.sessions = rng.randint(6, 8)
        # Some seeds run their sessions three at a time: what one session does must not leak
        # into another's (the upstream connection, a transaction's state). Such a seed replays
        # the same transactions, not always in the same interleaving.
        self.parallel = 3 if rng.random() < 0.3 else 1
        self.relay_dt = setting_names(os.path.join(LUA, "smtpd", "proxy.lua"))
        self.lmtp_dt = ([n for n in setting_names(os.path.join(LUA, "mailman.lua"))
                         if n not in self.relay_dt] if self.handler == "mailman3" else [])
        # Where no setting bounds the wait for the final reply, it is 600 s: no silence and no
        # late answer there, only clients that give up.
        self.relay_end_bounded = bool(self.relay_dt)
        self.lmtp_end_bounded = bool(self.lmtp_dt)

    def describe(self):
        bits = [self.handler]
        if self.handler != "pureproxy":
            bits.append("mailman_domains=" + (LIST_DOMAIN if self.domains else "(none)"))
        bits.append("relay extensions " + ",".join(self.relay_ext))
        if self.handler == "mailman3":
            bits.append("lmtp extensions " + ",".join(self.lmtp_ext))
        if self.parallel > 1:
            bits.append(f"sessions {self.parallel} at a time")
        bits.append("final-reply timeout setting: " +
                    (",".join(self.relay_dt + self.lmtp_dt) or "none (600 s)"))
        return "; ".join(bits)

    def replay(self):
        cmd = f"tests/property-run --seed {self.seed}"
        return cmd + (f" --handler {self.handler}" if self.forced else "")


def _action(rng, table, end_bounded=True):
    a = pick(rng, table)
    if a == "slow":
        return Delay(END_SLOW if table is END_ACTIONS else CMD_SLOW, "ok")
    if a == "late":  # only where the wait can be set short; else 600 s (RFC 5321 4.5.3.2.6)
        return Delay(END_LATE, "ok") if end_bounded else "ok"
    # A silence after the message where the wait is 600 s: the client gives up (PATIENCE).
    return a


def _actions(rng, table, n=3, end_bounded=True):
    """Actions for a stage's first n occurrences in a transaction (after that: "ok")."""
    return [_action(rng, table, end_bounded) for _ in range(n)]


class TxnPlan:
    """One client transaction and what the upstreams do with it."""

    def __init__(self, cfg, t, rcpts=None, followup_of=None, halfclosed=False):
        rng = random.Random(f"{cfg.seed}:{cfg.handler}:txn:{t}")
        self.t = t
        self.followup_of = followup_of
        self.sender = f"s{cfg.seed}.t{t}@src.example"
        self.marker = f"PROPMARK-{cfg.seed}-{t}"
        self.rcpts = rcpts if rcpts is not None else self._recipients(cfg, rng, t)
        # How the client ends the transaction: with the message (None), or abandoned by RSET
        # or by a new EHLO (which resets it too, RFC 5321 4.1.4), by leaving (during RCPT,
        # mid-DATA, right after the dot), without DATA at all; or by going on to DATA after
        # MAIL was refused.
        self.abort = pick(rng, [(72, None), (8, "rset"), (3, "ehlo"), (3, "vanish_rcpt"),
                                (5, "vanish_data"), (3, "vanish_after_dot"), (3, "no_data"),
                                (3, "data_anyway")])
        self.kind = pick(rng, [(72, "plain"), (10, "big"), (6, "oversize"), (12, "8bit")])
        self.mail_params = ""
        if self.kind == "8bit" and rng.random() < 0.6:
            self.mail_params = " BODY=8BITMIME"
        elif rng.random() < 0.1:
            self.mail_params = " SIZE=1000"
        self.message = self._message(cfg, rng)
        self.followup = rng.random() < 0.75
        self.relay = {"mail": _actions(rng, COMMAND_ACTIONS),
                      "rcpt": {relay_key(r): _actions(rng, COMMAND_ACTIONS) for r in self.rcpts},
                      "data": _actions(rng, COMMAND_ACTIONS),
                      "end": _actions(rng, END_ACTIONS, end_bounded=cfg.relay_end_bounded)}
        self.lmtp = {"mail": _actions(rng, COMMAND_ACTIONS),
                     "rcpt": {}, "data": _actions(rng, COMMAND_ACTIONS), "end": {}}
        for r in self.rcpts:
            key = r.lower()
            table = COMMAND_ACTIONS if list_command(r) else NOT_A_LIST
            self.lmtp["rcpt"][key] = _actions(rng, table)
            self.lmtp["end"][key] = _actions(rng, END_ACTIONS, end_bounded=cfg.lmtp_end_bounded)
        self.wrapper_exits = [pick(rng, WRAPPER_EXITS) for _ in range(3)]
        self.pipeline_next = rng.random() < 0.5
        if halfclosed:
            # A client that half-closed cannot give up waiting in a way the server sees (after
            # the FIN it reads nothing more, so a reset goes unnoticed until it writes): where
            # the wait for the final reply is 600 s, the upstream closes instead of staying
            # silent, so the lane stays short.
            if not cfg.relay_end_bounded:
                self.relay["end"] = ["close" if a == "silence" else a for a in self.relay["end"]]
            if not cfg.lmtp_end_bounded:
                for k, v in self.lmtp["end"].items():
                    self.lmtp["end"][k] = ["close" if a == "silence" else a for a in v]

    @staticmethod
    def _recipients(cfg, rng, t):
        n = pick(rng, [(40, 1), (30, 2), (20, 3), (10, 4)])
        out = []
        for j in range(n):
            if cfg.handler == "pureproxy" or rng.random() < 0.45:
                out.append(f"r{t}n{j}@{RELAY_DOMAIN}")
            elif rng.random() < 0.85:
                out.append(rng.choice(LIST_ADDRESSES) + "@" + LIST_DOMAIN)
            else:
                out.append(rng.choice(("nolist", "test-nosuch", "bar")) + "@" + LIST_DOMAIN)
        # Duplicates: the same address again, the domain in another case, the local part in
        # another case (a different mailbox for a relay, the same list for Mailman).
        for _ in range(2):
            if rng.random() < 0.25:
                r = rng.choice(out)
                local, _, domain = r.rpartition("@")
                how = rng.randrange(3)
                if how == 1:
                    r = local + "@" + domain.upper()
                elif how == 2:
                    r = local.upper() + "@" + domain
                out.insert(rng.randrange(len(out) + 1), r)
        return out

    def _message(self, cfg, rng):
        head = (f"From: <{self.sender}>\r\nTo: <{self.rcpts[0]}>\r\n"
                f"Subject: property seed {cfg.seed} transaction {self.t}\r\n"
                f"Message-ID: <{self.marker}@src.example>\r\n"
                "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n")
        lines = [self.marker, ".a line that starts with a dot", ".", ".."]
        if self.kind == "8bit":
            lines.append("caf\u00e9 \u2014 8-bit text")
        size = {"big": 5000 + rng.randrange(40000), "oversize": SIZE_LIMIT + 20000}.get(
            self.kind, rng.randrange(600))
        filler = f"{self.marker} filler line " + "x" * 50
        while sum(len(l) + 2 for l in lines) < size:
            lines.append(filler)
        return head.encode() + "".join(l + "\r\n" for l in lines).encode("utf-8")

    def short_message(self):
        """The message a blind pipelining client sends: few lines, since each may become a
        command (and an error) when DATA is refused."""
        return (f"From: <{self.sender}>\r\nMessage-ID: <{self.marker}@src.example>\r\n"
                "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n"
                f"{self.marker}\r\n").encode()

    def describe(self):
        def fmt(actions):
            return "[" + ", ".join(map(str, actions)) + "]"
        out = [f"client: MAIL FROM:<{self.sender}>{self.mail_params}, RCPT {self.rcpts}, "
               f"abort={self.abort}, message={self.kind} ({len(self.message)} bytes)"]
        up = self.relay
        out.append(f"relay plan: mail {fmt(up['mail'])}, rcpt " +
                   ", ".join(f"{k} {fmt(v)}" for k, v in up["rcpt"].items()) +
                   f", data {fmt(up['data'])}, end {fmt(up['end'])}")
        return out


class SessionPlan:
    def __init__(self, cfg, s):
        rng = random.Random(f"{cfg.seed}:{cfg.handler}:session:{s}")
        self.s = s
        self.mode = pick(rng, [(45, "lockstep"), (40, "pipelined"), (15, "blind")])
        self.end = pick(rng, [(50, "quit"), (30, "quit_halfclose"), (12, "vanish"),
                              (8, "reset")])
        if self.mode == "blind":
            self.end = "quit_halfclose"
        n = pick(rng, [(30, 1), (35, 2), (25, 3), (10, 4)])
        if self.mode == "blind":
            n = min(n, 2)
        self.txns = [s * 10 + i for i in range(n)]


# ---- the upstreams' side ----

class Planner:
    """The callable plan of one HostileUpstream: decides each action (per transaction where the
    command names one, per connection otherwise) and records it."""

    def __init__(self, lane, name):
        self.lane = lane
        self.name = name
        self.lock = threading.Lock()
        self.counts = {}
        self.log = []  # Decision rows, in order

    def _count(self, key):
        n = self.counts.get(key, 0)
        self.counts[key] = n + 1
        return n

    def _txn(self, step):
        """The transaction (t) a step belongs to, or None."""
        if step.stage == "mail":
            m = re.match(rb"(?i)MAIL FROM:<([^>]*)>", step.line)
            return self.lane.t_of_sender(m.group(1).decode("utf-8", "replace")) if m else None
        txn = step.transaction
        if txn is not None and txn.mail_from is not None:
            t = self.lane.t_of_sender(txn.mail_from)
            if t is not None:
                return t
        if step.stage == "rcpt":
            m = re.match(rb"(?i)RCPT TO:<([^>]*)>", step.line)
            if m:
                r = RELAY_RCPT.match(m.group(1).decode("utf-8", "replace"))
                if r:
                    return int(r.group(1))
        return None

    def decide(self, step):
        t = self._txn(step)
        plan = self.lane.plans.get(t) if t is not None else None
        action = None
        if plan is not None and step.stage in ("mail", "rcpt", "data", "end"):
            table = plan.relay if self.name == "relay" else plan.lmtp
            actions = table[step.stage]
            key = None
            if step.stage == "rcpt":
                m = re.match(rb"(?i)RCPT TO:<([^>]*)>", step.line)
                addr = m.group(1).decode("utf-8", "surrogateescape") if m else ""
                key = relay_key(addr) if self.name == "relay" else addr.lower()
                actions = actions.get(key)
            elif step.stage == "end" and self.name == "lmtp":
                key = (step.rcpt or "").lower()
                actions = actions.get(key)
            if actions is not None:
                n = self._count((t, step.stage, key))
                action = actions[n] if n < len(actions) else "ok"
        if action is None:
            n = self._count((step.conn, step.stage))
            rng = random.Random(f"{self.lane.cfg.seed}:{self.lane.cfg.handler}:{self.name}:"
                                f"{step.conn}:{step.stage}:{n}")
            table = CONN_ACTIONS if step.stage in ("greeting", "ehlo") else LATER_ACTIONS
            if step.stage in ("mail", "rcpt", "data"):
                table = COMMAND_ACTIONS
            bounded = (self.lane.cfg.relay_end_bounded if self.name == "relay"
                       else self.lane.cfg.lmtp_end_bounded)
            action = _action(rng, END_ACTIONS if step.stage == "end" else table, bounded)
        return t, action

    def __call__(self, step):
        with self.lock:
            t, action = self.decide(step)
            self.log.append(Decision(time.monotonic(), step.conn, step.stage, step.line,
                                     step.rcpt, action, t, step.transaction))
        return action

    def end_action(self, txn, rcpt=None):
        """What this upstream did with the end of txn's message (for rcpt, over LMTP)."""
        for d in self.log:
            if d.txn is txn and d.stage == "end" and (rcpt is None or d.rcpt == rcpt):
                return d.action
        return None


class Decision:
    __slots__ = ("when", "conn", "stage", "line", "rcpt", "action", "t", "txn")

    def __init__(self, when, conn, stage, line, rcpt, action, t, txn):
        self.when, self.conn, self.stage, self.line = when, conn, stage, line
        self.rcpt, self.action, self.t, self.txn = rcpt, action, t, txn


# The stand-in for Mailman 2's mail wrapper (fake_mailman.py's takes one exit status for all
# runs and records none; here each transaction has its own, read by the marker in the message,
# and each run's is kept). Each run that took the message leaves NAME.stdin,
# NAME.argv, NAME.exit and, last, NAME.done (a run counts once that exists). What it does is the
# n-th line of DIR/exit.MARKER for the n-th run carrying that transaction's marker (0 when
# missing): an exit status, or "sleep-before"/"sleep-after" (outlive the server's timeout before
# it takes the message, or after). The server gives children only PATH, so the directory and
# the sleep are written into the script. The server kills the wrapper by its PID: the sleeps
# hold none of its pipes, so a killed run ends at once.
WRAPPER = r"""#!/bin/sh
d='@DIR@'
tmp=$(mktemp "$d/run.XXXXXX") || exit 70
cat > "$tmp.stdin"
printf '%s\n' "$@" > "$tmp.argv"
m=$(grep -o -m 1 'PROPMARK-[0-9]*-[0-9]*' "$tmp.stdin" | head -n 1)
n=$(ls "$d" | grep -c "^seen\.$m\.")
: > "$d/seen.$m.$n"
code=$(sed -n "$((n + 1))p" "$d/exit.$m" 2>/dev/null)
[ -n "$code" ] || code=0
if [ "$code" = sleep-before ]; then
  rm -f "$tmp.stdin" "$tmp.argv"
  sleep @SLEEP@ </dev/null >/dev/null 2>&1
  exit 0
fi
echo "$code" > "$tmp.exit"
: > "$tmp.done"
if [ "$code" = sleep-after ]; then
  exec sleep @SLEEP@ </dev/null >/dev/null 2>&1
fi
echo "wrapper exiting $code"
exit "$code"
"""


def wrapper_runs(directory):
    """[(argv, stdin, exit status)] of the wrapper's finished runs."""
    out = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".done"):
            continue
        base = os.path.join(directory, name[:-len(".done")])
        with open(base + ".argv") as f:
            argv = f.read().splitlines()
        with open(base + ".stdin", "rb") as f:
            data = f.read()
        with open(base + ".exit") as f:
            code = f.read().strip() or "0"
        out.append((argv, data, code))
    return out


# ---- the client's side ----

class SessionOver(Exception):
    """The client ends the session here (it vanished, or the server closed)."""


class TxnRecord:
    """What the client did and saw in one transaction."""

    def __init__(self, plan, session):
        self.plan = plan
        self.session = session
        self.dialogue = []
        self.accepted = []
        self.deferred = []   # 452 at RCPT: to be sent in another transaction
        self.final = None    # the reply after the dot
        self.message = plan.message  # what the client sent as the message (unstuffed)
        self.dot_sent = False
        self.outcome = "not started"
        self.started = False
        self.t0 = self.t1 = None      # monotonic
        self.w0 = self.w1 = None      # wall clock, for the log's timestamps
        self.problems = []            # what the client itself saw go wrong

    def begin(self):
        self.started = True
        self.t0, self.w0 = time.monotonic(), time.time()

    def end(self, outcome):
        if self.t1 is None:
            self.outcome = outcome
            self.t1, self.w1 = time.monotonic(), time.time()


class Session:
    """One client connection following a SessionPlan."""

    def __init__(self, lane, splan):
        self.lane = lane
        self.plan = splan
        self.dialogue = []
        self.current = None       # the TxnRecord being run
        self.c = None
        # A MAIL the server took and no final reply or RSET ended since (a refused DATA leaves
        # it open): the next MAIL would be nested, and its RCPTs join the old transaction.
        self.open_txn = False
        # (record, commands) of the next transaction, sent right after the last one's dot.
        self.ahead = None

    # -- I/O that records what it did --

    def note(self, text):
        (self.current.dialogue if self.current else self.dialogue).append(text)

    def send(self, data):
        for line in data.split(b"\r\n")[:-1] if data.endswith(b"\r\n") else [data]:
            shown = line if len(line) <= 120 else line[:100] + b"...(%d bytes)" % len(line)
            self.note("C: " + shown.decode("utf-8", "replace"))
        self.c.send(data)

    def send_message(self, data, tail=b".\r\n"):
        lines = data.count(b"\r\n")
        self.note(f"C: <message: {lines} lines, {len(data)} bytes>" +
                  (" ." if tail.startswith(b".") else ""))
        for extra in tail.split(b"\r\n")[1:-1]:
            self.note("C: " + extra.decode())
        self.c.send(data + tail)

    def reply(self, what, timeout=REPLY_WAIT):
        """The next reply; raises SessionOver when the server closed or did not answer."""
        try:
            r = self.c.reply(timeout)
        except Timeout:
            self.problem(f"no reply to {what} within {bound(timeout):.0f}s")
            raise SessionOver()
        except Closed:
            if self.last_code == 421:
                self.note("S: <closed after 421>")
            else:
                self.problem(f"the server closed the connection without answering {what}")
            raise SessionOver()
        except AssertionError as e:  # a malformed reply
            self.problem(f"malformed reply to {what}: {e}")
            raise SessionOver()
        for line in r.lines:
            self.note("S: " + (line if len(line) <= 160 else line[:150] + "..."))
        self.last_code = r.code
        if r.code == 421:
            # The server ends the session; anything after this gets no answer, rightly.
            self.closing = True
        return r

    def problem(self, text):
        self.note("!! " + text)
        rec = self.current
        self.lane.client_problems.append((rec.plan.t if rec else None, self.plan.s, text))

    # -- the session --

    def run(self):
        self.last_code = None
        self.closing = False
        if self.lane.srv.proc.poll() is not None:
            return  # told once, by the checker
        try:
            self.c = SMTPClient(self.lane.srv.port, timeout=REPLY_WAIT, greeting=False)
        except OSError as e:
            if self.lane.srv.proc.poll() is None:
                self.problem(f"cannot connect: {e}")
            return
        try:
            g = self.reply("the greeting")
            if g.code != 220:
                raise SessionOver()
            if self.plan.mode == "blind":
                self.blind()
                return
            self.send(b"EHLO client.example\r\n")
            if self.reply("EHLO").code != 250:
                raise SessionOver()
            queue = list(self.plan.txns)
            while queue:
                if self.txn(queue.pop(0), queue) is None:
                    break
            self.current = None
            self.finish()
        except SessionOver:
            pass
        finally:
            for rec in (self.current, self.ahead and self.ahead[0]):
                if rec is not None and rec.t1 is None:
                    rec.end("session ended")
            self.current = None
            self.c.close()

    def finish(self):
        how = self.plan.end
        if how in ("vanish", "reset"):
            self.vanish(how == "reset")
            return
        if self.closing:
            return
        self.send(b"QUIT\r\n")
        if how == "quit_halfclose":
            self.c.sock.shutdown(socket.SHUT_WR)
        r = self.reply("QUIT")
        if r.code != 221:
            self.problem(f"QUIT answered {r.code}")
        if how == "quit_halfclose" and not self.c.wait_closed(REPLY_WAIT):
            self.problem("no close after 221 to a half-closed client")

    def vanish(self, reset):
        self.note("C: <reset>" if reset else "C: <close>")
        if reset:
            self.c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.c.close()

    def start_txn(self, t):
        rec = TxnRecord(self.lane.plans[t], self.plan.s)
        self.lane.records.append(rec)
        self.current = rec
        self.lane.write_exits(rec.plan)
        rec.begin()
        return rec

    @staticmethod
    def commands(plan):
        """The transaction's commands up to DATA (or the RSET that abandons it)."""
        cmds = [f"MAIL FROM:<{plan.sender}>{plan.mail_params}".encode()]
        cmds += [f"RCPT TO:<{r}>".encode() for r in plan.rcpts]
        if plan.abort == "rset":
            cmds.append(b"RSET")
        elif plan.abort == "ehlo":
            cmds.append(b"EHLO client.example")
        elif plan.abort not in ("no_data", "vanish_rcpt"):
            cmds.append(b"DATA")
        return cmds

    def rset_if_open(self):
        if self.open_txn:
            self.send(b"RSET\r\n")
            if self.reply("RSET").code != 250:
                self.problem("RSET refused")
            self.open_txn = False

    def txn(self, t, queue):
        """Runs one transaction (queue: the session's transactions still to come, which a
        follow-up joins at the front); returns its record, or None when the session cannot go
        on."""
        ahead, self.ahead = self.ahead, None
        if self.closing:
            if ahead:
                ahead[0].end("server said 421")
            return None
        plan = self.lane.plan_of(t)
        pipelined = self.plan.mode == "pipelined"
        data_cmd = plan.abort not in ("rset", "ehlo", "no_data", "vanish_rcpt")
        cmds = self.commands(plan)
        replies = []
        if plan.abort == "vanish_rcpt":
            # MAIL and the RCPTs, and gone before any answer: the handler may be asking the
            # upstream about them right now.
            if ahead:
                rec = ahead[0]
                self.current = rec
            else:
                self.rset_if_open()
                rec = self.start_txn(t)
                self.send(b"".join(c + b"\r\n" for c in cmds))
            self.vanish(reset=plan.t % 2 == 0)
            rec.end("vanished during RCPT")
            raise SessionOver()
        if ahead:  # its commands went with the last message's dot
            rec = ahead[0]
            self.current = rec
            for c in cmds:
                replies.append(self.reply(c.decode()))
        elif pipelined:
            self.rset_if_open()
            rec = self.start_txn(t)
            self.send(b"".join(c + b"\r\n" for c in cmds))
            for c in cmds:
                replies.append(self.reply(c.decode()))
        else:
            self.rset_if_open()
            rec = self.start_txn(t)
            for c in cmds:
                self.send(c + b"\r\n")
                replies.append(self.reply(c.decode()))
                if self.closing:
                    break
                if c.startswith(b"MAIL") and replies[-1].code != 250 \
                        and plan.abort != "data_anyway":
                    break  # a client that was refused at MAIL does not go on
        for c, r in zip(cmds, replies):
            if c.startswith(b"MAIL"):
                self.open_txn = 200 <= r.code < 300
            elif c in (b"RSET", b"EHLO client.example") and r.code == 250:
                self.open_txn = False
            elif c.startswith(b"RCPT"):
                addr = c[9:-1].decode()
                if 200 <= r.code < 300:
                    rec.accepted.append(addr)
                elif r.code == 452:
                    rec.deferred.append(addr)
        if rec.deferred and plan.followup and not self.closing:
            queue.insert(0, self.lane.followup(rec))
        if self.closing:
            rec.end("server said 421")
            return None
        if not data_cmd or len(replies) < len(cmds):
            rec.end("abandoned (" + (plan.abort or "refused at MAIL") + ")")
            if plan.abort == "no_data":
                return None  # another MAIL now would be nested: end the session
            return rec
        if replies[-1].code != 354:
            rec.end(f"DATA answered {replies[-1].code}")
            return rec
        data = stuff(plan.message)
        if plan.abort == "vanish_data":
            cut = len(data) // 2
            self.note(f"C: <{cut} of {len(data)} bytes of the message>")
            self.c.send(data[:cut])
            self.vanish(reset=plan.t % 2 == 1)
            rec.end("vanished mid-DATA")
            raise SessionOver()
        tail = b".\r\n"
        calm = plan.abort is None and not self.lane.may_give_up(plan)
        halfclose = not queue and pipelined and self.plan.end == "quit_halfclose" and calm
        if halfclose:
            tail = b".\r\nQUIT\r\n"
        if queue and pipelined and calm and plan.pipeline_next:
            # RFC 2920: the next transaction's commands may follow the dot at once (no RSET
            # needed: the dot ends this one whatever its answer); they are answered after it.
            ncmds = self.commands(self.lane.plan_of(queue[0]))
            self.note(f"C: <message: {data.count(bytes([13, 10]))} lines, {len(data)} bytes> "
                      ". (and the next transaction's commands)")
            nrec = self.start_txn(queue[0])
            for c in ncmds:
                self.note("C: " + c.decode())
            self.current = rec
            self.c.send(data + tail + b"".join(c + b"\r\n" for c in ncmds))
            self.ahead = (nrec, ncmds)
        else:
            self.send_message(data, tail)
        rec.dot_sent = True
        if halfclose:
            self.c.sock.shutdown(socket.SHUT_WR)
        if plan.abort == "vanish_after_dot":
            # A FIN is a half-close to the server, which still answers: where the upstream may
            # keep it waiting 600 s, the client resets instead, so the lane stays short.
            self.vanish(reset=self.lane.may_give_up(plan))
            rec.end("vanished after the dot")
            raise SessionOver()
        self.final_reply(rec)
        self.open_txn = False
        if self.ahead and self.closing:
            self.ahead[0].end("server said 421")
            self.ahead = None
        if halfclose:
            r = self.reply("QUIT (pipelined after the dot, then half-close)")
            if r.code != 221:
                self.problem(f"QUIT answered {r.code}")
            if not self.c.wait_closed(REPLY_WAIT):
                self.problem("no close after 221 to a half-closed client")
            self.closing = True
            return None
        return rec

    def final_reply(self, rec):
        """Reads the reply after the dot into rec.final; raises SessionOver when there is
        none (the client gave up, or the server failed to answer)."""
        plan = rec.plan
        try:
            if self.lane.may_give_up(plan):
                rec.final = self.c.reply(PATIENCE)
                for line in rec.final.lines:
                    self.note("S: " + line[:160])
                self.last_code = rec.final.code
                self.closing = rec.final.code == 421
            else:
                bounded = self.lane.cfg.relay_end_bounded or self.lane.cfg.lmtp_end_bounded
                rec.final = self.reply("the message",
                                       FINAL_WAIT + (DATA_TIMEOUT if bounded else 0))
        except Timeout:
            self.note(f"C: <gave up waiting after {bound(PATIENCE):.0f}s>")
            self.vanish(reset=True)  # a FIN would be a half-close, answered in 600 s
            rec.end("gave up waiting for the final reply")
            raise SessionOver()
        except (Closed, AssertionError) as e:
            self.problem(f"no final reply: {e}")
            rec.end("no final reply")
            raise SessionOver()
        except SessionOver:
            rec.end("no final reply")
            raise
        rec.end(f"final reply {rec.final.code}")

    def blind_reply(self, what, timeout=REPLY_WAIT):
        """A reply in the blind session; after a 421 the server closes and owes nothing more."""
        r = self.reply(what, timeout)
        if self.closing:
            if not self.c.wait_closed(REPLY_WAIT):
                self.problem("no close after 421")
            raise SessionOver()
        return r

    def blind(self):
        """The whole session in one write (EHLO, every transaction, message and all, QUIT),
        then a half-close: every line must still get its reply."""
        recs = []
        out = [b"EHLO client.example\r\n"]
        for t in self.plan.txns:
            plan = self.lane.plan_of(t, halfclosed=True)
            rec = self.start_txn(t)
            self.current = None
            recs.append(rec)
            out.append(b"RSET\r\n")  # whatever the last one left open
            out.append(f"MAIL FROM:<{plan.sender}>\r\n".encode())
            out += [f"RCPT TO:<{r}>\r\n".encode() for r in plan.rcpts]
            out.append(b"DATA\r\n")
            rec.message = plan.short_message()
            out.append(stuff(rec.message) + b".\r\n")
        out.append(b"QUIT\r\n")
        self.note("C: <" + " | ".join(x.decode().strip().replace("\r\n", " / ")
                                       for x in out) + "> then half-close")
        self.c.send(b"".join(out))
        self.c.sock.shutdown(socket.SHUT_WR)
        try:
            if self.reply("EHLO").code != 250:
                self.problem("EHLO refused")
            for rec in recs:
                self.current = rec
                plan = rec.plan
                self.blind_reply("RSET")
                self.blind_reply("MAIL")
                for r in plan.rcpts:
                    reply = self.blind_reply(f"RCPT TO:<{r}>")
                    if 200 <= reply.code < 300:
                        rec.accepted.append(r)
                    elif reply.code == 452:
                        rec.deferred.append(r)
                d = self.blind_reply("DATA")
                rec.dot_sent = d.code == 354
                if d.code == 354:
                    self.final_reply(rec)
                    if self.closing:
                        self.c.wait_closed(REPLY_WAIT)
                        raise SessionOver()
                else:
                    # Each line of the message is now a command of its own.
                    lines = stuff(rec.message).count(b"\r\n") + 1
                    for i in range(lines):
                        self.blind_reply(f"line {i + 1} of a message sent after a refused DATA")
                    rec.end(f"DATA answered {d.code}")
                self.current = None
            r = self.blind_reply("QUIT")
            if r.code != 221:
                self.problem(f"QUIT answered {r.code}")
            if not self.c.wait_closed(REPLY_WAIT):
                self.problem("no close after 221 to a half-closed client")
        except SessionOver:
            pass
        for rec in recs:
            rec.end(rec.outcome if rec.t1 else "session ended")
