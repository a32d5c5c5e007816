package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/session"
)

const processArgsEnv = "CONTEXTD_TEST_PROCESS_ARGS"

// TestContextdProcess is the body of a contextd child process started by TestTwoProcesses: the
// real run function, with the arguments from the environment, until SIGTERM.
func TestContextdProcess(t *testing.T) {
	args := os.Getenv(processArgsEnv)
	if args == "" {
		t.Skip("runs only as a child of TestTwoProcesses")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, strings.Split(args, "\x1f"), os.Getenv); err != nil {
		t.Fatal(err)
	}
}

// startProcess runs contextd serve in a child OS process and waits until it answers /healthz.
func startProcess(t *testing.T, args ...string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	args = append([]string{"serve", "--listen", addr}, args...)
	cmd := exec.Command(os.Args[0], "-test.run=^TestContextdProcess$")
	cmd.Env = append(os.Environ(), processArgsEnv+"="+strings.Join(args, "\x1f"))
	logs, err := os.Create(filepath.Join(t.TempDir(), "contextd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logs.Name())
			t.Logf("log of contextd %s:\n%s", addr, b)
		}
	})
	base := "http://" + addr
	eventually(t, "contextd "+addr+" to answer /healthz", func() bool {
		resp, err := http.Get(base + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return base
}

// TestTwoProcesses: two contextd processes on one Redis and one database. An update through one
// shows in the other's context within the coherence bound, and reaches an SSE subscriber
// connected to the other.
func TestTwoProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	t.Parallel()
	rs := redistest.Start(t)
	db := filepath.Join(t.TempDir(), "contextd.db")
	common := []string{"--database-url", db, "--redis-url", "redis://" + rs.Addr() + "/0", "--namespace", "procs" + randHex(3)}
	a := startProcess(t, common...)
	b := startProcess(t, common...)
	s := createSession(t, a, "", "shared")
	n := chat(t, a, "", s.ID, "original").Node
	if c := getContext(t, b, "", s.ID); len(c.Nodes) != 1 || c.Nodes[0].Content != "original" {
		t.Fatalf("B context = %+v", c.Nodes)
	}
	getContext(t, b, "", s.ID) // now served from B's L1
	ch, _ := subscribe(t, b, "", s.ID, "")
	must(t, a, req{Method: "PATCH", Path: "/api/nodes/" + n.ID, Header: map[string]string{"If-Match": `"1"`},
		Body: map[string]any{"content": "edited in process A"}}, http.StatusOK, nil)
	acked := time.Now()
	var seen time.Duration
	deadline := acked.Add(time.Second) // the coherence bound (B's L1TTL is the default 5s)
	for {
		c := getContext(t, b, "", s.ID)
		if len(c.Nodes) == 1 && c.Nodes[0].Content == "edited in process A" && c.Nodes[0].Version == 2 {
			seen = time.Since(acked)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("process B still serves %+v 1s after process A's update", c.Nodes)
		}
	}
	ev := nextEvent(t, ch)
	if ev.Type != session.EventNodeUpdated || ev.Data.Node == nil || ev.Data.Node.Content != "edited in process A" {
		t.Fatalf("B's subscriber got %s %+v, want node.updated", ev.Type, ev.Data)
	}
	t.Logf("process B served A's update %v after it was acknowledged", seen)
	var health struct {
		Status string `json:"status"`
	}
	must(t, b, req{Method: "GET", Path: "/api/health/redis"}, http.StatusOK, &health)
	if health.Status != "healthy" {
		t.Errorf("B health = %q, want healthy", health.Status)
	}
}
