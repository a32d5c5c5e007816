// Package faultproxy is an in-process TCP proxy for fault tests. It sits
// between a client and a server on loopback and can delay, blackhole, reset
// or refuse connections on demand.
package faultproxy

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// dialTimeout bounds the dial to the target for each accepted connection.
const dialTimeout = 5 * time.Second

// Proxy forwards TCP connections from Addr to a target address and
// injects faults. Its methods are safe for concurrent use.
type Proxy struct {
	target string
	ln     net.Listener

	delay     atomic.Int64 // time.Duration
	refuse    atomic.Bool
	blackhole atomic.Bool

	mu     sync.Mutex
	conns  map[*pconn]struct{}
	closed bool

	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// pconn is one proxied connection: the accepted client side and the dialed
// upstream side (nil when accepted while blackholed).
type pconn struct {
	p          *Proxy
	client     net.Conn
	upstream   net.Conn
	blackholed atomic.Bool
	done       chan struct{}
	once       sync.Once
}

// chunk is data read from one side, due to be written at due.
type chunk struct {
	data []byte
	due  time.Time
}

// New starts a proxy listening on 127.0.0.1:0 that forwards to target. It
// is closed in tb.Cleanup. It fails tb when it cannot listen.
func New(tb testing.TB, target string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("faultproxy: listen: %v", err)
	}
	p := &Proxy{target: target, ln: ln, conns: make(map[*pconn]struct{})}
	p.wg.Add(1)
	go p.acceptLoop()
	tb.Cleanup(func() { p.Close() })
	return p
}

// Addr returns the proxy's listening address, "127.0.0.1:PORT".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target returns the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// SetDelay delays every chunk forwarded in either direction by d, measured
// from when the proxy read it; 0 turns the delay off. It applies to chunks
// read after the call.
func (p *Proxy) SetDelay(d time.Duration) { p.delay.Store(int64(d)) }

// Blackhole turns blackholing on or off. While on, new connections are
// accepted and kept open but nothing is forwarded in either direction (the
// bytes are dropped), and live connections stop forwarding too. Switching
// it off resets every connection that was blackholed so clients reconnect.
func (p *Proxy) Blackhole(on bool) {
	p.mu.Lock()
	p.blackhole.Store(on)
	var reset []*pconn
	for c := range p.conns {
		if on {
			c.blackholed.Store(true)
		} else if c.blackholed.Load() {
			reset = append(reset, c)
		}
	}
	p.mu.Unlock()
	for _, c := range reset {
		c.close(true)
	}
}

// ResetAll closes every live connection abruptly: both sides get an RST
// (SO_LINGER 0) instead of a FIN.
func (p *Proxy) ResetAll() {
	for _, c := range p.snapshot() {
		c.close(true)
	}
}

// Refuse turns refusing on or off. While on, new connections are closed
// immediately after accept; live connections are not affected.
func (p *Proxy) Refuse(on bool) { p.refuse.Store(on) }

// Conns returns the number of live proxied connections.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Close stops listening, resets all live connections and waits for every
// proxy goroutine to exit. It returns the error from closing the listener;
// later calls return the same error.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		p.closeErr = p.ln.Close()
		for _, c := range p.snapshot() {
			c.close(true)
		}
		p.wg.Wait()
	})
	return p.closeErr
}

func (p *Proxy) snapshot() []*pconn {
	p.mu.Lock()
	defer p.mu.Unlock()
	cs := make([]*pconn, 0, len(p.conns))
	for c := range p.conns {
		cs = append(cs, c)
	}
	return cs
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		conn, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// Temporary accept errors (e.g. EMFILE): back off briefly.
			time.Sleep(5 * time.Millisecond)
			continue
		}
		if p.refuse.Load() {
			conn.Close()
			continue
		}
		p.wg.Add(1)
		go p.handle(conn)
	}
}

// handle dials the target (unless blackholed) and starts forwarding.
func (p *Proxy) handle(client net.Conn) {
	defer p.wg.Done()
	c := &pconn{p: p, client: client, done: make(chan struct{})}
	if !p.blackhole.Load() {
		up, err := net.DialTimeout("tcp", p.target, dialTimeout)
		if err != nil {
			setLinger0(client)
			client.Close()
			return
		}
		c.upstream = up
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.closeConns(true)
		return
	}
	// Re-check under the lock so a concurrent Blackhole(true) cannot miss
	// this connection.
	if p.blackhole.Load() || c.upstream == nil {
		c.blackholed.Store(true)
	}
	p.conns[c] = struct{}{}
	p.mu.Unlock()

	if c.upstream == nil {
		// Blackholed from the start: read and drop until closed.
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			buf := make([]byte, 32<<10)
			for {
				if _, err := client.Read(buf); err != nil {
					c.close(false)
					return
				}
			}
		}()
		return
	}
	c.pipe(client, c.upstream)
	c.pipe(c.upstream, client)
}

// pipe starts a reader and a writer goroutine forwarding src to dst.
func (c *pconn) pipe(src, dst net.Conn) {
	p := c.p
	ch := make(chan chunk, 64)
	p.wg.Add(2)
	go func() { // reader
		defer p.wg.Done()
		defer close(ch)
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 && !c.blackholed.Load() {
				ck := chunk{data: append([]byte(nil), buf[:n]...)}
				if d := time.Duration(p.delay.Load()); d > 0 {
					ck.due = time.Now().Add(d)
				}
				select {
				case ch <- ck:
				case <-c.done:
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	go func() { // writer
		defer p.wg.Done()
		var timer *time.Timer
		defer func() {
			if timer != nil {
				timer.Stop()
			}
		}()
		for {
			var ck chunk
			var ok bool
			select {
			case ck, ok = <-ch:
			case <-c.done:
				return
			}
			if !ok {
				// Source hit EOF or an error: everything queued has been
				// written, so close the whole connection.
				c.close(false)
				return
			}
			if wait := time.Until(ck.due); !ck.due.IsZero() && wait > 0 {
				if timer == nil {
					timer = time.NewTimer(wait)
				} else {
					timer.Reset(wait)
				}
				select {
				case <-timer.C:
				case <-c.done:
					return
				}
			}
			if c.blackholed.Load() {
				continue
			}
			if _, err := dst.Write(ck.data); err != nil {
				c.close(false)
				return
			}
		}
	}()
}

// close closes both sides once (with RST when reset) and unregisters c.
func (c *pconn) close(reset bool) {
	c.once.Do(func() {
		c.p.mu.Lock()
		delete(c.p.conns, c)
		c.p.mu.Unlock()
		close(c.done)
		c.closeConns(reset)
	})
}

func (c *pconn) closeConns(reset bool) {
	for _, nc := range []net.Conn{c.client, c.upstream} {
		if nc == nil {
			continue
		}
		if reset {
			setLinger0(nc)
		}
		nc.Close()
	}
}

// setLinger0 makes Close send an RST instead of a FIN.
func setLinger0(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
}
