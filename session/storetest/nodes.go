package storetest

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tiercache/tiercache/session"
)

// The contract cases about nodes: short IDs, content, order, updates, deletes, batches, validation
// and limits. Run lists every case.

func testShortIDs(t *testing.T, st session.Store) {
	ctx := t.Context()
	s1 := mustSession(t, st, "alice", "one")
	s2 := mustSession(t, st, "alice", "two")
	var nodes []session.Node
	var last int64
	for i := range 6 {
		s := s1
		if i%2 == 1 {
			s = s2
		}
		n := mustNode(t, st, s, fmt.Sprint("node ", i))
		num, err := session.ParseShortID(n.ShortID)
		if err != nil || num <= last {
			t.Fatalf("node %d short ID %q (%v), want one greater than n%d", i, n.ShortID, err, last)
		}
		last = num
		nodes = append(nodes, n)
	}
	if nodes[0].ShortID != "n1" {
		t.Errorf("first short ID of a new owner = %q, want n1", nodes[0].ShortID)
	}
	if b := mustNode(t, st, mustSession(t, st, "bob", "b"), "bob's first"); b.ShortID != "n1" {
		t.Errorf("bob's first short ID = %q, want n1 (sequences are per owner)", b.ShortID)
	}
	for _, n := range nodes {
		for _, form := range []string{n.ShortID, "#" + n.ShortID, "@" + n.ShortID} {
			got, err := st.ResolveShortID(ctx, "alice", form)
			if err != nil || !sameNode(got, n) {
				t.Errorf("ResolveShortID(alice, %q) = %+v, %v; want %+v", form, got, err, n)
			}
		}
	}
	_, err := st.ResolveShortID(ctx, "alice", "n999")
	wantErr(t, "ResolveShortID(unknown)", err, session.ErrNotFound)
	_, err = st.ResolveShortID(ctx, "alice", "n01")
	wantInvalid(t, "ResolveShortID(n01)", err, "short_id", "n01")

	m, err := st.ResolveShortIDs(ctx, "alice", []string{"@" + nodes[1].ShortID, nodes[4].ShortID, "n999", "#" + nodes[1].ShortID})
	if err != nil || len(m) != 2 || !sameNode(m[nodes[1].ShortID], nodes[1]) || !sameNode(m[nodes[4].ShortID], nodes[4]) {
		t.Errorf("ResolveShortIDs = %v, %v; want %s and %s", m, err, nodes[1].ShortID, nodes[4].ShortID)
	}
	_, err = st.ResolveShortIDs(ctx, "alice", []string{"n1", "x"})
	wantInvalid(t, "ResolveShortIDs(bad)", err, "short_id", `"x"`)
	if m, err := st.ResolveShortIDs(ctx, "alice", nil); err != nil || len(m) != 0 {
		t.Errorf("ResolveShortIDs(nil) = %v, %v; want empty", m, err)
	}

	// Short IDs are never reused, also after the newest node is deleted.
	if _, err := st.DeleteNode(ctx, "alice", nodes[5].ID, 0); err != nil {
		t.Fatalf("DeleteNode = %v", err)
	}
	if n := mustNode(t, st, s1, "after delete"); n.ShortID != "n7" {
		t.Errorf("short ID after deleting n6 = %q, want n7", n.ShortID)
	}
}

func testNodeRoundTrip(t *testing.T, st session.Store) {
	ctx := t.Context()
	s := mustSession(t, st, "alice", "a")
	other := mustSession(t, st, "alice", "other")
	ref := mustNode(t, st, other, "referenced")
	before := time.Now().Add(-time.Second)
	in := session.Node{
		ID: "nd_custom-1", SessionID: s.ID, Owner: "alice", Role: session.RoleAssistant,
		Content:  "héllo 👋\n\"quoted\"",
		Metadata: map[string]any{"model": "x", "tokens": 12, "nested": map[string]any{"ok": true, "list": []any{1.5, "a"}}},
		Refs:     []string{ref.ID},
	}
	n, err := st.CreateNode(ctx, in, 0)
	if err != nil {
		t.Fatalf("CreateNode = %v", err)
	}
	wantMeta := map[string]any{"model": "x", "tokens": float64(12), "nested": map[string]any{"ok": true, "list": []any{1.5, "a"}}}
	if n.ID != in.ID || n.SessionID != s.ID || n.Owner != "alice" || n.Role != in.Role || n.Content != in.Content ||
		!reflect.DeepEqual(n.Metadata, wantMeta) || !slices.Equal(n.Refs, in.Refs) || n.Version != 1 || n.Seq < 1 {
		t.Errorf("CreateNode = %+v, want the input with version 1, JSON-typed metadata %v", n, wantMeta)
	}
	if n.CreatedAt.Before(before) || !n.CreatedAt.Equal(n.UpdatedAt) || n.CreatedAt.Location() != time.UTC {
		t.Errorf("CreateNode timestamps = %v, %v; want now in UTC, equal", n.CreatedAt, n.UpdatedAt)
	}
	if got, ok := getNode(t, st, n.ID); !ok || !sameNode(got, n) {
		t.Errorf("GetNodes = %+v, want %+v", got, n)
	}
	_, err = st.CreateNode(ctx, session.Node{ID: in.ID, SessionID: s.ID, Owner: "alice", Role: session.RoleUser, Content: "again"}, 0)
	wantErr(t, "CreateNode(taken ID)", err, session.ErrExists)

	plain := mustNode(t, st, s, "plain")
	if plain.Metadata != nil || plain.Refs != nil {
		t.Errorf("CreateNode without metadata and refs = %+v, want nil Metadata and Refs", plain)
	}
	if got := getSession(t, st, s); got.Version != 3 || got.UpdatedAt.Before(n.UpdatedAt) {
		t.Errorf("session after two nodes = %+v, want version 3 and UpdatedAt >= %v", got, n.UpdatedAt)
	}
	_, err = st.CreateNode(ctx, session.Node{SessionID: "s_missing", Owner: "alice", Role: session.RoleUser, Content: "x"}, 0)
	wantErr(t, "CreateNode(missing session)", err, session.ErrNotFound)
}

func testNodeOrder(t *testing.T, st session.Store) {
	s := mustSession(t, st, "alice", "a")
	if l := nodeIDs(t, st, s); l.NodeIDs == nil || len(l.NodeIDs) != 0 || l.Version != 1 {
		t.Errorf("node list of a new session = %+v, want empty (non-nil) at version 1", l)
	}
	var want []string
	var lastSeq int64
	for i := range 5 {
		n := mustNode(t, st, s, fmt.Sprint(i))
		if n.Seq <= lastSeq {
			t.Errorf("node %d Seq = %d, want > %d", i, n.Seq, lastSeq)
		}
		lastSeq = n.Seq
		want = append(want, n.ID)
	}
	l := nodeIDs(t, st, s)
	if !slices.Equal(l.NodeIDs, want) || l.SessionID != s.ID || l.Version != 6 {
		t.Errorf("SessionNodeIDs = %+v, want %q at version 6", l, want)
	}
	if _, err := st.DeleteNode(t.Context(), "alice", want[2], 0); err != nil {
		t.Fatal(err)
	}
	want = slices.Delete(want, 2, 3)
	want = append(want, mustNode(t, st, s, "last").ID)
	if l := nodeIDs(t, st, s); !slices.Equal(l.NodeIDs, want) || l.Version != 8 {
		t.Errorf("SessionNodeIDs after delete and append = %+v, want %q at version 8", l, want)
	}
}

func testUpdateNode(t *testing.T, st session.Store) {
	ctx := t.Context()
	s := mustSession(t, st, "alice", "a")
	other := mustNode(t, st, s, "other")
	n := mustNode(t, st, s, "original")

	content := "edited"
	up, err := st.UpdateNode(ctx, "alice", n.ID, 1, session.NodeUpdate{Content: &content})
	if err != nil || up.Content != content || up.Version != 2 || up.UpdatedAt.Before(n.UpdatedAt) ||
		!up.CreatedAt.Equal(n.CreatedAt) || up.ShortID != n.ShortID || up.Seq != n.Seq {
		t.Fatalf("UpdateNode(if 1) = %+v, %v; want content %q at version 2", up, err, content)
	}
	if got, _ := getNode(t, st, n.ID); !sameNode(got, up) {
		t.Errorf("GetNodes after update = %+v, want %+v", got, up)
	}
	sessBefore := getSession(t, st, s)

	stale := "stale write"
	_, err = st.UpdateNode(ctx, "alice", n.ID, 1, session.NodeUpdate{Content: &stale})
	wantMismatch(t, "UpdateNode(stale if 1)", err, "node", n.ID, 1, 2)
	_, err = st.UpdateNode(ctx, "alice", n.ID, 7, session.NodeUpdate{Content: &stale})
	wantErr(t, "UpdateNode(future if 7)", err, session.ErrVersionMismatch)
	if got, _ := getNode(t, st, n.ID); !sameNode(got, up) {
		t.Errorf("node after stale updates = %+v, want unchanged %+v", got, up)
	}
	if got := getSession(t, st, s); !sameSession(got, sessBefore) {
		t.Errorf("session after stale updates = %+v, want unchanged %+v", got, sessBefore)
	}

	role, refs := session.RoleNote, []string{other.ID}
	meta := map[string]any{"k": "v"}
	up2, err := st.UpdateNode(ctx, "alice", n.ID, 0, session.NodeUpdate{Role: &role, Refs: &refs, Metadata: meta})
	if err != nil || up2.Version != 3 || up2.Role != role || !slices.Equal(up2.Refs, refs) || up2.Metadata["k"] != "v" || up2.Content != content {
		t.Fatalf("UpdateNode(unconditional role, refs, metadata) = %+v, %v", up2, err)
	}
	if got := getSession(t, st, s); got.Version != sessBefore.Version+1 {
		t.Errorf("session version after a node update = %d, want %d", got.Version, sessBefore.Version+1)
	}
	noRefs := []string{}
	up3, err := st.UpdateNode(ctx, "alice", n.ID, 3, session.NodeUpdate{Refs: &noRefs, Metadata: map[string]any{}})
	if err != nil || up3.Refs != nil || up3.Metadata != nil || up3.Version != 4 {
		t.Errorf("UpdateNode(clear refs and metadata) = %+v, %v; want nil refs and metadata at version 4", up3, err)
	}

	tests := []struct {
		name      string
		ifVersion int64
		upd       session.NodeUpdate
		field     string
	}{
		{name: "empty", upd: session.NodeUpdate{}, field: "update"},
		{name: "negative version", ifVersion: -1, upd: session.NodeUpdate{Content: &content}, field: "if_version"},
		{name: "big content", upd: session.NodeUpdate{Content: ptr(strings.Repeat("x", session.MaxContentBytes+1))}, field: "content"},
		{name: "bad role", upd: session.NodeUpdate{Role: ptr("root")}, field: "role"},
		{name: "missing ref", upd: session.NodeUpdate{Refs: &[]string{"nd_missing"}}, field: "refs"},
		{name: "self ref", upd: session.NodeUpdate{Refs: &[]string{n.ID}}, field: "refs"},
		{name: "big metadata", upd: session.NodeUpdate{Metadata: map[string]any{"k": strings.Repeat("x", session.MaxMetadataBytes)}}, field: "metadata"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := st.UpdateNode(ctx, "alice", n.ID, tt.ifVersion, tt.upd)
			wantInvalid(t, "UpdateNode("+tt.name+")", err, tt.field, "")
			if got, _ := getNode(t, st, n.ID); !sameNode(got, up3) {
				t.Errorf("node after invalid update = %+v, want unchanged %+v", got, up3)
			}
		})
	}
	_, err = st.UpdateNode(ctx, "alice", "nd_missing", 0, session.NodeUpdate{Content: &content})
	wantErr(t, "UpdateNode(missing)", err, session.ErrNotFound)
}

func testDeleteNode(t *testing.T, st session.Store) {
	ctx := t.Context()
	s := mustSession(t, st, "alice", "a")
	keep := mustNode(t, st, s, "keep")
	n := mustNode(t, st, s, "doomed")
	content := "v2"
	n, err := st.UpdateNode(ctx, "alice", n.ID, 0, session.NodeUpdate{Content: &content})
	if err != nil {
		t.Fatal(err)
	}
	_, err = st.DeleteNode(ctx, "alice", n.ID, 1)
	wantMismatch(t, "DeleteNode(stale if 1)", err, "node", n.ID, 1, 2)
	if _, ok := getNode(t, st, n.ID); !ok {
		t.Fatalf("node gone after a stale delete")
	}
	_, err = st.DeleteNode(ctx, "alice", n.ID, -3)
	wantInvalid(t, "DeleteNode(if -3)", err, "if_version", "")

	del, err := st.DeleteNode(ctx, "alice", n.ID, 2)
	if err != nil || !sameNode(del, n) {
		t.Fatalf("DeleteNode(if 2) = %+v, %v; want %+v", del, err, n)
	}
	if _, ok := getNode(t, st, n.ID); ok {
		t.Errorf("GetNodes finds the deleted node")
	}
	if l := nodeIDs(t, st, s); !slices.Equal(l.NodeIDs, []string{keep.ID}) {
		t.Errorf("node list after delete = %q, want [%q]", l.NodeIDs, keep.ID)
	}
	_, err = st.ResolveShortID(ctx, "alice", n.ShortID)
	wantErr(t, "ResolveShortID(deleted)", err, session.ErrNotFound)
	_, err = st.DeleteNode(ctx, "alice", n.ID, 0)
	wantErr(t, "DeleteNode(again)", err, session.ErrNotFound)
}

func testBatch(t *testing.T, st session.Store) {
	ctx := t.Context()
	a := mustSession(t, st, "alice", "a")
	b := mustSession(t, st, "bob", "b")
	empty := mustSession(t, st, "bob", "empty")
	var ids []string
	for i := range 3 {
		ids = append(ids, mustNode(t, st, a, fmt.Sprint("a", i)).ID, mustNode(t, st, b, fmt.Sprint("b", i)).ID)
	}
	nodes, err := st.GetNodes(ctx, append([]string{"nd_missing", ids[0]}, ids...))
	if err != nil || len(nodes) != len(ids) {
		t.Fatalf("GetNodes(%d ids + missing + duplicate) = %d nodes, %v; want %d", len(ids), len(nodes), err, len(ids))
	}
	for _, id := range ids {
		if nodes[id].ID != id {
			t.Errorf("GetNodes: %q maps to %+v", id, nodes[id])
		}
	}
	if m, err := st.GetNodes(ctx, nil); err != nil || len(m) != 0 {
		t.Errorf("GetNodes(nil) = %v, %v; want empty", m, err)
	}
	missing := session.SessionKey{Owner: "alice", ID: "s_missing"}
	bobsA := session.SessionKey{Owner: "bob", ID: a.ID} // alice's ID, bob's key: no such session
	sess, err := st.GetSessions(ctx, []session.SessionKey{a.Key(), missing, b.Key(), a.Key(), bobsA})
	if err != nil || len(sess) != 2 || !sameSession(sess[a.Key()], getSession(t, st, a)) || sess[b.Key()].Owner != "bob" {
		t.Errorf("GetSessions = %v, %v; want alice's and bob's", sess, err)
	}
	if m, err := st.GetSessions(ctx, []session.SessionKey{}); err != nil || len(m) != 0 {
		t.Errorf("GetSessions(empty) = %v, %v; want empty", m, err)
	}
	lists, err := st.SessionNodeIDs(ctx, []session.SessionKey{a.Key(), b.Key(), empty.Key(), missing, bobsA})
	if err != nil || len(lists) != 3 || len(lists[a.Key()].NodeIDs) != 3 || len(lists[b.Key()].NodeIDs) != 3 ||
		lists[empty.Key()].NodeIDs == nil || len(lists[empty.Key()].NodeIDs) != 0 || lists[a.Key()].Version != 4 ||
		lists[a.Key()].Owner != "alice" || lists[a.Key()].SessionID != a.ID {
		t.Errorf("SessionNodeIDs = %+v, %v; want 3, 3 and 0 nodes, missing absent", lists, err)
	}
	// A batch larger than typical bind-parameter limits.
	many := make([]string, 5000)
	for i := range many {
		many[i] = fmt.Sprintf("nd_x%d", i)
	}
	many = append(many, ids[1])
	if m, err := st.GetNodes(ctx, many); err != nil || len(m) != 1 {
		t.Errorf("GetNodes(5001 ids) = %d nodes, %v; want 1", len(m), err)
	}
}

func testValidation(t *testing.T, st session.Store) {
	ctx := t.Context()
	s := mustSession(t, st, "alice", "a")
	tooMany := make([]string, session.MaxRefs+1)
	for i := range tooMany {
		tooMany[i] = fmt.Sprintf("nd_%d", i)
	}
	base := func() session.Node {
		return session.Node{SessionID: s.ID, Owner: "alice", Role: session.RoleUser, Content: "x"}
	}
	tests := []struct {
		name    string
		mutate  func(*session.Node)
		field   string
		mention string
	}{
		{name: "oversized content", mutate: func(n *session.Node) { n.Content = strings.Repeat("x", session.MaxContentBytes+1) }, field: "content"},
		{name: "oversized metadata", mutate: func(n *session.Node) { n.Metadata = map[string]any{"k": strings.Repeat("x", session.MaxMetadataBytes)} }, field: "metadata"},
		{name: "too many refs", mutate: func(n *session.Node) { n.Refs = tooMany }, field: "refs"},
		{name: "bad role", mutate: func(n *session.Node) { n.Role = "wizard" }, field: "role", mention: "wizard"},
		{name: "missing ref", mutate: func(n *session.Node) { n.Refs = []string{"nd_nope"} }, field: "refs", mention: "nd_nope"},
		{name: "bad id", mutate: func(n *session.Node) { n.ID = "../x" }, field: "id"},
		{name: "no owner", mutate: func(n *session.Node) { n.Owner = "" }, field: "owner"},
		{name: "NUL content", mutate: func(n *session.Node) { n.Content = "\x00" }, field: "content"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := base()
			tt.mutate(&n)
			_, err := st.CreateNode(ctx, n, 0)
			wantInvalid(t, "CreateNode("+tt.name+")", err, tt.field, tt.mention)
		})
	}
	_, err := st.CreateSession(ctx, session.Session{Owner: "alice", Title: strings.Repeat("t", session.MaxTitle+1)})
	wantInvalid(t, "CreateSession(long title)", err, "title", "")
	_, err = st.CreateSession(ctx, session.Session{Title: "no owner"})
	wantInvalid(t, "CreateSession(no owner)", err, "owner", "")

	// Nothing was written: no nodes, session untouched, no short ID used up.
	if l := nodeIDs(t, st, s); len(l.NodeIDs) != 0 || l.Version != 1 {
		t.Errorf("node list after invalid creates = %+v, want empty at version 1", l)
	}
	if got := getSession(t, st, s); !sameSession(got, s) {
		t.Errorf("session after invalid creates = %+v, want %+v", got, s)
	}
	if list, err := st.ListSessions(ctx, "alice", 0); err != nil || len(list) != 1 {
		t.Errorf("ListSessions after invalid creates = %v, %v; want one session", list, err)
	}
	if n := mustNode(t, st, s, "first valid"); n.ShortID != "n1" {
		t.Errorf("first valid node short ID = %q, want n1 (failed creates must not use up short IDs)", n.ShortID)
	}
}

func testConcurrentCreateNode(t *testing.T, st session.Store) {
	const workers, perWorker = 8, 5
	s1 := mustSession(t, st, "alice", "one")
	s2 := mustSession(t, st, "alice", "two")
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex // guards nodes
		nodes []session.Node
		errs  = make(chan error, workers*perWorker)
	)
	for w := range workers {
		wg.Go(func() {
			s := s1
			if w%2 == 1 {
				s = s2
			}
			for i := range perWorker {
				n, err := st.CreateNode(t.Context(), session.Node{SessionID: s.ID, Owner: "alice", Role: session.RoleUser, Content: fmt.Sprint(w, "/", i)}, 0)
				if err != nil {
					errs <- err
					continue
				}
				mu.Lock()
				nodes = append(nodes, n)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent CreateNode = %v", err)
	}
	shortIDs := map[string]bool{}
	seqs := map[string]bool{}
	for _, n := range nodes {
		if shortIDs[n.ShortID] {
			t.Errorf("short ID %q assigned twice", n.ShortID)
		}
		shortIDs[n.ShortID] = true
		key := fmt.Sprint(n.SessionID, "/", n.Seq)
		if seqs[key] {
			t.Errorf("seq %s assigned twice", key)
		}
		seqs[key] = true
	}
	for i := 1; i <= workers*perWorker; i++ {
		if !shortIDs[session.FormatShortID(int64(i))] {
			t.Errorf("short ID n%d missing; want n1..n%d without gaps", i, workers*perWorker)
		}
	}
	total := len(nodeIDs(t, st, s1).NodeIDs) + len(nodeIDs(t, st, s2).NodeIDs)
	if total != workers*perWorker {
		t.Errorf("node lists hold %d nodes, want %d", total, workers*perWorker)
	}
}

// testNodeLimit: concurrent creates with a maxNodes store exactly that
// many nodes in the session; the rest get a *LimitError and write nothing
// (the session's version counts only the stored ones). Other sessions and
// a zero maxNodes are not limited.
func testNodeLimit(t *testing.T, st session.Store) {
	ctx := t.Context()
	const limit, workers = 3, 8
	s := mustSession(t, st, "alice", "full")
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			_, err := st.CreateNode(ctx, session.Node{SessionID: s.ID, Owner: "alice", Role: session.RoleUser, Content: fmt.Sprint(w)}, limit)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	created, limited := 0, 0
	for err := range errs {
		var le *session.LimitError
		switch {
		case err == nil:
			created++
		case errors.As(err, &le) && errors.Is(err, session.ErrLimit) && le.Limit == limit && le.ID == s.ID:
			limited++
		default:
			t.Errorf("CreateNode past the limit = %v, want a *LimitError", err)
		}
	}
	lists, err := st.SessionNodeIDs(ctx, []session.SessionKey{s.Key()})
	if err != nil {
		t.Fatal(err)
	}
	l := lists[s.Key()]
	if created != limit || limited != workers-limit || len(l.NodeIDs) != limit || l.Version != int64(1+limit) {
		t.Errorf("%d concurrent creates with limit %d: %d created, %d limited, %d stored at session version %d; want %d, %d, %d, %d",
			workers, limit, created, limited, len(l.NodeIDs), l.Version, limit, workers-limit, limit, 1+limit)
	}
	if _, err := st.CreateNode(ctx, session.Node{SessionID: s.ID, Owner: "alice", Role: session.RoleUser, Content: "unlimited"}, 0); err != nil {
		t.Errorf("CreateNode with maxNodes 0 = %v, want no limit", err)
	}
	other := mustSession(t, st, "alice", "other")
	if _, err := st.CreateNode(ctx, session.Node{SessionID: other.ID, Owner: "alice", Role: session.RoleUser, Content: "x"}, limit); err != nil {
		t.Errorf("CreateNode in another session = %v", err)
	}
}
