-- probeScript in scripts.go documents this script: KEYS, ARGV, reply, retries, hash slot.
if not redis.acl_check_cmd then return -1 end
local denied = {}
for i, check in ipairs(ARGV) do
  local args = {}
  for a in string.gmatch(check, '[^\n]+') do args[#args + 1] = a end
  if not redis.acl_check_cmd(unpack(args)) then denied[#denied + 1] = i end
end
return denied
