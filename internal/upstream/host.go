package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/ws2api/ws2api/internal/http1"
	"github.com/ws2api/ws2api/internal/loop"
)

// HostOptions configures a [HostClient]. The zero value of every field but
// BaseURL picks the default written beside it.
type HostOptions struct {
	// BaseURL is the API's base URL; a request's Path is appended to it.
	// Required.
	BaseURL string
	// MaxConns bounds the connections open to the API, and so the
	// requests in flight at once. Default 256.
	MaxConns int
	// MaxIdle bounds the idle connections kept open; more are closed.
	// Default MaxConns.
	MaxIdle int
	// Timeout bounds one request from its queuing to the last byte of its
	// answer. Default 60s.
	Timeout time.Duration
	// IdleTimeout closes a connection unused this long. Default 30s.
	IdleTimeout time.Duration
	// DialTimeout bounds opening a connection (and its TLS handshake).
	// Default 5s.
	DialTimeout time.Duration
	// MaxBodyBytes bounds a response body kept; a longer one is read and
	// dropped, and the response marked Truncated. Default 16 MiB.
	MaxBodyBytes int64
	// Observer, if set, is told of each request.
	Observer Observer
	// Log, if set, is told once per cause of the first answer that could
	// not be read and of the first connection lost mid-request.
	Log *slog.Logger
	// Loop is the event loop plain (http) connections live on: best the
	// gateway's own, so that a message goes from client to API and back on
	// one poller. Default: a loop of the client's own, with one poller.
	Loop *loop.Loop

	// outcome, if set, is told of every request's outcome (a Pool keeps
	// its backends' health with it).
	outcome func(Outcome)
}

// HostDefaults are the values HostOptions' zero fields take (MaxIdle's is
// MaxConns), and the flags' defaults.
var HostDefaults = HostOptions{
	MaxConns:     256,
	Timeout:      60 * time.Second,
	IdleTimeout:  30 * time.Second,
	DialTimeout:  5 * time.Second,
	MaxBodyBytes: 16 << 20,
}

func (o HostOptions) withDefaults() HostOptions {
	d := HostDefaults
	if o.MaxConns <= 0 {
		o.MaxConns = d.MaxConns
	}
	if o.MaxIdle <= 0 {
		o.MaxIdle = o.MaxConns
	}
	if o.Timeout <= 0 {
		o.Timeout = d.Timeout
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = d.IdleTimeout
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = d.DialTimeout
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = d.MaxBodyBytes
	}
	return o
}

// HostClient is a [Client] that speaks HTTP/1.1 to one API base URL over
// keep-alive connections, one request at a time on each: a request takes
// an idle connection, or opens a new one up to MaxConns, or waits its turn
// in a queue (none is dropped). No request ever waits behind another on a
// connection, so a slow answer delays only its own client.
//
// The callbacks run on a connection's reader (its poller for plain
// connections) with an answer, and on the janitor, a dialer or a closing
// connection's goroutine with an error: never under the client's locks.
// The response and its body are valid only until done returns.
type HostClient struct {
	// Static after construction.
	opts    HostOptions
	loop    *loop.Loop
	ownLoop bool
	host    string // Host header
	addr    string // host:port to dial
	base    string // escaped base path, ending in '/'
	tls     *tls.Config

	// Guarded by mu.
	mu      sync.Mutex
	conns   map[*apiConn]struct{} // every open connection
	idle    []*apiConn            // open with nothing in flight, most recently used last
	dialing int
	line    line // requests no connection could take yet
	closed  bool

	warned warnings

	stop chan struct{}
	wg   sync.WaitGroup
}

type call struct {
	r        *Request
	done     func(*Response, error)
	start    time.Time // queued by Do: the timeout runs from here
	requeued bool      // sent again once after a keep-alive connection closed under it
	canceled bool      // left the queue through Cancel: skipped, never sent
}

var _ Client = (*HostClient)(nil)

// NewHostClient checks the options and starts the janitor that enforces
// timeouts; connections open on demand.
func NewHostClient(opts HostOptions) (*HostClient, error) {
	opts = opts.withDefaults()
	u, err := ParseBaseURL(opts.BaseURL)
	if err != nil {
		return nil, err
	}
	h := &HostClient{
		opts: opts, host: u.Host, addr: BackendAddr(u), base: u.EscapedPath(),
		conns: map[*apiConn]struct{}{}, line: newLine(), stop: make(chan struct{}),
	}
	if u.Scheme == "https" {
		h.tls = &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
	}
	h.loop = opts.Loop
	if h.loop == nil && h.tls == nil {
		if h.loop, err = loop.New("ws2api-api", 1, 0); err != nil {
			return nil, err
		}
		h.ownLoop = true
	}
	h.wg.Add(1)
	go h.janitor()
	return h, nil
}

var callPool = sync.Pool{New: func() any { return new(call) }}

// Do implements [Client].
func (h *HostClient) Do(r *Request, done func(*Response, error)) {
	c := callPool.Get().(*call)
	*c = call{r: r, done: done, start: time.Now()}
	if o := h.opts.Observer; o != nil {
		o.Started(r.Method)
	}
	h.submit(c)
}

// submit gives c to an idle connection, or queues it.
func (h *HostClient) submit(c *call) {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		go h.finish(c, nil, ErrClosed)
		return
	}
	if pc := h.takeIdle(); pc != nil {
		h.mu.Unlock()
		pc.send(c)
		return
	}
	h.line.push(c)
	h.maybeDial()
	h.mu.Unlock()
}

// Cancel implements [Client]: a request still waiting for a connection
// leaves the line at once, and what it holds is freed.
func (h *HostClient) Cancel(r *Request) bool {
	h.mu.Lock()
	method, start, ok := h.line.cancel(r)
	h.mu.Unlock()
	if ok && h.opts.Observer != nil {
		h.opts.Observer.Finished(method, time.Since(start), false)
	}
	return ok
}

// takeIdle returns the most recently used idle connection that is still
// open, or nil. h.mu is held.
func (h *HostClient) takeIdle() *apiConn {
	for len(h.idle) > 0 {
		pc := h.idle[len(h.idle)-1]
		h.idle[len(h.idle)-1] = nil
		h.idle = h.idle[:len(h.idle)-1]
		if !pc.dead.Load() {
			return pc
		}
	}
	return nil
}

// maxDialing bounds the connections being opened at once.
const maxDialing = 16

// maybeDial opens connections for the waiting requests, as the limits
// allow: one per request that no dial under way will take. h.mu is held.
func (h *HostClient) maybeDial() {
	for h.line.len() > h.dialing && h.dialing < maxDialing && len(h.conns)+h.dialing < h.opts.MaxConns {
		h.dialing++
		h.wg.Add(1)
		go h.dial()
	}
}

func (h *HostClient) dial() {
	defer h.wg.Done()
	var pc *apiConn
	nc, err := h.connect()
	if err == nil {
		pc, err = h.attach(nc)
	}
	h.mu.Lock()
	h.dialing--
	switch {
	case err != nil:
	case h.closed:
		err = ErrClosed
	case pc.dead.Load():
		// Reset or closed as it opened: nothing was sent on it.
		err = fmt.Errorf("%w: %s closed the connection as it opened", ErrUnreachable, h.addr)
	}
	if err != nil {
		// With no connection left to serve them, the waiting requests
		// fail now, unsent (ErrUnreachable): a Pool gives them to another
		// backend at once, and the gateway's retry backs off. None is
		// left waiting for a connection that may never come. While
		// connections are open, they take the waiting requests as their
		// answers come (and if those die, this is decided again).
		var failed []*call
		if len(h.conns) == 0 {
			failed = h.line.takeAll()
		}
		h.mu.Unlock()
		if pc != nil {
			pc.fail(err, false)
		}
		for _, c := range failed {
			h.finish(c, nil, err)
		}
		return
	}
	h.conns[pc] = struct{}{}
	c := h.line.pop()
	if c == nil {
		h.idle = append(h.idle, pc)
	}
	h.maybeDial()
	h.mu.Unlock()
	if pc.nc != nil {
		pc.startGoroutines()
	}
	if c != nil {
		pc.send(c)
	}
}

// attach makes an apiConn of a new connection: on the event loop if it is
// plain, with goroutines of its own if it is TLS.
func (h *HostClient) attach(nc net.Conn) (*apiConn, error) {
	pc := newAPIConn(h)
	if h.tls != nil {
		pc.nc = nc
		return pc, nil
	}
	nb, err := loop.Wrap(nc)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	pc.nb = nb
	if _, err := h.loop.Add(nb, pc); err != nil {
		nb.Close()
		return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	return pc, nil
}

func (h *HostClient) connect() (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), h.opts.DialTimeout)
	defer cancel()
	d := net.Dialer{KeepAlive: 30 * time.Second}
	nc, err := d.DialContext(ctx, "tcp", h.addr)
	if err != nil {
		if IsTimeout(err) {
			return nil, fmt.Errorf("%w: %w: connecting to %s: %w", ErrUnreachable, ErrTimeout, h.addr, err)
		}
		return nil, fmt.Errorf("%w: connecting to %s: %w", ErrUnreachable, h.addr, err)
	}
	if h.tls != nil {
		tc := tls.Client(nc, h.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("%w: TLS handshake with %s: %w", ErrUnreachable, h.addr, err)
		}
		return tc, nil
	}
	return nc, nil
}

// release takes back a connection whose answer is complete: the oldest
// waiting request goes on it, else it waits idle.
func (h *HostClient) release(pc *apiConn) {
	h.mu.Lock()
	if h.closed || pc.dead.Load() {
		h.mu.Unlock()
		return
	}
	if c := h.line.pop(); c != nil {
		h.mu.Unlock()
		pc.send(c)
		return
	}
	h.idle = append(h.idle, pc)
	h.mu.Unlock()
}

// forget removes a connection that is closing, and opens another if
// requests wait.
func (h *HostClient) forget(pc *apiConn) {
	h.mu.Lock()
	delete(h.conns, pc)
	if i := slices.Index(h.idle, pc); i >= 0 {
		h.idle = slices.Delete(h.idle, i, i+1)
	}
	if !h.closed {
		h.maybeDial()
	}
	h.mu.Unlock()
}

// lost is told by a connection that closed, with its request in flight
// (nil if it was idle). The request goes again at once only if it cannot
// have been processed (see lostUnseen), and then once; otherwise it fails,
// and its caller's retry policy decides.
func (h *HostClient) lost(pc *apiConn, c *call, err error, how loss) {
	h.forget(pc)
	if c == nil {
		return
	}
	h.mu.Lock()
	closed := h.closed
	h.mu.Unlock()
	switch {
	case closed:
		h.finish(c, nil, ErrClosed)
	case how == lostTimedOut:
		h.finish(c, nil, fmt.Errorf("%w: no answer from %s within %v", ErrTimeout, h.addr, h.opts.Timeout))
	case how == lostUnseen && !c.requeued && time.Since(c.start) < h.opts.Timeout:
		c.requeued = true
		if o := h.opts.Observer; o != nil {
			o.Resent(c.r.Method, CauseLost)
		}
		h.submit(c)
	default:
		if !errors.Is(err, http1.ErrMalformed) {
			err = fmt.Errorf("connection to %s lost before a whole answer: %w", h.addr, err)
		}
		h.warnOnce(Cause(nil, err), err)
		h.finish(c, nil, err)
	}
}

// warnOnce logs the first failure of each cause.
func (h *HostClient) warnOnce(cause string, err error) {
	h.warned.once(h.opts.Log, h.opts.BaseURL, cause, err)
}

// finish completes a call; nothing refers to it afterwards.
func (h *HostClient) finish(c *call, resp *Response, err error) { h.opts.finish(c, resp, err) }

// failWaiting fails every waiting request with err (a Pool sends them to
// another backend).
func (h *HostClient) failWaiting(err error) {
	h.mu.Lock()
	failed := h.line.takeAll()
	h.mu.Unlock()
	for _, c := range failed {
		h.finish(c, nil, err)
	}
}

// janitor enforces the timeouts: requests waiting or in flight too long,
// and connections idle too long.
func (h *HostClient) janitor() {
	defer h.wg.Done()
	every := min(max(h.opts.Timeout/20, 10*time.Millisecond), time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
		now := time.Now()
		h.mu.Lock()
		expired := h.line.expire(now, h.opts.Timeout)
		conns := make([]*apiConn, 0, len(h.conns))
		for pc := range h.conns {
			conns = append(conns, pc)
		}
		// Idle ones to close, the least recently used first, are taken out
		// of the idle list here, under h.mu, so that no request can be
		// given to one of them meanwhile.
		var retire []*apiConn
		keepIdle := h.idle[:0]
		for i, pc := range h.idle {
			if _, d := pc.age(now); d > h.opts.IdleTimeout || len(h.idle)-i > h.opts.MaxIdle {
				retire = append(retire, pc)
			} else {
				keepIdle = append(keepIdle, pc)
			}
		}
		clear(h.idle[len(keepIdle):])
		h.idle = keepIdle
		h.mu.Unlock()
		for _, pc := range retire {
			pc.fail(errIdle, false)
		}
		for _, c := range expired {
			h.finish(c, nil, fmt.Errorf("%w: %w: no connection to %s within %v", ErrUnreachable, ErrTimeout, h.addr, h.opts.Timeout))
		}
		for _, pc := range conns {
			pc.timeOut(now, h.opts.Timeout)
		}
	}
}

var errIdle = errors.New("idle connection closed")

// Idle reports whether no request is waiting or in flight.
func (h *HostClient) Idle() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.line.len() == 0 && h.dialing == 0 && len(h.idle) == len(h.conns)
}

// Close fails every waiting request with [ErrClosed] and closes the
// connections.
func (h *HostClient) Close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	waiting := h.line.takeAll()
	conns := make([]*apiConn, 0, len(h.conns))
	for pc := range h.conns {
		conns = append(conns, pc)
	}
	h.mu.Unlock()
	close(h.stop)
	for _, c := range waiting {
		h.finish(c, nil, ErrClosed)
	}
	for _, pc := range conns {
		pc.fail(ErrClosed, false)
	}
	h.wg.Wait()
	if h.ownLoop {
		h.loop.Stop()
	}
}
