package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/session"
)

// TestNodeCap: MAX_NODES_PER_SESSION bounds the nodes of a session across
// instances: concurrent chats and node creates on two instances sharing a
// database and Redis store exactly the cap, the rest answer 409
// too_many_nodes naming the limit, and other sessions are unaffected.
// L1-only too.
func TestNodeCap(t *testing.T) {
	t.Parallel()
	const limit = 4
	for name, db := range stores(t) {
		t.Run("two instances over redis, "+name, func(t *testing.T) {
			t.Parallel()
			rs := redistest.Start(t)
			db := db(t)
			ns := "cap" + randHex(4)
			a := startInstance(t, instanceOptions{Redis: rs, Database: db, Namespace: ns, MaxNodes: limit})
			b := startInstance(t, instanceOptions{Redis: rs, Database: db, Namespace: ns, MaxNodes: limit})
			testNodeCap(t, []*instance{a, b}, limit)
		})
	}
	t.Run("l1-only", func(t *testing.T) {
		t.Parallel()
		testNodeCap(t, []*instance{startInstance(t, instanceOptions{MaxNodes: limit})}, limit)
	})
}

func testNodeCap(t *testing.T, ins []*instance, limit int) {
	s := createSession(t, ins[0].URL, "", "full")
	const tries = 12
	var (
		wg              sync.WaitGroup
		mu              sync.Mutex
		created, capped int
		other           []string
	)
	for i := range tries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in := ins[i%len(ins)]
			q := req{Method: "POST", Path: "/api/chat", Body: map[string]any{"session_id": s.ID, "content": fmt.Sprint("m", i)}}
			if i%2 == 1 {
				q = req{Method: "POST", Path: "/api/nodes", Body: map[string]any{"session_id": s.ID, "content": fmt.Sprint("n", i)}}
			}
			status, code, err := post(in.URL+q.Path, q.Body)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				other = append(other, err.Error())
			case status == http.StatusCreated:
				created++
			case status == http.StatusConflict && code == "too_many_nodes":
				capped++
			default:
				other = append(other, fmt.Sprintf("%d %s", status, code))
			}
		}()
	}
	wg.Wait()
	if created != limit || capped != tries-limit || len(other) > 0 {
		t.Errorf("%d creates: %d created, %d refused with too_many_nodes, others %v; want %d, %d, none", tries, created, capped, other, limit, tries-limit)
	}
	for _, in := range ins {
		if c := getContext(t, in.URL, "", s.ID); len(c.Nodes) != limit {
			t.Errorf("context on %s holds %d nodes, want %d", in.URL, len(c.Nodes), limit)
		}
	}
	r := do(t, ins[0].URL, req{Method: "POST", Path: "/api/chat", Body: map[string]any{"session_id": s.ID, "content": "one more"}})
	var e errorBody
	r.decode(t, &e)
	if r.Status != http.StatusConflict || e.Error.Code != "too_many_nodes" || !strings.Contains(e.Error.Message, fmt.Sprint(limit)) {
		t.Errorf("chat into a full session = %d %s, want 409 too_many_nodes naming the limit %d", r.Status, r.Body, limit)
	}
	// Deleting a node makes room; another session is unaffected.
	c := getContext(t, ins[0].URL, "", s.ID)
	must(t, ins[0].URL, req{Method: "DELETE", Path: "/api/nodes/" + c.Nodes[0].ID}, http.StatusNoContent, nil)
	must(t, ins[len(ins)-1].URL, req{Method: "POST", Path: "/api/nodes", Body: map[string]any{"session_id": s.ID, "content": "room again"}}, http.StatusCreated, nil)
	fresh := createSession(t, ins[0].URL, "", "fresh")
	var n session.Node
	must(t, ins[0].URL, req{Method: "POST", Path: "/api/nodes", Body: map[string]any{"session_id": fresh.ID, "content": "x"}}, http.StatusCreated, &n)
}

// post sends body as JSON and returns the status and error code; unlike do
// it never fails the test, so goroutines may call it.
func post(url string, body any) (int, string, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.Post(url, "application/json", bytes.NewReader(b))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var e errorBody
	_ = json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Error.Code, nil
}
