-- Python's repr() of a str and of a list of str, so output matches what Python's smtpd
-- printed (e.g. "mail options: ['SIZE=100', 'BODY=8BITMIME']").
local M = {}

local escapes = { ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

function M.str(s)
  -- Python picks double quotes only when the text holds a single quote and no double quote.
  local quote = "'"
  if s:find("'", 1, true) and not s:find('"', 1, true) then
    quote = '"'
  end
  local body = s:gsub("[%c\\'\"]", function(c)
    if escapes[c] then return escapes[c] end
    if c == quote then return "\\" .. c end
    if c == "'" or c == '"' then return c end
    return string.format("\\x%02x", c:byte())
  end)
  return quote .. body .. quote
end

function M.list(items)
  local parts = {}
  for i, item in ipairs(items) do
    parts[i] = M.str(item)
  end
  return "[" .. table.concat(parts, ", ") .. "]"
end

return M
