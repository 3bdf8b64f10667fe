package gateway

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lesismal/nbio"

	"github.com/ws2api/ws2api/internal/http1"
	"github.com/ws2api/ws2api/internal/loop"
	"github.com/ws2api/ws2api/internal/metrics"
	"github.com/ws2api/ws2api/internal/upstream"
	"github.com/ws2api/ws2api/internal/ws"
)

// connState is where a connection is in its life.
type connState uint8

const (
	stHandshake   connState = iota // reading the upgrade request head
	stAuthorizing                  // the connect GET is with the API
	stOpen                         // upgraded: messages flow both ways
	stClosing                      // ws2api sent a close frame and waits for the client's
	stMoved                        // passed to another process (handover.go); this one's copy closes
	stClosed                       // the socket is closed
)

// retryAfter is the header of a 503 that a client may retry soon.
var retryAfter = http1.Header{Name: "Retry-After", Value: "5"}

// closeInfo says why a connection ended: the code and reason the API gets
// in its DELETE, and the cause counted in ws2api_closes_total.
type closeInfo struct {
	code     int
	reason   string
	cause    string
	noDelete bool // replaced: the API already saw the new connection's GET
}

var (
	closeShutdown    = closeInfo{code: ws.CloseGoingAway, reason: "going away", cause: metrics.CauseShutdown}
	closeRestart     = closeInfo{code: ws.CloseServiceRestart, reason: "service restart", cause: metrics.CauseShutdown}
	closeReplaced    = closeInfo{code: ws.CloseReplaced, reason: "replaced", cause: metrics.CauseReplaced, noDelete: true}
	closeBacklog     = closeInfo{code: ws.CloseTryAgainLater, reason: "try again later", cause: metrics.CauseBacklog}
	closeGatewayFull = closeInfo{code: ws.CloseTryAgainLater, reason: "try again later: gateway backlog full", cause: metrics.CauseGatewayFull}
	closeGaveUp      = closeInfo{code: ws.CloseTryAgainLater, reason: "try again later: the API is unavailable", cause: metrics.CauseAPIGaveUp}
)

// conn is one client connection and its two state machines: the
// client's side (state: the socket, the WebSocket protocol) and the API's
// (api: what the API has been told, what is in flight; forward.go). nbio's
// event loop calls OnData with what the socket delivered; the API's
// answers arrive on the upstream client's goroutines; the control API
// and the keeper call in from their own. mu orders them all.
//
// A method whose name ends in Locked is called with mu held; no other
// method of conn is, and those that need mu take it.
//
// Lock order: mu, then any of the registry's and groups' shard locks,
// s.retryMu, s.shedMu, and nbio's lock of the socket (taken by writes).
// Nothing takes mu while holding one of those: the registry, the keeper,
// a shed and RetryNow copy what they need under their own lock, let it
// go, then lock each connection.
type conn struct {
	// Fixed at creation.
	s          *Server
	sock       socket // the client's socket: nbio's, or TLS served by goroutines (tls.go)
	connID     string
	remoteAddr string

	mu sync.Mutex

	// The client's side, guarded by mu.
	state      connState
	in         []byte            // bytes read but not yet used: part of a head or of a frame
	rd         ws.Reader         // joins fragmented messages
	hs         *handshake        // while the API decides
	get        *upstream.Request // the connect GET, while it waits or is in flight
	upgraded   bool              // it reached stOpen: the API knows it and hears of its end
	admitted   bool              // counted in s.admitted (MaxConns)
	end        closeInfo
	ended      bool // end is set: the first reason wins
	discard    bool // input is no longer read (after a protocol error)
	dropData   bool // data messages are dropped, control frames still read (after a cap)
	closeTimer *time.Timer
	rateTAT    int64     // MaxMessageRate's theoretical arrival time, on s.epoch's clock (keepalive.go)
	ctlTAT     int64     // the same for the ping and pong frames answered (keepalive.go)
	floodTAT   int64     // the same for every ping and pong, at ten times the rate (keepalive.go)
	moving     moveStage // on its way to another process (handover.go)
	fanout     uint64    // the broadcast being written to it, while it is (hub.go)

	// Set at upgrade, under mu, before the registry publishes the
	// connection; read-only after, except groups and apiHeader, which
	// the control API changes under mu.
	id          string // canonical (id.go)
	path        string // id escaped for the API's URLs, once: a message costs no escaping
	subprotocol string
	userAgent   string            // interned: many clients share one
	groups      []string          // the groups it is in
	apiHeader   []upstream.Header // X-Ws2api-Connection-Id and meta headers, sent on every POST and DELETE
	connectedAt time.Time
	// pingEvery is the API's ping interval for this client (its connect
	// answer's X-Ws2api-Ping-Interval): 0 for -ping-interval, negative for
	// never.
	pingEvery time.Duration

	// The API's side, guarded by mu: one request in flight, the rest wait
	// in order (forward.go).
	api          apiState // changed by setAPILocked only
	queue        []message
	sending      message // the message in flight while api is apiPosting
	req          upstream.Request
	answer       func(*upstream.Response, error) // c.answered, bound once
	attempt      int
	firstTry     time.Time
	timer        *time.Timer // ends a wait (c.wake)
	waiting      waitKind    // what the request in flight waits for before it goes
	pendingBytes int64
	keySeq       uint64                      // the requests keyed so far
	calls        map[string]chan<- callReply // the Calls waiting for an answer, by key (calls.go); nil when none

	// Atomics, read without mu by the keeper, a shed, Info and nbio's
	// write callbacks.
	lastActive atomic.Int64 // unix nanoseconds of the last message either way
	lastRead   atomic.Int64 // the keeper's clock when a byte last came in (keepalive.go)
	pingSent   atomic.Int64 // the keeper's clock when it pinged, 0 once answered
	outq       atomic.Int64 // bytes written to the socket that the kernel has not taken yet (outgoing.go)
	shed       atomic.Bool  // closed as a slow consumer (outgoing.go): OnClose's cause
	// backlogSince is when outq last became positive (unix ns): a shed
	// closes the oldest backlogs first.
	backlogSince  atomic.Int64
	backlogFanout atomic.Uint64 // the broadcast whose write began it, 0 for another write (outgoing.go)
	msgsIn        atomic.Uint64
	msgsOut       atomic.Uint64
}

// accepted gives a new client connection its state (loop.Handler).
func (s *Server) accepted(nc *nbio.Conn) loop.Handler {
	return s.newConn(nc, nc.RemoteAddr().String())
}

// newConn starts a client connection's life: it has HandshakeTimeout to
// send its upgrade request.
func (s *Server) newConn(sock socket, remoteAddr string) *conn {
	c := &conn{s: s, sock: sock, connID: s.newConnID(), remoteAddr: remoteAddr}
	s.handshaking.Add(1)
	_ = sock.SetReadDeadline(time.Now().Add(s.opts.HandshakeTimeout))
	return c
}

// OnData takes what the client's socket delivered (loop.Handler).
func (c *conn) OnData(_ *nbio.Conn, data []byte) {
	s := c.s
	c.mu.Lock()
	switch c.state {
	case stHandshake:
		c.readHeadLocked(data)
	case stAuthorizing:
		// A client must wait for the 101; keep what it sent early, within
		// the head limit, and parse it as frames after the upgrade.
		if len(c.in)+len(data) > s.opts.MaxHeaderBytes {
			c.rejectLocked(&reject{status: 400, text: "data sent before the upgrade completed"})
			break
		}
		c.in = append(c.in, data...)
	case stOpen, stClosing:
		if s.keeperStop != nil {
			c.heard()
		}
		c.readFramesLocked(data)
	}
	c.mu.Unlock()
}

// readHeadLocked collects the upgrade request head and, once complete, asks the
// API whether to accept it.
func (c *conn) readHeadLocked(data []byte) {
	s := c.s
	c.in = append(c.in, data...)
	n := http1.HeadEnd(c.in)
	if n < 0 && len(c.in) <= s.opts.MaxHeaderBytes {
		return
	}
	if n < 0 || n > s.opts.MaxHeaderBytes {
		c.rejectLocked(&reject{status: 431, text: "request head too large"})
		return
	}
	if s.draining.Load() && !s.restarting.Load() {
		c.rejectLocked(&reject{status: 503, text: "shutting down"})
		return
	}
	if page := s.page(c.in[:n]); page != nil {
		c.rejectLocked(page) // answered, then closed
		return
	}
	hs, rej := s.parseUpgrade(c.in[:n], c.connID, hostOf(c.remoteAddr), peerCerts(c.sock))
	if rej != nil {
		c.rejectLocked(rej)
		return
	}
	if s.admitted.Add(1) > int64(s.opts.MaxConns) {
		s.admitted.Add(-1)
		s.warn.Warn(s.log, "connection refused: -max-conns reached", "max_conns", s.opts.MaxConns)
		c.rejectLocked(&reject{status: 503, text: "too many connections", header: retryAfter})
		return
	}
	if s.connecting.Add(1) > int64(s.opts.MaxConnecting) {
		s.connecting.Add(-1)
		s.admitted.Add(-1)
		s.warn.Warn(s.log, "connection refused: -max-connecting upgrades already wait for the API", "max_connecting", s.opts.MaxConnecting)
		c.rejectLocked(&reject{status: 503, text: "too many upgrades waiting for the API", header: retryAfter})
		return
	}
	c.admitted = true
	c.in = append([]byte(nil), c.in[n:]...)
	if len(c.in) == 0 {
		c.in = nil
	}
	c.hs = hs
	c.state = stAuthorizing
	s.handshaking.Add(-1)
	// The API's own timeout bounds the wait from here on.
	_ = c.sock.SetReadDeadline(time.Time{})
	c.setAPILocked(apiConnecting)
	c.get = &upstream.Request{Method: "GET", Path: hs.path, Query: hs.query, Header: hs.header}
	s.opts.API.Do(c.get, c.authorized)
}

// abandonLocked is a client gone before the API answered its connect GET:
// a GET still waiting for a connection to the API leaves the line at once,
// and the API never hears of that client. One already sent runs its
// course (authorized then sends a DELETE if the API accepted it). Until
// then the GET counts against MaxConns and MaxConnecting.
func (c *conn) abandonLocked() {
	if c.get == nil || !c.s.opts.API.Cancel(c.get) {
		return
	}
	c.get, c.hs = nil, nil
	c.connectDoneLocked()
	c.setAPILocked(apiDone)
}

// connectDoneLocked ends the connect GET's hold on MaxConnecting, and on
// MaxConns if the client is gone.
func (c *conn) connectDoneLocked() {
	c.s.connecting.Add(-1)
	if c.state == stClosed && c.admitted {
		c.admitted = false
		c.s.admitted.Add(-1)
	}
}

// authorized receives the API's answer to the connect GET and completes or
// refuses the upgrade.
func (c *conn) authorized(resp *upstream.Response, err error) {
	s := c.s
	c.mu.Lock()
	hs := c.hs
	c.hs, c.get = nil, nil
	c.connectDoneLocked()
	rej, protocol, meta, groups := decide(hs, resp, err)
	var ping time.Duration
	if rej == nil {
		ping, rej = pingOverride(resp)
	}
	if rej != nil && rej.status >= 500 { // the API failed, as opposed to refusing the client
		var why any = rej.text
		if err != nil {
			why = err
		}
		s.warn.Warn(s.log, "connect GET to the API failed; client refused", "id", hs.id, "client_status", rej.status, "error", why)
	}
	accepted := rej == nil
	switch {
	case accepted && c.state != stAuthorizing:
		c.setEndLocked(closeInfo{code: ws.CloseAbnormal, reason: "closed before the upgrade completed", cause: metrics.CauseNetwork})
	case accepted && s.draining.Load() && !s.restarting.Load():
		rej = &reject{status: 503, text: "shutting down"}
		c.setEndLocked(closeShutdown)
	}
	if rej != nil || c.state != stAuthorizing {
		if c.state == stAuthorizing {
			c.rejectLocked(rej)
		}
		if accepted {
			// The API accepted a connection that will never open: it
			// must still hear of its end.
			c.deleteUnbornLocked(hs.id, hs.path, meta)
		} else {
			c.setAPILocked(apiDone)
		}
		c.mu.Unlock()
		return
	}

	// Registered before the 101 goes out, so that a client that saw its
	// upgrade can be pushed to and is reached by a shutdown.
	c.state = stOpen
	c.upgraded = true
	c.setAPILocked(apiIdle)
	s.deletesDue.Add(1)
	c.id, c.path = hs.id, hs.path
	c.subprotocol = protocol
	c.userAgent = intern(hs.userAgent)
	c.apiHeader = append([]upstream.Header{{Name: HeaderConnectionID, Value: c.connID}}, meta...)
	c.connectedAt = time.Now()
	c.lastActive.Store(c.connectedAt.UnixNano())
	c.lastRead.Store(c.connectedAt.UnixNano())
	c.pingEvery = ping // before the registry publishes c to the keeper
	old := s.reg.swap(c)
	if s.opts.Presence != nil {
		s.opts.Presence.Connected(c.id, c.connID)
	}
	for _, g := range groups {
		c.joinLocked(g)
	}
	s.m.ConnectionsOpened.Inc()
	s.m.Connections.Inc()
	// A failed write closes the socket; onClose then sends the DELETE.
	c.rd.Deflate = hs.deflate
	_ = c.writeLocked(nil, appendSwitching(nil, hs.key, protocol, hs.deflate))
	if s.draining.Load() {
		// Shutdown began after the check above and its sweep may have
		// missed this connection (after an upgrade, it let the
		// connection open, so that the client reconnects to the new
		// process instead of seeing a refusal).
		c.closeLocked(s.drainClose())
	}
	if early := c.in; early != nil {
		c.in = nil
		c.readFramesLocked(early)
	}
	c.mu.Unlock()
	if old != nil {
		old.closeWith(closeReplaced)
	}
}

// decide turns the API's answer to a connect GET into an upgrade (nil
// reject, the subprotocol, the meta headers, the groups) or an answer for
// the client.
func decide(hs *handshake, resp *upstream.Response, err error) (rej *reject, protocol string, meta []upstream.Header, groups []string) {
	switch {
	case err != nil && upstream.IsTimeout(err):
		return &reject{status: 504, text: "the API did not answer in time"}, "", nil, nil
	case err != nil:
		return &reject{status: 502, text: "the API is unreachable"}, "", nil, nil
	case resp.Status < 200 || resp.Status > 299:
		return &reject{status: 502, text: "the API answered " + itoa(resp.Status)}, "", nil, nil
	case string(resp.Body) != "ok":
		return &reject{status: 403, text: string(resp.Body), verbatim: true}, "", nil, nil
	}
	protocol = resp.Get("Sec-Websocket-Protocol")
	if protocol != "" && !contains(hs.protocols, protocol) {
		return &reject{status: 502, text: "the API chose subprotocol " + quote(protocol) + ", which the client did not offer"}, "", nil, nil
	}
	if list := resp.Get(HeaderGroups); list != "" {
		var gerr error
		if groups, gerr = parseGroups(list); gerr != nil {
			return &reject{status: 502, text: "the API named a bad group in " + HeaderGroups + ": " + gerr.Error()}, "", nil, nil
		}
	}
	for _, h := range resp.Header {
		name := http1.CanonicalName(h.Name)
		if len(name) > len(HeaderMetaPrefix) && name[:len(HeaderMetaPrefix)] == HeaderMetaPrefix {
			meta = append(meta, upstream.Header{Name: name, Value: h.Value})
		}
	}
	return nil, protocol, meta, groups
}

// rejectLocked answers the upgrade request with an error and closes.
func (c *conn) rejectLocked(r *reject) {
	if c.state == stHandshake {
		c.s.handshaking.Add(-1)
	}
	c.s.m.Reject(r.status)
	_ = c.writeLocked(nil, appendReject(nil, r))
	c.state = stClosing
	c.discard = true
	c.in = nil
	end(c.sock)
}

// readFramesLocked parses frames from what the socket delivered, after what was
// left of the last read.
func (c *conn) readFramesLocked(data []byte) {
	if c.discard {
		return
	}
	buf := data
	if len(c.in) > 0 {
		c.in = append(c.in, data...)
		buf = c.in
	}
	max := c.s.opts.MaxMessageBytes
	for len(buf) > 0 && !c.discard {
		m, n, err := c.rd.Next(buf, ws.Server, max)
		if err != nil {
			c.failLocked(err)
			return
		}
		if n == 0 {
			break
		}
		buf = buf[n:]
		switch m.Op {
		case ws.OpText, ws.OpBinary:
			if m.Compressed > 0 {
				c.s.m.CompressedInMessage(m.Compressed)
			}
			switch {
			case len(c.calls) > 0 && c.callAnsweredLocked(m.Op == ws.OpBinary, m.Payload):
				// A Call's answer (calls.go): for the caller, not the API.
			case !c.dropData:
				c.enqueueLocked(m.Op, m.Payload)
			}
		case ws.OpPing:
			// (Not while moving: the backlog must drain; the client's
			// next ping is answered by the next process.)
			if c.controlFrameLocked() && c.state == stOpen && c.moving == notMoving {
				_ = c.writeFrameLocked(ws.OpPong, m.Payload)
			}
		case ws.OpPong:
			c.controlFrameLocked()
		case ws.OpClose:
			c.peerClosedLocked(m.Payload)
			return
		}
	}
	c.rd.Release() // every message read is handed on: no inflated buffer is kept
	switch {
	case c.discard || len(buf) == 0:
		c.in = nil
	case len(c.in) > 0: // buf is the tail of c.in
		c.in = c.in[:copy(c.in, buf)]
	default:
		c.in = append([]byte(nil), buf...)
	}
}

// peerClosedLocked handles the client's close frame: the answer to ours, or its
// own wish to leave, which is echoed.
func (c *conn) peerClosedLocked(payload []byte) {
	code, reason, err := ws.ParseClose(payload)
	if err != nil {
		c.failLocked(err)
		return
	}
	c.discard = true
	c.in = nil
	if c.state == stOpen {
		c.setEndLocked(closeInfo{code: code, reason: reason, cause: metrics.CauseClient})
		echo := ws.AppendClose(nil, code, "")
		_ = c.writeFrameLocked(ws.OpClose, echo)
		c.state = stClosing
	}
	_ = c.sock.Close()
}

// failLocked closes the connection after the client broke the protocol or a
// limit.
func (c *conn) failLocked(err error) {
	var pe *ws.ProtocolError
	if !errors.As(err, &pe) {
		pe = &ws.ProtocolError{Code: ws.CloseInternalError, Reason: err.Error()}
	}
	cause := metrics.CauseProtocol
	if pe.Code == ws.CloseMessageTooBig {
		cause = metrics.CauseTooBig
	}
	c.closeLocked(closeInfo{code: pe.Code, reason: pe.Reason, cause: cause})
	c.discard = true
	c.in = nil
}

// closeWith starts the closing handshake from ws2api's side (kick,
// shutdown, replaced). It does nothing to a connection not open.
func (c *conn) closeWith(info closeInfo) {
	c.mu.Lock()
	c.closeLocked(info)
	c.mu.Unlock()
}

func (c *conn) closeLocked(info closeInfo) {
	if c.state != stOpen {
		return
	}
	c.setEndLocked(info)
	_ = c.writeFrameLocked(ws.OpClose, ws.AppendClose(nil, info.code, info.reason))
	c.state = stClosing
	sock := c.sock
	c.closeTimer = time.AfterFunc(c.s.opts.CloseTimeout, func() { end(sock) })
}

func (c *conn) setEndLocked(info closeInfo) {
	if !c.ended {
		c.end, c.ended = info, true
	}
}

// OnClose ends the connection's life: the API gets its DELETE once the
// pending messages are through (loop.Handler).
func (c *conn) OnClose(_ *nbio.Conn, err error) {
	s := c.s
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.state {
	case stClosed:
		return
	case stMoved: // this process's copy of a socket another one holds now
		c.state = stClosed
		return
	case stHandshake:
		s.handshaking.Add(-1)
	}
	c.moving = notMoving // gone before it could move: its messages go from here
	c.state = stClosed
	c.in = nil
	c.retireOut()
	c.wakeCallsLocked()
	if c.get != nil { // also after a refusal while the API decided
		c.abandonLocked()
	}
	if c.admitted && c.get == nil { // a GET in flight keeps its place until answered
		c.admitted = false
		s.admitted.Add(-1)
	}
	if c.closeTimer != nil {
		c.closeTimer.Stop()
	}
	if !c.ended {
		switch {
		case errors.Is(err, errShed) || c.shed.Load():
			c.setEndLocked(closeOutgoingTotal)
		case errors.Is(err, nbio.ErrOverflow):
			c.setEndLocked(closeInfo{code: ws.ClosePolicyViolation, reason: "slow consumer", cause: metrics.CauseSlowConsumer})
		case errors.Is(err, nbio.ErrReadTimeout):
			c.setEndLocked(closeInfo{code: ws.CloseAbnormal, reason: "timeout", cause: metrics.CauseTimeout})
		default:
			c.setEndLocked(closeInfo{code: ws.CloseAbnormal, reason: errText(err), cause: metrics.CauseNetwork})
		}
	}
	if !c.upgraded {
		return // the API knows nothing of it, or hears of its end in authorized
	}
	if s.reg.remove(c) && s.opts.Presence != nil {
		s.opts.Presence.Disconnected(c.id, c.connID)
	}
	c.leaveAllLocked()
	s.m.ConnectionsClosed.Inc()
	s.m.Connections.Dec()
	s.m.Close(c.end.cause)
	if c.end.noDelete {
		s.deletesDue.Add(-1)
	}
	if c.api == apiIdle { // else nextLocked ends it after the queue
		c.nextLocked()
	}
}

// errText is the DELETE body for a connection that dropped.
func errText(err error) string {
	switch {
	case err == nil:
		return "EOF"
	case errors.Is(err, net.ErrClosed):
		return "closed"
	}
	return err.Error()
}

// writeFrameLocked writes one whole frame to the client. Small frames are
// encoded into a pooled buffer and written with one call; nbio keeps what
// the kernel does not take, counted in c's backlog (outgoing.go).
func (c *conn) writeFrameLocked(op ws.Opcode, payload []byte) error {
	if c.compressesLocked(op, len(payload)) {
		if sent, err := c.writeDeflatedLocked(op, payload); sent {
			return err
		}
	}
	if len(payload) > pooledFrameMax {
		var hdr [ws.MaxHeaderLen]byte
		return c.writeLocked(ws.AppendHeader(hdr[:0], op, true, len(payload), nil), payload)
	}
	bp := framePool.Get().(*[]byte)
	b := ws.AppendFrame((*bp)[:0], op, payload, nil)
	err := c.writeLocked(nil, b)
	*bp = b[:0]
	framePool.Put(bp)
	return err
}

const pooledFrameMax = 16 << 10

// compressesLocked reports whether a data message of n bytes goes to this client
// deflated: if it negotiated compression, at or over -compression-min (and
// then only if deflating made it smaller: deflateSmaller).
func (c *conn) compressesLocked(op ws.Opcode, n int) bool {
	return c.rd.Deflate && !op.IsControl() && n >= c.s.opts.CompressMin
}

// writeDeflatedLocked writes one message deflated, and reports whether it
// did: not if deflating made it no smaller (it then goes as it is).
func (c *conn) writeDeflatedLocked(op ws.Opcode, payload []byte) (bool, error) {
	bp := framePool.Get().(*[]byte)
	deflated, smaller := deflateSmaller((*bp)[:0], payload)
	var err error
	if smaller {
		c.s.m.CompressedOutMessage(len(deflated))
		var hdr [ws.MaxHeaderLen]byte
		err = c.writeLocked(ws.AppendCompressedHeader(hdr[:0], op, len(deflated)), deflated)
	}
	if cap(deflated) <= pooledFrameMax {
		*bp = deflated[:0]
		framePool.Put(bp)
	}
	return smaller, err
}

// deflateSmaller appends payload deflated to dst, and reports whether that
// is smaller than payload: OCPP messages under ~200 bytes come out longer.
func deflateSmaller(dst, payload []byte) ([]byte, bool) {
	out := ws.AppendDeflated(dst, payload)
	return out, len(out)-len(dst) < len(payload)
}

var framePool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}
