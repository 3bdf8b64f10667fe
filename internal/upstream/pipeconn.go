package upstream

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// pipeConn is one connection of a [Pipeline]: requests are appended to out
// and written by its writer goroutine, as many as have gathered; its reader
// goroutine parses the answers in order and completes the oldest calls.
type pipeConn struct {
	p    *Pipeline
	nc   net.Conn
	dead atomic.Bool
	load int // requests given to it and not yet answered; guarded by p.mu
	// headSent is when the oldest unanswered request was queued here (unix
	// nanoseconds), 0 if none.
	headSent atomic.Int64

	mu       sync.Mutex
	out      []byte    // encoded requests not yet written
	spare    []byte    // the other write buffer
	inflight []*call   // written or in out, oldest first
	flushing bool      // the writer has been woken and not finished
	lastUsed time.Time // the last answer (or the connection's opening)
	wake     chan struct{}
	quit     chan struct{}
	failOnce sync.Once
}

func newPipeConn(p *Pipeline, nc net.Conn) *pipeConn {
	return &pipeConn{p: p, nc: nc, lastUsed: time.Now(), wake: make(chan struct{}, 1), quit: make(chan struct{})}
}

func (pc *pipeConn) start() {
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
	wake := !pc.flushing
	pc.flushing = true
	pc.mu.Unlock()
	if wake {
		select {
		case pc.wake <- struct{}{}:
		default:
		}
	}
}

// writeLoop writes whatever requests have gathered, one write for all of
// them, until the buffer stays empty.
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
			pc.mu.Lock()
			if cap(buf) <= 1<<20 {
				pc.spare = buf[:0]
			}
			pc.mu.Unlock()
			if err != nil {
				// The reader decides the connection's end: answers that
				// arrived before the failure (a Connection: close among
				// them) are still to be read. Half-closing makes sure the
				// API ends the connection, and the reader with it.
				if tc, ok := pc.nc.(interface{ CloseWrite() error }); ok {
					_ = tc.CloseWrite()
				}
				return
			}
		}
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

// readLoop parses answers as they arrive and completes their calls in
// order.
func (pc *pipeConn) readLoop() {
	defer pc.p.wg.Done()
	maxBody := int(pc.p.opts.MaxBodyBytes)
	buf := make([]byte, 32<<10)
	start, end := 0, 0 // unparsed bytes: buf[start:end]
	var h respHead
	var chunked []byte // a dechunked body
	skip := 0          // bytes of an oversized body still to discard
	for {
		// Complete every answer the buffer holds.
		for {
			if skip > 0 {
				n := min(skip, end-start)
				skip -= n
				start += n
				if skip > 0 {
					break
				}
			}
			c := pc.front()
			keepAll := c != nil && c.r.Method == "GET"
			ok, err := parseHead(buf[start:end], keepAll, &h)
			if err != nil {
				pc.fail(err, false)
				return
			}
			if !ok {
				break
			}
			if c == nil {
				pc.fail(fmt.Errorf("%w: an answer with no request", errMalformed), false)
				return
			}
			if h.status < 200 {
				start += h.headLen // 100 Continue and the like
				continue
			}
			data := buf[start+h.headLen : end]
			var body []byte
			truncated := false
			switch {
			case h.chunked:
				size, wire, err := chunkedEnd(data)
				if err != nil {
					pc.fail(err, false)
					return
				}
				if wire == 0 {
					goto more
				}
				if size > maxBody {
					truncated = true
				} else {
					chunked = dechunk(chunked[:0], data[:wire])
					body = chunked
				}
				start += h.headLen + wire
			case h.untilEOF:
				goto more // complete at EOF
			case h.length > maxBody:
				truncated = true
				skip = h.length
				start += h.headLen
			default:
				if len(data) < h.length {
					goto more
				}
				body = data[:h.length]
				start += h.headLen + h.length
			}
			pc.deliver(c, &h, body, truncated)
			if h.close {
				pc.failAnnounced()
				return
			}
		}
	more:
		// Make room: drop what is used, grow for a large answer.
		if start == end {
			start, end = 0, 0
		} else if start > 0 && len(buf)-end < 4<<10 {
			end = copy(buf, buf[start:end])
			start = 0
		}
		if end == len(buf) {
			if len(buf) >= maxBody+maxHeadBytes+64 {
				pc.fail(fmt.Errorf("%w: answer larger than the body limit", errMalformed), false)
				return
			}
			grown := make([]byte, min(2*len(buf), maxBody+maxHeadBytes+64))
			end = copy(grown, buf[start:end])
			start, buf = 0, grown
		}
		n, err := pc.nc.Read(buf[end:])
		end += n
		if err != nil {
			if errors.Is(err, io.EOF) && h.untilEOF && start < end {
				// An answer that ran to the end of the connection.
				c := pc.front()
				if ok, _ := parseHead(buf[start:end], c != nil && c.r.Method == "GET", &h); ok && h.untilEOF {
					if c != nil {
						body := buf[start+h.headLen : end]
						pc.deliver(c, &h, body, len(body) > maxBody)
					}
				}
			}
			if pc.dead.Load() {
				return
			}
			if errors.Is(err, io.EOF) {
				err = errServerClosed
			}
			pc.fail(err, false)
			return
		}
	}
}

var errServerClosed = errors.New("the API closed the connection")

// deliver completes the oldest call with an answer. The response is reused
// for the next answer: done must not keep it.
func (pc *pipeConn) deliver(c *call, h *respHead, body []byte, truncated bool) {
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
	resp := Response{Status: h.status, Header: h.header, Body: body, Truncated: truncated}
	pc.p.finish(c, &resp, nil)
}

// fail closes the connection once; its unanswered calls go back to the
// pipeline.
func (pc *pipeConn) fail(err error, timedOut bool) { pc.close(err, timedOut, false) }

// failAnnounced closes the connection after an answer that said
// Connection: close.
func (pc *pipeConn) failAnnounced() { pc.close(errServerClosed, false, true) }

func (pc *pipeConn) close(err error, timedOut, announced bool) {
	pc.failOnce.Do(func() {
		pc.mu.Lock()
		pc.dead.Store(true)
		calls := pc.inflight
		pc.inflight = nil
		pc.mu.Unlock()
		close(pc.quit)
		pc.nc.Close()
		pc.p.lost(pc, calls, err, timedOut, announced)
	})
}
