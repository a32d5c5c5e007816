package cachetest_test

import (
	"fmt"
	"time"

	"github.com/tiercache/tiercache/cachetest"
)

// This example records, with made-up times, a write on instance a and reads
// on instance b: one fresh, one concurrent with a later write, and one that
// still returns the old version 1.5s after the new one was acknowledged. In a
// real run the times come from History.Clock around each call.
func Example() {
	h := cachetest.NewHistory()
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }

	h.RecordWrite(cachetest.WriteOp{Instance: "a", Key: "user:42", Version: 1, Start: ms(0), End: ms(2)})
	h.RecordRead(cachetest.ReadOp{Instance: "b", Key: "user:42", Version: 1, Found: true, Start: ms(5), End: ms(6)})
	h.RecordWrite(cachetest.WriteOp{Instance: "a", Key: "user:42", Version: 2, Start: ms(100), End: ms(103)})
	h.RecordRead(cachetest.ReadOp{Instance: "b", Key: "user:42", Version: 1, Found: true, Start: ms(101), End: ms(102)})
	h.RecordRead(cachetest.ReadOp{Instance: "b", Key: "user:42", Version: 1, Found: true, Start: ms(1603), End: ms(1604)})
	h.RecordRead(cachetest.ReadOp{Instance: "b", Key: "user:42", Version: 2, Found: true, Start: ms(1700), End: ms(1701)})

	r := h.Check(cachetest.CheckOptions{Bound: time.Second})
	fmt.Println(r)
	fmt.Println(r.Err() != nil)
	// Output:
	// 4 reads, 2 writes, 1 keys, 2 instances; bound 1s
	// stale reads: 1, violations (stale by > 1s): 1
	// staleness: n=1 p50=1.5s p90=1.5s p99=1.5s max=1.5s
	// propagation lag: n=2 p50=3ms p90=1.597s p99=1.597s max=1.597s
	// instance a: 0 reads, 2 writes, 0 stale, 0 violations; staleness n=0; lag n=0
	// instance b: 4 reads, 0 writes, 1 stale, 1 violations; staleness n=1 p50=1.5s p90=1.5s p99=1.5s max=1.5s; lag n=2 p50=3ms p90=1.597s p99=1.597s max=1.597s
	// worst 1 of 1 violations:
	//   key "user:42" on b: read [1.603s, 1.604s] returned v1, stale by 1.5s: v2 by a acknowledged at 103ms (latest acknowledged v2)
	// true
}
