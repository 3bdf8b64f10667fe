package control

import (
	"bufio"
	"bytes"
	"errors"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lesismal/nbio"

	"github.com/ws2api/ws2api/internal/http1"
	"github.com/ws2api/ws2api/internal/loop"
)

// Server serves the control listener on the event loop: HTTP/1.1 with
// keep-alive and pipelining. Pushes, lookups, kicks and health checks are
// answered on the poller that read them, without a goroutine switch; every
// other request (broadcast, /metrics, /debug/pprof/) goes to the Handler on
// a goroutine of its own. Answers leave in request order, all those ready
// in one write.
type Server struct {
	h    *Handler
	loop *loop.Loop

	mu     sync.Mutex
	ln     net.Listener
	conns  map[*ctlConn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// NewServer makes a server for h on l.
func NewServer(l *loop.Loop, h *Handler) *Server {
	return &Server{h: h, loop: l, conns: map[*ctlConn]struct{}{}}
}

// Serve accepts connections on ln until Close; it then returns nil.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.ln = ln
	s.mu.Unlock()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				if closed {
					return nil
				}
				return err
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		nb, err := loop.Wrap(nc)
		if err != nil {
			continue
		}
		c := &ctlConn{srv: s, nc: nb}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		if _, err := s.loop.Add(nb, c); err != nil {
			s.forget(c)
		}
	}
}

// StopAccepting closes the listener (after a binary upgrade, the new
// process accepts on it); the connections open are served until Close.
func (s *Server) StopAccepting() {
	s.mu.Lock()
	s.closed = true
	ln := s.ln
	s.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
}

// Quiesce waits, for at most timeout, until no connection has a request
// being answered (after a binary upgrade, before Close: the ops forwarded
// to the new process answer their callers).
func (s *Server) Quiesce(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		conns := make([]*ctlConn, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		busy := false
		for _, c := range conns {
			c.mu.Lock()
			busy = busy || len(c.answers) > 0
			c.mu.Unlock()
		}
		if !busy {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Resume undoes StopAccepting (a binary upgrade that failed): Serve may be
// called again, with a listener on the same socket.
func (s *Server) Resume() {
	s.mu.Lock()
	s.closed = false
	s.mu.Unlock()
}

// Close stops accepting, closes every connection and waits for the
// requests being answered on goroutines.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	ln := s.ln
	conns := make([]*ctlConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	for _, c := range conns {
		if c.nc != nil {
			c.nc.Close()
		}
	}
	s.wg.Wait()
	return nil
}

func (s *Server) forget(c *ctlConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// Limits on a control request.
const (
	maxRequestHead = 64 << 10
)

// ctlConn is one control connection: requests are parsed as they arrive
// and their answers queued in order.
type ctlConn struct {
	srv *Server
	nc  writer

	mu      sync.Mutex
	in      []byte
	answers []*answer // in request order; the ready ones at the front leave
	out     []byte
	done    bool // the last request said Connection: close, or was malformed
	gone    atomic.Bool

	lastSlow chan struct{} // closed when the latest slow request is done

	// Closing after an answer waits until the kernel has taken all of it:
	// nbio drops what it still holds when a connection closes, so an answer
	// that did not fit the socket's buffer at once (under memory pressure,
	// a fresh socket's is small) was cut, and the client read nothing.
	handed    atomic.Int64 // bytes given to Write
	taken     atomic.Int64 // bytes the kernel took (loop.WriteObserver)
	closeDue  atomic.Bool  // close once taken catches up with handed
	closeOnce sync.Once
}

var _ loop.WriteObserver = (*ctlConn)(nil)

// closeLinger bounds the wait for a client to take an answer before the
// connection closes anyway.
const closeLinger = 5 * time.Second

// OnWritten counts what the kernel took, and closes a connection whose
// last answer is all written (loop.WriteObserver). It runs under nbio's
// lock of the connection: the close happens on another goroutine.
func (c *ctlConn) OnWritten(n int) {
	if c.taken.Add(int64(n)) == c.handed.Load() && c.closeDue.Load() {
		go c.closeNow()
	}
}

// closeWhenWritten ends the connection once its answers are written, or
// after closeLinger.
func (c *ctlConn) closeWhenWritten() {
	c.closeDue.Store(true)
	if c.taken.Load() == c.handed.Load() {
		c.closeNow()
		return
	}
	time.AfterFunc(closeLinger, c.closeNow)
}

// closeNow ends the connection: its writing side is shut down, so that the
// client reads the answers and then the end and closes, and the poller
// closes the socket on the client's hangup (see loop.CloseWrite: a close
// from this goroutine could end another connection). A client that does
// not hang up within closeLinger is closed then.
func (c *ctlConn) closeNow() {
	c.closeOnce.Do(func() {
		if nb, ok := c.nc.(*nbio.Conn); ok && loop.CloseWrite(nb) {
			time.AfterFunc(closeLinger, func() { _ = c.nc.Close() })
			return
		}
		_ = c.nc.Close()
	})
}

// writer is where a connection's answers go: its *nbio.Conn.
type writer interface {
	Write(b []byte) (int, error)
	Close() error
}

// answer is one request's answer, ready or being computed.
type answer struct {
	ready bool
	b     []byte
	close bool // close the connection after it
}

// OnData parses requests (loop.Handler).
func (c *ctlConn) OnData(nc *nbio.Conn, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return
	}
	buf := data
	if len(c.in) > 0 {
		c.in = append(c.in, data...)
		buf = c.in
	}
	for len(buf) > 0 && !c.done {
		n, ok := c.request(buf)
		if !ok {
			break
		}
		buf = buf[n:]
	}
	switch {
	case c.done || len(buf) == 0:
		c.in = c.in[:0]
		if cap(c.in) > 64<<10 {
			c.in = nil
		}
	case len(c.in) > 0:
		c.in = c.in[:copy(c.in, buf)]
	default:
		c.in = append(c.in[:0], buf...)
	}
	c.flushLocked()
}

// OnClose forgets the connection (loop.Handler).
func (c *ctlConn) OnClose(*nbio.Conn, error) {
	c.gone.Store(true)
	c.srv.forget(c)
}

// request handles the request at the start of b, if complete: it returns
// the bytes it took.
func (c *ctlConn) request(b []byte) (int, bool) {
	h := c.srv.h
	end := http1.HeadEnd(b)
	if end < 0 {
		if len(b) > maxRequestHead {
			c.fail(http.StatusRequestHeaderFieldsTooLarge, "request head too large")
		}
		return 0, false
	}
	head, err := http1.ParseRequestHead(b[:end])
	if err != nil {
		c.fail(http.StatusBadRequest, err.Error())
		return 0, false
	}
	path, rawQuery, _ := strings.Cut(head.Target, "?")
	host := head.Get("Host")
	if head.Authority != "" {
		host = head.Authority // an absolute-form target's, as net/http takes it
	}
	if refused, ok := h.admit(admission{
		method: head.Method, path: path, host: host,
		origin: head.Get("Origin"), fetchSite: head.Get("Sec-Fetch-Site"),
		authorization: head.Get("Authorization"),
	}); !ok {
		// Not worth reading the body of: answer and close.
		c.done = true
		c.answers = append(c.answers, &answer{ready: true, b: appendResult(nil, refused, true), close: true})
		return 0, false
	}
	length, chunked, err := head.BodyLength()
	if err != nil {
		c.fail(http.StatusBadRequest, err.Error())
		return 0, false
	}
	var body []byte
	total := end + length
	switch {
	case chunked:
		decoded, size, wire, err := http1.ChunkedBody(b[end:], h.opts.MaxBodyBytes)
		switch {
		case err != nil:
			c.fail(http.StatusBadRequest, err.Error())
			return 0, false
		case size > h.opts.MaxBodyBytes:
			c.fail(http.StatusRequestEntityTooLarge, h.tooLargeText())
			return 0, false
		case wire == 0:
			if len(b)-end > int(h.opts.MaxBodyBytes)+maxRequestHead {
				c.fail(http.StatusRequestEntityTooLarge, h.tooLargeText())
			}
			return 0, false
		}
		body = decoded
		total = end + wire
	case int64(length) > h.opts.MaxBodyBytes:
		c.fail(http.StatusRequestEntityTooLarge, h.tooLargeText())
		return 0, false
	case len(b) < total:
		return 0, false
	default:
		body = b[end:total]
	}
	closeAfter := head.HasToken("Connection", "close") || head.Proto == "HTTP/1.0" && !head.HasToken("Connection", "keep-alive")
	if closeAfter {
		c.done = true
	}
	req := request{method: head.Method, path: path, rawQuery: rawQuery, contentType: head.Get("Content-Type"), body: body}
	rt, miss := h.match(head.Method, path, &req)
	switch {
	case miss != nil:
		c.ready(*miss, closeAfter)
	case rt.inline != nil && rt.inline(&req) && !h.opts.Hub.HandingOver():
		// This node's clients are served here; an id held by another node
		// needs a round trip through the bus, on a goroutine.
		r := rt.serve(h, localOps{h.opts.Hub}, &req)
		if r.status == http.StatusNotFound && h.opts.Relay != nil {
			c.slow(append([]byte(nil), b[:total]...), closeAfter)
			break
		}
		c.ready(r, closeAfter)
	default:
		// The rest goes to net/http's side of the handler, on a
		// goroutine: the raw request is read again by http.ReadRequest.
		c.slow(append([]byte(nil), b[:total]...), closeAfter)
	}
	return total, true
}

// ready queues a computed answer.
func (c *ctlConn) ready(r result, closeAfter bool) {
	c.answers = append(c.answers, &answer{ready: true, b: appendResult(nil, r, closeAfter), close: closeAfter})
}

// fail answers a request that cannot be read, and closes after it.
func (c *ctlConn) fail(status int, msg string) {
	c.done = true
	c.answers = append(c.answers, &answer{ready: true, b: appendResult(nil, text(status, msg+"\n"), true), close: true})
}

// slow runs a request through the Handler on a goroutine, after the
// connection's previous slow request: two pushes to a client on another
// node, sent one after the other, reach it in that order.
func (c *ctlConn) slow(raw []byte, closeAfter bool) {
	a := &answer{close: closeAfter}
	c.answers = append(c.answers, a)
	prev, done := c.lastSlow, make(chan struct{})
	c.lastSlow = done
	c.srv.wg.Add(1)
	go func() {
		defer c.srv.wg.Done()
		defer close(done)
		if prev != nil {
			<-prev
		}
		var b []byte
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			b = appendResult(nil, text(http.StatusBadRequest, err.Error()+"\n"), closeAfter)
		} else {
			rec := &recorder{header: http.Header{}, status: http.StatusOK}
			c.srv.h.serveAdmitted(rec, req) // admitted as its head was read
			b = rec.appendTo(nil, closeAfter)
		}
		c.mu.Lock()
		a.b, a.ready = b, true
		c.flushLocked()
		c.mu.Unlock()
	}()
}

// flushLocked writes the answers that are ready, in order, in one write.
func (c *ctlConn) flushLocked() {
	out := c.out[:0]
	closeAfter := false
	n := 0
	for _, a := range c.answers {
		if !a.ready {
			break
		}
		out = append(out, a.b...)
		n++
		if a.close {
			closeAfter = true
			break
		}
	}
	if n == 0 {
		return
	}
	copy(c.answers, c.answers[n:])
	for i := len(c.answers) - n; i < len(c.answers); i++ {
		c.answers[i] = nil
	}
	c.answers = c.answers[:len(c.answers)-n]
	if !c.gone.Load() {
		c.handed.Add(int64(len(out)))
		_, _ = c.nc.Write(out)
	}
	if closeAfter {
		c.closeWhenWritten()
	}
	if cap(out) <= 64<<10 {
		c.out = out[:0]
	}
}

// appendResult encodes a result as an HTTP/1.1 answer.
func appendResult(b []byte, r result, closeAfter bool) []byte {
	var fields [2]http1.Header
	header := fields[:0]
	if r.allow != "" {
		header = append(header, http1.Header{Name: "Allow", Value: r.allow})
	}
	if r.header[0] != "" {
		header = append(header, http1.Header{Name: r.header[0], Value: r.header[1]})
	}
	return http1.AppendResponse(b, &http1.Response{Status: r.status, ContentType: r.contentType(), Header: header, Close: closeAfter, Body: r.body})
}

// recorder collects what a net/http handler writes.
type recorder struct {
	header http.Header
	status int
	wrote  bool
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(status int) {
	if !r.wrote {
		r.status, r.wrote = status, true
	}
}

func (r *recorder) Write(p []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	return r.body.Write(p)
}

func (r *recorder) Flush() {}

func (r *recorder) appendTo(b []byte, closeAfter bool) []byte {
	resp := http1.Response{Status: r.status, ContentType: r.header.Get("Content-Type"), Close: closeAfter, Body: r.body.Bytes()}
	if resp.ContentType == "" && r.body.Len() > 0 {
		resp.ContentType = http.DetectContentType(r.body.Bytes())
	}
	for _, name := range slices.Sorted(maps.Keys(r.header)) {
		switch name {
		case "Content-Type", "Content-Length", "Transfer-Encoding", "Connection":
			continue
		}
		for _, v := range r.header[name] {
			resp.Header = append(resp.Header, http1.Header{Name: name, Value: v})
		}
	}
	return http1.AppendResponse(b, &resp)
}
