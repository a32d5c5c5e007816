-- writeScript in scripts.go documents this script: KEYS, ARGV, reply, retries, hash slot.
local pub = ARGV[12] == '1' and 'SPUBLISH' or 'PUBLISH'
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('GET', KEYS[1])
local chi, clo = -1, -1
if cur and string.len(cur) >= 10 and string.byte(cur, 1) == 193 then
  chi, clo = struct.unpack('>I4I4', cur, 3)
end
local hi, lo = tonumber(ARGV[3]), tonumber(ARGV[4])
local auto = hi == 0 and lo == 0
if auto then
  if ARGV[5] == '1' and (tonumber(ARGV[6]) ~= chi or tonumber(ARGV[7]) ~= clo) then
    if ARGV[8] ~= '' then redis.call(pub, ARGV[8], ARGV[9] .. 'n') end
    return {0, chi, clo, ms}
  end
  local fence = tonumber(ARGV[11])
  if ARGV[5] ~= '1' and fence > 0 and ms >= fence then
    if ARGV[8] ~= '' then redis.call(pub, ARGV[8], ARGV[9] .. 'n') end
    return {3, chi, clo, ms}
  end
  local nms, nc = ms, 0
  if chi >= 0 then
    local cms = chi * 4096 + math.floor(clo / 1048576)
    if ms <= cms then
      nms, nc = cms, clo % 1048576 + 1
      if nc >= 1048576 then nms, nc = nms + 1, 0 end
    end
  end
  hi, lo = math.floor(nms / 4096), (nms % 4096) * 1048576 + nc
else
  if chi > hi or (chi == hi and clo > lo) then
    if ARGV[8] ~= '' then redis.call(pub, ARGV[8], ARGV[9] .. 'n') end
    return {0, chi, clo, ms}
  end
  if chi == hi and clo == lo then
    if ARGV[8] ~= '' then redis.call(pub, ARGV[8], ARGV[9] .. 'k ' .. hi .. ' ' .. lo .. ' ' .. ARGV[10]) end
    return {2, chi, clo, ms}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if auto then redis.call('SETRANGE', KEYS[1], 2, struct.pack('>I4I4', hi, lo)) end
if ARGV[8] ~= '' then redis.call(pub, ARGV[8], ARGV[9] .. 'k ' .. hi .. ' ' .. lo .. ' ' .. ARGV[10]) end
return {1, hi, lo, ms}
