-- Test fixture: takes half a second of CPU to load (then accepts everything), so a signal sent
-- right after the listening line arrives while the script is still loading.
local t0 = os.clock()
while os.clock() - t0 < 0.5 do end

function process_message(peer, mailfrom, rcpttos, data, options)
  return nil
end
