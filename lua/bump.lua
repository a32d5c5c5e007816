-- bumpScript in scripts.go documents this script: KEYS, ARGV, reply, retries, hash slot.
local t = redis.call('TIME')
local g = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fence = tonumber(ARGV[5])
if fence > 0 and g >= fence then
  if ARGV[1] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2] .. 'n') end
  return 0
end
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if g <= cur then g = cur + 1 end
redis.call('SET', KEYS[1], string.format('%d', g), 'PX', ARGV[4])
if ARGV[1] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2] .. 'g ' .. string.format('%d', g) .. ' ' .. ARGV[3]) end
return g
