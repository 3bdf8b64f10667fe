package gateway

import (
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/ws2api/ws2api/internal/hub"
	"github.com/ws2api/ws2api/internal/metrics"
	"github.com/ws2api/ws2api/internal/upstream"
	"github.com/ws2api/ws2api/internal/ws"
)

// Content types of the POSTs that carry client messages.
const (
	contentText   = "text/plain; charset=utf-8"
	contentBinary = "application/octet-stream"
)

// message is a client message waiting for, or being delivered to, the API.
type message struct {
	op  ws.Opcode
	buf *[]byte // from the buffer pools
}

// A connection's way to the API, in the order things happen:
//
//	enqueueLocked   a message arrives: started at once if nothing is in
//	                flight, else queued behind the others
//	startPOSTLocked the connection's one request in flight is that message,
//	                with an Idempotency-Key of its own
//	sendPacedLocked it goes to the API now, or at its turn if the client
//	                sends faster than MaxMessageRate (a paced wait)
//	answered        the API's answer: reply to the client, or retry after a
//	                backoff while later messages wait, or give up
//	nextLocked      the next queued message, else the DELETE once closed
//
// Each step moves c.api (apiState) through setAPILocked, which keeps the count a
// drain waits for.
//
// The connection reuses one Request, one callback and one timer (for a
// backoff or a paced wait, which never overlap) for all of it: one request
// is in flight at a time, and a message costs no allocation.

// apiState is where a connection is with the API: what the API has been
// told of it and what is in flight. It changes in setAPILocked only, along
// apiMoves.
type apiState uint8

const (
	apiUnknown    apiState = iota // not asked about yet: its upgrade head is being read
	apiConnecting                 // the connect GET is with the API (c.get)
	apiIdle                       // accepted, nothing in flight
	apiPosting                    // a message's POST in flight (c.sending), perhaps waiting (c.waiting)
	apiDeleting                   // the DELETE in flight, perhaps waiting
	apiDone                       // nothing more goes to the API: refused, abandoned, or told of the end
)

var apiStateNames = [...]string{"unknown", "connecting", "idle", "posting", "deleting", "done"}

func (a apiState) String() string { return apiStateNames[a] }

// working reports whether a request of the connection's is in flight or
// due: what a drain waits for (s.apiWork counts them).
func (a apiState) working() bool {
	return a == apiConnecting || a == apiPosting || a == apiDeleting
}

// apiMoves are the API side's transitions, from -> to, and where each is
// made; an empty entry is a move that must not happen.
var apiMoves = [apiDone + 1][apiDone + 1]string{
	apiUnknown: {
		apiConnecting: "readHeadLocked: the upgrade head is complete; the GET goes",
		apiIdle:       "Adopt: taken over from the process before (handover.go)",
	},
	apiConnecting: {
		apiIdle:     "authorized: accepted, upgraded",
		apiDone:     "authorized: refused, or accepted too late (no DELETE: it never opened); abandonLocked: the client left first",
		apiDeleting: "authorized: accepted, but the client left meanwhile (deleteUnbornLocked)",
	},
	apiIdle: {
		apiPosting:  "enqueueLocked: a message",
		apiDeleting: "OnClose: closed with nothing in flight",
		apiDone:     "OnClose: replaced, the API already saw the new GET (no DELETE); takeState: passed to the next process",
	},
	apiPosting: {
		apiPosting:  "nextLocked: the next queued message",
		apiIdle:     "nextLocked: the queue is empty",
		apiDeleting: "nextLocked: the queue is empty and the socket closed",
		apiDone:     "nextLocked: the queue is empty and the socket closed, replaced (no DELETE); takeState: passed on, in flight",
	},
	apiDeleting: {
		apiDone: "answered: the DELETE's answer, or given up",
	},
}

// setAPILocked moves c's API side to next, keeping s.apiWork in step. c.mu is
// held.
func (c *conn) setAPILocked(next apiState) {
	from := c.api
	if apiMoves[from][next] == "" {
		panic("gateway: API side of a connection moved from " + from.String() + " to " + next.String())
	}
	switch {
	case !from.working() && next.working():
		c.s.apiWork.Add(1)
	case from.working() && !next.working():
		c.s.apiWork.Add(-1)
	}
	c.api = next
}

// waitKind is what the request in flight waits for before it goes.
type waitKind uint8

const (
	waitNone    waitKind = iota
	waitBackoff          // it failed: sent again after a backoff (s.retrying holds c)
	waitRate             // a POST over MaxMessageRate: sent at its turn
)

// msgOverhead is what a waiting message counts against MaxPendingBytes and
// MaxPendingTotal beyond its payload: its buffer is at least that large,
// and a flood of empty messages must not pass the caps.
const msgOverhead = 256

// enqueueLocked takes a client message.
func (c *conn) enqueueLocked(op ws.Opcode, payload []byte) {
	s := c.s
	n := int64(len(payload))
	s.m.MessagesIn.Inc()
	s.m.BytesIn.AddInt64(n)
	c.msgsIn.Add(1)
	c.lastActive.Store(time.Now().UnixNano())
	switch {
	case c.pendingBytes+n+int64(c.pendingMsgsLocked()+1)*msgOverhead > s.opts.MaxPendingBytes:
		c.closeLocked(closeBacklog)
		c.dropData = true
		return
	case !s.pending.reserve(n, s.opts.MaxPendingTotal):
		c.closeLocked(closeGatewayFull)
		c.dropData = true
		return
	}
	msg := message{op: op, buf: getBuf(payload)}
	c.pendingBytes += n
	if c.api != apiIdle || c.moving != notMoving { // (moving: for the next process)
		c.queue = append(c.queue, msg)
		return
	}
	c.setAPILocked(apiPosting)
	c.startPOSTLocked(msg)
}

// pendingMsgsLocked returns the number of c's messages waiting for the API, the
// one in flight included.
func (c *conn) pendingMsgsLocked() int {
	n := len(c.queue)
	if c.api == apiPosting {
		n++
	}
	return n
}

// startPOSTLocked makes msg the request in flight, with a key of its own.
func (c *conn) startPOSTLocked(msg message) { c.startPOSTKeyedLocked(msg, c.nextKeyLocked()) }

// startPOSTKeyedLocked is startPOSTLocked with the key msg had in another
// process (a message in flight when its connection was handed over).
func (c *conn) startPOSTKeyedLocked(msg message, key upstream.Key) {
	ct := contentText
	if msg.op == ws.OpBinary {
		ct = contentBinary
	}
	c.sending = msg
	c.req = upstream.Request{Method: "POST", Path: c.path, Header: c.apiHeader, ContentType: ct, Body: *msg.buf, Key: key}
	c.sendPacedLocked()
}

// sendPacedLocked sends the POST in flight if MaxMessageRate allows it
// now, else holds it back until its turn.
func (c *conn) sendPacedLocked() {
	now := time.Now()
	if wait := c.rateWaitLocked(now); wait > 0 {
		c.waitLocked(waitRate, wait)
		return
	}
	c.attempt, c.firstTry = 0, now
	c.sendLocked()
}

// startDELETELocked makes the DELETE the request in flight: the close
// reason as body, the code in X-Ws2api-Close-Code.
func (c *conn) startDELETELocked() {
	c.sending = message{}
	h := make([]upstream.Header, len(c.apiHeader), len(c.apiHeader)+1)
	copy(h, c.apiHeader)
	h = append(h, upstream.Header{Name: HeaderCloseCode, Value: strconv.Itoa(c.end.code)})
	c.req = upstream.Request{Method: "DELETE", Path: c.path, Header: h, ContentType: contentText, Body: []byte(c.end.reason), Key: c.nextKeyLocked()}
	c.attempt, c.firstTry = 0, time.Now()
	c.sendLocked()
}

// nextKeyLocked returns the Idempotency-Key of a new request: unique to
// one message (or the close) and the same on each re-send, since a re-send
// reuses the request.
func (c *conn) nextKeyLocked() upstream.Key {
	c.keySeq++
	return upstream.Key{Prefix: c.connID, Seq: c.keySeq}
}

// sendLocked hands the request in flight to the API client, which never
// calls back before returning.
func (c *conn) sendLocked() {
	if c.answer == nil {
		c.answer = c.answered
	}
	c.s.opts.API.Do(&c.req, c.answer)
}

// answered receives the API's answer to the request in flight. The
// response is only valid during the call.
func (c *conn) answered(resp *upstream.Response, err error) {
	s := c.s
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.moving == detaching || c.state == stMoved {
		return // the request passed to the next process, which sends it again
	}
	outcome := upstream.Classify(resp, err)
	gaveUp := false
	if outcome == upstream.Failed && !errors.Is(err, upstream.ErrClosed) {
		c.attempt++
		if wait, ok := s.opts.Retry.Next(c.attempt, c.firstTry, time.Now()); ok {
			cause := upstream.Cause(resp, err)
			s.m.Resent(c.req.Method, cause)
			s.warn.Warn(s.log, "re-sending a request to the API", "id", c.id, "method", c.req.Method,
				"cause", cause, "attempt", c.attempt, "error", errOrStatus(resp, err), "retry_in", wait)
			c.waitLocked(waitBackoff, wait)
			s.retryMu.Lock()
			s.retrying[c] = struct{}{}
			s.retryMu.Unlock()
			return
		}
		gaveUp = true
	}

	if c.api == apiDeleting {
		s.deletesDue.Add(-1)
		if outcome != upstream.Delivered && !errors.Is(err, upstream.ErrClosed) {
			s.warn.Warn(s.log, "DELETE not delivered to the API", "id", c.id, "error", errOrStatus(resp, err))
		}
		c.req = upstream.Request{}
		c.setAPILocked(apiDone)
		return
	}

	msg := c.sending
	c.sending = message{}
	switch outcome {
	case upstream.Delivered:
		switch {
		case len(resp.Body) > 0:
			c.replyLocked(resp)
		case resp.Truncated:
			s.warn.Warn(s.log, "API reply too large to forward; dropped", "id", c.id)
		}
	case upstream.Refused:
		s.m.APIRefused.Inc()
		s.log.Debug("API refused a message", "id", c.id, "status", resp.Status)
	}
	if gaveUp {
		s.warn.Warn(s.log, "message not delivered to the API in time; closing its client", "id", c.id, "error", errOrStatus(resp, err))
		c.closeLocked(closeGaveUp)
	}
	n := int64(len(*msg.buf))
	c.pendingBytes -= n
	s.pending.add(-1, -n)
	c.req.Body = nil
	putBuf(msg.buf)
	c.nextLocked()
}

// waitLocked holds the request in flight back for d; wake then sends it.
func (c *conn) waitLocked(kind waitKind, d time.Duration) {
	c.waiting = kind
	if c.timer == nil {
		c.timer = time.AfterFunc(d, c.wake)
	} else {
		c.timer.Reset(d)
	}
}

// wake ends the wait of the request in flight: it is sent again after its
// backoff, or sent at its turn under MaxMessageRate. A timer that fires
// for a wait already over finds nothing to do, or a paced POST not yet
// due, which waits again.
func (c *conn) wake() {
	s := c.s
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.waiting {
	case waitBackoff:
		s.retryMu.Lock()
		delete(s.retrying, c)
		s.retryMu.Unlock()
		c.waiting = waitNone
		c.sendLocked()
	case waitRate:
		c.waiting = waitNone
		c.sendPacedLocked()
	}
}

func errOrStatus(resp *upstream.Response, err error) any {
	if err != nil {
		return err
	}
	return "status " + strconv.Itoa(resp.Status)
}

// replyLocked sends the API's answer back on the same socket: binary if the
// API said application/octet-stream (or the text is not valid UTF-8, which a
// text frame may not carry), text otherwise.
func (c *conn) replyLocked(resp *upstream.Response) {
	op := ws.OpText
	if resp.ContentType() == contentBinary || !utf8.Valid(resp.Body) {
		op = ws.OpBinary
	}
	c.writeDataLocked(op, resp.Body, metrics.SourceReply)
}

// nextLocked starts the connection's next request to the API: the oldest
// waiting message, else the DELETE if the socket has closed, else nothing.
func (c *conn) nextLocked() {
	if len(c.queue) > 0 && c.moving == notMoving {
		msg := c.queue[0]
		c.queue[0] = message{}
		c.queue = c.queue[1:]
		if len(c.queue) == 0 {
			c.queue = nil
		}
		c.setAPILocked(apiPosting)
		c.startPOSTLocked(msg)
		return
	}
	switch {
	case c.state != stClosed:
		c.setAPILocked(apiIdle)
	case c.end.noDelete:
		c.setAPILocked(apiDone)
	default:
		c.setAPILocked(apiDeleting)
		c.startDELETELocked()
	}
}

// deleteUnbornLocked tells the API of the end of a connection it accepted
// but that never opened.
func (c *conn) deleteUnbornLocked(id, path string, meta []upstream.Header) {
	c.id, c.path = id, path
	c.apiHeader = append([]upstream.Header{{Name: HeaderConnectionID, Value: c.connID}}, meta...)
	c.s.deletesDue.Add(1)
	c.setAPILocked(apiDeleting)
	c.startDELETELocked()
}

// send writes one data message to the client if it is open.
func (c *conn) send(op ws.Opcode, data []byte, source string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writeDataLocked(op, data, source)
}

func (c *conn) writeDataLocked(op ws.Opcode, data []byte, source string) error {
	if c.state != stOpen || c.moving == detaching { // (detaching: what nbio would hold is not passed on)
		return hub.ErrNotConnected
	}
	if err := c.writeFrameLocked(op, data); err != nil {
		return hub.ErrNotConnected
	}
	c.lastActive.Store(time.Now().UnixNano())
	c.msgsOut.Add(1)
	c.s.m.MessagesOut[source].Inc()
	c.s.m.BytesOut.Add(len(data))
	return nil
}

func itoa(n int) string { return strconv.Itoa(n) }

func quote(s string) string { return strconv.Quote(s) }

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// intern returns one shared copy of s: many clients send the same
// User-Agent, and a million connections should not hold a million copies.
func intern(s string) string {
	if s == "" {
		return ""
	}
	if v, ok := interned.Load(s); ok {
		return v.(string)
	}
	if internedN.Load() >= 4096 {
		return s
	}
	v, loaded := interned.LoadOrStore(s, s)
	if !loaded {
		internedN.Add(1)
	}
	return v.(string)
}

var (
	interned  sync.Map
	internedN atomic.Int32
)

// hostOf returns the host part of a host:port address.
func hostOf(addr string) string {
	if i := strings.LastIndexByte(addr, ':'); i >= 0 {
		return strings.Trim(addr[:i], "[]")
	}
	return addr
}
