package gateway

import (
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

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
//	enqueue      a message arrives: sent at once if nothing is in flight,
//	             else queued behind the others
//	startPOST    the connection's one request in flight is that message
//	answered     the API's answer: reply to the client, or retry after a
//	             backoff while later messages wait, or give up
//	nextLocked   the next queued message, else the DELETE once closed
//
// The connection reuses one Request and one callback for all of it: one
// request is in flight at a time, and a message costs no allocation.

// enqueue takes a client message.
func (c *conn) enqueue(op ws.Opcode, payload []byte) {
	s := c.s
	n := int64(len(payload))
	s.m.MessagesIn.Inc()
	s.m.BytesIn.AddInt64(n)
	c.msgsIn.Add(1)
	now := time.Now().UnixNano()
	c.lastActive.Store(now)
	switch {
	case c.overRate(now):
		c.closeLocked(closeRateLimit)
		c.dropData = true
		return
	case c.pendingBytes+n > s.opts.MaxPendingBytes:
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
	if c.busy {
		c.queue = append(c.queue, msg)
		return
	}
	c.busy = true
	s.apiWork.Add(1)
	c.startPOST(msg)
}

// startPOST makes msg the request in flight.
func (c *conn) startPOST(msg message) {
	ct := contentText
	if msg.op == ws.OpBinary {
		ct = contentBinary
	}
	c.sending = msg
	c.req = upstream.Request{Method: "POST", Path: c.id, Header: c.apiHeader, ContentType: ct, Body: *msg.buf}
	c.attempt, c.firstTry = 0, time.Now()
	c.sendLocked()
}

// startDELETE makes the DELETE the request in flight: the close reason as
// body, the code in X-Ws2api-Close-Code.
func (c *conn) startDELETE() {
	c.deleteSent = true
	c.sending = message{}
	h := make([]upstream.Header, len(c.apiHeader), len(c.apiHeader)+1)
	copy(h, c.apiHeader)
	h = append(h, upstream.Header{Name: HeaderCloseCode, Value: strconv.Itoa(c.end.code)})
	c.req = upstream.Request{Method: "DELETE", Path: c.id, Header: h, ContentType: contentText, Body: []byte(c.end.reason)}
	c.attempt, c.firstTry = 0, time.Now()
	c.sendLocked()
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
	outcome := upstream.Classify(resp, err)
	gaveUp := false
	if outcome == upstream.Failed && !errors.Is(err, upstream.ErrClosed) {
		c.attempt++
		if wait, ok := s.opts.Retry.Next(c.attempt, c.firstTry, time.Now()); ok {
			s.m.Resent(c.req.Method, upstream.Cause(resp, err))
			if c.retry == nil {
				c.retry = time.AfterFunc(wait, c.retryNow)
			} else {
				c.retry.Reset(wait)
			}
			c.retryDue = true
			s.retryMu.Lock()
			s.retrying[c] = struct{}{}
			s.retryMu.Unlock()
			return
		}
		gaveUp = true
	}

	if c.sending.buf == nil { // the DELETE
		if outcome != upstream.Delivered && !errors.Is(err, upstream.ErrClosed) {
			s.warn.Warn(s.log, "DELETE not delivered to the API", "id", c.id, "error", errOrStatus(resp, err))
		}
		c.req = upstream.Request{}
		c.busy = false
		s.apiWork.Add(-1)
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

// retryNow sends the request in flight again, after its backoff.
func (c *conn) retryNow() {
	c.s.retryMu.Lock()
	delete(c.s.retrying, c)
	c.s.retryMu.Unlock()
	c.mu.Lock()
	if c.retryDue {
		c.retryDue = false
		c.sendLocked()
	}
	c.mu.Unlock()
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
	if len(c.queue) > 0 {
		msg := c.queue[0]
		c.queue[0] = message{}
		c.queue = c.queue[1:]
		if len(c.queue) == 0 {
			c.queue = nil
		}
		c.startPOST(msg)
		return
	}
	if c.deleteDue && !c.deleteSent {
		c.startDELETE()
		return
	}
	c.busy = false
	c.s.apiWork.Add(-1)
}

// deleteUnborn tells the API of the end of a connection it accepted but
// that never opened.
func (c *conn) deleteUnborn(id string, meta []upstream.Header, end closeInfo) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.id = id
	c.apiHeader = append([]upstream.Header{{Name: HeaderConnectionID, Value: c.connID}}, meta...)
	c.end, c.ended = end, true
	c.deleteDue = true
	if !c.busy {
		c.busy = true
		c.s.apiWork.Add(1)
		c.nextLocked()
	}
}

// send writes one data message to the client if it is open.
func (c *conn) send(op ws.Opcode, data []byte, source string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writeDataLocked(op, data, source)
}

func (c *conn) writeDataLocked(op ws.Opcode, data []byte, source string) error {
	if c.state != stOpen {
		return ErrNotConnected
	}
	if err := c.writeFrameLocked(op, data); err != nil {
		return ErrNotConnected
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
