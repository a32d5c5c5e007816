package main

import (
	"bytes"
	"context"
	"html"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

// chromiumPath returns Debian's chromium, or skips tb (fails it when the CI
// environment variable is non-empty) when it is missing, like redistest does
// for redis-server.
func chromiumPath(tb testing.TB) string {
	tb.Helper()
	p, err := exec.LookPath("chromium")
	if err != nil {
		const msg = "!!! chromium not found; the dashboard is NOT tested in a browser. " +
			"Install it with: apt-get install --no-install-recommends chromium (scripts/test does)"
		if os.Getenv("CI") != "" {
			tb.Fatal(msg)
		}
		tb.Skip(msg)
	}
	return p
}

// runChromium runs headless chromium with a fresh profile and args, within
// 60 s, and returns its stdout; stderr is shown only when the test fails.
func runChromium(tb testing.TB, bin string, args ...string) []byte {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), 60*time.Second)
	defer cancel()
	base := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + tb.TempDir(),
		"--enable-logging=stderr", "--v=0",
	}
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	tb.Cleanup(func() {
		if tb.Failed() {
			var keep strings.Builder // without the D-Bus noise of a machine without a session bus
			for line := range strings.Lines(stderr.String()) {
				if !strings.Contains(line, "dbus") {
					keep.WriteString(line)
				}
			}
			tb.Logf("chromium %s stderr:\n%s", strings.Join(args, " "), keep.String())
		}
	})
	if err != nil {
		tb.Fatalf("chromium %s: %v (context: %v)", strings.Join(args, " "), err, ctx.Err())
	}
	// Console messages from the page ("CONSOLE" lines with --enable-logging)
	// mean a script error or something the page printed: the dashboard logs
	// nothing itself, and its own fetch failures show in #err, checked below.
	for line := range strings.Lines(stderr.String()) {
		if strings.Contains(line, ":CONSOLE") || strings.Contains(line, "Uncaught") {
			tb.Errorf("chromium console: %s", strings.TrimSpace(line))
		}
	}
	return stdout.Bytes()
}

// byID returns the text inside the element with the given id in a DOM
// serialized by chromium --dump-dom (tags stripped, entities decoded), and
// its class attribute; it fails tb when there is no such element.
func byID(tb testing.TB, dom, id string) (text, class string) {
	tb.Helper()
	open := regexp.MustCompile(`<(\w+) id="` + regexp.QuoteMeta(id) + `"([^>]*)>`)
	loc := open.FindStringSubmatchIndex(dom)
	if loc == nil {
		tb.Fatalf("dashboard DOM has no element id=%q", id)
	}
	tag, attrs, rest := dom[loc[2]:loc[3]], dom[loc[4]:loc[5]], dom[loc[1]:]
	if cm := regexp.MustCompile(`class="([^"]*)"`).FindStringSubmatch(attrs); cm != nil {
		class = cm[1]
	}
	// None of the filled elements nests an element of its own tag.
	end := strings.Index(rest, "</"+tag+">")
	if end < 0 {
		tb.Fatalf("dashboard DOM: element id=%q is not closed", id)
	}
	inner := strings.ReplaceAll(rest[:end], "<br>", "\n")
	inner = regexp.MustCompile(`<[^>]*>`).ReplaceAllString(inner, "")
	return strings.TrimSpace(html.UnescapeString(inner)), class
}

// TestDashboardInBrowser serves the real contextd (Redis, SQLite), makes
// traffic, loads /dashboard in headless chromium and checks that every
// monitoring point was filled from /api/health/redis; it also takes a
// screenshot, copied to $DASHBOARD_SCREENSHOT when that is set.
func TestDashboardInBrowser(t *testing.T) {
	t.Parallel()
	bin := chromiumPath(t)
	rs := redistest.Start(t)
	in := startInstance(t, instanceOptions{Redis: rs})

	s := createSession(t, in.URL, "", "dashboard")
	for _, msg := range []string{"first message", "second, about @n1", "third"} {
		chat(t, in.URL, "", s.ID, msg)
	}
	getContext(t, in.URL, "", s.ID)
	getContext(t, in.URL, "", s.ID)

	// What the service reports before the browser looks; counters only grow.
	var before healthReport
	must(t, in.URL, req{Method: "GET", Path: "/api/health/redis"}, http.StatusOK, &before)
	if before.Status != "healthy" || before.Cache.L1Hits == 0 || before.Service.ActiveSessions < 1 {
		t.Fatalf("before the browser: status %q, L1 hits %d, active sessions %d; want healthy, > 0, >= 1",
			before.Status, before.Cache.L1Hits, before.Service.ActiveSessions)
	}

	dom := string(runChromium(t, bin, "--virtual-time-budget=5000", "--dump-dom", in.URL+"/dashboard"))
	if !strings.Contains(dom, "<h1>contextd") {
		t.Fatalf("--dump-dom output is not the dashboard:\n%s", dom)
	}

	if got, _ := byID(t, dom, "err"); got != "" {
		t.Errorf("#err = %q, want empty (the page reached /api/health/redis)", got)
	}
	if got, class := byID(t, dom, "status"); got != "healthy" || class != "big ok" {
		t.Errorf("#status = %q class %q, want \"healthy\" class \"big ok\"", got, class)
	}
	if got, class := byID(t, dom, "redis"); got != "connected" || class != "big ok" {
		t.Errorf("#redis = %q class %q, want \"connected\" class \"big ok\"", got, class)
	}
	if got, _ := byID(t, dom, "redisdetail"); !regexp.MustCompile(`^PING \d+\.\d\d ms .*· store \S+`).MatchString(got) {
		t.Errorf("#redisdetail = %q, want \"PING <n> ms · store <name>\"", got)
	}

	// Counters: integers, not the empty placeholder; the ones the traffic
	// above moved are at least what the service reported before.
	counters := []struct {
		id  string
		min uint64
	}{
		{"l1h", before.Cache.L1Hits},
		{"l1m", before.Cache.L1Misses},
		{"l2h", before.Cache.L2Hits},
		{"l2m", before.Cache.L2Misses},
		{"l1entries", 1},
		{"active", 1},
		{"evpub", before.Service.Events.Published},
		{"everr", 0},
		{"evsubs", 0},
		{"evict", 0},
		{"l2err", 0},
		{"fallbacks", 0},
		{"stale", 0},
	}
	for _, c := range counters {
		got, _ := byID(t, dom, c.id)
		n, err := strconv.ParseUint(got, 10, 64)
		if err != nil {
			t.Errorf("#%s = %q, want an integer", c.id, got)
		} else if n < c.min {
			t.Errorf("#%s = %d, want >= %d", c.id, n, c.min)
		}
	}
	ratio := regexp.MustCompile(`^\d{1,3}\.\d%$`)
	for _, id := range []string{"l1r", "l2r", "allr"} {
		if got, _ := byID(t, dom, id); !ratio.MatchString(got) {
			t.Errorf("#%s = %q, want a percentage like 42.0%%", id, got)
		}
	}
	if got, _ := byID(t, dom, "l1r"); got == "0.0%" {
		t.Errorf("#l1r = %q, want non-zero (the context was read twice)", got)
	}
	if got, _ := byID(t, dom, "l1bytes"); !regexp.MustCompile(`^\d+\.\d (B|KiB|MiB|GiB)$`).MatchString(got) || got == "0.0 B" {
		t.Errorf("#l1bytes = %q, want a non-zero size like 1.2 KiB", got)
	}
	if got, _ := byID(t, dom, "redismem"); !regexp.MustCompile(`^\d+\.\d (KiB|MiB|GiB)$`).MatchString(got) {
		t.Errorf("#redismem = %q, want Redis used memory like 1.0 MiB", got)
	}

	inval, _ := byID(t, dom, "inval")
	for _, re := range []string{
		`sent \d+ · received \d+ · gaps \d+ · flushes \d+`,
		`subscriber up · propagation lag p50 \d+\.\d\d ms, p99 \d+\.\d\d ms \(\d+ samples\)`,
		`breaker: closed · outages \d+ · recoveries \d+ · pending writes \d+`,
	} {
		if !regexp.MustCompile(re).MatchString(inval) {
			t.Errorf("#inval = %q, want it to match %q", inval, re)
		}
	}

	// Response times: rows for the service operations and the HTTP routes
	// the traffic used, each with a count and four figures in ms.
	tbody := dom[strings.Index(dom, `<table id="lat">`):]
	tbody = tbody[:strings.Index(tbody, "</table>")]
	row := regexp.MustCompile(`<tr><td>([^<]+)</td><td>(\d+)</td>(?:<td>\d+\.\d\d</td>){4}</tr>`)
	names := map[string]bool{}
	for _, m := range row.FindAllStringSubmatch(tbody, -1) {
		names[m[1]] = true
	}
	var svc, httpRoute bool
	for n := range names {
		svc = svc || strings.HasPrefix(n, "svc ")
		httpRoute = httpRoute || strings.HasPrefix(n, "http ")
	}
	if !svc || !httpRoute {
		t.Errorf("latency table rows = %v, want svc and http rows", names)
	}

	// The picture, for a human: it must exist and not be blank.
	png := filepath.Join(t.TempDir(), "dash.png")
	runChromium(t, bin, "--virtual-time-budget=5000", "--window-size=1280,900", "--screenshot="+png, in.URL+"/dashboard")
	data, err := os.ReadFile(png)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if !bytes.HasPrefix(data, []byte("\x89PNG\r\n\x1a\n")) || len(data) <= 10<<10 {
		t.Errorf("screenshot is %d bytes (PNG header %v), want a PNG over 10 KiB", len(data), bytes.HasPrefix(data, []byte("\x89PNG")))
	}
	if dst := os.Getenv("DASHBOARD_SCREENSHOT"); dst != "" {
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			t.Errorf("copy screenshot to DASHBOARD_SCREENSHOT=%s: %v", dst, err)
		} else {
			t.Logf("dashboard screenshot: %s", dst)
		}
	}
}
