-- Test fixture module (not a handler): the commands the pipe_*.lua fixtures run, chosen by the
-- first recipient's local part. Settings: dir (where commands write files), timeout,
-- output_limit. Every entry is {argv, opts}.
local smtpd = require "smtpd"

local dir = smtpd.settings.dir or "/nonexistent"
local M = {}

local function sh(script, ...)
  return { "sh", "-c", script, "sh", ... }
end

M.commands = {
  cat = { sh('cat > "$1"', dir .. "/cat.eml") },
  exit0 = { sh("cat >/dev/null; echo delivered") },
  exit75 = { sh("cat >/dev/null; echo 'mailbox busy'; exit 75") },
  exit67 = { sh("cat >/dev/null; echo 'no such user here'; exit 67") },
  exit1 = { sh("cat >/dev/null; echo 'it broke' >&2; exit 1") },
  signal = { sh("cat >/dev/null; kill -KILL $$") },
  -- never reads stdin, never exits; `exec` so that the recorded pid is the process to kill
  hang = { sh('echo $$ > "$1"; exec sleep 1000', dir .. "/hang.pid") },
  -- ignores SIGTERM, so only SIGKILL ends it
  stubborn = { sh('trap "" TERM; echo $$ > "$1"; while :; do sleep 0.2; done',
                  dir .. "/stubborn.pid") },
  loud = { sh("cat >/dev/null; head -c 1048576 /dev/zero | tr '\\000' x") },
  sha = { { "sha256sum" } },
  slow = { sh("sleep 0.5; cat >/dev/null") },
  -- a barrier: exits 0 only once 32 of its kind have started (pipe.c's default child limit),
  -- which they can only do if they run at the same time; gives up after 60 s with status 1
  together = { sh('touch "$1/together.$$"; i=0; '
                  .. 'while [ "$(ls "$1" | grep -c "^together[.]")" -lt 32 ]; do '
                  .. '[ $i -ge 1200 ] && exit 1; i=$((i + 1)); sleep 0.05; done; '
                  .. 'cat >/dev/null', dir) },
  -- reads nothing until a SIGTERM comes, which it takes as a cue to read all its stdin (then
  -- notes whether it saw the end): for a cancel, which must stop the feed at once, as the
  -- message is Lua's and goes with its generation
  termread = { sh('trap "got=1" TERM; echo $$ > "$1/termread.pid"; '
                  .. 'while [ -z "$got" ]; do sleep 0.05; done; echo term > "$1/termread.state"; '
                  .. 'cat > "$1/termread.in"; echo eof >> "$1/termread.state"', dir) },
  -- reads its message, then waits long: for the client that disconnects meanwhile
  slowpid = { sh('echo $$ > "$1"; cat >/dev/null; exec sleep 60', dir .. "/slowpid.pid") },
  env = { { "env" }, { env = { LUASMTPD_FROM_OPTS = "from-opts" } } },
  fds = { { "ls", "-l", "/proc/self/fd" } },
  missing = { { "/nonexistent/luasmtpd-no-such-command" } },
  missingpath = { { "luasmtpd-no-such-command-in-path" } },
}

-- argv and opts for a message, by its first recipient (or settings.cmd).
function M.pick(rcpttos)
  local name = smtpd.settings.cmd or (rcpttos[1] or ""):match("^([^@]*)")
  local entry = M.commands[name]
  if not entry then
    error("pipe fixture: no command named " .. tostring(name))
  end
  local opts = {}
  for k, v in pairs(entry[2] or {}) do opts[k] = v end
  opts.timeout = tonumber(smtpd.settings.timeout) or opts.timeout
  opts.output_limit = tonumber(smtpd.settings.output_limit) or opts.output_limit
  return name, entry[1], opts
end

return M
