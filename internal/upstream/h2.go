package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/ws2api/ws2api/internal/loop"
)

// H2Client is a [Client] that speaks HTTP/2 over cleartext TCP with prior
// knowledge (h2c, RFC 9113 section 3.3) to one API base URL: every request
// is a stream of its own, many in flight at once on one connection, each
// answered as soon as the API has its answer. Requests are multiplexed, not
// pipelined: a slow answer delays only its own stream, never another
// client's.
//
// What it buys over [HostClient] is batching: the requests that arrive
// while the last write is under way go out together in one write, and the
// API's answers come back several to a read, so that under load a message
// costs fewer system calls. At most MaxConns requests are in flight at
// once (streams, over as few connections as the API's stream limit
// allows); the rest wait their turn in a queue.
//
// Callbacks run as [HostClient]'s do: on a connection's poller with an
// answer, on the janitor, a dialer or a closing connection's goroutine with
// an error, never under the client's locks.
type H2Client struct {
	// Static after construction.
	opts    HostOptions
	loop    *loop.Loop
	ownLoop bool
	host    string // :authority
	addr    string // host:port to dial
	base    string // escaped base path, ending in '/'

	// Guarded by mu.
	mu      sync.Mutex
	conns   []*h2Conn // open and taking new streams, oldest first
	all     map[*h2Conn]struct{}
	dialing bool
	active  int // streams reserved or in flight, over every connection
	line    line
	closed  bool

	warned warnings
	stop   chan struct{}
	wg     sync.WaitGroup
}

var _ Client = (*H2Client)(nil)

// maxH2Conns bounds the connections one H2Client opens: a second one is
// opened only when the API's stream limit on the first is reached.
const maxH2Conns = 16

// NewH2Client checks the options (the base URL's scheme is h2c) and starts
// the janitor; the first connection opens with the first request.
func NewH2Client(opts HostOptions) (*H2Client, error) {
	opts = opts.withDefaults()
	u, err := ParseBaseURL(opts.BaseURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "h2c" {
		return nil, fmt.Errorf("api url %q: an HTTP/2 client needs an h2c URL", opts.BaseURL)
	}
	h := &H2Client{
		opts: opts, host: u.Host, addr: BackendAddr(u), base: u.EscapedPath(),
		all: map[*h2Conn]struct{}{}, line: newLine(), stop: make(chan struct{}),
	}
	h.loop = opts.Loop
	if h.loop == nil {
		if h.loop, err = loop.New("ws2api-api", 1, 0); err != nil {
			return nil, err
		}
		h.ownLoop = true
	}
	h.wg.Add(1)
	go h.janitor()
	return h, nil
}

// Do implements [Client].
func (h *H2Client) Do(r *Request, done func(*Response, error)) {
	c := callPool.Get().(*call)
	*c = call{r: r, done: done, start: time.Now()}
	if o := h.opts.Observer; o != nil {
		o.Started(r.Method)
	}
	h.submit(c)
}

// submit gives c a stream on a connection with room for one, or queues
// it.
func (h *H2Client) submit(c *call) {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		go h.finish(c, nil, ErrClosed)
		return
	}
	if pc := h.reserve(); pc != nil {
		h.mu.Unlock()
		pc.send(c)
		return
	}
	h.line.push(c)
	h.maybeDial()
	h.mu.Unlock()
}

// reserve takes a stream on the oldest connection with room for one, or
// returns nil. h.mu is held.
func (h *H2Client) reserve() *h2Conn {
	if h.active >= h.opts.MaxConns {
		return nil
	}
	for _, pc := range h.conns {
		if pc.streams < pc.limit() {
			pc.streams++
			h.active++
			return pc
		}
	}
	return nil
}

// maybeDial opens a connection if requests wait and every open one is
// full. h.mu is held.
func (h *H2Client) maybeDial() {
	if h.dialing || h.line.len() == 0 || len(h.all) >= maxH2Conns || h.active >= h.opts.MaxConns {
		return
	}
	h.dialing = true
	h.wg.Add(1)
	go h.dial()
}

func (h *H2Client) dial() {
	defer h.wg.Done()
	pc, err := h.connect()
	h.mu.Lock()
	h.dialing = false
	if err == nil && h.closed {
		err = ErrClosed
	}
	if err != nil {
		// As HostClient's dial: with no connection left, what waits fails
		// unsent, for a Pool to send elsewhere and the gateway to back off.
		var failed []*call
		if len(h.all) == 0 {
			failed = h.line.takeAll()
		}
		h.mu.Unlock()
		if pc != nil {
			pc.fail(err)
		}
		for _, c := range failed {
			h.finish(c, nil, err)
		}
		return
	}
	h.all[pc] = struct{}{}
	h.conns = append(h.conns, pc)
	h.mu.Unlock()
	h.serveWaiting()
}

// connect opens a connection and starts HTTP/2 on it: the preface and
// settings are written before any request.
func (h *H2Client) connect() (*h2Conn, error) {
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
	nb, err := loop.Wrap(nc)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	pc := newH2Conn(h, nb)
	if _, err := h.loop.Add(nb, pc); err != nil {
		nb.Close()
		return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	h.wg.Add(1)
	go pc.writeLoop()
	return pc, nil
}

// serveWaiting gives the waiting requests the streams there is room for.
func (h *H2Client) serveWaiting() {
	for {
		h.mu.Lock()
		if h.line.len() == 0 {
			h.mu.Unlock()
			return
		}
		pc := h.reserve()
		if pc == nil {
			h.maybeDial()
			h.mu.Unlock()
			return
		}
		c := h.line.pop()
		h.mu.Unlock()
		pc.send(c)
	}
}

// ended is told by a connection that n of its streams ended (answered,
// reset, timed out or failed): their room goes to the waiting requests.
func (h *H2Client) ended(pc *h2Conn, n int) {
	h.mu.Lock()
	if _, ok := h.all[pc]; ok { // a closed one gave back all its room at once
		pc.streams -= n
		h.active -= n
	}
	h.mu.Unlock()
	h.serveWaiting()
}

// retire takes a connection out of the ones given new streams (the API
// said GOAWAY, or it closed); with forget, it is gone for good.
func (h *H2Client) retire(pc *h2Conn, forget bool) {
	h.mu.Lock()
	if i := slices.Index(h.conns, pc); i >= 0 {
		h.conns = slices.Delete(h.conns, i, i+1)
	}
	if forget {
		if _, ok := h.all[pc]; ok {
			delete(h.all, pc)
			h.active -= pc.streams
			pc.streams = 0
		}
	}
	if !h.closed {
		h.maybeDial()
	}
	h.mu.Unlock()
}

// again sends c once more at once: the API has said it did not process it
// (a stream refused, or past a GOAWAY's last stream).
func (h *H2Client) again(c *call) {
	if time.Since(c.start) >= h.opts.Timeout {
		h.finish(c, nil, fmt.Errorf("%w: %w: %s refused the request until the timeout", ErrUnreachable, ErrTimeout, h.addr))
		return
	}
	if o := h.opts.Observer; o != nil {
		o.Resent(c.r.Method, CauseUnreachable)
	}
	h.submit(c)
}

func (h *H2Client) warnOnce(cause string, err error) {
	h.warned.once(h.opts.Log, h.opts.BaseURL, cause, err)
}

func (h *H2Client) finish(c *call, resp *Response, err error) { h.opts.finish(c, resp, err) }

// failWaiting fails every waiting request with err (a Pool sends them to
// another backend).
func (h *H2Client) failWaiting(err error) {
	h.mu.Lock()
	failed := h.line.takeAll()
	h.mu.Unlock()
	for _, c := range failed {
		h.finish(c, nil, err)
	}
}

// Cancel implements [Client].
func (h *H2Client) Cancel(r *Request) bool {
	h.mu.Lock()
	method, start, ok := h.line.cancel(r)
	h.mu.Unlock()
	if ok && h.opts.Observer != nil {
		h.opts.Observer.Finished(method, time.Since(start), false)
	}
	return ok
}

// janitor enforces the timeouts: requests waiting or in flight too long
// (a stream is reset, its connection kept), and connections idle too long.
func (h *H2Client) janitor() {
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
		conns := make([]*h2Conn, 0, len(h.all))
		for pc := range h.all {
			conns = append(conns, pc)
		}
		// A connection idle too long is taken out here, under h.mu, so
		// that no stream can be reserved on it meanwhile.
		var retire []*h2Conn
		for _, pc := range slices.Clone(h.conns) {
			if pc.streams == 0 && pc.idleFor(now) > h.opts.IdleTimeout {
				h.conns = slices.DeleteFunc(h.conns, func(o *h2Conn) bool { return o == pc })
				delete(h.all, pc)
				retire = append(retire, pc)
			}
		}
		h.mu.Unlock()
		for _, pc := range retire {
			pc.fail(errIdle)
		}
		for _, c := range expired {
			h.finish(c, nil, fmt.Errorf("%w: %w: no stream to %s within %v", ErrUnreachable, ErrTimeout, h.addr, h.opts.Timeout))
		}
		for _, pc := range conns {
			pc.tick(now)
		}
	}
}

// Idle reports whether no request is waiting or in flight.
func (h *H2Client) Idle() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.line.len() == 0 && !h.dialing && h.active == 0
}

// Close fails every waiting request and every stream with [ErrClosed]
// and closes the connections.
func (h *H2Client) Close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	waiting := h.line.takeAll()
	conns := make([]*h2Conn, 0, len(h.all))
	for pc := range h.all {
		conns = append(conns, pc)
	}
	h.mu.Unlock()
	close(h.stop)
	for _, c := range waiting {
		h.finish(c, nil, ErrClosed)
	}
	for _, pc := range conns {
		pc.fail(ErrClosed)
	}
	h.wg.Wait()
	if h.ownLoop {
		h.loop.Stop()
	}
}

var errGoAway = errors.New("the API is closing the connection (GOAWAY)")

// ProbeH2C checks that the server on c speaks HTTP/2 with prior
// knowledge: it sends the client preface and an empty SETTINGS, and wants
// SETTINGS back before the deadline. An HTTP/1.1-only server answers 400
// (and may log a malformed request), which is what the probe is for: to say
// at start-up that an h2c URL names the wrong server.
func ProbeH2C(c net.Conn, deadline time.Time) error {
	_ = c.SetDeadline(deadline)
	fr := http2.NewFramer(c, c)
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		return err
	}
	if err := fr.WriteSettings(); err != nil {
		return err
	}
	var head [9]byte
	if _, err := io.ReadFull(c, head[:]); err != nil {
		return fmt.Errorf("no HTTP/2 SETTINGS came back: %w", err)
	}
	if string(head[:5]) == "HTTP/" {
		return errors.New("it answered in HTTP/1 and does not speak h2c: use an http:// URL for it, or enable HTTP/2 over cleartext on it")
	}
	if http2.FrameType(head[3]) != http2.FrameSettings {
		return fmt.Errorf("its first HTTP/2 frame is %v, not SETTINGS", http2.FrameType(head[3]))
	}
	_ = fr.WriteGoAway(0, http2.ErrCodeNo, nil)
	return nil
}
