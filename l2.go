package tiercache

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/rediskey"
)

// Redis key layout: one key per entry, "<namespace>:{<key>}". The braces make the user key the
// Cluster hash tag, so anything stored per key later (a lease, metadata) lands in the same slot as
// the entry by naming it "<namespace>:{<key>}:<suffix>". Braces and '%' in user keys are
// percent-escaped so a user key can never end the hash tag early or collide with another key.
func (c *Cache) redisKey(key string) string {
	return c.cfg.Namespace + ":{" + rediskey.Escape(key) + "}"
}

// writeScript stores an envelope unless Redis holds a newer version. It is the only way entries
// and tombstones reach Redis, so rule 2 of the consistency contract (no regression in L2) lives
// here, atomically.
//
// KEYS[1] entry key.
// ARGV[1] envelope; its version field is overwritten when the version is assigned here.
// ARGV[2] PX lifetime in milliseconds.
// ARGV[3], ARGV[4] caller version as high and low 32-bit halves; 0, 0 asks for an automatic one.
// ARGV[5] "1" for a fill: with an automatic version it applies only if the stored version still
// equals the one the reader saw (ARGV[6], ARGV[7]; -1, -1 for absent), so a fill never lands on
// top of a write it did not see.
//
// Versions are compared as (high, low) pairs because Lua numbers are doubles and cannot hold 64
// bits. Automatic versions are a hybrid logical clock: Redis TIME in milliseconds shifted left by
// 20 bits, plus a counter, taken above the stored version, so they keep growing across expiry,
// eviction and a restart that loses the data.
//
// ARGV[8] invalidation channel, or "" to publish nothing (fills, batch writes, L1-only tests).
// ARGV[9] message header (origin, sequence, timestamp) and ARGV[10] the user key: the script
// publishes "<header>k <high> <low> <key>" after a write, and "<header>n" when it refuses one, so
// the origin's sequence has no hole. Publishing in the script makes the message atomic with the
// write: no acknowledged write goes unannounced. Nothing after the PUBLISH can fail, so a script
// that returns an error (OOM, WRONGTYPE) published nothing; execWrites then fills the sequence
// number (backplane.fill).
//
// ARGV[11] for an automatic write (not a fill), the fence: the Redis time in milliseconds from
// which its caller has given up on it ("0": none). A call that timed out may still run later (the
// client does not cancel what it sent; go-redis retries it), and the automatic version Redis's
// clock would then give it is above the version its caller remembered a later write with (see
// guard.remember), so the stale value would win the replay. Run at or past its fence, the write
// changes nothing (status 3, "<header>n" published). Caller-versioned writes need no fence: a late
// one is judged by its version.
//
// Returns {status, high, low, ms}: status 1 written (with that version), 0 refused (the stored
// version is newer, or a fill lost its race), 2 the same version was already stored (a retried
// write), nothing changed, 3 an automatic write ran past its fence, nothing changed; ms is Redis TIME in milliseconds, which the guard carries forward to
// version writes made while Redis is unreachable (see guard.observeTime).
//
// The script is safe to retry: a repeated caller-versioned write finds its own version (status 2);
// a repeated automatic write stores the same bytes under a newer version.
var writeScript = redis.NewScript(`
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
    if ARGV[8] ~= '' then redis.call('PUBLISH', ARGV[8], ARGV[9] .. 'n') end
    return {0, chi, clo, ms}
  end
  local fence = tonumber(ARGV[11])
  if ARGV[5] ~= '1' and fence > 0 and ms >= fence then
    if ARGV[8] ~= '' then redis.call('PUBLISH', ARGV[8], ARGV[9] .. 'n') end
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
    if ARGV[8] ~= '' then redis.call('PUBLISH', ARGV[8], ARGV[9] .. 'n') end
    return {0, chi, clo, ms}
  end
  if chi == hi and clo == lo then
    if ARGV[8] ~= '' then redis.call('PUBLISH', ARGV[8], ARGV[9] .. 'k ' .. hi .. ' ' .. lo .. ' ' .. ARGV[10]) end
    return {2, chi, clo, ms}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if auto then redis.call('SETRANGE', KEYS[1], 2, struct.pack('>I4I4', hi, lo)) end
if ARGV[8] ~= '' then redis.call('PUBLISH', ARGV[8], ARGV[9] .. 'k ' .. hi .. ' ' .. lo .. ' ' .. ARGV[10]) end
return {1, hi, lo, ms}
`)

// deleteIfScript deletes a key only while it still holds the given bytes, so removing a corrupt
// entry never removes a good value written since it was read.
var deleteIfScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

const (
	statusRefused = 0
	statusWritten = 1
	statusSame    = 2
	statusFenced  = 3
)

func splitVersion(v uint64) (hi, lo int64) { return int64(v >> 32), int64(v & 0xffffffff) }

func joinVersion(hi, lo int64) uint64 { return uint64(hi)<<32 | uint64(lo) }

// isCluster reports whether batch reads must be split per slot.
func isCluster(r redis.UniversalClient) bool {
	_, ok := r.(*redis.ClusterClient)
	return ok
}

// writeReq is one call of writeScript.
type writeReq struct {
	rk       string
	gen      uint64 // the namespace generation rk was built with (0: none)
	env      []byte
	px       int64
	hi, lo   int64 // caller version, 0, 0 for automatic
	fill     bool
	ehi, elo int64  // for fills: the version the reader saw, -1, -1 when absent
	channel  string // "" publishes nothing; else the script publishes under a header taken when sent
	key      string // the user key, for the message
}

type writeRes struct {
	status  int64
	version uint64
	err     error
}

// args are the script's arguments, with header as the message header (ARGV[9]).
func (r *writeReq) args(header string, fence int64) []any {
	fill := "0"
	if r.fill {
		fill = "1"
	}
	return []any{r.env, r.px, r.hi, r.lo, fill, r.ehi, r.elo, r.channel, header, r.key, fence}
}

// fence is the fence of automatic writes sent now with ctx (see writeScript): this instance's
// estimate of Redis TIME (which lags Redis's clock, never leads it) plus the time left until
// ctx's deadline, when the budget runs out and the caller treats the write as not done. So a
// write that runs once its caller may have given up finds Redis's clock at or past the fence. A
// write that runs in time may find it too when the estimate lags by more than the time left; it
// is then treated as timed out, never as done. 0 (no fence) without a deadline or before any
// Redis TIME was seen.
func (c *Cache) fence(ctx context.Context) int64 {
	if c.g == nil {
		return 0
	}
	dl, ok := ctx.Deadline()
	if !ok {
		return 0
	}
	ms, ok := c.g.redisNow()
	if !ok {
		return 0
	}
	return ms + max(time.Until(dl).Milliseconds(), 0)
}

// tailFunc builds the message published at the end of a batch's pipeline; seq is the sequence
// number its header took. It is called only when the pipeline is about to be sent.
type tailFunc func() (channel, msg string, seq uint64)

// header takes the next message header for a request that publishes (req.channel set), at the
// moment it is sent: a write the breaker refused, or whose context ended before it left, takes no
// sequence number, so peers never see a hole for a message that was never going to exist.
func (c *Cache) header(ctx context.Context, r *writeReq) (string, uint64, error) {
	if r.channel == "" || c.bp == nil {
		return "", 0, nil
	}
	if err := ctx.Err(); err != nil {
		return "", 0, err
	}
	h, seq := c.bp.headerSeq()
	return h, seq, nil
}

// execWrites runs writeScript for every request: one EVALSHA for a single request, one pipeline
// for many. tail, when not nil, builds one message published at the end of the same pipeline
// (the batch's coalesced invalidation). A script cache emptied by a Redis restart is reloaded once,
// and the message is published again after the retried writes, so that no peer refills an old
// value after the only message has passed. A sequence number taken by a message that may not
// have been published (the call failed, or the script returned an error) is filled with a "n"
// message (backplane.fill), so a peer counts a gap only for messages really lost.
func (c *Cache) execWrites(ctx context.Context, reqs []writeReq, tail tailFunc) []writeRes {
	res := make([]writeRes, len(reqs))
	if len(reqs) == 1 && tail == nil {
		r := &reqs[0]
		var cmd *redis.Cmd
		err := c.l2do(ctx, func(ctx context.Context) error {
			h, seq, err := c.header(ctx, r)
			if err != nil {
				return err
			}
			cmd = writeScript.Run(ctx, c.rdb, []string{r.rk}, r.args(h, c.fence(ctx))...)
			if cmd.Err() != nil && seq != 0 {
				c.bp.fill(seq)
			}
			return cmd.Err()
		})
		if err != nil {
			res[0].err = err
		} else {
			res[0] = c.parseWrite(cmd)
		}
		return res
	}
	run := func(idx []int) {
		var out []writeRes // written by the call; read only after it returned nil
		err := c.l2doN(ctx, len(idx), func(ctx context.Context) error {
			var err error
			out, err = c.pipeWrites(ctx, reqs, idx, tail)
			return err
		})
		for j, i := range idx {
			if err != nil {
				res[i] = writeRes{err: err}
			} else {
				res[i] = out[j]
			}
		}
	}

	all := make([]int, len(reqs))
	for i := range all {
		all[i] = i
	}
	run(all)
	var again []int
	for i := range res {
		if res[i].err != nil && redis.HasErrorPrefix(res[i].err, "NOSCRIPT") {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		if err := c.l2do(ctx, func(ctx context.Context) error { return writeScript.Load(ctx, c.rdb).Err() }); err != nil {
			for _, i := range again {
				res[i].err = err
			}
			return res
		}
		run(again)
	}
	return res
}

// pipeWrites sends the requests idx (and the tail message) in one pipeline and returns their
// results in idx's order, or the pipeline's transport error.
func (c *Cache) pipeWrites(ctx context.Context, reqs []writeReq, idx []int, tail tailFunc) ([]writeRes, error) {
	if err := ctx.Err(); err != nil {
		return nil, err // nothing sent, no sequence number taken
	}
	fence := c.fence(ctx)
	res := make([]writeRes, len(idx))
	pipe := c.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(idx))
	seqs := make([]uint64, len(idx))
	for j, i := range idx {
		h, seq, _ := c.header(context.Background(), &reqs[i]) // ctx was checked above
		seqs[j] = seq
		cmds[j] = writeScript.EvalSha(ctx, pipe, []string{reqs[i].rk}, reqs[i].args(h, fence)...)
	}
	var pub *redis.IntCmd
	var tailSeq uint64
	if tail != nil {
		ch, msg, seq := tail()
		tailSeq = seq
		pub = pipe.Publish(ctx, ch, msg)
	}
	_, err := pipe.Exec(ctx) // per-command errors are read below
	for j := range idx {
		res[j] = c.parseWrite(cmds[j])
		if res[j].err != nil && !errors.Is(res[j].err, errFenced) && seqs[j] != 0 {
			c.bp.fill(seqs[j]) // a fenced write published its "n" itself
		}
		if pub != nil && pub.Err() != nil && res[j].err == nil {
			// The write landed but its invalidation did not go out: not acknowledged.
			res[j].err = fmt.Errorf("publish invalidation: %w", pub.Err())
		}
	}
	if pub != nil && pub.Err() != nil && tailSeq != 0 {
		c.bp.fill(tailSeq)
	}
	if transportFailure(err) {
		return nil, err
	}
	return res, nil
}

// parseWrite reads writeScript's reply and hands the Redis time it carries to the guard.
func (c *Cache) parseWrite(cmd *redis.Cmd) writeRes {
	vals, err := cmd.Int64Slice()
	if err != nil {
		return writeRes{err: err}
	}
	if len(vals) != 4 {
		return writeRes{err: fmt.Errorf("tiercache: write script returned %d values", len(vals))}
	}
	if c.g != nil {
		c.g.observeTime(vals[3])
	}
	if vals[0] == statusFenced {
		return writeRes{err: errFenced}
	}
	return writeRes{status: vals[0], version: joinVersion(vals[1], vals[2])}
}

// readOne GETs one entry key.
func (c *Cache) readOne(ctx context.Context, rk string) (string, bool, error) {
	var s string
	err := c.l2do(ctx, func(ctx context.Context) error {
		var err error
		s, err = c.rdb.Get(ctx, rk).Result()
		return err
	})
	switch {
	case errors.Is(err, redis.Nil):
		return "", false, nil
	case err != nil:
		return "", false, err
	}
	return s, true, nil
}

// readMany reads entry keys in one round trip: MGET on a single server or Sentinel, a pipeline of
// GETs on Cluster (whose client splits it per node). found[i] says whether vals[i] exists.
func (c *Cache) readMany(ctx context.Context, rks []string) ([]string, []bool, error) {
	var gotVals []string // written by the call, read only after it returned nil (see l2do)
	var gotFound []bool
	err := c.l2doN(ctx, len(rks), func(ctx context.Context) error {
		vals, found := make([]string, len(rks)), make([]bool, len(rks))
		defer func() { gotVals, gotFound = vals, found }()
		if isCluster(c.rdb) {
			pipe := c.rdb.Pipeline()
			cmds := make([]*redis.StringCmd, len(rks))
			for i, rk := range rks {
				cmds[i] = pipe.Get(ctx, rk)
			}
			if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
				return err
			}
			for i, cmd := range cmds {
				vals[i], found[i] = cmd.Val(), cmd.Err() == nil
			}
			return nil
		}
		out, err := c.rdb.MGet(ctx, rks...).Result()
		for i, v := range out {
			if s, ok := v.(string); ok {
				vals[i], found[i] = s, true
			}
		}
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return gotVals, gotFound, nil
}
