package tiercache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/internal/wire"
)

// The tests in this file drive each script of scripts.go directly against a real Redis: every row
// sets up what the key holds, runs the script once, and checks the reply, what Redis then holds
// and what the script published.

// held is what a test key holds: a string with its lifetime (0: none), a list (a key of the wrong
// type for every script), or, as the zero value, nothing.
type held struct {
	val  string
	list bool
	ttl  time.Duration
}

func (h held) String() string {
	switch {
	case h.list:
		return "a list"
	case h.val == "" && h.ttl == 0:
		return "nothing"
	}
	return fmt.Sprintf("%q (ttl %v)", h.val, h.ttl)
}

// put makes key hold h.
func put(tb testing.TB, rdb *redis.Client, key string, h held) {
	tb.Helper()
	ctx := context.Background()
	var err error
	switch {
	case h.list:
		err = rdb.RPush(ctx, key, "x").Err()
	case h.val != "":
		err = rdb.Set(ctx, key, h.val, h.ttl).Err()
	}
	if err != nil {
		tb.Fatalf("put %s: %v", key, err)
	}
}

// holding reads back what key holds; ttl is rounded to the second, to compare lifetimes that
// were just set.
func holding(tb testing.TB, rdb *redis.Client, key string) held {
	tb.Helper()
	ctx := context.Background()
	typ, err := rdb.Type(ctx, key).Result()
	if err != nil {
		tb.Fatalf("TYPE %s: %v", key, err)
	}
	switch typ {
	case "none":
		return held{}
	case "list":
		return held{list: true}
	}
	v, err := rdb.Get(ctx, key).Result()
	if err != nil {
		tb.Fatalf("GET %s: %v", key, err)
	}
	ttl, err := rdb.PTTL(ctx, key).Result()
	if err != nil {
		tb.Fatalf("PTTL %s: %v", key, err)
	}
	return held{val: v, ttl: max(ttl, 0).Round(time.Second)}
}

// expectHeld fails the test unless key holds want.
func expectHeld(tb testing.TB, rdb *redis.Client, key string, want held) {
	tb.Helper()
	if h := holding(tb, rdb, key); h != want {
		tb.Errorf("Redis holds %v at %s, want %v", h, key, want)
	}
}

// scriptSub is a subscription to the channel the scripts under test publish on.
type scriptSub struct {
	rdb *redis.Client
	ps  *redis.PubSub
	ch  string
}

func subscribeScripts(tb testing.TB, rdb *redis.Client, ch string) *scriptSub {
	tb.Helper()
	ps := rdb.Subscribe(context.Background(), ch)
	tb.Cleanup(func() { ps.Close() })
	if _, err := ps.Receive(context.Background()); err != nil { // the subscription's confirmation
		tb.Fatal(err)
	}
	return &scriptSub{rdb: rdb, ps: ps, ch: ch}
}

// published returns the messages published on the channel since the last call, in order: it
// publishes a marker and reads up to it, so "nothing published" is seen without waiting.
func (s *scriptSub) published(tb testing.TB) []string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const marker = "--marker--"
	if err := s.rdb.Publish(ctx, s.ch, marker).Err(); err != nil {
		tb.Fatal(err)
	}
	var got []string
	for {
		msg, err := s.ps.ReceiveMessage(ctx)
		if err != nil {
			tb.Fatalf("reading %s: %v", s.ch, err)
		}
		if msg.Payload == marker {
			return got
		}
		got = append(got, msg.Payload)
	}
}

// expect fails the test unless the messages published since the last call are want.
func (s *scriptSub) expect(tb testing.TB, want []string) {
	tb.Helper()
	if got := s.published(tb); strings.Join(got, "|") != strings.Join(want, "|") {
		tb.Errorf("published %q, want %q", got, want)
	}
}

// envelope encodes a raw envelope with version v.
func envelope(tb testing.TB, v uint64, tombstone bool, payload string) string {
	tb.Helper()
	enc, err := wire.NewEncoder(wire.CompressNone, -1)
	if err != nil {
		tb.Fatal(err)
	}
	var p []byte
	if !tombstone {
		p = []byte(payload)
	}
	env, _ := enc.Encode(nil, wire.Header{Version: v, Tombstone: tombstone}, p)
	return string(env)
}

// withVersion is env with its version field set to v, as writeScript stores automatic versions.
func withVersion(env string, v uint64) string {
	b := []byte(env)
	binary.BigEndian.PutUint64(b[wire.VersionOffset:], v)
	return string(b)
}

// What Redis holds after a write: the stored bytes, the request's envelope as given, or the
// request's envelope carrying the version the script returned.
const (
	holdsStored = iota
	holdsEnv
	holdsEnvVersioned
)

func TestWriteScript(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	const ch, px = "write:ch", 60_000
	sub := subscribeScripts(t, rdb, ch)
	now := redisTime(t, rdb)
	past, future := now.Add(-time.Minute).UnixMilli(), now.Add(time.Hour).UnixMilli()
	ahead := uint64(future) << 20 // an automatic version Redis's clock has not reached
	const p53 = uint64(1) << 53
	stored := func(v uint64) string { return envelope(t, v, false, "old") }
	tomb := func(v uint64) string { return envelope(t, v, true, "") }

	tests := []struct {
		name    string
		stored  string // "" for no key
		version uint64 // the caller version, 0 for automatic
		fill    bool
		saw     int64 // for fills, the version the reader saw; -1 for absent
		publish bool  // ARGV[8] set
		fence   int64

		wantStatus int64
		want       uint64 // the version in the reply...
		wantClock  bool   // ...or one from Redis's clock: TIME ms << 20, counter 0
		wantNone   bool   // ...or none: -1, -1
		wantHeld   int
		wantPub    string // "k", "n" or "" for nothing
	}{
		// Automatic versions.
		{name: "automatic on an absent key", publish: true,
			wantStatus: statusWritten, wantClock: true, wantHeld: holdsEnvVersioned, wantPub: "k"},
		{name: "automatic above an older stored version", stored: stored(5), publish: true,
			wantStatus: statusWritten, wantClock: true, wantHeld: holdsEnvVersioned, wantPub: "k"},
		{name: "automatic above a stored version ahead of the clock", stored: stored(ahead | 7), publish: true,
			wantStatus: statusWritten, want: ahead | 8, wantHeld: holdsEnvVersioned, wantPub: "k"},
		{name: "automatic with a full counter takes the next millisecond", stored: stored(ahead | (1<<20 - 1)), publish: true,
			wantStatus: statusWritten, want: ahead + 1<<20, wantHeld: holdsEnvVersioned, wantPub: "k"},
		{name: "automatic over a value that is not an envelope", stored: "garbage", publish: true,
			wantStatus: statusWritten, wantClock: true, wantHeld: holdsEnvVersioned, wantPub: "k"},
		{name: "automatic without a channel publishes nothing",
			wantStatus: statusWritten, wantClock: true, wantHeld: holdsEnvVersioned},

		// Caller versions.
		{name: "caller version on an absent key", version: 5, publish: true,
			wantStatus: statusWritten, want: 5, wantHeld: holdsEnv, wantPub: "k"},
		{name: "caller version above the stored one", stored: stored(5), version: 6, publish: true,
			wantStatus: statusWritten, want: 6, wantHeld: holdsEnv, wantPub: "k"},
		{name: "caller version refused: stored newer", stored: stored(5), version: 3, publish: true,
			wantStatus: statusRefused, want: 5, wantHeld: holdsStored, wantPub: "n"},
		{name: "same version retried", stored: stored(5), version: 5, publish: true,
			wantStatus: statusSame, want: 5, wantHeld: holdsStored, wantPub: "k"},

		// Fills.
		{name: "fill of an absent key it saw absent", fill: true, saw: -1,
			wantStatus: statusWritten, wantClock: true, wantHeld: holdsEnvVersioned},
		{name: "fill over the version it saw", stored: stored(5), fill: true, saw: 5,
			wantStatus: statusWritten, wantClock: true, wantHeld: holdsEnvVersioned},
		{name: "fill CAS lost: written since the read", stored: stored(9), fill: true, saw: 5, publish: true,
			wantStatus: statusRefused, want: 9, wantHeld: holdsStored, wantPub: "n"},
		{name: "fill CAS lost: it saw the key absent", stored: stored(5), fill: true, saw: -1,
			wantStatus: statusRefused, want: 5, wantHeld: holdsStored},
		{name: "fill over a value that is not an envelope, seen absent", stored: "garbage", fill: true, saw: -1,
			wantStatus: statusWritten, wantClock: true, wantHeld: holdsEnvVersioned},

		// Tombstones.
		{name: "tombstone refuses a late fill", stored: tomb(6), fill: true, saw: 5,
			wantStatus: statusRefused, want: 6, wantHeld: holdsStored},
		{name: "tombstone refuses an older write", stored: tomb(6), version: 4, publish: true,
			wantStatus: statusRefused, want: 6, wantHeld: holdsStored, wantPub: "n"},
		{name: "newer write replaces a tombstone", stored: tomb(6), version: 7, publish: true,
			wantStatus: statusWritten, want: 7, wantHeld: holdsEnv, wantPub: "k"},

		// Versions beyond a double's 53 bits compare and round-trip exactly.
		{name: "2^53-1 on an absent key", version: p53 - 1,
			wantStatus: statusWritten, want: p53 - 1, wantHeld: holdsEnv},
		{name: "2^53 on an absent key", version: p53,
			wantStatus: statusWritten, want: p53, wantHeld: holdsEnv},
		{name: "2^53+1 on an absent key", version: p53 + 1,
			wantStatus: statusWritten, want: p53 + 1, wantHeld: holdsEnv},
		{name: "2^64-1 on an absent key", version: math.MaxUint64, publish: true,
			wantStatus: statusWritten, want: math.MaxUint64, wantHeld: holdsEnv, wantPub: "k"},
		{name: "2^53 above a stored 2^53-1", stored: stored(p53 - 1), version: p53,
			wantStatus: statusWritten, want: p53, wantHeld: holdsEnv},
		{name: "2^53+1 above a stored 2^53", stored: stored(p53), version: p53 + 1,
			wantStatus: statusWritten, want: p53 + 1, wantHeld: holdsEnv},
		{name: "2^53 below a stored 2^53+1", stored: stored(p53 + 1), version: p53,
			wantStatus: statusRefused, want: p53 + 1, wantHeld: holdsStored},
		{name: "2^64-2 below a stored 2^64-1", stored: stored(math.MaxUint64), version: math.MaxUint64 - 1,
			wantStatus: statusRefused, want: math.MaxUint64, wantHeld: holdsStored},
		{name: "2^64-1 retried", stored: stored(math.MaxUint64), version: math.MaxUint64,
			wantStatus: statusSame, want: math.MaxUint64, wantHeld: holdsStored},

		// The fence.
		{name: "automatic, fence passed", publish: true, fence: past,
			wantStatus: statusFenced, wantNone: true, wantHeld: holdsStored, wantPub: "n"},
		{name: "automatic over a stored version, fence passed", stored: stored(5), publish: true, fence: past,
			wantStatus: statusFenced, want: 5, wantHeld: holdsStored, wantPub: "n"},
		{name: "automatic, fence ahead", publish: true, fence: future,
			wantStatus: statusWritten, wantClock: true, wantHeld: holdsEnvVersioned, wantPub: "k"},
		{name: "caller version, fence passed", version: 7, publish: true, fence: past,
			wantStatus: statusWritten, want: 7, wantHeld: holdsEnv, wantPub: "k"},
		{name: "fill, fence passed", fill: true, saw: -1, fence: past,
			wantStatus: statusWritten, wantClock: true, wantHeld: holdsEnvVersioned},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rk := fmt.Sprintf("write:{%d}", i)
			before := held{val: tt.stored}
			put(t, rdb, rk, before)
			r := writeReq{rk: rk, env: []byte(envelope(t, tt.version, false, "new")), px: px, ehi: -1, elo: -1, fill: tt.fill, key: rk}
			r.hi, r.lo = splitVersion(tt.version)
			if tt.fill && tt.saw >= 0 {
				r.ehi, r.elo = splitVersion(uint64(tt.saw))
			}
			if tt.publish {
				r.channel = ch
			}
			t0 := redisTime(t, rdb).UnixMilli()
			vals, err := writeScript.Run(ctx, rdb, []string{rk}, r.args("h ", tt.fence)...).Int64Slice()
			t1 := redisTime(t, rdb).UnixMilli()
			if err != nil || len(vals) != 4 {
				t.Fatalf("writeScript = %v, %v; want 4 values", vals, err)
			}
			status, hi, lo, ms := vals[0], vals[1], vals[2], vals[3]
			got := joinVersion(hi, lo)
			if status != tt.wantStatus {
				t.Errorf("status = %d, want %d", status, tt.wantStatus)
			}
			switch {
			case tt.wantNone:
				if hi != -1 || lo != -1 {
					t.Errorf("version halves = %d, %d; want -1, -1 (none stored)", hi, lo)
				}
			case tt.wantClock:
				if vms := int64(got >> 20); vms < t0 || vms > t1 || got&(1<<20-1) != 0 {
					t.Errorf("version = %#x (ms %d, counter %d), want Redis TIME in [%d, %d] << 20", got, vms, got&(1<<20-1), t0, t1)
				}
			default:
				if hi < 0 || hi > math.MaxUint32 || lo < 0 || lo > math.MaxUint32 || got != tt.want {
					t.Errorf("version halves = %d, %d (%d); want %d", hi, lo, got, tt.want)
				}
			}
			if ms < t0 || ms > t1 {
				t.Errorf("reply ms = %d, want Redis TIME in [%d, %d]", ms, t0, t1)
			}

			want := before
			switch tt.wantHeld {
			case holdsEnv:
				want = held{val: string(r.env), ttl: px * time.Millisecond}
			case holdsEnvVersioned:
				want = held{val: withVersion(string(r.env), got), ttl: px * time.Millisecond}
			}
			expectHeld(t, rdb, rk, want)

			var wantPub []string
			switch tt.wantPub {
			case "k":
				wantPub = []string{fmt.Sprintf("h k %d %d %s", hi, lo, rk)}
			case "n":
				wantPub = []string{"h n"}
			}
			sub.expect(t, wantPub)
		})
	}
}

func TestDeleteIfScript(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	tests := []struct {
		name     string
		stored   held
		arg      string
		want     int64
		wantHeld held
	}{
		{"unchanged: deleted", held{val: "bad"}, "bad", 1, held{}},
		{"rewritten since the read: kept", held{val: "good"}, "bad", 0, held{val: "good"}},
		{"already gone", held{}, "bad", 0, held{}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := fmt.Sprintf("del:{%d}", i)
			put(t, rdb, key, tt.stored)
			got, err := deleteIfScript.Run(ctx, rdb, []string{key}, tt.arg).Int64()
			if err != nil || got != tt.want {
				t.Errorf("deleteIfScript(%q) over %v = %d, %v; want %d", tt.arg, tt.stored, got, err, tt.want)
			}
			expectHeld(t, rdb, key, tt.wantHeld)
		})
	}
}

func TestBumpScript(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	const ch, px = "bump:ch", 60_000
	sub := subscribeScripts(t, rdb, ch)
	now := redisTime(t, rdb)
	past, future := now.Add(-time.Minute).UnixMilli(), now.Add(time.Hour).UnixMilli()
	tests := []struct {
		name    string
		stored  held
		publish bool
		fence   int64

		want      int64  // the new generation...
		wantClock bool   // ...or Redis TIME in ms
		wantErr   string // or an error containing this; Redis then still holds stored
	}{
		{name: "absent: Redis TIME", publish: true, wantClock: true},
		{name: "stored below the clock: Redis TIME", stored: held{val: "5"}, publish: true, wantClock: true},
		{name: "stored ahead of the clock: one above", stored: held{val: strconv.FormatInt(future, 10)}, publish: true, want: future + 1},
		{name: "fence ahead", stored: held{val: "5"}, publish: true, fence: future, wantClock: true},
		{name: "fence passed", stored: held{val: "5"}, publish: true, fence: past, want: 0},
		{name: "fence passed on an absent key", publish: true, fence: past, want: 0},
		{name: "without a channel publishes nothing", wantClock: true},
		{name: "not a number", stored: held{val: "x"}, publish: true, wantErr: "compare"},
		{name: "WRONGTYPE", stored: held{list: true}, publish: true, wantErr: "WRONGTYPE"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := fmt.Sprintf("bump:gen:{%d}", i)
			put(t, rdb, key, tt.stored)
			channel := ""
			if tt.publish {
				channel = ch
			}
			t0 := redisTime(t, rdb).UnixMilli()
			g, err := bumpScript.Run(ctx, rdb, []string{key}, channel, "h ", "ns", px, tt.fence).Int64()
			t1 := redisTime(t, rdb).UnixMilli()
			want, wantPub := tt.stored, []string(nil)
			switch {
			case tt.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("bumpScript over %v = %d, %v; want an error containing %q", tt.stored, g, err, tt.wantErr)
				}
			case err != nil:
				t.Fatalf("bumpScript over %v: %v", tt.stored, err)
			case tt.wantClock && (g < t0 || g > t1):
				t.Errorf("bumpScript over %v = %d, want Redis TIME in [%d, %d]", tt.stored, g, t0, t1)
			case !tt.wantClock && g != tt.want:
				t.Errorf("bumpScript over %v = %d, want %d", tt.stored, g, tt.want)
			}
			if err == nil && g != 0 {
				want = held{val: strconv.FormatInt(g, 10), ttl: px * time.Millisecond}
				if tt.publish {
					wantPub = []string{fmt.Sprintf("h g %d ns", g)}
				}
			} else if err == nil && tt.publish {
				wantPub = []string{"h n"} // fenced
			}
			expectHeld(t, rdb, key, want)
			sub.expect(t, wantPub)
		})
	}
}

func TestSyncGenScript(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	const life = 24 * time.Hour
	tests := []struct {
		name     string
		stored   held
		known    uint64
		want     int64
		wantErr  string // an error containing this; Redis then still holds stored
		wantHeld held
	}{
		{name: "never bumped", known: 0, want: 0, wantHeld: held{}},
		{name: "stored newer", stored: held{val: "200", ttl: time.Second}, known: 100, want: 200, wantHeld: held{val: "200", ttl: life}},
		{name: "stored older: max-merged", stored: held{val: "100", ttl: time.Second}, known: 200, want: 200, wantHeld: held{val: "200", ttl: life}},
		{name: "lost by Redis: written back", known: 300, want: 300, wantHeld: held{val: "300", ttl: life}},
		{name: "same: lifetime reset", stored: held{val: "400", ttl: time.Second}, known: 400, want: 400, wantHeld: held{val: "400", ttl: life}},
		{name: "known by Redis only", stored: held{val: "500", ttl: time.Second}, known: 0, want: 500, wantHeld: held{val: "500", ttl: life}},
		{name: "not a number", stored: held{val: "x"}, known: 1, wantErr: "does not hold a number", wantHeld: held{val: "x"}},
		{name: "WRONGTYPE", stored: held{list: true}, known: 1, wantErr: "WRONGTYPE", wantHeld: held{list: true}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := fmt.Sprintf("sync:gen:{%d}", i)
			put(t, rdb, key, tt.stored)
			got, err := syncGenScript.Run(ctx, rdb, []string{key}, strconv.FormatUint(tt.known, 10), life.Milliseconds()).Int64()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("syncGenScript(known %d) over %v = %d, %v; want an error containing %q", tt.known, tt.stored, got, err, tt.wantErr)
				}
			} else if err != nil || got != tt.want {
				t.Errorf("syncGenScript(known %d) over %v = %d, %v; want %d", tt.known, tt.stored, got, err, tt.want)
			}
			expectHeld(t, rdb, key, tt.wantHeld)
		})
	}
}

func TestRevalidateScript(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	v7 := envelope(t, 7, false, "the value, which need not travel")
	tests := []struct {
		name    string
		stored  held
		version uint64
		want    string // the reply; "" for nil
		wantErr bool
	}{
		{"same version: the header alone", held{val: v7}, 7, v7[:wire.HeaderSize], false},
		{"another version: the whole value", held{val: v7}, 6, v7, false},
		{"a tombstone of another version: the whole tombstone", held{val: envelope(t, 8, true, "")}, 7, envelope(t, 8, true, ""), false},
		{"not an envelope: as stored", held{val: "junk that is not an envelope"}, 7, "junk that is not an envelope", false},
		{"absent: nil", held{}, 7, "", false},
		{"not a string: WRONGTYPE", held{list: true}, 7, "", true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := fmt.Sprintf("reval:{%d}", i)
			put(t, rdb, key, tt.stored)
			got, err := revalidateScript.Run(ctx, rdb, []string{key}, versionArg(tt.version)).Text()
			if errors.Is(err, redis.Nil) {
				err = nil
			}
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("revalidateScript(version %d) over %v = %q, %v; want %q (error: %v)", tt.version, tt.stored, got, err, tt.want, tt.wantErr)
			}
			expectHeld(t, rdb, key, tt.stored) // it writes nothing
		})
	}
}
