"""Helpers for test_reload.py: handler scripts in a temporary directory, the ways an editor saves
a file, and a small smtplib client that returns the final reply. Only the standard library."""

import os
import re
import smtplib
import subprocess
import tempfile


RELOAD_TIMEOUT = 5.0   # seconds from a save to its "generation N loaded" line
CLIENT_TIMEOUT = 10.0  # seconds for one smtplib command
BODY = b"Subject: reload test\r\n\r\nhello\r\n"


def version_script(version, extra=""):
    """A handler whose every message is answered "250 2.0.0 <version>"."""
    return (f"-- reload test handler, {version}\n"
            f"{extra}\n"
            f"function process_message(peer, mailfrom, rcpttos, data, options)\n"
            f"  return \"250 2.0.0 {version}\"\n"
            f"end\n")


# ---- the ways a file gets saved ----

def save_in_place(path, text):
    """open('w'): truncate and write the same inode."""
    with open(path, "w") as f:
        f.write(text)


def save_by_rename(path, text):
    """Write a temporary file beside it, then rename it over the original (vim, sed -i)."""
    d, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_backup_then_write(path, text):
    """vim with 'writebackup' and no 'backupcopy': rename the original to name~, write anew."""
    os.replace(path, path + "~")
    with open(path, "w") as f:
        f.write(text)


def sed_in_place(path, old, new):
    """The real `sed -i`, which writes a temp file and renames it over the original."""
    subprocess.run(["sed", "-i", f"s/{old}/{new}/", path], check=True, timeout=10)


# ---- log helpers ----

def log_mark(srv):
    """Index of the next stderr line: wait for events after it."""
    return len(srv.log.snapshot())


def wait_loaded(srv, gen, start, timeout=RELOAD_TIMEOUT):
    """Waits for "generation <gen> loaded" at or after line `start`; returns its index."""
    return srv.log.wait(rf"info: generation {gen} loaded from ", timeout, start)[0]


def wait_reload_failed(srv, gen, start, timeout=RELOAD_TIMEOUT):
    """Waits for "reload failed: generation <gen> goes on serving"; returns its index."""
    return srv.log.wait(rf"error: reload failed: generation {gen} goes on serving$", timeout,
                        start)[0]


def closed_generations(lines):
    return {int(m.group(1)) for m in
            (re.search(r"info: generation (\d+) closed$", l) for l in lines) if m}


MESSAGE_LINE = re.compile(r"info: session \d+: message \d+ from <[^>]*> for \d+ recipient\(s\), "
                          r"\d+ bytes, id [0-9A-F]+: (\d{3}) \(generation (\d+)\)$")


def message_lines(lines):
    """(code, generation) of every "session N: message M ..." line."""
    return [(int(m.group(1)), int(m.group(2))) for m in map(MESSAGE_LINE.search, lines) if m]


# ---- clients ----

class Client:
    """One smtplib connection that sends messages back to back. message() returns the final
    reply as (code, text), e.g. (250, "2.0.0 v1")."""

    def __init__(self, port, timeout=CLIENT_TIMEOUT):
        self.smtp = smtplib.SMTP("127.0.0.1", port, local_hostname="client.example",
                                 timeout=timeout)
        code, msg = self.smtp.ehlo()
        if code != 250:
            raise AssertionError(f"EHLO got {code} {msg!r}")

    def message(self, mailfrom="a@example.org", rcpts=("b@example.net",), body=BODY):
        code, msg = self.smtp.mail(mailfrom)
        if code != 250:
            raise AssertionError(f"MAIL got {code} {msg!r}")
        for r in rcpts:
            code, msg = self.smtp.rcpt(r)
            if code != 250:
                raise AssertionError(f"RCPT got {code} {msg!r}")
        code, msg = self.smtp.data(body)  # raises SMTPDataError unless DATA got 354
        return code, msg.decode("utf-8", "replace")

    def close(self):
        try:
            self.smtp.quit()
        except (smtplib.SMTPException, OSError):
            self.smtp.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def send_one(port, **kw):
    """One message on a connection of its own; returns (code, text)."""
    with Client(port) as c:
        return c.message(**kw)


def version_of(reply):
    """(250, "2.0.0 v7") -> "v7"; anything else -> None."""
    code, text = reply
    m = re.fullmatch(r"2\.0\.0 (v\d+)", text)
    return m.group(1) if code == 250 and m else None
