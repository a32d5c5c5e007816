package lock

import "github.com/redis/go-redis/v9"

// Every script touches keys of one hash slot only: the lock key and the token
// counter share the hash tag {name}; a fenced write's record and data key
// must share the resource's slot.
//
// go-redis retries a command after a network error, so a script may run twice
// for one call (the first run applied, its reply was lost). All four scripts
// are idempotent for that reason; see each one.

// acquireScript takes the lock and issues a fencing token.
//
// KEYS[1] lock key, KEYS[2] token counter.
// ARGV[1] our random value, ARGV[2] TTL in ms, ARGV[3] counter TTL in ms.
// Returns the token, or nil when another owner holds the lock.
//
// Idempotent: if the lock already holds our value, the first run applied and
// nobody can have acquired since (that needs the key absent, and nobody else
// writes our value), so the counter still holds our token; return it instead
// of issuing another.
//
// Tokens are max(counter+1, server time in microseconds): the clock floor
// keeps them increasing when the counter expires or Redis restarts empty, and
// keeps tokens of independent Redlock servers comparable. Microseconds stay
// below 2^53 (exact in Lua's doubles) until the year 2255. Redis 5+ replicates
// script effects, so TIME inside a writing script is allowed.
var acquireScript = redis.NewScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local t = redis.call('TIME')
  local tok = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('GET', KEYS[2]))
  if last and last >= tok then tok = last + 1 end
  redis.call('SET', KEYS[2], string.format('%.0f', tok), 'PX', ARGV[3])
  return tok
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return tonumber(redis.call('GET', KEYS[2]))
end
return false
`)

// releaseScript deletes the lock if it still holds our value.
// KEYS[1] lock key; ARGV[1] our value. Returns 1 if deleted, 0 otherwise.
// Idempotent in effect: a retried run finds the key gone and returns 0.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// extendScript resets the lock's TTL if it still holds our value.
// KEYS[1] lock key; ARGV[1] our value, ARGV[2] TTL in ms. Returns 1 or 0.
// Idempotent: setting the same TTL twice is harmless.
var extendScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`)

// fencedSetScript writes a value only if the token is at least the highest
// seen for the resource, and records the token.
//
// KEYS[1] the resource's highest-token record, KEYS[2] the data key.
// ARGV[1] token (decimal), ARGV[2] value, ARGV[3] TTL in ms (0 = none).
// Returns 0 when written, or the highest token seen (a string) when refused.
// Idempotent: a retried run with the same token writes the same value again.
var fencedSetScript = redis.NewScript(`
local seen = redis.call('GET', KEYS[1])
if seen and tonumber(seen) > tonumber(ARGV[1]) then
  return seen
end
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[3] == '0' then
  redis.call('SET', KEYS[2], ARGV[2])
else
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
end
return 0
`)

// raiseScript lifts the token counter to at least a given token, so that the
// next token this server issues is larger. Redlock runs it on the servers that
// granted a lease with a smaller token than the lease's (the maximum): any
// later majority overlaps this one, so its maximum exceeds this token.
//
// KEYS[1] token counter; ARGV[1] token, ARGV[2] counter TTL in ms. Returns 1.
// Idempotent.
var raiseScript = redis.NewScript(`
local last = tonumber(redis.call('GET', KEYS[1]))
if not last or last < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
`)
