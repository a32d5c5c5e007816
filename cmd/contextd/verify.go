package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/tiercache/tiercache/cachetest"
	"github.com/tiercache/tiercache/session"
)

// verifyOptions of contextd verify.
type verifyOptions struct {
	URLs     []string
	Duration time.Duration
	Nodes    int
	Readers  int // per instance
	Bound    time.Duration
	APIKey   string
}

// verify checks the consistency contract end to end against running contextd
// instances on loopback that share one Redis and one database: it updates
// nodes through every instance (PATCH with If-Match; each acknowledged
// version is recorded), reads them back through every instance (GET node
// and GET context; each returned version is recorded) and judges the history
// with cachetest: reads stale by more than -bound are violations, and the
// propagation lag between instances is reported. It returns an error when
// there are violations.
func verify(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("contextd verify", flag.ContinueOnError)
	var o verifyOptions
	urls := fs.String("urls", "http://127.0.0.1:8080", "comma-separated base URLs of the contextd instances (loopback only)")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "how long to run (at most 10m)")
	fs.IntVar(&o.Nodes, "nodes", 8, "nodes updated and read (1-64)")
	fs.IntVar(&o.Readers, "readers", 2, "reading goroutines per instance (1-32)")
	fs.DurationVar(&o.Bound, "bound", cachetest.DefaultBound, "staleness a read may have before it is a violation")
	fs.StringVar(&o.APIKey, "api-key", os.Getenv("CONTEXTD_API_KEY"), "API key (CONTEXTD_API_KEY)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, u := range strings.Split(*urls, ",") {
		if u = strings.TrimRight(strings.TrimSpace(u), "/"); u != "" {
			if err := checkLoopback(u); err != nil {
				return fmt.Errorf("verify: %w", err)
			}
			o.URLs = append(o.URLs, u)
		}
	}
	switch {
	case len(o.URLs) == 0:
		return fmt.Errorf("verify: -urls names no instance")
	case o.Duration <= 0 || o.Duration > 10*time.Minute:
		return fmt.Errorf("verify: -duration %v: want more than 0 and at most 10m", o.Duration)
	case o.Nodes < 1 || o.Nodes > 64:
		return fmt.Errorf("verify: -nodes %d: want 1 to 64", o.Nodes)
	case o.Readers < 1 || o.Readers > 32:
		return fmt.Errorf("verify: -readers %d: want 1 to 32", o.Readers)
	case o.Bound <= 0 || o.Bound > time.Minute:
		return fmt.Errorf("verify: -bound %v: want more than 0 and at most 1m", o.Bound)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	h := cachetest.NewHistory()

	// Set up a session and its nodes through the first instance; creation is
	// the write of version 1.
	var sess session.Session
	if err := call(ctx, client, http.MethodPost, o.URLs[0]+"/api/sessions", o.APIKey, map[string]any{"title": "contextd verify"}, &sess); err != nil {
		return fmt.Errorf("verify: create session: %w", err)
	}
	ids := make([]string, o.Nodes)
	for i := range ids {
		start := h.Clock()
		var n session.Node
		if err := call(ctx, client, http.MethodPost, o.URLs[0]+"/api/nodes", o.APIKey,
			map[string]any{"session_id": sess.ID, "content": fmt.Sprint("verify node ", i)}, &n); err != nil {
			return fmt.Errorf("verify: create node: %w", err)
		}
		h.RecordWrite(cachetest.WriteOp{Instance: o.URLs[0], Key: n.ID, Version: uint64(n.Version), Start: start, End: h.Clock()})
		ids[i] = n.ID
	}

	rctx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		errs    int
		lastErr error
	)
	fail := func(err error) {
		mu.Lock()
		errs++
		lastErr = err
		mu.Unlock()
	}
	// One writer per node, so If-Match always names the version it last
	// wrote. It writes through one instance for a stretch of twice the bound,
	// then through the next (each node starting on another): the other
	// instances learn of those writes only through invalidations, for longer
	// than the bound, so an instance that misses them serves reads stale by
	// more than the bound. (Rotating at every write would refresh every
	// instance's L1 within milliseconds, invalidations or not.)
	begin := time.Now()
	stretch := 2 * o.Bound
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			version := int64(1)
			for k := 0; rctx.Err() == nil; k++ {
				inst := o.URLs[(i+int(time.Since(begin)/stretch))%len(o.URLs)]
				start := h.Clock()
				n, err := patchNode(rctx, client, inst, o.APIKey, id, version, fmt.Sprintf("node %d, write %d", i, k))
				end := h.Clock()
				if rctx.Err() != nil {
					return
				}
				if err != nil {
					fail(err)
					return
				}
				h.RecordWrite(cachetest.WriteOp{Instance: inst, Key: id, Version: uint64(n.Version), Start: start, End: end})
				version = n.Version
			}
		}()
	}
	for _, inst := range o.URLs {
		for r := range o.Readers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := 0; rctx.Err() == nil; k++ {
					var err error
					if (r+k)%4 == 0 {
						err = readContext(rctx, client, h, inst, o.APIKey, sess.ID)
					} else {
						err = readNode(rctx, client, h, inst, o.APIKey, ids[rand.IntN(len(ids))])
					}
					if err != nil && rctx.Err() == nil {
						fail(err)
					}
				}
			}()
		}
	}
	wg.Wait()
	_ = call(ctx, client, http.MethodDelete, o.URLs[0]+"/api/sessions/"+sess.ID, o.APIKey, nil, nil)

	rep := h.Check(cachetest.CheckOptions{Bound: o.Bound})
	fmt.Fprintln(out, rep.String())
	if errs > 0 {
		return fmt.Errorf("verify: %d requests failed; last: %v", errs, lastErr)
	}
	if rep.Writes <= o.Nodes || rep.Reads == 0 {
		return fmt.Errorf("verify: too little traffic to judge (%d writes, %d reads)", rep.Writes, rep.Reads)
	}
	return rep.Err()
}

func patchNode(ctx context.Context, client *http.Client, base, key, id string, version int64, content string) (session.Node, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPatch, base+"/api/nodes/"+id, strings.NewReader(fmt.Sprintf(`{"content":%q}`, content)))
	if err != nil {
		return session.Node{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("If-Match", fmt.Sprintf(`"%d"`, version))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	var n session.Node
	return n, doJSON(client, req, &n)
}

// readNode records one GET of a node: found with its version, or not found.
func readNode(ctx context.Context, client *http.Client, h *cachetest.History, base, key, id string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/nodes/"+id, nil)
	if err != nil {
		return err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	start := h.Clock()
	var n session.Node
	err = doJSON(client, req, &n)
	end := h.Clock()
	if err != nil {
		return err
	}
	h.RecordRead(cachetest.ReadOp{Instance: base, Key: id, Version: uint64(n.Version), Found: true, Start: start, End: end})
	return nil
}

// readContext records one GET of the session's context as a read of every
// node in it.
func readContext(ctx context.Context, client *http.Client, h *cachetest.History, base, key, sessionID string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/sessions/"+sessionID+"/context", nil)
	if err != nil {
		return err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	start := h.Clock()
	var c session.Context
	err = doJSON(client, req, &c)
	end := h.Clock()
	if err != nil {
		return err
	}
	for _, n := range c.Nodes {
		h.RecordRead(cachetest.ReadOp{Instance: base, Key: n.ID, Version: uint64(n.Version), Found: true, Start: start, End: end})
	}
	return nil
}

// doJSON sends req and decodes a 2xx answer into dst (nil: discarded); any
// other status is an error quoting the answer.
func doJSON(client *http.Client, req *http.Request, dst any) error {
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		// A body cut short (a timeout while reading it) is that error, not
		// a JSON syntax error about what arrived.
		return fmt.Errorf("%s %s: %s: reading the answer: %w", req.Method, req.URL.Path, resp.Status, err)
	}
	if resp.StatusCode/100 != 2 {
		return &statusError{Method: req.Method, Path: req.URL.Path, Code: resp.StatusCode, Status: resp.Status, Body: strings.TrimSpace(string(data))}
	}
	if dst == nil {
		return nil
	}
	return json.Unmarshal(data, dst)
}

// statusError is doJSON's error for an answer that is not 2xx; contextd
// load counts errors by Code.
type statusError struct {
	Method, Path string
	Code         int
	Status       string
	Body         string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("%s %s: %s: %s", e.Method, e.Path, e.Status, e.Body)
}
