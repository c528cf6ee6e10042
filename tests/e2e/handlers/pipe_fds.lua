-- Test fixture: what a child sees of the server's descriptors while its handler holds more of
-- them: a file opened with io.open (Lua never asks for close-on-exec there) and a connection to
-- the upstream (the command line's remotehost:port) past MAIL. The child writes its pid to
-- DIR/fds.pid and waits for DIR/go (at most until the pipe's timeout, 60 s), so a test can look
-- at the server meanwhile; then it lists its own descriptors, which go to DIR/fds.out.
-- Settings: dir.
local smtpd = require "smtpd"
local dir = assert(smtpd.settings.dir, "pipe_fds: --set dir=DIR")

function process_message(peer, mailfrom, rcpttos, data, options)
  local held = assert(io.open(dir .. "/held.txt", "w"))
  local up, err = smtpd.connect{}
  if not up then
    return "451 4.4.1 no upstream: " .. tostring(err)
  end
  local code, text = up:mail(mailfrom)
  if code ~= 250 then
    return "451 4.4.1 upstream refused MAIL: " .. tostring(code) .. " " .. tostring(text)
  end
  local status, output, code = smtpd.pipe({ "sh", "-c",
    'echo $$ > "$1/fds.pid"; while [ ! -e "$1/go" ]; do sleep 0.05; done; exec ls -l /proc/self/fd',
    "sh", dir }, data, { timeout = 60 })
  up:close()
  held:close()
  if status ~= 0 then
    return ("451 4.3.0 child: %s %s"):format(tostring(code), tostring(output))
  end
  local f = assert(io.open(dir .. "/fds.out", "wb"))
  f:write(output)
  f:close()
  return "250 2.0.0 listed"
end
