"""A stand-in for Mailman 2's mail wrapper (`mailman_wrapper`), for the mailman handler's tests.

FakeMailman2(lists) makes a directory of lists (one subdirectory each, as Mailman 2 keeps
them) and a wrapper script that records every run (argv and the message on its stdin), then
exits with the status a test chose: set_exit(code) for every command, set_exit(code, command)
for one (post, request, ...); set_hang(seconds) makes it wait that long after it read the
message (a wrapper that takes too long). The server gives its children only PATH, so the
directory is written into the script. close() removes it all.
"""

import os
import shutil
import stat
import tempfile

# The mailman handler's answer to a recipient that needs another destination than the one its
# transaction has (lua/mailman.lua).
TOO_MANY = ("452 4.5.3 Too many recipients for one delivery; send this one in another "
            "transaction")

WRAPPER = r"""#!/bin/sh
d='@DIR@'
tmp=$(mktemp "$d/tmp.XXXXXX") || exit 70
cat > "$tmp.stdin"
printf '%s\n' "$@" > "$tmp.argv"
mv "$tmp.stdin" "$tmp.call.stdin"
mv "$tmp.argv" "$tmp.call.argv"
rm -f "$tmp"
code=0
[ -f "$d/exit" ] && read code < "$d/exit"
[ -f "$d/exit.$1" ] && read code < "$d/exit.$1"
echo "wrapper exiting $code"
[ -f "$d/hang" ] && read secs < "$d/hang" && exec sleep "$secs"
exit "$code"
"""


class FakeMailman2:
    def __init__(self, lists):
        self.calls_dir = tempfile.mkdtemp(prefix="mailman-calls-")
        self.lists_dir = tempfile.mkdtemp(prefix="mailman-lists-")
        for name in lists:
            os.mkdir(os.path.join(self.lists_dir, name))
        self.wrapper = os.path.join(self.calls_dir, "wrapper")
        with open(self.wrapper, "w") as f:
            f.write(WRAPPER.replace("@DIR@", self.calls_dir))
        os.chmod(self.wrapper, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH |
                 stat.S_IXOTH)

    def settings(self):
        """The --set values that point the mailman handler here."""
        return {"mailman_wrapper": self.wrapper, "mailman_lists": self.lists_dir}

    def _write(self, name, value):
        with open(os.path.join(self.calls_dir, name), "w") as f:
            f.write(f"{value}\n")

    def set_exit(self, code, command=None):
        self._write("exit" if command is None else f"exit.{command}", code)

    def set_hang(self, seconds):
        self._write("hang", seconds)

    def calls(self):
        """[(argv list, stdin bytes)] of the wrapper's finished runs, sorted by argv."""
        out = []
        for name in os.listdir(self.calls_dir):
            if name.endswith(".call.argv"):
                base = os.path.join(self.calls_dir, name[:-len(".argv")])
                with open(base + ".argv") as f:
                    argv = f.read().splitlines()
                with open(base + ".stdin", "rb") as f:
                    out.append((argv, f.read()))
        return sorted(out)

    def close(self):
        shutil.rmtree(self.calls_dir, ignore_errors=True)
        shutil.rmtree(self.lists_dir, ignore_errors=True)
