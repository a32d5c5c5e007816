package tiercache

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/corpus"
	"github.com/tiercache/tiercache/internal/redistest"
)

// BenchmarkRevalidation reads unchanged 10 KiB chat contexts (about 4 KiB in Redis with the
// default zstd) whose L1 lifetime has just ended, with revalidation on and off: every op is one
// read that goes to Redis, which is what a steady workload does once per key per L1TTL. Each op
// reports, besides its latency, the bytes Redis sent (redis-B/op), this process's CPU
// (cpu-ns/op) and the Redis server's CPU (redis-cpu-ns/op). A steady workload's bytes and CPU
// per second are these times its reads per second that reach Redis; off ÷ on is the saving.
func BenchmarkRevalidation(b *testing.B) {
	const keys = 100
	srv := redistest.Start(b)
	ctx := context.Background()
	for _, mode := range []struct {
		name string
		off  bool
	}{{"on", false}, {"off", true}} {
		b.Run(mode.name, func(b *testing.B) {
			clk := newFakeClock()
			c := newCache(b, srv, Options{Clock: clk, TTL: time.Hour, L1TTL: time.Second, NoJitter: true,
				NoRevalidate: mode.off, Namespace: "reval-" + mode.name})
			ks := benchKeys("ctx", keys)
			for i, k := range ks {
				if err := c.Set(ctx, k, corpus.ChatContext(10<<10, uint64(i))); err != nil {
					b.Fatal(err)
				}
			}
			// One pass first, so that with revalidation off L1 holds each value too.
			clk.Advance(time.Second + time.Millisecond)
			for _, k := range ks {
				if _, err := c.Get(ctx, k); err != nil {
					b.Fatal(err)
				}
			}
			net0, rcpu0, cpu0 := srv.NetOutputBytes(b), srv.CPU(b), processCPU(b)
			b.ResetTimer()
			i := 0
			for b.Loop() {
				if i%keys == 0 {
					clk.Advance(time.Second + time.Millisecond) // every L1 lifetime ends
				}
				v, err := c.Get(ctx, ks[i%keys])
				if err != nil || len(v) < 10<<10 {
					b.Fatalf("Get = %d bytes, %v", len(v), err)
				}
				sinkBytes = v
				i++
			}
			b.StopTimer()
			cpu, rcpu, net := processCPU(b)-cpu0, srv.CPU(b)-rcpu0, srv.NetOutputBytes(b)-net0
			b.ReportMetric(float64(net)/float64(b.N), "redis-B/op")
			b.ReportMetric(float64(cpu)/float64(b.N), "cpu-ns/op")
			b.ReportMetric(float64(rcpu)/float64(b.N), "redis-cpu-ns/op")
			if st := c.Stats(); mode.off == (st.Revalidated > 0) {
				b.Fatalf("Revalidated = %d with NoRevalidate %v", st.Revalidated, mode.off)
			}
		})
	}
}

// processCPU is the CPU time this process has used, user and system.
func processCPU(tb testing.TB) time.Duration {
	tb.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(fmt.Errorf("getrusage: %w", err))
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
