package main

// The headline figures of docs/BENCHMARKS.md, in the page's order. This file is the one list:
// scripts/bench runs what runs names (benchtable plan), and the table shows what figures names.
// A new figure is a row in figures and, when it needs a benchmark no run covers, a row in runs.

// run is one benchmark process of a round: the package directory (from the module root) whose
// test binary runs it, the -test.bench pattern, and the -test.benchtime of a full and of a
// -quick round.
type run struct {
	name, dir, pattern, benchtime, quick string
}

var runs = []run{
	{"l1", ".", `^BenchmarkPair$/^L1Hit$//-vs-otter$`, "1s", "50ms"},
	{"l2", ".", `^BenchmarkPair$/^(L2Hit|GetMany)$`, "1s", "50ms"},
	{"propagation", ".", `^BenchmarkPropagation$`, "2000x", "200x"},
	{"backplane", ".", `^BenchmarkSetBackplane$`, "3000x", "300x"},
	{"lock", "lock", `^BenchmarkPair$`, "2s", "50ms"},
	{"http", "cmd/contextd", `^BenchmarkHTTP$`, "1s", "50ms"},
	{"wire", "internal/wire", `^BenchmarkEncode$/^zstd/10KiB$`, "200x", "20x"},
	{"revalidation", ".", `^BenchmarkRevalidation$`, "3000x", "200x"},
}

// figures: name and means are the first two columns of the table; {P} in a name or a benchmark
// stands for the run's GOMAXPROCS (the L1 pairs run at 1 and at GOMAXPROCS goroutines).
var figures = []figure{
	{
		name:  "L1 hit, typed `Get` (struct) vs raw otter, 1 goroutine",
		means: "hit throughput, ours ÷ otter's `GetIfPresent` with no expiry: the price of the typed API, expiry and coherence",
		run:   "l1", value: inverse(metric("BenchmarkPair/L1Hit/g=1/typed-vs-otter", "ours/base")),
		kind: throughput, target: atLeast(0.7),
	},
	{
		name:  "L1 hit, typed `Get` (struct) vs raw otter, {P} goroutines",
		means: "the same, all cores busy: contention on the hit path",
		run:   "l1", value: inverse(metric("BenchmarkPair/L1Hit/g={P}/typed-vs-otter", "ours/base")),
		kind: throughput, target: atLeast(0.7),
	},
	{
		name:  "L1 hit, byte `Cache.Get` vs raw otter, 1 goroutine",
		means: "hit throughput of the byte API, ours ÷ otter's",
		run:   "l1", value: inverse(metric("BenchmarkPair/L1Hit/g=1/bytes-vs-otter", "ours/base")),
		kind: throughput, target: atLeast(0.7),
	},
	{
		name:  "L1 hit, byte `Cache.Get` vs raw otter, {P} goroutines",
		means: "the same, all cores busy",
		run:   "l1", value: inverse(metric("BenchmarkPair/L1Hit/g={P}/bytes-vs-otter", "ours/base")),
		kind: throughput, target: atLeast(0.7),
	},
	{
		name:  "L1 benchmark floor, 1 goroutine",
		means: "ns of the benchmark loop itself (key lookup, no cache call): subtract it from both sides to compare the calls alone",
		run:   "l1", value: metric("BenchmarkPair/L1Hit/g=1/floor-vs-otter", "ours-ns/op"),
		kind: nanos,
	},
	{
		name:  "L2 hit (`SkipL1`) vs raw `GET`, 1 goroutine",
		means: "throughput of a Redis read, ours ÷ go-redis `GET` of the same bytes: the cost of envelope, breaker and budget",
		run:   "l2", value: inverse(metric("BenchmarkPair/L2Hit/g=1", "ours/base")),
		kind: throughput, target: atLeast(0.9),
	},
	{
		name:  "L2 hit (`SkipL1`) vs raw `GET`, 8 goroutines",
		means: "the same, 8 callers sharing the connection pool",
		run:   "l2", value: inverse(metric("BenchmarkPair/L2Hit/g=8", "ours/base")),
		kind: throughput, target: atLeast(0.9),
	},
	{
		name:  "L2 hit (`SkipL1`) vs raw `GET`, 64 goroutines",
		means: "the same, 64 callers queueing for 20 connections",
		run:   "l2", value: inverse(metric("BenchmarkPair/L2Hit/g=64", "ours/base")),
		kind: throughput, target: atLeast(0.9),
	},
	{
		name:  "`GetMany` of 100 keys vs 100 single `Get`s",
		means: "how many times faster one batch read (one `MGET`) is than a loop of reads",
		run:   "l2", value: metric("BenchmarkPair/GetMany/single-vs-many", "ours/base"),
		kind: speedup, target: atLeast(5),
	},
	{
		name:  "`GetMany` of 100 keys vs one raw `MGET` of them",
		means: "batch read throughput, ours ÷ the raw command it sends: our per-key work (keys, decode, result map)",
		run:   "l2", value: inverse(metric("BenchmarkPair/GetMany/many-vs-mget", "ours/base")),
		kind: throughput, target: atLeast(0.85),
	},
	{
		name:  "Propagation p50, write acknowledged → peer's L1 no longer serves it",
		means: "the typical window in which another instance still serves the old value",
		run:   "propagation", value: metric("BenchmarkPropagation", "ack-to-gone-p50-µs"),
		kind: micros,
	},
	{
		name:  "Propagation p99, write acknowledged → peer's L1 no longer serves it",
		means: "the same window, 99th percentile",
		run:   "propagation", value: metric("BenchmarkPropagation", "ack-to-gone-p99-µs"),
		kind: micros, target: atMost(2000),
	},
	{
		name:  "`Set` with the backplane on vs off, 1 goroutine",
		means: "write throughput with invalidations published ÷ without: the price of coherence",
		run:   "backplane", value: inverse(metric("BenchmarkSetBackplane/g=1/on-vs-off", "ours/base")),
		kind: throughput, target: atLeast(0.8),
	},
	{
		name:  "`Set` with the backplane on vs off, 8 goroutines",
		means: "the same, 8 writers",
		run:   "backplane", value: inverse(metric("BenchmarkSetBackplane/g=8/on-vs-off", "ours/base")),
		kind: throughput, target: atLeast(0.8),
	},
	{
		name:  "Lock: `TryLock` + `Release` vs bare `SET NX PX` + `DEL`",
		means: "latency, ours ÷ the bare commands: the price of tokens, fencing and the watchdog",
		run:   "lock", value: metric("BenchmarkPair/LockRelease-vs-SetNXDel", "ours/base"),
		kind: latency, target: atMost(1.3),
	},
	{
		name:  "contextd: cached 20-node context vs hello-world handler",
		means: "HTTP throughput of `GET /api/sessions/{id}/context` (L1 hits) ÷ the same server's `/bench/hello`",
		run:   "http", value: ratio("BenchmarkHTTP/hello", "BenchmarkHTTP/context20", "ns/op"),
		kind: throughput, target: atLeast(0.5),
	},
	{
		name:  "zstd space saved, 10 KiB chat context",
		means: "bytes saved in Redis by the default compression on a typical context",
		run:   "wire", value: metric("BenchmarkEncode/zstd/10KiB", "saved%"),
		kind: percent, target: atLeast(50),
	},
	{
		name:  "Revalidation: Redis bytes sent per expired read, off ÷ on",
		means: "how many times fewer bytes Redis sends for an unchanged 10 KiB context whose L1 lifetime ended: its 30-byte header instead of the value",
		run:   "revalidation", value: ratio("BenchmarkRevalidation/off", "BenchmarkRevalidation/on", "redis-B/op"),
		kind: speedup, target: atLeast(5),
	},
	{
		name:  "Revalidation: this process's CPU per expired read, off ÷ on",
		means: "how many times less CPU the reading process spends on such a read: no transfer, no decompression, no decoding",
		run:   "revalidation", value: ratio("BenchmarkRevalidation/off", "BenchmarkRevalidation/on", "cpu-ns/op"),
		kind: speedup,
	},
	{
		name:  "Revalidation: Redis CPU per expired read, off ÷ on",
		means: "the same for the Redis server: a script call that reads 30 bytes instead of a `GET` that sends the value",
		run:   "revalidation", value: ratio("BenchmarkRevalidation/off", "BenchmarkRevalidation/on", "redis-cpu-ns/op"),
		kind: speedup,
	},
}
