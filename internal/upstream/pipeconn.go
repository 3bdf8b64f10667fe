package upstream

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lesismal/nbio"

	"github.com/ws2api/ws2api/internal/http1"
)

// pipeConn is one connection of a [Pipeline]. Requests are encoded into out
// and written as many at a time as have gathered; answers are parsed as
// they arrive and complete the oldest calls in order.
//
// A plain connection lives on the event loop: its answers are parsed on its
// poller, and its writes happen at the start of the poller's next turn, so
// the requests of every message read in one turn leave in one write. An
// https connection has a reader and a writer goroutine of its own.
type pipeConn struct {
	p      *Pipeline
	nb     *nbio.Conn // on the event loop, or
	nc     net.Conn   // with its own goroutines (TLS)
	poller int        // nb's poller
	dead   atomic.Bool
	load   int // requests given to it and not yet answered; guarded by p.mu
	// headSent is when the oldest unanswered request was queued here (unix
	// nanoseconds), 0 if none.
	headSent atomic.Int64

	mu        sync.Mutex
	out       []byte  // encoded requests not yet written
	spare     []byte  // the other write buffer
	inflight  []*call // written or in out, oldest first
	flushing  bool    // a write of out is due
	lastWrite time.Time
	lastUsed  time.Time
	wake      chan struct{} // goroutine mode: out has requests
	quit      chan struct{}
	failOnce  sync.Once

	// rd parses answers. nbio reports a close on another goroutine than
	// the poller's, so the loop's two callbacks share it under rdMu.
	rdMu sync.Mutex
	rd   respReader
}

func newPipeConn(p *Pipeline) *pipeConn {
	return &pipeConn{p: p, lastUsed: time.Now(), wake: make(chan struct{}, 1), quit: make(chan struct{})}
}

// startGoroutines starts a TLS connection's reader and writer.
func (pc *pipeConn) startGoroutines() {
	pc.p.wg.Add(2)
	go pc.writeLoop()
	go pc.readLoop()
}

// accepts reports whether another request may go on this connection now
// (see pipelineBudget). p.mu is held.
func (pc *pipeConn) accepts(now int64, depth int) bool {
	switch {
	case pc.load == 0:
		return true
	case pc.load >= depth:
		return false
	}
	if head := pc.headSent.Load(); head != 0 && time.Duration(now-head) >= pipelineBudget {
		return false
	}
	return time.Duration(int64(pc.load)*pc.p.service.Load()) < pipelineBudget
}

// send queues c's request on this connection.
func (pc *pipeConn) send(c *call) {
	pc.mu.Lock()
	if pc.dead.Load() {
		pc.mu.Unlock()
		pc.p.submit(c)
		return
	}
	pc.out = appendRequest(pc.out, c.r, pc.p.host, pc.p.base)
	c.sent = time.Now()
	if len(pc.inflight) == 0 {
		pc.headSent.Store(c.sent.UnixNano())
	}
	pc.inflight = append(pc.inflight, c)
	if pc.flushing {
		pc.mu.Unlock()
		return // a write is due and will take this request too
	}
	if pc.nb != nil && c.sent.Sub(pc.lastWrite) > batchGap {
		// Requests come slowly: this one goes out now rather than wait
		// for the poller's next turn.
		pc.lastWrite = c.sent
		pc.writeLocked()
		pc.mu.Unlock()
		return
	}
	pc.flushing = true
	pc.mu.Unlock()
	if pc.nb != nil {
		pc.p.loop.Later(pc.poller, pc)
		return
	}
	select {
	case pc.wake <- struct{}{}:
	default:
	}
}

// batchGap decides how a loop connection writes a request: one that comes
// more than batchGap after the connection's last write goes out at once;
// one that comes sooner waits for the start of the poller's next turn,
// with every other request of the current turn.
const batchGap = 50 * time.Microsecond

// RunLater writes what gathered on a loop connection during its poller's
// last turn (loop.Task).
func (pc *pipeConn) RunLater() {
	pc.mu.Lock()
	pc.flushing = false
	pc.lastWrite = time.Now()
	pc.writeLocked()
	pc.mu.Unlock()
}

// writeLocked writes out on a loop connection. It runs under pc.mu, so that
// requests leave in exactly the order they joined inflight, whichever
// goroutine sends them; nbio's write never blocks (it keeps what the kernel
// does not take). A failed write ends the connection on another goroutine:
// the caller may be inside Do, holding a lock of its own.
func (pc *pipeConn) writeLocked() {
	if len(pc.out) == 0 || pc.dead.Load() {
		return
	}
	if _, err := pc.nb.Write(pc.out); err != nil {
		go pc.fail(fmt.Errorf("writing to the API: %w", err), false)
	}
	pc.out = pc.out[:0]
	if cap(pc.out) > 1<<20 {
		pc.out = nil
	}
}

func (pc *pipeConn) recycle(buf []byte) {
	if cap(buf) > 1<<20 {
		return
	}
	pc.mu.Lock()
	if pc.spare == nil {
		pc.spare = buf[:0]
	}
	pc.mu.Unlock()
}

// writeLoop is a TLS connection's writer: whatever requests have gathered
// go out in one write, until none are left.
func (pc *pipeConn) writeLoop() {
	defer pc.p.wg.Done()
	for {
		select {
		case <-pc.quit:
			return
		case <-pc.wake:
		}
		for {
			pc.mu.Lock()
			if pc.dead.Load() || len(pc.out) == 0 {
				pc.flushing = false
				pc.mu.Unlock()
				break
			}
			buf := pc.out
			pc.out, pc.spare = pc.spare[:0], nil
			pc.mu.Unlock()
			_, err := pc.nc.Write(buf)
			pc.recycle(buf)
			if err != nil {
				// The reader decides the connection's end: answers that
				// arrived before the failure (a Connection: close among
				// them) are still to be read.
				if cw, ok := pc.nc.(interface{ CloseWrite() error }); ok {
					_ = cw.CloseWrite()
				}
				return
			}
		}
	}
}

// readLoop is a TLS connection's reader.
func (pc *pipeConn) readLoop() {
	defer pc.p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := pc.nc.Read(buf)
		if n > 0 {
			if ferr := pc.feed(buf[:n]); ferr != nil {
				pc.end(ferr)
				return
			}
		}
		if err != nil {
			pc.eof(err)
			pc.end(err)
			return
		}
	}
}

// OnData parses answers that reached a loop connection (loop.Handler).
func (pc *pipeConn) OnData(_ *nbio.Conn, data []byte) {
	if err := pc.feed(data); err != nil {
		pc.end(err)
	}
}

// OnClose ends a loop connection (loop.Handler).
func (pc *pipeConn) OnClose(_ *nbio.Conn, err error) {
	pc.eof(err)
	pc.end(err)
}

func (pc *pipeConn) feed(data []byte) error {
	pc.rdMu.Lock()
	defer pc.rdMu.Unlock()
	return pc.rd.feed(pc, data)
}

// eof completes an answer that ran to the end of the connection.
func (pc *pipeConn) eof(err error) {
	if err != nil && !errors.Is(err, io.EOF) {
		return
	}
	pc.rdMu.Lock()
	defer pc.rdMu.Unlock()
	pc.rd.eof(pc)
}

// end closes the connection after its reader stopped: announced if the
// last answer said Connection: close.
func (pc *pipeConn) end(err error) {
	switch {
	case errors.Is(err, errAnnounced):
		pc.close(errServerClosed, false, true)
	case err == nil || errors.Is(err, io.EOF):
		pc.fail(errServerClosed, false)
	default:
		pc.fail(err, false)
	}
}

// front returns the oldest unanswered call, or nil.
func (pc *pipeConn) front() *call {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if len(pc.inflight) == 0 {
		return nil
	}
	return pc.inflight[0]
}

// pop removes the oldest unanswered call; nil if the connection failed
// meanwhile (its calls then belong to the pipeline again).
func (pc *pipeConn) pop() *call {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if len(pc.inflight) == 0 {
		return nil
	}
	c := pc.inflight[0]
	pc.inflight[0] = nil
	pc.inflight = pc.inflight[1:]
	if len(pc.inflight) == 0 {
		pc.inflight = pc.inflight[:0:0]
		pc.headSent.Store(0)
	} else {
		pc.headSent.Store(pc.inflight[0].sent.UnixNano())
	}
	pc.lastUsed = time.Now()
	return c
}

// age returns how long the oldest request has waited for its answer, and
// how long the connection has been idle (0 while busy).
func (pc *pipeConn) age(now time.Time) (oldest, idle time.Duration) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if len(pc.inflight) > 0 {
		return now.Sub(pc.inflight[0].start), 0
	}
	return 0, now.Sub(pc.lastUsed)
}

// deliver completes the oldest call with an answer. The response is only
// valid until done returns.
func (pc *pipeConn) deliver(c *call, h *http1.ResponseHead, body []byte, truncated bool) {
	answered := time.Now()
	prev := pc.lastUsed // only the reader writes lastUsed
	if pc.pop() != c {
		return // failed meanwhile: lost() has the call
	}
	// Its turn began when it was sent or when the answer before it came,
	// whichever was later.
	turn := c.sent
	if prev.After(turn) {
		turn = prev
	}
	pc.p.observeService(answered.Sub(turn))
	pc.p.answered(pc)
	if truncated {
		body = nil
	}
	// One Response per connection, reused: done may not keep it.
	pc.rd.resp = Response{Status: h.Status, Header: h.Header, Body: body, Truncated: truncated}
	pc.p.finish(c, &pc.rd.resp, nil)
}

var errServerClosed = errors.New("the API closed the connection")

// fail closes the connection once; its unanswered calls go back to the
// pipeline.
func (pc *pipeConn) fail(err error, timedOut bool) { pc.close(err, timedOut, false) }

func (pc *pipeConn) close(err error, timedOut, announced bool) {
	pc.failOnce.Do(func() {
		pc.mu.Lock()
		pc.dead.Store(true)
		calls := pc.inflight
		pc.inflight = nil
		pc.mu.Unlock()
		close(pc.quit)
		if pc.nb != nil {
			pc.nb.Close()
		} else {
			pc.nc.Close()
		}
		pc.p.lost(pc, calls, err, timedOut, announced)
	})
}
