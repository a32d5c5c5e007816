-- syncGenScript in scripts.go documents this script: KEYS, ARGV, reply, retries, hash slot.
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if not cur then return redis.error_reply('generation key ' .. KEYS[1] .. ' does not hold a number') end
local known = tonumber(ARGV[1])
if known > cur then cur = known end
if cur > 0 then redis.call('SET', KEYS[1], string.format('%d', cur), 'PX', ARGV[2]) end
return cur
