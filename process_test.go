package tiercache

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

const childEnv = "TIERCACHE_TEST_CHILD_REDIS"

// child is a copy of the test binary running TestChildProcess: a cache instance in another OS
// process, driven line by line over stdin and stdout.
type child struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startChild(t *testing.T, addr string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestChildProcess$", "-test.v=false")
	cmd.Env = append(os.Environ(), childEnv+"="+addr)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	t.Cleanup(func() {
		fmt.Fprintln(c.in, "quit")
		c.in.Close()
		_ = c.cmd.Wait()
	})
	if got := c.ask(t, "ping"); got != "pong" {
		t.Fatalf("child answered %q to ping", got)
	}
	return c
}

// ask sends one command and returns the answer line.
func (c *child) ask(t *testing.T, line string) string {
	t.Helper()
	if _, err := fmt.Fprintln(c.in, line); err != nil {
		t.Fatalf("child: %v", err)
	}
	for c.out.Scan() {
		if s, ok := strings.CutPrefix(c.out.Text(), "child: "); ok {
			return s
		}
	}
	t.Fatalf("child exited: %v", c.out.Err())
	return ""
}

// TestChildProcess is the body of a child process; it does nothing in a normal run.
func TestChildProcess(t *testing.T) {
	addr := os.Getenv(childEnv)
	if addr == "" {
		t.Skip("runs only as a child of TestInvalidationCrossesProcesses")
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	c, err := New(Options{Redis: rdb})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		cmd, arg, _ := strings.Cut(in.Text(), " ")
		var ans string
		switch cmd {
		case "ping":
			waitFor(t, "subscribed", 10*time.Second, c.bp.up.Load)
			ans = "pong"
		case "get":
			v, err := c.Get(ctx, arg)
			ans = fmt.Sprintf("%s %v", v, err)
		case "peek":
			v, ok := c.Peek(arg)
			ans = fmt.Sprintf("%s %v", v, ok)
		case "set":
			k, v, _ := strings.Cut(arg, "=")
			ans = fmt.Sprint(c.Set(ctx, k, []byte(v)))
		case "quit":
			return
		}
		fmt.Printf("child: %s\n", ans)
	}
}

func TestInvalidationCrossesProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	srv := redistest.Start(t)
	a := newCache(t, srv, Options{})
	ctx := context.Background()
	if err := a.Set(ctx, "k", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	kids := []*child{startChild(t, srv.Addr()), startChild(t, srv.Addr())}
	for i, k := range kids {
		if got := k.ask(t, "get k"); got != "v1 <nil>" {
			t.Fatalf("child %d get = %q", i, got)
		}
		if got := k.ask(t, "peek k"); got != "v1 true" {
			t.Fatalf("child %d peek = %q, want v1 in its L1", i, got)
		}
	}
	// A write in this process evicts the children's L1 copies.
	if err := a.Set(ctx, "k", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	for i, k := range kids {
		waitFor(t, fmt.Sprintf("child %d to drop v1", i), 2*time.Second, func() bool { return k.ask(t, "peek k") == " false" })
		if got := k.ask(t, "get k"); got != "v2 <nil>" {
			t.Fatalf("child %d get after invalidation = %q, want v2", i, got)
		}
	}
	// A write in one child evicts this process's copy and the other child's.
	if _, err := a.Get(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if got := kids[0].ask(t, "set k=v3"); got != "<nil>" {
		t.Fatalf("child set = %q", got)
	}
	waitFor(t, "the parent to drop v2", 2*time.Second, func() bool { _, ok := a.Peek("k"); return !ok })
	waitFor(t, "child 1 to drop v2", 2*time.Second, func() bool { return kids[1].ask(t, "peek k") == " false" })
	if v, err := a.Get(ctx, "k"); err != nil || string(v) != "v3" {
		t.Fatalf("parent get = %q, %v; want v3", v, err)
	}
}
