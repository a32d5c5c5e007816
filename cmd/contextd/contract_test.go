package main

import (
	"bufio"
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/session"
)

// TestInputContract: the documented request contract, exactly: one JSON
// object (not null), field names matched case-sensitively, each once, valid
// UTF-8 without unpaired surrogate escapes, non-empty content on every route
// that writes it, only the documented If-Match forms, and error messages
// that never repeat huge input whole. Each refused request stores nothing.
// Against real Redis and L1-only.
func TestInputContract(t *testing.T) {
	t.Parallel()
	for name, o := range map[string]func(t *testing.T) instanceOptions{
		"redis":   func(t *testing.T) instanceOptions { return instanceOptions{Redis: redistest.Start(t)} },
		"l1-only": func(t *testing.T) instanceOptions { return instanceOptions{} },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			testInputContract(t, startInstance(t, o(t)))
		})
	}
}

func testInputContract(t *testing.T, in *instance) {
	s := createSession(t, in.URL, "", "s")
	n := chat(t, in.URL, "", s.ID, "hello").Node
	long := strings.Repeat("x", 100<<10)
	ifMatch := func(v string) map[string]string { return map[string]string{"If-Match": v} }
	patch := func(v string) req {
		return req{Method: "PATCH", Path: "/api/nodes/" + n.ID, Header: ifMatch(v), Body: map[string]any{"content": "changed"}}
	}
	tests := []struct {
		name   string
		q      req
		status int
		code   string
	}{
		{"null body, session", req{Method: "POST", Path: "/api/sessions", Body: "null"}, 400, "bad_json"},
		{"null body, chat", req{Method: "POST", Path: "/api/chat", Body: "null"}, 400, "bad_json"},
		{"array body", req{Method: "POST", Path: "/api/sessions", Body: "[]"}, 400, "bad_json"},
		{"string body", req{Method: "POST", Path: "/api/sessions", Body: `"title"`}, 400, "bad_json"},
		{"field case", req{Method: "POST", Path: "/api/chat", Body: `{"Session_ID":"` + s.ID + `","CONTENT":"hi"}`}, 400, "unknown_field"},
		{"field case, session", req{Method: "POST", Path: "/api/sessions", Body: `{"Title":"t"}`}, 400, "unknown_field"},
		{"field case, patch", req{Method: "PATCH", Path: "/api/nodes/" + n.ID, Header: ifMatch(`"1"`), Body: `{"Content":"x"}`}, 400, "unknown_field"},
		{"duplicate field", req{Method: "POST", Path: "/api/chat", Body: `{"session_id":"` + s.ID + `","content":"a","content":"b"}`}, 400, "bad_json"},
		{"invalid UTF-8", req{Method: "POST", Path: "/api/chat", Body: []byte("{\"session_id\":\"" + s.ID + "\",\"content\":\"a\xff\xfeb\"}")}, 400, "bad_json"},
		{"invalid UTF-8, node", req{Method: "POST", Path: "/api/nodes", Body: []byte("{\"session_id\":\"" + s.ID + "\",\"content\":\"\xc3\"}")}, 400, "bad_json"},
		{"lone surrogate", req{Method: "POST", Path: "/api/chat", Body: `{"session_id":"` + s.ID + `","content":"a\ud800b"}`}, 400, "bad_json"},
		{"lone low surrogate", req{Method: "POST", Path: "/api/sessions", Body: `{"title":"\udc00"}`}, 400, "bad_json"},
		{"empty content, node", req{Method: "POST", Path: "/api/nodes", Body: map[string]any{"session_id": s.ID, "content": ""}}, 422, "invalid_content"},
		{"blank content, node", req{Method: "POST", Path: "/api/nodes", Body: map[string]any{"session_id": s.ID, "content": " \n\t"}}, 422, "invalid_content"},
		{"empty content, patch", req{Method: "PATCH", Path: "/api/nodes/" + n.ID, Header: ifMatch(`"1"`), Body: map[string]any{"content": ""}}, 422, "invalid_content"},
		{"blank content, patch", req{Method: "PATCH", Path: "/api/nodes/" + n.ID, Header: ifMatch(`"1"`), Body: map[string]any{"content": "  "}}, 422, "invalid_content"},
		{"If-Match single quotes", patch(`'1'`), 400, "invalid_if_match"},
		{"If-Match backquotes", patch("`1`"), 400, "invalid_if_match"},
		{"If-Match leading zeros", patch(`"0001"`), 400, "invalid_if_match"},
		{"If-Match leading zero bare", patch(`01`), 400, "invalid_if_match"},
		{"If-Match plus", patch(`+1`), 400, "invalid_if_match"},
		{"If-Match quoted plus", patch(`"+1"`), 400, "invalid_if_match"},
		{"If-Match weak unquoted", patch(`W/1`), 400, "invalid_if_match"},
		{"If-Match half quoted", patch(`"1`), 400, "invalid_if_match"},
		{"If-Match zero", patch(`"0"`), 400, "invalid_if_match"},
		{"If-Match list", patch(`"1", "2"`), 400, "invalid_if_match"},
		{"If-Match star", patch(`*`), 400, "invalid_if_match"},
		{"If-Match on session", req{Method: "PATCH", Path: "/api/sessions/" + s.ID, Header: ifMatch(`'2'`), Body: map[string]any{"title": "x"}}, 400, "invalid_if_match"},
		{"If-Match on delete", req{Method: "DELETE", Path: "/api/nodes/" + n.ID, Header: ifMatch(`+1`)}, 400, "invalid_if_match"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, in.URL, tt.q)
			if r.Status != tt.status {
				t.Errorf("%s %s = %d %s, want %d", tt.q.Method, tt.q.Path, r.Status, r.Body, tt.status)
			}
			if code := r.errCode(t); code != tt.code {
				t.Errorf("code = %q, want %q (%s)", code, tt.code, r.Body)
			}
			if tt.code == "unknown_field" && !strings.Contains(string(r.Body), "case-sensitive") {
				t.Errorf("unknown field message %s does not say names are case-sensitive", r.Body)
			}
		})
	}
	// The documented If-Match forms are accepted ("1", W/"2", 3).
	for i, v := range []string{`"1"`, `W/"2"`, `3`} {
		var got session.Node
		must(t, in.URL, req{Method: "PATCH", Path: "/api/nodes/" + n.ID, Header: ifMatch(v), Body: map[string]any{"content": fmt.Sprint("v", i+2)}}, http.StatusOK, &got)
		if got.Version != int64(i+2) {
			t.Errorf("PATCH with If-Match %s: version %d, want %d", v, got.Version, i+2)
		}
	}
	// A valid surrogate pair is a character.
	var emoji session.Session
	must(t, in.URL, req{Method: "POST", Path: "/api/sessions", Body: `{"title":"\ud83d\ude00"}`}, http.StatusCreated, &emoji)
	if emoji.Title != "\U0001F600" {
		t.Errorf("title = %q, want the emoji", emoji.Title)
	}

	// Huge input is never echoed whole.
	for _, q := range []req{
		{Method: "GET", Path: "/api/nodes/" + long},
		{Method: "GET", Path: "/api/sessions/" + long},
		{Method: "GET", Path: "/api/nodes/resolve/" + long},
		{Method: "GET", Path: "/api/sessions?limit=" + long},
		{Method: "PATCH", Path: "/api/nodes/" + n.ID, Header: ifMatch(long), Body: map[string]any{"content": "x"}},
		{Method: "POST", Path: "/api/chat", Body: `{"` + long + `":1}`},
		{Method: "POST", Path: "/api/chat", Body: map[string]any{"session_id": long, "content": "x"}},
		{Method: "POST", Path: "/api/sessions", Body: map[string]any{"id": long}},
		{Method: "POST", Path: "/api/sessions", Body: "{}", ContentType: "application/" + long},
		{Method: "GET", Path: "/api/" + long + "/%2e%2e/x"},
	} {
		r := do(t, in.URL, q)
		if r.Status < 400 || r.Status >= 500 || len(r.Body) > 1024 {
			t.Errorf("%s %.40s… = %d with a %d-byte body, want a 4xx of at most 1 KiB", q.Method, q.Path, r.Status, len(r.Body))
		}
	}

	// Nothing was stored: two sessions (s and the emoji one), one node at
	// version 4, which only the three accepted PATCHes made.
	var list struct{ Sessions []session.Session }
	must(t, in.URL, req{Method: "GET", Path: "/api/sessions"}, http.StatusOK, &list)
	if len(list.Sessions) != 2 {
		t.Errorf("%d sessions after bad input, want 2", len(list.Sessions))
	}
	c := getContext(t, in.URL, "", s.ID)
	if len(c.Nodes) != 1 || c.Nodes[0].Version != 4 {
		t.Errorf("after bad input: %d nodes %+v, want 1 at version 4", len(c.Nodes), c.Nodes)
	}
}

// TestSlowBody: a body that does not arrive within the server's read timeout
// answers 408 request_timeout, with no socket address or other internals in
// the message, and stores nothing.
func TestSlowBody(t *testing.T) {
	t.Parallel()
	in := startInstance(t, instanceOptions{})
	ts := httptest.NewUnstartedServer(in.app.srv.Handler())
	ts.Config.ReadTimeout = 300 * time.Millisecond // the client below never finishes its body
	ts.Start()
	t.Cleanup(ts.Close)
	conn, err := net.Dial("tcp", ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Declare 100 bytes, send 10, then stall: only the server's read
	// timeout can end the request.
	fmt.Fprintf(conn, "POST /api/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"title\":")
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second)) // a hang fails the test, not the suite
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no response to a stalled body: %v", err)
	}
	defer resp.Body.Close()
	var body strings.Builder
	_, _ = bufio.NewReader(resp.Body).WriteTo(&body)
	r := response{Status: resp.StatusCode, Header: resp.Header, Body: []byte(body.String())}
	if r.Status != http.StatusRequestTimeout {
		t.Errorf("stalled body = %d %s, want 408", r.Status, r.Body)
	}
	if code := r.errCode(t); code != "request_timeout" {
		t.Errorf("code = %q, want request_timeout", code)
	}
	host, _, _ := net.SplitHostPort(ts.Listener.Addr().String())
	for _, internal := range []string{host, "tcp", "i/o timeout"} {
		if strings.Contains(body.String(), internal) {
			t.Errorf("message %s carries internals (%q)", body.String(), internal)
		}
	}
	var list struct{ Sessions []session.Session }
	must(t, in.URL, req{Method: "GET", Path: "/api/sessions"}, http.StatusOK, &list)
	if len(list.Sessions) != 0 {
		t.Errorf("%d sessions after a stalled create, want 0", len(list.Sessions))
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestInternalErrorsCarryOnlyARequestID: a 500 (here: the database closed
// under a running service) answers only "internal" with a request ID, also
// in X-Request-ID; the internal error text goes to the log with that ID.
// Every response carries an X-Request-ID.
func TestInternalErrorsCarryOnlyARequestID(t *testing.T) {
	t.Parallel()
	in := startInstance(t, instanceOptions{Redis: redistest.Start(t)})
	var logs syncBuffer
	srv := newServer(serverOptions{Service: in.app.svc, Cache: in.app.cache, Redis: in.app.rdb,
		Logger: slog.New(slog.NewJSONHandler(&logs, nil)), Mode: "two-tier", Store: "sqlite"})
	t.Cleanup(srv.Close)
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)

	ok := must(t, ts.URL, req{Method: "GET", Path: "/api/sessions"}, http.StatusOK, nil)
	first := ok.Header.Get("X-Request-ID")
	if first == "" {
		t.Error("200 response without X-Request-ID")
	}
	if err := in.app.store.Close(); err != nil {
		t.Fatal(err)
	}
	r := must(t, ts.URL, req{Method: "GET", Path: "/api/sessions"}, http.StatusInternalServerError, nil)
	id := r.Header.Get("X-Request-ID")
	var e errorBody
	r.decode(t, &e)
	if id == "" || id == first || e.Error.Code != "internal" || e.Error.RequestID != id || !strings.Contains(e.Error.Message, id) {
		t.Errorf("500: X-Request-ID %q (first %q), body %s; want a new ID, code internal, the ID in request_id and the message", id, first, r.Body)
	}
	for _, internal := range []string{"sql", "closed", "database"} {
		if strings.Contains(strings.ToLower(e.Error.Message), internal) {
			t.Errorf("500 message %q carries internal error text (%q)", e.Error.Message, internal)
		}
	}
	var line string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, `"request_id":"`+id+`"`) {
			line = l
		}
	}
	if !strings.Contains(line, "closed") || !strings.Contains(line, "/api/sessions") {
		t.Errorf("no log line with request ID %s, the path and the internal error; log:\n%s", id, logs.String())
	}
}
