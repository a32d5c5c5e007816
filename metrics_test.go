package tiercache

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/tiercache/tiercache/internal/redistest"
)

// The degraded time grows during an outage (before it ends) and stops when the breaker closes.
func TestDegradedTime(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := newCache(t, srv, Options{LeaseTTL: -1, BreakerFailures: 1, BreakerWindow: -1, L2Timeout: 20 * time.Millisecond})
	if s := c.Stats(); s.Degraded != 0 || s.Breaker != "closed" || !s.Subscribed {
		t.Fatalf("healthy: Degraded=%v Breaker=%q Subscribed=%v, want 0, closed, true", s.Degraded, s.Breaker, s.Subscribed)
	}
	resume := pauseRedis(t, srv)
	waitFor(t, "the breaker to open", 10*time.Second, func() bool {
		_, _ = c.Get(context.Background(), "k", SkipL1())
		return c.Stats().Outages == 1
	})
	d1 := c.Stats().Degraded
	waitFor(t, "the degraded time to grow during the outage", 10*time.Second, func() bool { return c.Stats().Degraded > d1 })
	if s := c.Stats(); s.Breaker == "closed" {
		t.Errorf("Breaker = closed during the outage")
	}
	resume()
	waitFor(t, "the breaker to close", 10*time.Second, func() bool { return c.Stats().Breaker == "closed" })
	after := c.Stats().Degraded
	if after <= d1 {
		t.Errorf("Degraded after the outage = %v, want > %v", after, d1)
	}
	// Closed: it stops growing.
	if _, err := c.Get(context.Background(), "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after recovery = %v, want ErrNotFound", err)
	}
	if again := c.Stats().Degraded; again != after {
		t.Errorf("Degraded moved from %v to %v while the breaker was closed", after, again)
	}
}

// A MeterProvider that fails is New's error, named, and leaves nothing running.
func TestMeterProviderErrors(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	for _, tt := range []struct {
		name string
		mp   metric.MeterProvider
		want string
	}{
		{"histogram", failingProvider{failHistogram: true}, "tiercache: MeterProvider: no histograms here"},
		{"callback", failingProvider{}, "tiercache: MeterProvider: no callbacks here"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(Options{Redis: srv.Client(t), MeterProvider: tt.mp})
			if err == nil {
				c.Close()
				t.Fatal("New with a failing MeterProvider succeeded")
			}
			if err.Error() != tt.want {
				t.Errorf("New error = %q, want %q", err, tt.want)
			}
		})
	}
}

type failingProvider struct {
	noop.MeterProvider
	failHistogram bool
}

func (p failingProvider) Meter(string, ...metric.MeterOption) metric.Meter {
	return failingMeter{failHistogram: p.failHistogram}
}

type failingMeter struct {
	noop.Meter
	failHistogram bool
}

func (m failingMeter) Float64Histogram(name string, opts ...metric.Float64HistogramOption) (metric.Float64Histogram, error) {
	if m.failHistogram {
		return nil, errors.New("no histograms here")
	}
	return m.Meter.Float64Histogram(name, opts...)
}

func (failingMeter) RegisterCallback(metric.Callback, ...metric.Observable) (metric.Registration, error) {
	return nil, errors.New("no callbacks here")
}
