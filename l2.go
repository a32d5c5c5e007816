package tiercache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"strconv"
	"time"
	"unsafe"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/rediskey"
)

// Redis key layout: one key per entry, "<namespace>:{<key>}". The braces make the user key the
// Cluster hash tag, so anything stored per key later (a lease, metadata) lands in the same slot as
// the entry by naming it "<namespace>:{<key>}:<suffix>". Braces and '%' in user keys are
// percent-escaped so a user key can never end the hash tag early or collide with another key.
func (c *Cache) redisKey(key string) string { return c.genEntryKey(key, 0) }

// genEntryKey is the Redis key of key under generation g of its namespace: redisKey, followed by
// ":g<generation>" unless g is 0 (no namespace).
func (c *Cache) genEntryKey(key string, g uint64) string {
	var b keyChunks
	return b.entryKey(c.cfg.Namespace, key, g)
}

// keyChunks cuts Redis keys out of shared chunks of memory: a batch's keys cost a few allocations
// instead of one each. A chunk is never written again where a key was cut from it, so the keys
// stay immutable strings. The zero value is ready; an unused one allocates nothing.
type keyChunks struct{ buf []byte }

// keyChunk is the size of a chunk: a few dozen keys of usual length.
const keyChunk = 2 << 10

// keySet finds the repeated keys of a batch: an open-addressing table of indices into keys,
// which costs a third of a map[string]struct{} on a batch of 100 (no per-key hashing state, one
// allocation without pointers).
type keySet struct {
	keys  []string
	slots []int32 // 1 + an index into keys; 0 is empty. Twice as many as keys, a power of two.
}

// keySetSeed seeds keySet's hash.
var keySetSeed = maphash.MakeSeed()

func newKeySet(keys []string) keySet {
	n := 8
	for n < 2*len(keys) {
		n <<= 1
	}
	return keySet{keys: keys, slots: make([]int32, n)}
}

// add adds keys[i] and reports whether it is the first of its value added.
func (s *keySet) add(i int) bool {
	k := s.keys[i]
	mask := uint64(len(s.slots) - 1)
	for h := maphash.String(keySetSeed, k) & mask; ; h = (h + 1) & mask {
		j := s.slots[h]
		if j == 0 {
			s.slots[h] = int32(i + 1)
			return true
		}
		if s.keys[j-1] == k {
			return false
		}
	}
}

// entryKey builds the key of an entry (see redisKey and genEntryKey).
func (b *keyChunks) entryKey(ns, key string, g uint64) string {
	need := len(ns) + len(":{}") + rediskey.EscapedLen(key)
	if g != 0 {
		need += len(":g") + 20 // the digits of a uint64
	}
	if cap(b.buf)-len(b.buf) < need {
		// Only a key built alone gets a chunk of its own size: a batch's first key allocates a
		// chunk for those that follow.
		size := need
		if b.buf != nil {
			size = max(need, keyChunk)
		}
		b.buf = make([]byte, 0, size)
	}
	start := len(b.buf)
	b.buf = append(b.buf, ns...)
	b.buf = append(b.buf, ":{"...)
	b.buf = rediskey.AppendEscaped(b.buf, key)
	b.buf = append(b.buf, '}')
	if g != 0 {
		b.buf = append(b.buf, ":g"...)
		b.buf = strconv.AppendUint(b.buf, g, 10)
	}
	k := b.buf[start:]
	return unsafe.String(unsafe.SliceData(k), len(k))
}

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
	sharded  bool   // channel is the key's shard channel: SPUBLISH (see shard.go)
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
	sharded := "0"
	if r.sharded {
		sharded = "1"
	}
	return []any{r.env, r.px, r.hi, r.lo, fill, r.ehi, r.elo, r.channel, header, r.key, fence, sharded}
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
	publish := func(p redis.Cmdable) {
		ch, msg, seq := tail()
		tailSeq = seq
		pub = p.Publish(ctx, ch, msg)
	}
	// On a single server the message follows the writes in the pipeline, which the server runs
	// in order. A Cluster client runs the pipeline's per-node parts in parallel, so there it is
	// sent once every write has run, or it could reach a peer first and the peer refill an old
	// value from a node whose write has not run yet: one more round trip per batch.
	cluster := isCluster(c.rdb)
	if tail != nil && !cluster {
		publish(pipe)
	}
	_, err := pipe.Exec(ctx) // per-command errors are read below
	if tail != nil && cluster && ctx.Err() == nil {
		// Even when some node failed: writes on the others may have landed.
		publish(c.rdb)
	}
	var pubErr error
	switch {
	case pub != nil:
		pubErr = pub.Err()
	case tail != nil:
		pubErr = ctx.Err() // Cluster: the caller gave up before the message could be sent
	}
	for j := range idx {
		res[j] = c.parseWrite(cmds[j])
		if res[j].err != nil && !errors.Is(res[j].err, errFenced) && seqs[j] != 0 {
			c.bp.fill(seqs[j]) // a fenced write published its "n" itself
		}
		if pubErr != nil && res[j].err == nil {
			// The write landed but its invalidation did not go out: not acknowledged.
			res[j].err = fmt.Errorf("publish invalidation: %w", pubErr)
		}
	}
	if pubErr != nil && tailSeq != 0 {
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
		return writeRes{err: errorf("write script returned %d values", len(vals))}
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
	if ok, err := found(err); !ok {
		return "", false, err
	}
	return s, true, nil // s is read only now: a call that timed out may still be writing it
}

// revalidateOne runs revalidateScript on one entry key: the reply is the stored header alone if
// the entry still has version, else the whole stored value (found is false for none).
func (c *Cache) revalidateOne(ctx context.Context, rk string, version uint64) (string, bool, error) {
	var s string
	err := c.l2do(ctx, func(ctx context.Context) error {
		var err error
		s, err = revalidateScript.Run(ctx, c.rdb, []string{rk}, versionArg(version)).Text()
		return err
	})
	if ok, err := found(err); !ok {
		return "", false, err
	}
	return s, true, nil // s is read only now: a call that timed out may still be writing it
}

// versionArg is version as the envelope stores it, 8 bytes big-endian (revalidateScript's ARGV[1]).
func versionArg(version uint64) string {
	return string(binary.BigEndian.AppendUint64(nil, version))
}

// found reads a single-key read's error: ok when the key was found; redis.Nil is not found, no
// error.
func found(err error) (ok bool, _ error) {
	switch {
	case errors.Is(err, redis.Nil):
		return false, nil
	case err != nil:
		return false, err
	}
	return true, nil
}

// readMany reads entry keys in one round trip: MGET on a single server or Sentinel, a pipeline of
// GETs on Cluster (whose client splits it per node). vals[i] is the string stored under rks[i],
// or nil when there is none (MGET's own reply, with no copy of it). When vers is not nil, a key
// with vers[i] != 0 is revalidated instead (revalidateScript, in the same round trip): vals[i] is
// then its header alone if Redis still holds version vers[i], else what GET would return.
func (c *Cache) readMany(ctx context.Context, rks []string, vers []uint64) ([]any, error) {
	var got []any // written by the call, read only after it returned nil (see l2do)
	err := c.l2doN(ctx, len(rks), func(ctx context.Context) error {
		if vers != nil || isCluster(c.rdb) {
			vals, err := c.pipeRead(ctx, rks, vers)
			got = vals
			return err
		}
		vals, err := c.rdb.MGet(ctx, rks...).Result()
		got = vals
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(got) < len(rks) { // never from a conforming server: the keys without a value are absent
		got = append(got, make([]any, len(rks)-len(got))...)
	}
	return got, nil
}

// pipeRead is readMany as one pipeline: the plain reads as one MGET (GETs on Cluster, where the
// client splits the pipeline per node), the revalidations as revalidateScript calls. A script
// cache emptied by a Redis restart is reloaded once and those calls sent again. A key whose read
// fails on its own (WRONGTYPE) reads as absent, as MGET reports it; one that fails for want of
// its server fails the whole read.
func (c *Cache) pipeRead(ctx context.Context, rks []string, vers []uint64) ([]any, error) {
	vals := make([]any, len(rks))
	cluster := isCluster(c.rdb)
	pipe := c.rdb.Pipeline()
	var plain []int
	var mget *redis.SliceCmd
	cmds := make([]redis.Cmder, len(rks))
	for i, rk := range rks {
		switch {
		case vers != nil && vers[i] != 0:
			cmds[i] = revalidateScript.EvalSha(ctx, pipe, []string{rk}, versionArg(vers[i]))
		case cluster:
			cmds[i] = pipe.Get(ctx, rk)
		default:
			plain = append(plain, i)
		}
	}
	if len(plain) > 0 {
		keys := make([]string, len(plain))
		for j, i := range plain {
			keys[j] = rks[i]
		}
		mget = pipe.MGet(ctx, keys...)
	}
	if _, err := pipe.Exec(ctx); transportFailure(err) {
		return nil, err
	}
	if mget != nil {
		if err := mget.Err(); transportFailure(err) {
			return nil, err
		}
		for j, v := range mget.Val() {
			vals[plain[j]] = v
		}
	}
	var again []int
	for i, cmd := range cmds {
		if cmd != nil && transportFailure(cmd.Err()) {
			// One node's failure: Exec reports only the first command's error, which may be
			// another key's redis.Nil, so each is checked, or its keys would read as absent.
			return nil, cmd.Err()
		}
		switch cmd := cmd.(type) {
		case *redis.StringCmd:
			if cmd.Err() == nil {
				vals[i] = cmd.Val()
			}
		case *redis.Cmd:
			if s, err := cmd.Text(); err == nil {
				vals[i] = s
			} else if redis.HasErrorPrefix(err, "NOSCRIPT") {
				again = append(again, i)
			}
		}
	}
	if len(again) == 0 {
		return vals, nil
	}
	if err := revalidateScript.Load(ctx, c.rdb).Err(); err != nil {
		return nil, err
	}
	pipe = c.rdb.Pipeline()
	for _, i := range again {
		cmds[i] = revalidateScript.EvalSha(ctx, pipe, []string{rks[i]}, versionArg(vers[i]))
	}
	if _, err := pipe.Exec(ctx); transportFailure(err) {
		return nil, err
	}
	for _, i := range again {
		s, err := cmds[i].(*redis.Cmd).Text()
		if transportFailure(err) {
			return nil, err
		}
		if err == nil {
			vals[i] = s
		}
	}
	return vals, nil
}
