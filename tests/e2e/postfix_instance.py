"""A standalone Postfix instance for tests and benchmarks: its own config, queue, data
directory and log under a temporary directory, smtpd listeners on 127.0.0.1 ports the caller
gives, no DNS, and a transport that decides where queued mail goes:

    pf = PostfixInstance(tmp, services=[smtpd_service(port)],
                         transport=("smtp", luasmtpd_port),   # relayhost = [127.0.0.1]:PORT
                         main={"smtp_tls_security_level": "encrypt"})
    pf.wait_ready(port); ...; pf.stop()

transport is one of:
- "discard" (the default): every message is dropped once queued (a sink, for benchmarks);
- ("smtp", PORT): relayed over SMTP to 127.0.0.1:PORT (`relayhost = [127.0.0.1]:PORT`), the
  host given in brackets so no MX is looked up; ("smtp", PORT, HOST) names the host instead
  (resolved from /etc/hosts, `smtp_host_lookup = native`), for a certificate checked by name;
- ("lmtp", PORT): delivered over LMTP (`default_transport = lmtp:inet:127.0.0.1:PORT`).

`postfix -c DIR start` forks its master away, so it is found through its PID file and stopped
with `postfix -c DIR stop`, then SIGKILL for what is left. Only root can run one (Postfix
drops to its `postfix` user); postfix_usable() says whether this machine can, and why not.
Only the standard library is used."""

import os
import signal
import subprocess
import tempfile
import time

POSTFIX = "/usr/sbin/postfix"

# Messages go nowhere local (mydestination empty): every address is remote and takes the
# transport. Processes are kept (max_use, max_idle) so that, for benchmarks, the CPU of those
# alive at the end is all they spent.
MAIN = """compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.test
mydestination =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
local_transport = discard
alias_maps =
alias_database =
local_recipient_maps =
maillog_file_prefixes = {d}
maillog_file = {d}/maillog
message_size_limit = 1073741824
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_peername_lookup = no
smtp_host_lookup = native
lmtp_host_lookup = native
smtp_tls_loglevel = 1
lmtp_tls_loglevel = 1
smtpd_tls_loglevel = 1
max_use = 1000000
max_idle = 3600s
"""
MASTER = """pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
lmtp unix - - n - - lmtp
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


def postfix_usable():
    """None when a Postfix instance can run here, else why not (root, the binaries and
    Debian's postfix user and postdrop group are needed)."""
    if os.geteuid() != 0:
        return "running a Postfix instance needs root"
    if not os.access(POSTFIX, os.X_OK):
        return f"{POSTFIX} is not installed"
    try:
        import grp
        import pwd
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except (KeyError, ImportError):
        return "no postfix user or postdrop group"
    return None


def smtpd_service(port, *options):
    """A master.cf line for an smtpd on 127.0.0.1:port; options are main.cf overrides,
    "name=value" each (given as -o)."""
    return f"127.0.0.1:{port} inet n - n - - smtpd" + "".join(f" -o {o}" for o in options)


def transport_settings(transport):
    """The main.cf lines for a transport (see the module's docstring)."""
    if transport == "discard":
        return {"default_transport": "discard", "relay_transport": "discard"}
    kind, port = transport[0], transport[1]
    if kind == "smtp":
        host = transport[2] if len(transport) > 2 else "127.0.0.1"
        return {"relayhost": f"[{host}]:{port}", "default_transport": "smtp",
                "relay_transport": "relay"}
    if kind == "lmtp":
        nexthop = f"lmtp:inet:127.0.0.1:{port}"
        return {"default_transport": nexthop, "relay_transport": nexthop}
    raise ValueError(f"unknown transport {transport!r}")


def _listening(port):
    """Whether something listens on 127.0.0.1:port (from /proc/net/tcp; no connection)."""
    want = ":%04X" % port
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            return any(fields[1].endswith(want) and fields[3] == "0A"
                       for fields in (line.split() for line in f))
    except OSError:
        return False


def _children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


class PostfixInstance:
    """One running Postfix. `dir` holds etc/ (main.cf, master.cf), queue/, data/ and the log
    file `maillog`. `main` overrides or adds main.cf settings; `services` are master.cf lines
    (smtpd_service); etc_files are more files for etc/ before it starts ({"sasl/smtpd.conf":
    text}: Debian's Postfix reads Cyrus SASL's smtpd.conf from there, whatever
    cyrus_sasl_config_path says); preexec_fn runs in the master's process before it starts (a
    CPU pin)."""

    def __init__(self, parent, services=(), transport="discard", main=None, etc_files=None,
                 preexec_fn=None, start_timeout=15.0):
        import pwd
        self.dir = tempfile.mkdtemp(prefix="postfix-", dir=parent)
        self.etc = os.path.join(self.dir, "etc")
        self.maillog = os.path.join(self.dir, "maillog")
        for sub in ("etc", "queue", "data"):
            os.mkdir(os.path.join(self.dir, sub))
        os.chown(os.path.join(self.dir, "data"), pwd.getpwnam("postfix").pw_uid, -1)
        os.chmod(parent, 0o755)  # its daemons, as user postfix, walk down to the queue
        os.chmod(self.dir, 0o755)
        settings = dict(transport_settings(transport))
        settings.update(main or {})
        text = MAIN.format(d=self.dir) + "".join(f"{k} = {v}\n" for k, v in settings.items())
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(text)
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write("".join(line + "\n" for line in services) + MASTER)
        for name, content in (etc_files or {}).items():
            path = os.path.join(self.etc, name)
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            with open(path, "w") as f:
                f.write(content)
        self.pid = None
        out = subprocess.run([POSTFIX, "-c", self.etc, "start"], capture_output=True,
                             timeout=60, preexec_fn=preexec_fn)
        pidfile = os.path.join(self.dir, "queue", "pid", "master.pid")
        for _ in range(int(start_timeout / 0.05)):  # the master writes it once it runs
            try:
                with open(pidfile) as f:
                    self.pid = int(f.read().split()[0])
                break
            except (OSError, ValueError, IndexError):
                if out.returncode != 0:
                    break
                time.sleep(0.05)  # polling a file the master writes, within start_timeout
        if self.pid is None:
            raise RuntimeError("postfix start failed (%d): %s %s" % (
                out.returncode, out.stderr.decode(errors="replace")[-300:], self.log_tail()))

    def wait_ready(self, port, timeout=15.0):
        """Until the master listens on `port` (an smtpd service)."""
        for _ in range(int(timeout / 0.02)):
            if not self.alive():
                raise RuntimeError("postfix master exited: %s" % self.log_tail())
            if _listening(port):
                return
            time.sleep(0.02)  # polling /proc/net/tcp, within timeout
        raise RuntimeError("postfix did not listen on port %d" % port)

    def alive(self):
        return self.pid is not None and os.path.exists("/proc/%d" % self.pid)

    def pids(self):
        """The master and its children (smtpd, cleanup, qmgr, tlsmgr...)."""
        return [self.pid] + _children(self.pid)

    def log(self):
        try:
            with open(self.maillog, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines=2):
        text = self.log()[-4096:].strip().splitlines()
        return " | ".join(l.strip() for l in text[-lines:])[:300]

    def stop(self):
        """`postfix stop` (the master ends its children), then SIGKILL to whatever is left."""
        if not self.alive():
            return
        left = self.pids()
        subprocess.run([POSTFIX, "-c", self.etc, "stop"], capture_output=True, timeout=60)
        for _ in range(int(10 / 0.05)):
            if not any(os.path.exists("/proc/%d" % p) for p in left):
                return
            time.sleep(0.05)  # waiting for processes that are not our children, within 10 s
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
