package session

import (
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

// TestAppendScript drives appendScript directly: tokens make a retry return
// the first append's ID, a node's version must grow (compared exactly past
// 2^53), session events are always appended, the stream is born with a
// marker, and every append announces the stream's key.
func TestAppendScript(t *testing.T) {
	t.Parallel()
	rdb := redistest.Start(t).Client(t)
	ctx := t.Context()
	const key, channel = "as:ev:{o:s}", "as:ev:notify"
	ps := rdb.Subscribe(ctx, channel)
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil { // the subscription confirmation
		t.Fatal(err)
	}
	run := func(token, node, version string) (string, error) {
		return appendScript.Run(ctx, rdb, []string{key, key + ":t:" + token, key + ":v"},
			EventStreamLen, `{"type":"node.updated","session_id":"s"}`, time.Hour.Milliseconds(), time.Minute.Milliseconds(),
			node, version, channel).Text()
	}
	ids := map[string]string{}
	for _, tt := range []struct {
		name, token, node, version string
		superseded                 bool
		sameAs                     string // a retry: the ID of this earlier token
	}{
		{name: "first", token: "a", node: "n1", version: "5"},
		{name: "retry of the first", token: "a", node: "n1", version: "5", sameAs: "a"},
		{name: "older", token: "b", node: "n1", version: "4", superseded: true},
		{name: "equal", token: "c", node: "n1", version: "5", superseded: true},
		{name: "shorter is older", token: "d", node: "n1", version: "10"},
		{name: "after 10, 9", token: "e", node: "n1", version: "9", superseded: true},
		{name: "other node", token: "f", node: "n2", version: "1"},
		{name: "session event", token: "g", node: "", version: "0"},
		{name: "session event again", token: "h", node: "", version: "0"},
		{name: "past 2^53", token: "i", node: "n3", version: "9007199254740993"},
		{name: "one below, past 2^53", token: "j", node: "n3", version: "9007199254740992", superseded: true},
		{name: "retry after being overtaken", token: "d", node: "n1", version: "10", sameAs: "d"},
	} {
		id, err := run(tt.token, tt.node, tt.version)
		switch {
		case tt.superseded:
			if !errors.Is(err, redis.Nil) {
				t.Errorf("%s: appendScript = %q, %v; want nil (superseded)", tt.name, id, err)
			}
			continue
		case err != nil:
			t.Fatalf("%s: appendScript: %v", tt.name, err)
		case tt.sameAs != "":
			if id != ids[tt.sameAs] {
				t.Errorf("%s: ID %s, want the first append's %s", tt.name, id, ids[tt.sameAs])
			}
			continue
		}
		ids[tt.token] = id
		msg, err := ps.ReceiveTimeout(ctx, 10*time.Second)
		if m, ok := msg.(*redis.Message); err != nil || !ok || m.Payload != key {
			t.Errorf("%s: announcement = %v, %v; want the stream key on %s", tt.name, msg, err, channel)
		}
	}
	msgs, err := rdb.XRange(ctx, key, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1+len(ids) || msgs[0].Values["m"] != "1" {
		t.Errorf("stream = %v, want the marker and %d events", msgs, len(ids))
	}
	if v, _ := rdb.HGetAll(ctx, key+":v").Result(); v["n1"] != "10" || v["n2"] != "1" || v["n3"] != "9007199254740993" {
		t.Errorf("versions = %v", v)
	}
	if ttl := rdb.PTTL(ctx, key+":v").Val(); ttl <= 0 {
		t.Errorf("PTTL of the versions = %v, want the stream's", ttl)
	}
}

// TestAppendScriptErrorAfterAppend: an error after the XADD (here PEXPIRE, which this user may
// not run) leaves the entry appended, since Redis does not roll a script back; the retry that
// follows returns that entry instead of appending the event a second time. A session event,
// which no node version guards (a node event's retry is refused as superseded anyway). (Before: the token
// was set after the failing command, so each retry appended again.)
func TestAppendScriptErrorAfterAppend(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	srv.SetUser(t, "nopexpire", "pw", "~*", "&*", "+@all", "-pexpire")
	rdb := srv.UserClient(t, "nopexpire", "pw")
	ctx := t.Context()
	const key = "ea:ev:{o:s}"
	run := func() (string, error) {
		return appendScript.Run(ctx, rdb, []string{key, key + ":t:tok", key + ":v"},
			EventStreamLen, `{"type":"session.updated","session_id":"s"}`, time.Hour.Milliseconds(), time.Minute.Milliseconds(),
			"", "0", "ea:ev:notify").Text()
	}
	for i := range 3 {
		if _, err := run(); i == 0 && err == nil {
			t.Fatal("appendScript without PEXPIRE = nil error, want NOPERM")
		}
	}
	if n, err := rdb.XLen(ctx, key).Result(); err != nil || n != 2 {
		t.Fatalf("XLEN after one failed append and two retries = %d, %v; want 2 (the marker and one event)", n, err)
	}
}
