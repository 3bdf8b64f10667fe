package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ws2api/ws2api/internal/loop"
)

// PipelineOptions configures a [Pipeline]. The zero value of every field
// but BaseURL picks the default written beside it.
type PipelineOptions struct {
	// BaseURL is the API's base URL; a request's Path is appended to it.
	// Required.
	BaseURL string
	// MaxConns bounds the connections open to the API. Default 256.
	MaxConns int
	// MaxIdle bounds the idle connections kept open; more are closed.
	// Default MaxConns.
	MaxIdle int
	// Depth bounds the requests in flight on one connection; 1 turns
	// pipelining off. A request finding every connection this busy opens a
	// new one (up to MaxConns) or waits its turn. Default 16.
	Depth int
	// Timeout bounds one request from its queuing to the last byte of its
	// answer. A connection whose oldest request times out is closed (the
	// requests behind it are sent again on another). Default 60s.
	Timeout time.Duration
	// IdleTimeout closes a connection unused this long. Default 30s.
	IdleTimeout time.Duration
	// DialTimeout bounds opening a connection (and its TLS handshake).
	// Default 5s.
	DialTimeout time.Duration
	// MaxBodyBytes bounds a response body kept; a longer one is dropped
	// and the response marked Truncated. Default 16 MiB.
	MaxBodyBytes int64
	// Observer, if set, is told of each request.
	Observer Observer
	// Loop is the event loop plain (http) connections live on: best the
	// gateway's own, so that a message goes from client to API and back on
	// one poller. Default: a loop of the pipeline's own, with one poller.
	Loop *loop.Loop

	// outcome, if set, is told of every request's outcome (a Pool keeps
	// its backends' health with it).
	outcome func(Outcome)
}

func (o PipelineOptions) withDefaults() PipelineOptions {
	if o.MaxConns <= 0 {
		o.MaxConns = 256
	}
	if o.MaxIdle <= 0 {
		o.MaxIdle = o.MaxConns
	}
	if o.Depth <= 0 {
		o.Depth = 16
	}
	if o.Timeout <= 0 {
		o.Timeout = 60 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 30 * time.Second
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 5 * time.Second
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = 16 << 20
	}
	return o
}

// Pipeline is a [Client] that speaks HTTP/1.1 to the API over a few
// keep-alive connections, many requests at a time on each (pipelining):
// requests are encoded back to back into a connection's buffer and go out
// in one write, and answers are read in bulk and handed to their callbacks
// in order. Under load one system call carries many messages each way,
// which is where a gateway's CPU goes.
//
// A request that finds no connection free waits in a queue; none is
// dropped. The callbacks run on a connection's reader goroutine, one after
// another: the response and its body are valid only until done returns.
type Pipeline struct {
	opts    PipelineOptions
	loop    *loop.Loop
	ownLoop bool
	host    string // Host header
	addr    string // host:port to dial
	base    string // escaped base path, ending in '/'
	tls     *tls.Config

	mu      sync.Mutex
	conns   []*pipeConn
	dialing int
	waiting []*call // no connection could take them yet, oldest first
	closed  bool

	// service is the API's recent time to answer one request once it is
	// its turn (an average over the last few dozen, in nanoseconds).
	service atomic.Int64

	stop chan struct{}
	wg   sync.WaitGroup
}

type call struct {
	r        *Request
	done     func(*Response, error)
	start    time.Time // queued by Do: the timeout runs from here
	sent     time.Time // put on its current connection
	requeued bool      // already sent again once after its connection was lost
}

var _ Client = (*Pipeline)(nil)

// NewPipeline checks the options and starts the janitor that enforces
// timeouts; connections open on demand.
func NewPipeline(opts PipelineOptions) (*Pipeline, error) {
	opts = opts.withDefaults()
	u, err := ParseBaseURL(opts.BaseURL)
	if err != nil {
		return nil, err
	}
	p := &Pipeline{opts: opts, host: u.Host, addr: u.Host, base: u.EscapedPath(), stop: make(chan struct{})}
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "https" {
			port = "443"
		}
		p.addr = net.JoinHostPort(u.Hostname(), port)
	}
	if u.Scheme == "https" {
		p.tls = &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
	}
	p.loop = opts.Loop
	if p.loop == nil && p.tls == nil {
		if p.loop, err = loop.New("ws2api-api", 1, 0); err != nil {
			return nil, err
		}
		p.ownLoop = true
	}
	p.wg.Add(1)
	go p.janitor()
	return p, nil
}

var callPool = sync.Pool{New: func() any { return new(call) }}

// Do implements [Client].
func (p *Pipeline) Do(r *Request, done func(*Response, error)) {
	c := callPool.Get().(*call)
	*c = call{r: r, done: done, start: time.Now()}
	if o := p.opts.Observer; o != nil {
		o.Started(r.Method)
	}
	p.submit(c)
}

func (p *Pipeline) submit(c *call) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		go p.finish(c, nil, ErrClosed)
		return
	}
	if pc := p.pick(); pc != nil {
		pc.load++
		p.mu.Unlock()
		pc.send(c)
		return
	}
	p.waiting = append(p.waiting, c)
	p.maybeDial()
	p.mu.Unlock()
}

// pipelineBudget bounds the wait a request may get from being queued
// behind others on one connection. An API answers a connection's requests
// one after another, so a request pipelined behind k others waits about k
// service times, and behind a slow one, as long as that one takes. A
// request therefore goes behind others only if the connection's oldest
// request is younger than the budget and the expected wait (requests ahead
// times the API's recent service time) fits in it. A fast API thus gets many
// requests per write; a slow one gets one request per connection, spread
// over more connections.
const pipelineBudget = time.Millisecond

// pick returns the connection to send a request on: among those with room
// that are idle or answering promptly, the busiest, so that requests travel
// together. (Measured: packing requests this way beats keeping each
// poller's requests on connections of its own.) nil if none qualifies.
// p.mu is held.
func (p *Pipeline) pick() *pipeConn {
	now := time.Now().UnixNano()
	var best *pipeConn
	for _, pc := range p.conns {
		if pc.dead.Load() || !pc.accepts(now, p.opts.Depth) {
			continue
		}
		if best == nil || pc.load > best.load {
			best = pc
		}
	}
	return best
}

// maybeDial opens another connection if requests wait and the limits
// allow. p.mu is held.
func (p *Pipeline) maybeDial() {
	const maxDialing = 4
	if len(p.waiting) == 0 || p.dialing >= maxDialing || len(p.conns)+p.dialing >= p.opts.MaxConns {
		return
	}
	// One dial per Depth waiting requests is enough.
	if p.dialing*p.opts.Depth >= len(p.waiting) {
		return
	}
	p.dialing++
	p.wg.Add(1)
	go p.dial()
}

func (p *Pipeline) dial() {
	defer p.wg.Done()
	var pc *pipeConn
	nc, err := p.connect()
	if err == nil {
		pc, err = p.attach(nc)
	}
	p.mu.Lock()
	p.dialing--
	if err == nil && p.closed {
		err = ErrClosed
		pc.fail(ErrClosed, false)
	}
	if err != nil {
		// With no connection left to carry them, the waiting requests
		// fail now: a connect during an outage is answered at once, and
		// messages go back to their retrier's backoff.
		var failed []*call
		if p.liveConns() == 0 && p.dialing == 0 {
			failed, p.waiting = p.waiting, nil
		}
		p.mu.Unlock()
		for _, c := range failed {
			p.finish(c, nil, err)
		}
		return
	}
	p.conns = append(p.conns, pc)
	var take []*call
	for len(p.waiting) > 0 && pc.load < p.opts.Depth {
		take = append(take, p.waiting[0])
		p.waiting[0] = nil
		p.waiting = p.waiting[1:]
		pc.load++
	}
	if len(p.waiting) == 0 {
		p.waiting = nil
	}
	p.maybeDial()
	p.mu.Unlock()
	if pc.nc != nil {
		pc.startGoroutines()
	}
	for _, c := range take {
		pc.send(c)
	}
}

// attach makes a pipeConn of a new connection: on the event loop if it is
// plain, with goroutines of its own if it is TLS.
func (p *Pipeline) attach(nc net.Conn) (*pipeConn, error) {
	pc := newPipeConn(p)
	if p.tls != nil {
		pc.nc = nc
		return pc, nil
	}
	nb, err := loop.Wrap(nc)
	if err != nil {
		return nil, err
	}
	pc.nb, pc.poller = nb, p.loop.PollerOf(nb)
	if _, err := p.loop.Add(nb, pc); err != nil {
		nb.Close()
		return nil, err
	}
	return pc, nil
}

func (p *Pipeline) connect() (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), p.opts.DialTimeout)
	defer cancel()
	d := net.Dialer{KeepAlive: 30 * time.Second}
	nc, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		if IsTimeout(err) {
			return nil, fmt.Errorf("%w: %w: connecting to %s: %w", ErrUnreachable, ErrTimeout, p.addr, err)
		}
		return nil, fmt.Errorf("%w: connecting to %s: %w", ErrUnreachable, p.addr, err)
	}
	if p.tls != nil {
		tc := tls.Client(nc, p.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("TLS handshake with the API: %w", err)
		}
		return tc, nil
	}
	return nc, nil
}

func (p *Pipeline) liveConns() int {
	n := 0
	for _, pc := range p.conns {
		if !pc.dead.Load() {
			n++
		}
	}
	return n
}

// observeService folds one answer's service time into the average.
func (p *Pipeline) observeService(d time.Duration) {
	old := p.service.Load()
	p.service.Store(old + (int64(d)-old)/16)
}

// finish completes a call; nothing refers to it afterwards.
func (p *Pipeline) finish(c *call, resp *Response, err error) {
	outcome := Classify(resp, err)
	if o := p.opts.Observer; o != nil {
		o.Finished(c.r.Method, time.Since(c.start), outcome == Delivered)
	}
	if p.opts.outcome != nil && !errors.Is(err, ErrClosed) {
		p.opts.outcome(outcome)
	}
	done := c.done
	*c = call{}
	callPool.Put(c)
	done(resp, err)
}

// answered is told by a connection that it has room again: waiting
// requests move onto it.
func (p *Pipeline) answered(pc *pipeConn) {
	p.mu.Lock()
	pc.load--
	var take []*call
	now := time.Now().UnixNano()
	for len(p.waiting) > 0 && !pc.dead.Load() && pc.accepts(now, p.opts.Depth) {
		take = append(take, p.waiting[0])
		p.waiting[0] = nil
		p.waiting = p.waiting[1:]
		pc.load++
	}
	if len(p.waiting) == 0 && take != nil {
		p.waiting = nil
	}
	p.mu.Unlock()
	for _, c := range take {
		pc.send(c)
	}
}

// lost is told by a connection that died: its unanswered requests go out
// again on another connection. After the API announced the close
// (Connection: close) they were not processed and always go again;
// after an unannounced loss (the API may have seen them; a server closing
// an idle connection as a request arrives is routine) they go again once,
// then fail. The one that timed out fails at once.
func (p *Pipeline) lost(pc *pipeConn, calls []*call, err error, timedOut, announced bool) {
	p.mu.Lock()
	for i, x := range p.conns {
		if x == pc {
			p.conns = append(p.conns[:i], p.conns[i+1:]...)
			break
		}
	}
	closed := p.closed
	p.mu.Unlock()
	for i, c := range calls {
		switch {
		case closed:
			p.finish(c, nil, ErrClosed)
		case timedOut && i == 0:
			p.finish(c, nil, fmt.Errorf("%w: no answer within %v", ErrTimeout, p.opts.Timeout))
		case announced && time.Since(c.start) < p.opts.Timeout:
			p.submit(c)
		case !c.requeued && time.Since(c.start) < p.opts.Timeout:
			c.requeued = true
			p.submit(c)
		default:
			p.finish(c, nil, fmt.Errorf("connection to the API lost: %w", err))
		}
	}
}

// janitor enforces the timeouts: requests waiting or in flight too long,
// and connections idle too long.
func (p *Pipeline) janitor() {
	defer p.wg.Done()
	every := min(max(p.opts.Timeout/20, 10*time.Millisecond), time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		now := time.Now()
		p.mu.Lock()
		var expired []*call
		keep := p.waiting[:0]
		for _, c := range p.waiting {
			if now.Sub(c.start) > p.opts.Timeout {
				expired = append(expired, c)
			} else {
				keep = append(keep, c)
			}
		}
		p.waiting = keep
		conns := append([]*pipeConn(nil), p.conns...)
		p.mu.Unlock()
		for _, c := range expired {
			p.finish(c, nil, fmt.Errorf("%w: no connection to the API within %v", ErrTimeout, p.opts.Timeout))
		}
		idleKept := 0
		for i := len(conns) - 1; i >= 0; i-- { // newest first: the oldest idle ones go
			pc := conns[i]
			oldest, idle := pc.age(now)
			switch {
			case oldest > p.opts.Timeout:
				pc.fail(ErrTimeout, true)
			case idle > p.opts.IdleTimeout:
				pc.fail(errIdle, false)
			case idle > 0 && idleKept >= p.opts.MaxIdle:
				pc.fail(errIdle, false)
			case idle > 0:
				idleKept++
			}
		}
	}
}

var errIdle = errors.New("idle connection closed")

// Idle reports whether no request is waiting or in flight.
func (p *Pipeline) Idle() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.waiting) > 0 || p.dialing > 0 {
		return false
	}
	for _, pc := range p.conns {
		if pc.load > 0 {
			return false
		}
	}
	return true
}

// Close fails every waiting request with [ErrClosed] and closes the
// connections.
func (p *Pipeline) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	waiting := p.waiting
	p.waiting = nil
	conns := append([]*pipeConn(nil), p.conns...)
	p.mu.Unlock()
	close(p.stop)
	for _, c := range waiting {
		p.finish(c, nil, ErrClosed)
	}
	for _, pc := range conns {
		pc.fail(ErrClosed, false)
	}
	p.wg.Wait()
	if p.ownLoop {
		p.loop.Stop()
	}
}
