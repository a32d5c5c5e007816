package session

import "github.com/redis/go-redis/v9"

// The Lua scripts of the event bus. Every script touches the keys of one
// session only, which share the hash tag "{<owner>:<session>}" (see
// Events.streamKey), so each runs on one Cluster slot.

// appendScript appends one event to a session's stream.
//
//	KEYS[1] the stream            "<ns>:ev:{<owner>:<session>}"
//	KEYS[2] the event's token     "<stream>:t:<token>"
//	KEYS[3] the node versions     "<stream>:v" (hash: node ID -> last version appended)
//	ARGV[1] MAXLEN (approximate)  ARGV[2] the event's JSON
//	ARGV[3] stream TTL in ms      ARGV[4] token TTL in ms
//	ARGV[5] node ID ("" for session events)
//	ARGV[6] the node version the event carries (decimal, no leading zeros)
//	ARGV[7] the notification channel ("<ns>:ev:notify")
//
// It returns the new entry's ID, the first append's ID when the token was
// seen (a retried call: go-redis retries on network errors, and a plain XADD
// would be applied twice), or nil when the event is superseded: the session
// already holds an event of the same node with this version or a newer one.
// Events of one node are therefore appended in strictly increasing version
// order, whatever order concurrent writers (on any instance) call it in; a
// superseded event is dropped, never appended late. Versions are compared as
// decimal strings (length first), exact for every int64. A retry is safe,
// also after an error past the XADD (a script is not rolled back: a command
// the user may not run, say): the token is set right after the XADD, so the
// retry returns that entry's ID instead of appending the event again.
//
// A stream is born with a marker entry (field "m", never delivered) before
// its first event. The stream's first entry is then the oldest position a
// resume is known to be complete from: a client holding an ID older than
// the marker (from a stream that expired, or that Redis lost) is told to
// reset. Trimming never updates XINFO's max-deleted-entry-id (only XDEL
// does), so the first retained entry is what tells what is gone.
//
// The PUBLISH of the stream's key wakes every instance's reader (events_redis.go);
// the stream, not the message, carries the event, so a lost message costs
// latency, never an event.
var appendScript = redis.NewScript(`
local id = redis.call('GET', KEYS[2])
if id then return id end
if ARGV[5] ~= '' then
  local last = redis.call('HGET', KEYS[3], ARGV[5])
  if last and (#last > #ARGV[6] or (#last == #ARGV[6] and last >= ARGV[6])) then
    return false
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XADD', KEYS[1], '*', 'm', '1')
end
id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2])
redis.call('SET', KEYS[2], id, 'PX', ARGV[4])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[5], ARGV[6])
end
redis.call('PEXPIRE', KEYS[3], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[7], KEYS[1])
return id
`)

// markerScript creates a missing stream with only its marker entry and
// returns the marker's ID, so a reset sent for a lost stream has an ID that
// later resumes are complete from; nil when the stream exists.
//
//	KEYS[1] the stream   ARGV[1] stream TTL in ms
//
// A retry is safe: a second run finds the stream and returns nil, which the
// caller answers by looking at the stream again.
var markerScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local id = redis.call('XADD', KEYS[1], '*', 'm', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return id
`)
