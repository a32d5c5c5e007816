package main

import (
	"bufio"
	"bytes"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/tiercache/tiercache/internal/redistest"
)

// TestMetricsDocumented: every cache metric listed in docs/OPERATIONS.md (section Metrics) is in
// a scrape of /metrics, and every tiercache_* family scraped is listed there, so the table and
// the code cannot drift apart. With Redis, so the breaker and subscriber gauges are present.
func TestMetricsDocumented(t *testing.T) {
	t.Parallel()
	in := startInstance(t, instanceOptions{Redis: redistest.Start(t)})
	s := createSession(t, in.URL, "", "s")
	chat(t, in.URL, "", s.ID, "hello")
	getContext(t, in.URL, "", s.ID)

	m := must(t, in.URL, req{Method: "GET", Path: "/metrics"}, http.StatusOK, nil)
	scraped := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(m.Body))
	for sc.Scan() {
		// "# TYPE name kind" names each family once, histograms included.
		if f := strings.Fields(sc.Text()); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" && strings.HasPrefix(f[2], "tiercache_") {
			scraped[f[2]] = true
		}
	}

	doc, err := os.ReadFile("../../docs/OPERATIONS.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(doc), "<!-- metrics -->")
	table, _, ok2 := strings.Cut(table, "<!-- /metrics -->")
	if !ok || !ok2 {
		t.Fatal("docs/OPERATIONS.md has no <!-- metrics --> table")
	}
	row := regexp.MustCompile("^\\| `(tiercache_[a-z0-9_]+)` \\|")
	documented := map[string]bool{}
	for _, line := range strings.Split(table, "\n") {
		if r := row.FindStringSubmatch(line); r != nil {
			documented[r[1]] = true
		}
	}
	if len(documented) < 20 {
		t.Fatalf("docs/OPERATIONS.md metrics table: %d names, want the whole list", len(documented))
	}
	for name := range documented {
		if !scraped[name] {
			t.Errorf("docs/OPERATIONS.md documents %s; /metrics has no such family", name)
		}
	}
	for name := range scraped {
		if !documented[name] {
			t.Errorf("/metrics serves %s, which docs/OPERATIONS.md does not document", name)
		}
	}
	// The renamed copies are gone; contextd's own metrics stay.
	for _, gone := range []string{"contextd_cache_hits_total", "contextd_cache_l1_bytes", "contextd_cache_propagation_lag_p99_seconds"} {
		if bytes.Contains(m.Body, []byte(gone)) {
			t.Errorf("/metrics still serves %s (renamed to tiercache_*)", gone)
		}
	}
	for _, kept := range []string{"contextd_http_request_duration_seconds", "contextd_cache_invalid_entries_total", `contextd_cache_state{state="healthy"}`} {
		if !bytes.Contains(m.Body, []byte(kept)) {
			t.Errorf("/metrics lacks %s", kept)
		}
	}
}
