package tiercache

import "time"

// Clock is the cache's time source. The zero Options use the system clock; tests pass a fake.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// otterClock adapts a Clock to otter's. A fake clock gets no ticker: expired L1 entries are then
// dropped when read, not by a background sweep.
type otterClock struct{ c Clock }

func (o otterClock) NowNano() int64                      { return o.c.Now().UnixNano() }
func (o otterClock) Tick(time.Duration) <-chan time.Time { return nil }
