package tiercache

import (
	_ "embed"

	"github.com/redis/go-redis/v9"
)

// The Lua scripts of the root package, one file each under lua/, embedded here and documented
// here only. Every script touches one key, KEYS[1], so it runs on that key's Cluster slot
// (trivially: there is no second key to share it with). Anything later stored beside an entry
// must share the entry's hash tag (see redisKey) to join one of these scripts.
//
// go-redis retries a command after a network error, so a script may run twice for one call (the
// first run applied, its reply was lost). Each script says below what a second run does. A
// second run of a publishing script publishes its message again under the same header: applying
// a message twice changes nothing, and backplane.track counts no gap for a sequence number seen
// twice.

var (
	//go:embed lua/write.lua
	writeLua string
	//go:embed lua/delete_if.lua
	deleteIfLua string
	//go:embed lua/bump.lua
	bumpLua string
	//go:embed lua/sync_gen.lua
	syncGenLua string
	//go:embed lua/revalidate.lua
	revalidateLua string
	//go:embed lua/probe.lua
	probeLua string
)

// writeScript (lua/write.lua) stores an envelope unless Redis holds a newer version. It is the
// only way entries and tombstones reach Redis, so rule 2 of the consistency contract (no
// regression in L2) lives here, atomically. writeReq.args builds its ARGV.
//
//	KEYS[1]   the entry key (redisKey, genEntryKey)
//	ARGV[1]   the envelope; its version field is overwritten when the version is assigned here
//	ARGV[2]   PX lifetime in milliseconds
//	ARGV[3]   caller version, high 32-bit half; ARGV[3], ARGV[4] = 0, 0 asks for an automatic one
//	ARGV[4]   caller version, low 32-bit half
//	ARGV[5]   "1" for a fill
//	ARGV[6]   for a fill, the version the reader saw, high half (-1 with ARGV[7] -1: absent)
//	ARGV[7]   for a fill, the version the reader saw, low half
//	ARGV[8]   invalidation channel, or "" to publish nothing (fills, batch writes, L1-only tests)
//	ARGV[9]   message header (origin, sequence, timestamp)
//	ARGV[10]  the user key, for the message
//	ARGV[11]  for an automatic write (not a fill), the fence ("0": none); see below
//	ARGV[12]  "1" when ARGV[8] is the key's shard channel: the messages go out with SPUBLISH
//
// Versions are compared as (high, low) pairs because Lua numbers are doubles and cannot hold 64
// bits; each half is exact. The stored version is read in place from the envelope (bytes 2-9); a
// stored value shorter than 10 bytes or without the envelope's format byte counts as absent.
// Automatic versions are a hybrid logical clock: Redis TIME in milliseconds shifted left by 20
// bits, plus a counter, taken above the stored version, so they keep growing across expiry,
// eviction and a restart that loses the data. They are written into the stored envelope's
// version field. Caller versions are stored as given, in the envelope the caller encoded.
//
// A fill (ARGV[5] "1") with an automatic version applies only if the stored version still
// equals the one the reader saw (ARGV[6], ARGV[7]), so a fill never lands on top of a write it
// did not see.
//
// The script publishes "<header>k <high> <low> <key>" after a write (and for the same version
// already stored), and "<header>n" when it refuses one, so the origin's sequence has no hole.
// Publishing in the script makes the message atomic with the write: no acknowledged write goes
// unannounced. Nothing after the PUBLISH can fail, so a script that returns an error (OOM,
// WRONGTYPE) published nothing; execWrites then fills the sequence number (backplane.fill).
//
// The fence (ARGV[11]) is the Redis time in milliseconds from which the caller of an automatic
// write has given up on it. A call that timed out may still run later (the client does not cancel
// what it sent; go-redis retries it), and the automatic version Redis's clock would then give it
// is above the version its caller remembered a later write with (see guard.remember), so the
// stale value would win the replay. Run at or past its fence, the write changes nothing (status
// 3, "<header>n" published). Caller-versioned writes need no fence: a late one is judged by its
// version. Fills ignore it.
//
// Returns {status, high, low, ms}. Status 1: written, with the version (high, low). 0: refused
// (the stored version is newer, or a fill lost its race). 2: the same version was already stored
// (a retried write); nothing changed. 3: an automatic write ran past its fence; nothing changed.
// With 0, 2 and 3, (high, low) is the stored version, -1, -1 for none. ms is Redis TIME in
// milliseconds, which the guard carries forward to version writes made while Redis is unreachable
// (see guard.observeTime).
//
// Safe to retry: a repeated caller-versioned write finds its own version (status 2); a repeated
// automatic write stores the same bytes under a newer version; a repeated fill finds the version
// its first run stored and is refused (status 0: the value is in Redis, only not put in L1).
var writeScript = redis.NewScript(writeLua)

// The statuses writeScript returns, first in its reply.
const (
	statusRefused = 0
	statusWritten = 1
	statusSame    = 2
	statusFenced  = 3
)

// deleteIfScript (lua/delete_if.lua) deletes a key only while it still holds the given bytes, so
// removing a corrupt entry never removes a good value written since it was read.
//
//	KEYS[1]  the entry key
//	ARGV[1]  the bytes read from it
//
// Returns 1 when it deleted the key, 0 when the key holds other bytes or none. Safe to retry: a
// repeated run finds the key gone (or rewritten since) and returns 0.
var deleteIfScript = redis.NewScript(deleteIfLua)

// bumpScript (lua/bump.lua) moves a namespace to a new generation: Redis TIME in ms, or one above
// the stored generation. The generation is stored in decimal.
//
//	KEYS[1]  the generation key (genKey)
//	ARGV[1]  the invalidation channel, or "" to publish nothing
//	ARGV[2]  the message header
//	ARGV[3]  the namespace
//	ARGV[4]  the key's PX lifetime in milliseconds
//	ARGV[5]  the fence ("0": none)
//
// It publishes "<header>g <generation> <namespace>". The fence is the Redis time in milliseconds
// from which the caller has given up on the call, as for automatic writes (see writeScript). A
// bump that times out may still run later, and would then invalidate writes acknowledged after
// its caller was told it failed; run at or past its fence it changes nothing and publishes
// "<header>n", so the origin's sequence has no hole.
//
// Returns the new generation, or 0 when fenced. Unless fenced, a key that does not hold a number
// (or is not a string: WRONGTYPE) fails the script, which has then changed and published nothing.
// Not safe to retry blindly: a retried bump bumps again (harmless: one more invalidation of the
// namespace).
var bumpScript = redis.NewScript(bumpLua)

// syncGenScript (lua/sync_gen.lua) reads a namespace's generation and keeps it alive.
//
//	KEYS[1]  the generation key (genKey)
//	ARGV[1]  the generation this instance knows ("0": none)
//	ARGV[2]  PX lifetime in milliseconds
//
// The stored generation is max-merged with ARGV[1] (a key lost to eviction is written back)
// and, if there is one, its lifetime is reset to ARGV[2]. Returns the generation, 0 for none. A
// key that does not hold a number gets an error reply saying so (one that is not a string,
// WRONGTYPE), and is left as it was. Safe to retry: both steps are idempotent.
var syncGenScript = redis.NewScript(syncGenLua)

// revalidateScript (lua/revalidate.lua) asks whether an entry still holds the version L1 holds,
// for an L1 entry whose L1 lifetime has ended (see TypedCache.lookupL2).
//
//	KEYS[1]  the entry key
//	ARGV[1]  the version L1 holds, 8 bytes big-endian, as the envelope stores it
//
// When the stored envelope has that version, it returns the envelope's 30-byte header alone
// (its expiries and flags: the value need not travel, nor be decoded); otherwise the whole stored
// value, as GET would (nil for none). A reply whose header carries another version is therefore
// a whole value. A key that is not a string fails the script (WRONGTYPE), as it fails GET. Safe
// to retry: it writes nothing.
var revalidateScript = redis.NewScript(revalidateLua)

// probeScript (lua/probe.lua) asks Redis whether the current user may run the commands the cache
// needs, without running them (redis.acl_check_cmd, Redis 7.0 and later); New's permission check
// (see checkRedis) runs it once per key family.
//
//	KEYS[1]  the key probed (declared so that Redis checks EVALSHA's own access to it)
//	ARGV[i]  one command with its arguments, separated by newlines ("GET\n<key>")
//
// Returns the indices (1-based) into ARGV of the commands the user may not run, or -1 when the
// server has no redis.acl_check_cmd. An unknown command fails the script. Safe to retry: it
// writes nothing.
var probeScript = redis.NewScript(probeLua)
