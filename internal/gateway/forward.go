package gateway

import (
	"errors"
	"strconv"
	"strings"
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

// enqueue takes a client message: it goes to the API at once if the
// connection has nothing in flight, else it waits behind the others.
func (c *conn) enqueue(op ws.Opcode, payload []byte) {
	s := c.s
	n := int64(len(payload))
	s.m.MessagesIn.Inc()
	s.m.BytesIn.AddInt64(n)
	c.lastActive.Store(time.Now().UnixNano())
	if c.pendingBytes+n > s.opts.MaxPendingBytes {
		c.closeLocked(closeBacklog)
		c.discard = true
		return
	}
	msg := message{op: op, data: append([]byte(nil), payload...)}
	c.pendingBytes += n
	s.pending.add(1, n)
	if c.busy {
		c.queue = append(c.queue, msg)
		return
	}
	c.busy = true
	s.apiWork.Add(1)
	c.post(msg)
}

// post sends one message to the API; posted receives the answer.
func (c *conn) post(msg message) {
	ct := contentText
	if msg.op == ws.OpBinary {
		ct = contentBinary
	}
	req := &upstream.Request{Method: "POST", Path: c.id, Header: c.apiHeader, ContentType: ct, Body: msg.data}
	c.s.opts.Retry.Do(req, func(resp *upstream.Response, err error) { c.posted(msg, resp, err) })
}

func (c *conn) posted(msg message, resp *upstream.Response, err error) {
	s := c.s
	switch upstream.Classify(resp, err) {
	case upstream.Delivered:
		if len(resp.Body) > 0 {
			c.reply(resp)
		} else if resp.Truncated {
			s.warn.log(s.log, "API reply too large to forward; dropped", "id", c.id)
		}
	case upstream.Refused:
		s.m.APIRefused.Inc()
		s.log.Debug("API refused a message", "id", c.id, "status", resp.Status)
	default:
		if !errors.Is(err, upstream.ErrClosed) {
			s.warn.log(s.log, "message not delivered to the API; closing its client", "id", c.id, "error", err)
			c.closeWith(closeGaveUp)
		}
	}
	c.mu.Lock()
	c.pendingBytes -= int64(len(msg.data))
	s.pending.add(-1, -int64(len(msg.data)))
	c.nextLocked()
	c.mu.Unlock()
}

// reply sends the API's answer to a message back on the same socket:
// binary if the API said application/octet-stream (or the text is not valid
// UTF-8, which a text frame may not carry), text otherwise.
func (c *conn) reply(resp *upstream.Response) {
	op := ws.OpText
	if resp.ContentType() == contentBinary || !utf8.Valid(resp.Body) {
		op = ws.OpBinary
	}
	_ = c.send(op, resp.Body, metrics.SourceReply)
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
		c.post(msg)
		return
	}
	if c.deleteDue && !c.deleteSent {
		c.deleteSent = true
		c.sendDelete(c.id, c.apiHeader, c.end, func() {
			c.mu.Lock()
			c.busy = false
			c.mu.Unlock()
		})
		return
	}
	c.busy = false
	c.s.apiWork.Add(-1)
}

// deleteUnborn tells the API of the end of a connection it accepted but
// that never opened.
func (c *conn) deleteUnborn(id string, meta []upstream.Header, end closeInfo) {
	c.s.apiWork.Add(1)
	hdr := append([]upstream.Header{{Name: HeaderConnectionID, Value: c.connID}}, meta...)
	c.sendDelete(id, hdr, end, func() {})
}

// sendDelete sends DELETE <api><id> with the close reason as body and code
// as X-Ws2api-Close-Code; then marks the connection's API work done.
func (c *conn) sendDelete(id string, hdr []upstream.Header, end closeInfo, after func()) {
	s := c.s
	h := make([]upstream.Header, len(hdr), len(hdr)+1)
	copy(h, hdr)
	h = append(h, upstream.Header{Name: HeaderCloseCode, Value: strconv.Itoa(end.code)})
	req := &upstream.Request{Method: "DELETE", Path: id, Header: h, ContentType: contentText, Body: []byte(end.reason)}
	s.opts.Retry.Do(req, func(resp *upstream.Response, err error) {
		if upstream.Classify(resp, err) == upstream.Failed {
			s.warn.log(s.log, "DELETE not delivered to the API", "id", id, "error", err)
		}
		after()
		s.apiWork.Add(-1)
	})
}

// send writes one data message to the client if it is open.
func (c *conn) send(op ws.Opcode, data []byte, source string) error {
	c.mu.Lock()
	if c.state != stOpen {
		c.mu.Unlock()
		return ErrNotConnected
	}
	err := c.writeFrameLocked(op, data)
	c.mu.Unlock()
	if err != nil {
		return ErrNotConnected
	}
	c.lastActive.Store(time.Now().UnixNano())
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

// hostOf returns the host part of a host:port address.
func hostOf(addr string) string {
	if i := strings.LastIndexByte(addr, ':'); i >= 0 {
		return strings.Trim(addr[:i], "[]")
	}
	return addr
}
