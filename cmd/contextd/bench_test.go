package main

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

// BenchmarkHTTP measures cached context reads of a 20-node session over HTTP
// against the hello-world handler of the same server (two-tier, real Redis).
// Compare ns/op of the two sub-benchmarks; `contextd load` prints the ratio
// directly.
func BenchmarkHTTP(b *testing.B) {
	rs := redistest.Start(b)
	in := startInstance(b, instanceOptions{Redis: rs})
	s := createSession(b, in.URL, "", "bench")
	prev := ""
	for i := range 20 {
		text := fmt.Sprintf("message %d with some ordinary text.", i)
		if prev != "" {
			text += " See @" + prev
		}
		prev = chat(b, in.URL, "", s.ID, text).Node.ShortID
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	for _, tc := range []struct{ name, path string }{
		{"hello", "/bench/hello"},
		{"context20", "/api/sessions/" + s.ID + "/context"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var mu sync.Mutex
			var lats []time.Duration
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				local := make([]time.Duration, 0, 1024)
				for pb.Next() {
					t := time.Now()
					resp, err := client.Get(in.URL + tc.path)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
					local = append(local, time.Since(t))
				}
				mu.Lock()
				lats = append(lats, local...)
				mu.Unlock()
			})
			b.StopTimer()
			if len(lats) > 0 {
				slices.Sort(lats)
				b.ReportMetric(float64(lats[len(lats)*99/100].Microseconds()), "p99-µs")
			}
		})
	}
}
