// Package faultproxy is a loopback TCP proxy that puts latency and
// connection faults between a client and a server, for tests of what a
// client does when the network misbehaves.
//
//	p := faultproxy.New(t, srv.Addr())
//	rdb := redis.NewClient(&redis.Options{Addr: p.Addr()})
//	p.SetLatency(50 * time.Millisecond) // every chunk waits
//	p.ResetAll()                        // live connections get a RST
//	p.Block()                           // and new ones are refused
package faultproxy

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// dialTimeout bounds the proxy's connection to the target.
const dialTimeout = 5 * time.Second

// bufSize is the largest chunk forwarded at once.
const bufSize = 32 << 10

// Proxy forwards TCP connections from its loopback address to a target.
// Its methods are safe for concurrent use.
type Proxy struct {
	target string
	ln     net.Listener
	ctx    context.Context // ends on Close; cancels dials to the target
	cancel context.CancelFunc

	latency atomic.Int64 // delay before each forwarded chunk, in nanoseconds

	mu      sync.Mutex         // protects links, blocked and closed
	links   map[*link]struct{} // connections being forwarded
	blocked bool               // new connections are refused
	closed  bool               // Close was called

	wg sync.WaitGroup // counts the accept loop and each connection's goroutines
}

// link is one client connection and its connection to the target.
type link struct {
	client, server net.Conn
	done           chan struct{} // closed when the link is torn down
	once           sync.Once
}

// New starts a proxy to target (host:port) on a free loopback port. It is
// closed when the test ends.
func New(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("faultproxy: listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		target: target,
		ln:     ln,
		ctx:    ctx,
		cancel: cancel,
		links:  make(map[*link]struct{}),
	}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr returns the proxy's host:port, for clients to dial instead of the
// target's.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetLatency makes every chunk forwarded from now on, in either direction
// and on live connections too, wait d first. Zero removes the delay.
func (p *Proxy) SetLatency(d time.Duration) { p.latency.Store(int64(d)) }

// ResetAll closes every live connection abortively: both the client and the
// target see a TCP reset. New connections are forwarded as before.
func (p *Proxy) ResetAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.resetLocked()
}

func (p *Proxy) resetLocked() {
	for l := range p.links {
		l.close(true)
		delete(p.links, l)
	}
}

// Block resets every live connection, and until Unblock, accepts new
// connections only to reset them at once, as a server whose port is open
// but which refuses to talk.
func (p *Proxy) Block() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked = true
	p.resetLocked()
}

// Unblock lets new connections through again.
func (p *Proxy) Unblock() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked = false
}

// Close stops listening, resets every live connection and waits for all
// the proxy's goroutines to end. Closing twice does nothing.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.resetLocked()
	p.mu.Unlock()

	p.cancel()
	_ = p.ln.Close()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off a little.
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		p.mu.Lock()
		refuse := p.blocked || p.closed
		if !refuse {
			p.wg.Add(1)
		}
		p.mu.Unlock()
		if refuse {
			abort(c)
			continue
		}
		go p.serve(c)
	}
}

// serve connects client to the target and forwards both ways until either
// side closes or the link is reset.
func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	d := net.Dialer{Timeout: dialTimeout}
	server, err := d.DialContext(p.ctx, "tcp", p.target)
	if err != nil {
		abort(client)
		return
	}
	l := &link{client: client, server: server, done: make(chan struct{})}

	p.mu.Lock()
	if p.blocked || p.closed {
		p.mu.Unlock()
		l.close(true)
		return
	}
	p.links[l] = struct{}{}
	p.wg.Add(1)
	p.mu.Unlock()

	go func() {
		defer p.wg.Done()
		p.forward(l, server, client)
	}()
	p.forward(l, client, server)

	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}

// forward copies src to dst, waiting the current latency before each
// chunk, and tears the link down when src or dst fails.
func (p *Proxy) forward(l *link, src, dst net.Conn) {
	defer l.close(false)
	buf := make([]byte, bufSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if d := time.Duration(p.latency.Load()); d > 0 {
				timer := time.NewTimer(d)
				select {
				case <-timer.C:
				case <-l.done:
					timer.Stop()
					return
				}
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// close closes both connections, abortively (a TCP reset) when abortive is
// set. Only the first call has an effect.
func (l *link) close(abortive bool) {
	l.once.Do(func() {
		if abortive {
			abort(l.client)
			abort(l.server)
		} else {
			_ = l.client.Close()
			_ = l.server.Close()
		}
		close(l.done)
	})
}

// abort closes c so that the peer sees a TCP reset rather than an orderly
// end of stream.
func abort(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}
