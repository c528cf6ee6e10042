-- Test fixture: scripts that never end or eat memory, chosen by the recipient's local part.
-- process_message, by the first recipient:
--   loop    `while true do end`
--   pcall   an endless function called by pcall in an endless loop (pcall must not swallow
--           the budget's error)
--   memory  fills a table until the state's memory cap (--lua-memory) stops it
--   anything else: "250 2.0.0 served <local part>"
-- on_rcpt loops for ever on a recipient whose local part is "hookloop".
local function local_part(address)
  return (address:match("^([^@]*)"))
end

local function endless()
  local n = 0
  while true do n = n + 1 end
end

function on_rcpt(session, address, params)
  if local_part(address) == "hookloop" then
    endless()
  end
end

function process_message(peer, mailfrom, rcpttos, data, options)
  local what = local_part(rcpttos[1])
  if what == "loop" then
    while true do end
  elseif what == "pcall" then
    while true do pcall(endless) end
  elseif what == "memory" then
    local t = {}
    for i = 1, math.maxinteger do
      t[i] = ("%d"):format(i):rep(100)  -- a new string each time: memory, not instructions
    end
  end
  return "250 2.0.0 served " .. what
end
