"""A server started as root runs no Lua file that another user could have written: a handler
script or a module it requires that is writable by group or others, owned by a user other than
root and the one we run as, or in a directory others may write (unless sticky), is refused at
start (exit 1) and at reload (the old generation goes on serving), with a log line that says
which file and why. These tests need root (they run as root in CI)."""
import os
import re
import signal
import shutil
import tempfile
import unittest

from harness import LuaSmtpd, ServerTestCase

SCRIPT = """
local mod = require "trustmod"
function process_message()
  return "250 2.0.0 served %s " .. mod.name
end
"""
MODULE = 'return { name = "%s" }\n'
REFUSED = r"error: refusing to load "
LOAD_FAILED = r"error: .*(refusing to load|reload failed)"


@unittest.skipUnless(os.geteuid() == 0, "needs root: the checks apply to a server started as "
                     "root (run as root, as CI does)")
class TestScriptTrust(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="luasmtpd-trust-")
        os.chmod(self.dir, 0o755)
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.script = os.path.join(self.dir, "h.lua")
        self.module = os.path.join(self.dir, "trustmod.lua")
        self.write(self.script, SCRIPT % "v1")
        self.write(self.module, MODULE % "m1")

    def write(self, path, text, mode=0o644):
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)

    def served(self, srv):
        c = self.connect(srv)
        replies = c.transaction("a@b.example", ["c@d.example"], b"Subject: t\r\n\r\nhi\r\n")
        c.cmd("QUIT")
        return replies[-1].lines[-1]

    def refused_at_start(self, path, why):
        """Starts the server on self.script; it must exit 1 and log why `path` was refused."""
        srv = LuaSmtpd(self.script, start=False, args=["--no-reload"],
                       expect_errors=[LOAD_FAILED, r"error: .*h\.lua"])
        self.addCleanup(srv.close)
        srv.spawn()
        srv.stopped_by_test = True  # it ends by itself
        self.assertEqual(srv.wait_exit(10), 1)
        srv.log.join()
        m = srv.wait_log(REFUSED + re.escape(path) + ": (.*)$")
        self.assertRegex(m.group(1), why)
        self.assertFalse(any("listening on" in l for l in srv.log.snapshot()))

    def test_writable_script_refused_at_start(self):
        os.chmod(self.script, 0o666)
        self.refused_at_start(self.script, r"^writable by others \(mode 0666\); fix with "
                              r"chmod go-w " + re.escape(self.script) + "$")

    def test_group_writable_script_refused_at_start(self):
        os.chown(self.script, 0, 65534)
        os.chmod(self.script, 0o664)
        self.refused_at_start(self.script, r"^writable by others \(mode 0664\)")

    def test_script_of_another_user_refused_at_start(self):
        os.chown(self.script, 65534, 65534)
        self.refused_at_start(self.script, r"^owned by uid 65534, neither root nor the uid we "
                              r"run as \(0\); fix with chown root ")

    def test_writable_module_refused_at_start(self):
        os.chmod(self.module, 0o666)
        self.refused_at_start(self.module, r"^writable by others \(mode 0666\)")

    def test_writable_c_module_refused_before_it_is_opened(self):
        """A C module on package.cpath that others may write is refused before dlopen runs
        its constructors (the file here is no library at all: dlopen never sees it)."""
        lib = os.path.join(self.dir, "clib.so")
        self.write(lib, "not a library\n", mode=0o666)
        self.write(self.script, f"package.cpath = {self.dir + '/?.so'!r}\n" +
                   'require "clib"\n' + (SCRIPT % "v1"))
        self.refused_at_start(lib, r"^writable by others \(mode 0666\)")

    def test_writable_directory_refused_at_start(self):
        os.chmod(self.dir, 0o777)
        self.refused_at_start(self.script, r"^its directory " + re.escape(self.dir) +
                              r" is writable by others \(mode 0777\)")

    def test_sticky_directory_and_root_files_load(self):
        """Root's 0644 files in a sticky world-writable directory (as /tmp) are trusted:
        nobody else can replace them there."""
        os.chmod(self.dir, 0o1777)
        srv = self.start_server(self.script)
        self.assertEqual(self.served(srv), "250 2.0.0 served v1 m1")

    def test_checked_loader_reads_as_lua_does(self):
        """Scripts are read through our own loader (so the check and the read share one
        descriptor): as luaL_loadfile, a UTF-8 BOM and a first "#!" line are skipped, and an
        error names the script's real line."""
        self.write(self.script, "\ufeff#!/usr/bin/env luasmtpd\n" + (SCRIPT % "v1") +
                   "if smtpd_fail then error('on purpose') end\n")
        srv = self.start_server(self.script)
        self.assertEqual(self.served(srv), "250 2.0.0 served v1 m1")
        line = 2 + SCRIPT.count("\n")
        self.write(self.script, "#!/usr/bin/env luasmtpd\n" + (SCRIPT % "v1") +
                   "error('on purpose')\n")
        srv.expect_errors += [re.compile(r"error: .*on purpose"), re.compile(LOAD_FAILED)]
        srv.wait_log(re.escape(self.script) + rf":{line}: on purpose")

    def test_reload_refuses_writable_script(self):
        """The script turned 0666 with new code: SIGHUP refuses it and v1 goes on serving;
        once it is 0644 again, the next SIGHUP loads it."""
        srv = self.start_server(self.script, args=["--no-reload"],
                                expect_errors=[LOAD_FAILED])
        self.assertEqual(self.served(srv), "250 2.0.0 served v1 m1")
        self.write(self.script, SCRIPT % "v2", mode=0o666)
        srv.send_signal(signal.SIGHUP)
        srv.wait_log(REFUSED + re.escape(self.script) + r": writable by others \(mode 0666\)")
        srv.wait_log(r"error: reload failed: generation 1 goes on serving")
        self.assertEqual(self.served(srv), "250 2.0.0 served v1 m1")
        os.chmod(self.script, 0o644)
        srv.send_signal(signal.SIGHUP)
        srv.wait_log(r"info: generation 2 loaded")
        self.assertEqual(self.served(srv), "250 2.0.0 served v2 m1")

    def test_reload_refuses_module_of_another_user(self):
        """The required module rewritten and given to uid 65534: the edit's reload refuses
        it, naming the module, and v1 goes on serving."""
        srv = self.start_server(self.script, expect_errors=[LOAD_FAILED, r"error: .*h\.lua"])
        self.assertEqual(self.served(srv), "250 2.0.0 served v1 m1")
        tmp = self.module + ".tmp"
        self.write(tmp, MODULE % "m2")
        os.chown(tmp, 65534, 65534)
        os.replace(tmp, self.module)
        srv.wait_log(REFUSED + re.escape(self.module) + r": owned by uid 65534")
        srv.wait_log(r"error: reload failed: generation 1 goes on serving")
        self.assertEqual(self.served(srv), "250 2.0.0 served v1 m1")


if __name__ == "__main__":
    unittest.main()
