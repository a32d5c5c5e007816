package tiercache

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

// blockingLoader returns a loader that reports each call on started and answers "loaded-<key>"
// once release is closed (or its ctx ends).
func blockingLoader(calls *atomic.Int32, started chan<- struct{}, release <-chan struct{}) func(context.Context, string) ([]byte, error) {
	return func(ctx context.Context, k string) ([]byte, error) {
		calls.Add(1)
		select {
		case started <- struct{}{}:
		default:
		}
		select {
		case <-release:
			return []byte("loaded-" + k), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// TestGetOrLoadFlightOutlivesFirstCaller: the caller that started a flight cancels while the
// load runs. It gets context.Canceled at once; a caller that joined gets the loaded value, the
// loader runs once, and the value fills Redis for everyone (the fill does not run on the
// cancelled caller's context).
func TestGetOrLoadFlightOutlivesFirstCaller(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := newCache(t, srv, Options{Logger: quietLogger()})
	other := newCache(t, srv, Options{Logger: quietLogger()})
	var calls atomic.Int32
	started, release := make(chan struct{}, 1), make(chan struct{})
	load := blockingLoader(&calls, started, release)

	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		_, err := c.GetOrLoad(ctx, "k", load)
		first <- err
	}()
	<-started
	joined := make(chan error, 1)
	var got []byte
	go func() {
		v, err := c.GetOrLoad(context.Background(), "k", load)
		got = v
		joined <- err
	}()
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Errorf("first caller's GetOrLoad after its cancel = %v, want context.Canceled", err)
	}
	close(release)
	if err := <-joined; err != nil || string(got) != "loaded-k" {
		t.Fatalf("joined caller's GetOrLoad = %q, %v; want loaded-k", got, err)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("loader called %d times, want 1", n)
	}
	if v, err := other.Get(context.Background(), "k"); err != nil || string(v) != "loaded-k" {
		t.Errorf("other instance Get(k) = %q, %v; want the flight's fill loaded-k", v, err)
	}
}

// TestGetOrLoadCallerDeadline: a caller whose deadline passes stops waiting with its context's
// error; the load goes on for the caller without one.
func TestGetOrLoadCallerDeadline(t *testing.T) {
	t.Parallel()
	c := newCache(t, nil, Options{})
	var calls atomic.Int32
	started, release := make(chan struct{}, 1), make(chan struct{})
	load := blockingLoader(&calls, started, release)
	patient := make(chan error, 1)
	go func() {
		_, err := c.GetOrLoad(context.Background(), "k", load)
		patient <- err
	}()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	if _, err := c.GetOrLoad(ctx, "k", load); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("GetOrLoad with an expiring deadline = %v, want context.DeadlineExceeded", err)
	}
	close(release)
	if err := <-patient; err != nil {
		t.Errorf("GetOrLoad without a deadline = %v, want the loaded value", err)
	}
}

// TestLoaderPanicIsAnError: a loader that panics gives every caller of its flight (and of
// GetOrLoadMany, of a load past SoftTimeout, and of an eager refresh) an error matching
// ErrLoaderPanicked, counted; the process goes on.
func TestLoaderPanicIsAnError(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	clock := newFakeClock()
	c := newCache(t, srv, Options{Logger: quietLogger(), Clock: clock, NoJitter: true, TTL: 10 * time.Second,
		EagerRefresh: 0.5, SoftTimeout: time.Millisecond})
	ctx := context.Background()

	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	boom := func(context.Context, string) ([]byte, error) {
		once.Do(func() { close(started) })
		<-release
		panic("boom")
	}
	errs := make(chan error, 8)
	go func() {
		_, err := c.GetOrLoad(ctx, "k", boom)
		errs <- err
	}()
	<-started
	for range 7 {
		go func() {
			_, err := c.GetOrLoad(ctx, "k", boom)
			errs <- err
		}()
	}
	close(release)
	for range 8 {
		if err := <-errs; !errors.Is(err, ErrLoaderPanicked) {
			t.Errorf("GetOrLoad with a panicking loader = %v, want ErrLoaderPanicked", err)
		}
	}
	if _, err := c.GetOrLoadMany(ctx, []string{"a", "b"}, func(context.Context, []string) (map[string][]byte, error) {
		panic("boom many")
	}); !errors.Is(err, ErrLoaderPanicked) {
		t.Errorf("GetOrLoadMany with a panicking loader = %v, want ErrLoaderPanicked", err)
	}
	panics := c.Stats().LoaderPanics

	// Past SoftTimeout: the caller gets the stale value; the load panics in the background.
	staleEntry(t, c, clock, "soft", "old")
	blocked := make(chan struct{})
	v, err := c.GetOrLoad(ctx, "soft", func(context.Context, string) ([]byte, error) {
		<-blocked
		panic("boom late")
	}, SkipL1())
	if !errors.Is(err, ErrStale) || string(v) != "old" {
		t.Errorf("GetOrLoad past SoftTimeout = %q, %v; want old with ErrStale", v, err)
	}
	close(blocked)
	waitFor(t, "the background load's panic to be counted", 10*time.Second, func() bool { return c.Stats().LoaderPanics > panics })

	// An eager refresh that panics.
	if err := c.Set(ctx, "hot", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	clock.Advance(6 * time.Second)
	panics = c.Stats().LoaderPanics
	if v, err := c.GetOrLoad(ctx, "hot", func(context.Context, string) ([]byte, error) { panic("boom refresh") }, SkipL1()); err != nil || string(v) != "v1" {
		t.Errorf("GetOrLoad(hot) that triggers a refresh = %q, %v; want v1", v, err)
	}
	waitFor(t, "the refresh's panic to be counted", 10*time.Second, func() bool {
		s := c.Stats()
		return s.LoaderPanics > panics && s.LoadErrors >= s.LoaderPanics
	})
	if s := c.Stats(); s.LoadErrors < s.LoaderPanics || s.LoaderPanics < 4 {
		t.Errorf("Stats: LoaderPanics %d, LoadErrors %d; want at least 4 panics, each also a load error", s.LoaderPanics, s.LoadErrors)
	}
}

// TestGetOrLoadManyCallerCancels: GetOrLoadMany returns when its caller's context ends, without
// waiting for the batch loader, which goes on and fills the cache.
func TestGetOrLoadManyCallerCancels(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := newCache(t, srv, Options{Logger: quietLogger()})
	release := make(chan struct{})
	started := make(chan struct{})
	load := func(_ context.Context, keys []string) (map[string][]byte, error) {
		close(started)
		<-release
		out := map[string][]byte{}
		for _, k := range keys {
			out[k] = []byte("loaded-" + k)
		}
		return out, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.GetOrLoadMany(ctx, []string{"a", "b"}, load)
		done <- err
	}()
	<-started
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("GetOrLoadMany after its caller cancelled = %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("GetOrLoadMany still waits for its loader after its caller cancelled")
	}
	close(release)
	waitFor(t, "the batch load to fill Redis", 10*time.Second, func() bool {
		v, err := c.Get(context.Background(), "b", SkipL1())
		return err == nil && string(v) == "loaded-b"
	})
}

// TestEagerRefreshKeepsNewerWrite: a refresh whose load began before an application Set must not
// replace the Set's value (in Redis or in any L1); a refresh that races nothing still lands and
// reaches peers' L1.
func TestEagerRefreshKeepsNewerWrite(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	clock := newFakeClock()
	o := Options{Logger: quietLogger(), Clock: clock, NoJitter: true, EagerRefresh: 0.5, TTL: 10 * time.Second, L1TTL: 10 * time.Second}
	a := newCache(t, srv, o)
	b := newCache(t, srv, o)
	if err := a.Set(ctx, "hot", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	clock.Advance(6 * time.Second)
	started, release := make(chan struct{}), make(chan struct{})
	slowOld := func(context.Context, string) ([]byte, error) {
		close(started)
		<-release
		return []byte("loaded-old"), nil
	}
	if v, err := b.GetOrLoad(ctx, "hot", slowOld, SkipL1()); err != nil || string(v) != "v1" {
		t.Fatalf("GetOrLoad(hot) = %q, %v; want v1", v, err)
	}
	<-started
	if err := a.Set(ctx, "hot", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	close(release)
	waitFor(t, "the refresh to finish", 10*time.Second, func() bool {
		raw, _ := srv.Client(t).Get(ctx, a.redisKey("hot")).Result()
		return b.Stats().StaleRefused > 0 || strings.Contains(raw, "loaded-old")
	})
	for name, c := range map[string]*Cache{"a": a, "b": b} {
		if v, err := c.Get(ctx, "hot", SkipL1()); err != nil || string(v) != "v2" {
			t.Errorf("%s.Get(hot, SkipL1) after the racing refresh = %q, %v; want v2", name, v, err)
		}
	}
	if v, err := a.Get(ctx, "hot"); err != nil || string(v) != "v2" {
		t.Errorf("a.Get(hot) after the racing refresh = %q, %v; want v2", v, err)
	}

	// A refresh that races nothing reaches Redis and peers' L1 (a holds v2 in L1).
	clock.Advance(6 * time.Second)
	fresh := func(context.Context, string) ([]byte, error) { return []byte("v3"), nil }
	if _, err := b.GetOrLoad(ctx, "hot", fresh, SkipL1()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a's L1 to give up v2 for the refreshed v3", 10*time.Second, func() bool {
		v, err := a.Get(ctx, "hot")
		return err == nil && string(v) == "v3"
	})
}
