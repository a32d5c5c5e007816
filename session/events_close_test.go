package session

import (
	"context"
	"sync"
	"testing"
)

// TestSubscribeRacingClose: Close waits for every reader, including those
// of Subscribe calls racing it. Once Close returns, no subscriber may still
// be counted (its goroutine would have outlived Close), and -race sees no
// WaitGroup Add racing Wait.
func TestSubscribeRacingClose(t *testing.T) {
	t.Parallel()
	for round := range 300 {
		e := NewEvents(nil, "t", nil)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 4 {
			wg.Go(func() {
				<-start
				for {
					if _, err := e.Subscribe(ctx, "o", "s", ""); err != nil {
						return
					}
				}
			})
		}
		close(start)
		e.Close()
		if n := e.Stats().Subscribers; n != 0 {
			t.Fatalf("round %d: %d subscribers still counted after Close returned", round, n)
		}
		cancel()
		wg.Wait()
	}
}
