package session_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/session"
)

// TestEventsClusterOneReader: on a 3-master Cluster, one Events watching
// sessions whose streams spread over every master receives every event,
// while it holds one subscription of the notification channel in the whole
// cluster and no connection blocked on any master.
func TestEventsClusterOneReader(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	t.Parallel()
	cl := redistest.StartCluster(t, 3)
	a := session.NewEvents(cl.Client(t), "one", nil)
	defer a.Close()
	b := session.NewEvents(cl.Client(t), "one", nil)
	defer b.Close()
	const n = 40
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	chans := make([]<-chan session.Event, n)
	for i := range n {
		var err error
		if chans[i], err = b.Subscribe(ctx, "o", fmt.Sprintf("s%d", i), ""); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		if _, err := a.Publish(t.Context(), "o", session.Event{Type: session.EventNodeCreated, SessionID: fmt.Sprintf("s%d", i), NodeID: fmt.Sprintf("x%d", i), Version: 1}); err != nil {
			t.Fatal(err)
		}
	}
	for i, ch := range chans {
		if got := recv(t, ch); got.NodeID != fmt.Sprintf("x%d", i) || got.SessionID != fmt.Sprintf("s%d", i) {
			t.Fatalf("session s%d: event %+v, want node.created x%d", i, got, i)
		}
	}
	var subs int64
	for _, node := range cl.Nodes() {
		if keys := node.Do(t, "KEYS", "one:ev:{*}").([]any); len(keys) == 0 {
			t.Errorf("node %s holds none of the %d streams; want them spread over every master", node.Addr(), n)
		}
		res := node.Do(t, "PUBSUB", "NUMSUB", "one:ev:notify").([]any)
		subs += res[1].(int64)
		list := node.Do(t, "CLIENT", "LIST").(string)
		for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
			for _, f := range strings.Fields(line) {
				if flags, ok := strings.CutPrefix(f, "flags="); ok && strings.Contains(flags, "b") {
					t.Errorf("node %s: a blocked connection: %s", node.Addr(), line)
				}
			}
		}
	}
	if subs != 1 {
		t.Errorf("notification subscriptions over the cluster = %d, want 1 (b's reader; a has no subscriber)", subs)
	}
	if st := b.Stats(); st.Watched != n {
		t.Errorf("b watches %d sessions, want %d", st.Watched, n)
	}
}
