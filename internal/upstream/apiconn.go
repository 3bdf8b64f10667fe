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
	"github.com/ws2api/ws2api/internal/loop"
)

// apiConn is one keep-alive connection of a [HostClient], carrying one
// request at a time: a request never waits behind another client's answer
// on it (no pipelining, so no head-of-line blocking).
//
// A plain connection lives on the event loop: its answer is parsed on its
// poller, and a request is written as it is given. An https connection
// has a reader and a writer goroutine of its own.
type apiConn struct {
	// Static after construction.
	h  *HostClient
	nb *nbio.Conn // on the event loop, or
	nc net.Conn   // with its own goroutines (TLS)

	dead atomic.Bool // closing or closed: it takes no request

	// Guarded by mu.
	mu        sync.Mutex
	call      *call // the request in flight, nil when idle
	keepAll   bool  // call is a GET: its answer's headers are all kept
	started   bool  // a byte of call's answer has arrived
	served    int   // answers completed on this connection
	lastUsed  time.Time
	out       []byte        // the encoded request
	wake      chan struct{} // goroutine mode: out has a request
	quit      chan struct{}
	closeOnce sync.Once

	// rd parses answers. nbio reports a close on another goroutine than
	// the poller's, so the loop's two callbacks share it under rdMu.
	rdMu sync.Mutex
	rd   respReader
}

func newAPIConn(h *HostClient) *apiConn {
	return &apiConn{h: h, lastUsed: time.Now(), wake: make(chan struct{}, 1), quit: make(chan struct{})}
}

// startGoroutines starts a TLS connection's reader and writer.
func (pc *apiConn) startGoroutines() {
	pc.h.wg.Add(2)
	go pc.writeLoop()
	go pc.readLoop()
}

// send writes c's request on this idle connection.
func (pc *apiConn) send(c *call) {
	pc.mu.Lock()
	if pc.dead.Load() {
		pc.mu.Unlock()
		pc.h.submit(c) // it closed while idle: another connection takes it
		return
	}
	pc.call, pc.started, pc.keepAll = c, false, c.r.Method == "GET"
	pc.out = appendRequest(pc.out[:0], c.r, pc.h.host, pc.h.base)
	if pc.nb == nil {
		pc.mu.Unlock()
		select {
		case pc.wake <- struct{}{}:
		default:
		}
		return
	}
	// nbio's write never blocks: it keeps what the kernel does not take.
	_, err := pc.nb.Write(pc.out)
	if cap(pc.out) > 1<<20 {
		pc.out = nil
	}
	pc.mu.Unlock()
	if err != nil {
		// Off this goroutine: the caller may hold a lock of its own.
		go pc.fail(fmt.Errorf("writing to the API: %w", err), false)
	}
}

// writeLoop is a TLS connection's writer.
func (pc *apiConn) writeLoop() {
	defer pc.h.wg.Done()
	for {
		select {
		case <-pc.quit:
			return
		case <-pc.wake:
		}
		pc.mu.Lock()
		buf := pc.out
		pc.out = nil
		pc.mu.Unlock()
		if len(buf) == 0 {
			continue
		}
		if _, err := pc.nc.Write(buf); err != nil {
			// The reader decides the connection's end: an answer that
			// came before the failure is still to be read.
			if cw, ok := pc.nc.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
			}
			return
		}
		pc.mu.Lock()
		if pc.out == nil && cap(buf) <= 1<<20 {
			pc.out = buf[:0]
		}
		pc.mu.Unlock()
	}
}

// readLoop is a TLS connection's reader.
func (pc *apiConn) readLoop() {
	defer pc.h.wg.Done()
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

// OnData parses an answer that reached a loop connection (loop.Handler).
func (pc *apiConn) OnData(_ *nbio.Conn, data []byte) {
	if err := pc.feed(data); err != nil {
		pc.end(err)
	}
}

// OnClose ends a loop connection (loop.Handler). The loop delivers every
// byte that came before the close first.
func (pc *apiConn) OnClose(_ *nbio.Conn, err error) {
	pc.eof(err)
	pc.end(err)
}

func (pc *apiConn) feed(data []byte) error {
	pc.rdMu.Lock()
	defer pc.rdMu.Unlock()
	return pc.rd.feed(pc, data)
}

// eof completes an answer that ran to the end of the connection.
func (pc *apiConn) eof(err error) {
	if err != nil && !errors.Is(err, io.EOF) {
		return
	}
	pc.rdMu.Lock()
	defer pc.rdMu.Unlock()
	pc.rd.eof(pc)
}

// end closes the connection after its reader stopped.
func (pc *apiConn) end(err error) {
	switch {
	case errors.Is(err, errAnnounced):
		pc.fail(errAnnounced, false)
	case err == nil || errors.Is(err, io.EOF):
		pc.fail(errServerClosed, false)
	default:
		pc.fail(err, false)
	}
}

// answering notes that the answer to the request in flight has begun (if
// the connection is lost now, the request was surely seen) and says
// whether to keep all its headers; ok is false with no request in flight.
// The reader never touches the call itself: a timeout may take it meanwhile.
func (pc *apiConn) answering() (keepAll, ok bool) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.call == nil {
		return false, false
	}
	pc.started = true
	return pc.keepAll, true
}

// age returns how long the request in flight has waited since it was
// queued, and how long the connection has been idle (0 while busy).
func (pc *apiConn) age(now time.Time) (oldest, idle time.Duration) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.call != nil {
		return now.Sub(pc.call.start), 0
	}
	return 0, now.Sub(pc.lastUsed)
}

// timeOut closes the connection if its request in flight has waited
// longer than limit since it was queued. The connection is marked dead in
// the same step as the check, under pc.mu, so no other request can be
// sent on it before the close and be taken for the one that timed out.
func (pc *apiConn) timeOut(now time.Time, limit time.Duration) {
	pc.mu.Lock()
	late := pc.call != nil && now.Sub(pc.call.start) > limit
	if late {
		pc.dead.Store(true) // from here no request can be sent on it
	}
	pc.mu.Unlock()
	if late {
		pc.fail(ErrTimeout, true)
	}
}

// complete hands the whole answer to the request in flight. The response
// is valid only until its callback returns.
func (pc *apiConn) complete(head *http1.ResponseHead, body []byte, truncated bool) {
	pc.mu.Lock()
	c := pc.call
	pc.call = nil
	pc.served++
	pc.lastUsed = time.Now()
	pc.mu.Unlock()
	if c == nil {
		return // failed meanwhile
	}
	// The connection goes back first, so that the callback's next request
	// (the same client's next message, often) can take it.
	if head.Close {
		pc.dead.Store(true)
		pc.h.forget(pc)
	} else {
		pc.h.release(pc)
	}
	pc.rd.resp = Response{Status: head.Status, Header: head.Header, Body: body, Truncated: truncated}
	pc.h.finish(c, &pc.rd.resp, nil)
}

var errServerClosed = errors.New("the API closed the connection")

// fail closes the connection once. Its request in flight, if any, goes
// back to the client, which decides whether it may be sent again.
func (pc *apiConn) fail(err error, timedOut bool) {
	pc.closeOnce.Do(func() {
		pc.mu.Lock()
		pc.dead.Store(true)
		c, started, reused := pc.call, pc.started, pc.served > 0
		pc.call = nil
		pc.mu.Unlock()
		close(pc.quit)
		if pc.nb != nil {
			// Shut down, not closed: fail runs on the janitor, a dialer or
			// a caller's goroutine, and the poller must be the one to free
			// the descriptor (loop.Shutdown).
			loop.Shutdown(pc.nb)
		} else {
			pc.nc.Close()
		}
		pc.h.lost(pc, c, err, lossOf(timedOut, started, reused))
	})
}

// loss says how much of a request a lost connection may have processed.
type loss uint8

const (
	// lostUnseen: a connection that had served answers closed before any
	// of this one's answer came. A server closing an idle keep-alive
	// connection as a request arrives does that routinely, and has not
	// processed it.
	lostUnseen loss = iota
	// lostMaybe: the request may have been processed (a new connection
	// dropped, or an answer cut short).
	lostMaybe
	// lostTimedOut: no whole answer within the timeout.
	lostTimedOut
)

func lossOf(timedOut, started, reused bool) loss {
	switch {
	case timedOut:
		return lostTimedOut
	case reused && !started:
		return lostUnseen
	}
	return lostMaybe
}
