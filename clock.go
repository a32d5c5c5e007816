package tiercache

import "time"

// Clock is the cache's time source. The zero Options use the system clock; tests pass a fake.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }
