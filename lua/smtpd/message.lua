-- Small helpers for messages as handlers receive them (every line ends in CRLF).
local M = {}

-- Where the header block ends: the index of the empty line's CRLF, or nil when the message has
-- no empty line at all.
local function header_end(data)
  if data:sub(1, 2) == "\r\n" then
    return 1
  end
  local at = data:find("\r\n\r\n", 1, true)
  return at and at + 2 or nil
end

-- Adds a header line at the end of the headers, where Python's PureProxy put X-Peer: before
-- the first empty line, or as the last line of a message that has none.
function M.add_header(data, line)
  local at = header_end(data)
  if not at then
    if data ~= "" and data:sub(-2) ~= "\r\n" then
      data = data .. "\r\n"
    end
    return data .. line .. "\r\n"
  end
  return data:sub(1, at - 1) .. line .. "\r\n" .. data:sub(at)
end

-- The first header named `name` (any case), unfolded, or nil.
function M.header(data, name)
  local at = header_end(data) or #data + 1
  local head = "\r\n" .. data:sub(1, at - 1)
  local lname = name:lower()
  for field, value in head:gmatch("\r\n([^:\r\n]+):([^\r\n]*)") do
    if field:lower() == lname then
      return (value:gsub("^%s+", ""))
    end
  end
  return nil
end

-- Removes every header named `name` (any case), with its folded continuation lines.
function M.remove_header(data, name)
  local at = header_end(data)
  local head, body = data, ""
  if at then
    head, body = data:sub(1, at - 1), data:sub(at)
  end
  local kept, skipping = {}, false
  local lname = name:lower()
  for line in head:gmatch("(.-\r\n)") do
    local field = line:match("^([^:%s]+):")
    if field then
      skipping = field:lower() == lname
    elseif not line:match("^[ \t]") then
      skipping = false
    end
    if not skipping then
      kept[#kept + 1] = line
    end
  end
  return table.concat(kept) .. body
end

return M
