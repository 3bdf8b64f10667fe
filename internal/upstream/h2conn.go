package upstream

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/lesismal/nbio"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ws2api/ws2api/internal/http1"
)

// h2Conn is one HTTP/2 connection of an [H2Client], on the event loop.
// Frames are encoded into out under mu and written by the connection's
// writer goroutine: whatever is queued while a write is under way goes in
// the next one, which is where the batching comes from. The API's frames
// are parsed on the connection's poller (rd, under rdMu: nbio reports a
// close on another goroutine).
//
// Lock order: H2Client.mu, then h2Conn.mu; nothing holding h2Conn.mu takes
// H2Client.mu.
type h2Conn struct {
	// Static after construction.
	h  *H2Client
	nb *nbio.Conn

	// Guarded by H2Client.mu: the streams reserved or open on this
	// connection, as the client counts them.
	streams int

	peerMax atomic.Int32 // the API's SETTINGS_MAX_CONCURRENT_STREAMS, capped

	// Guarded by mu.
	mu        sync.Mutex
	open      map[uint32]*h2Stream
	nextID    uint32
	fr        *http2.Framer // writes frames into out
	enc       *hpack.Encoder
	hbuf      bytes.Buffer // a header block being encoded
	key       []byte       // scratch for a request's Idempotency-Key,
	path      []byte       // its :path
	length    []byte       // and its content-length
	out       outBuf       // frames not yet handed to the socket
	spare     []byte
	flushing  bool
	sendWin   int64       // the connection's send window
	initWin   int64       // the API's initial window for a new stream
	maxFrame  int         // the API's SETTINGS_MAX_FRAME_SIZE
	blocked   []*h2Stream // streams with request body left to send, oldest first
	recvAcked int         // received DATA bytes not yet given back to the connection window
	goingAway bool        // takes no new stream (GOAWAY, or stream ids used up)
	dead      bool        // closed
	lastUsed  time.Time
	wake      chan struct{}
	quit      chan struct{}
	closeOnce sync.Once

	rdMu sync.Mutex
	rd   h2Reader
	resp Response // handed to a callback, valid until it returns
}

// h2Stream is one request and its answer.
type h2Stream struct {
	id      uint32
	c       *call
	keepAll bool   // a GET: every header of its answer is kept
	sendWin int64  // the stream's send window
	body    []byte // request body still to send

	// Written by the reader only.
	headed  bool // the final answer's headers have come
	status  int
	header  []Header
	resp    []byte
	over    bool // the body passed MaxBodyBytes: counted, not kept
	length  int  // the answer's Content-Length, or -1
	got     int  // DATA bytes of the answer
	unacked int  // received bytes not yet given back to the stream window
}

// outBuf collects the frames the Framer writes.
type outBuf struct{ b []byte }

func (o *outBuf) Write(p []byte) (int, error) {
	o.b = append(o.b, p...)
	return len(p), nil
}

// What ws2api tells the API in its SETTINGS, and the thresholds of its
// WINDOW_UPDATEs. An answer is kept whole in memory anyway (up to
// MaxBodyBytes), so the windows are about throughput only.
const (
	h2StreamWindow   = 1 << 20
	h2ConnWindow     = 16 << 20
	h2AckEvery       = 64 << 10
	h2MaxStreamID    = 1<<31 - 1
	h2DefaultStreams = 100  // until the API's SETTINGS say otherwise
	h2MaxStreams     = 1000 // at most, whatever the API allows
)

func newH2Conn(h *H2Client, nb *nbio.Conn) *h2Conn {
	pc := &h2Conn{
		h: h, nb: nb, open: map[uint32]*h2Stream{}, nextID: 1,
		sendWin: 65535, initWin: 65535, maxFrame: 16384, lastUsed: time.Now(),
		wake: make(chan struct{}, 1), quit: make(chan struct{}),
	}
	pc.peerMax.Store(h2DefaultStreams)
	pc.fr = http2.NewFramer(&pc.out, nil)
	pc.enc = hpack.NewEncoder(&pc.hbuf)
	pc.rd.init(pc)
	pc.out.b = append(pc.out.b, http2.ClientPreface...)
	_ = pc.fr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2StreamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: http1.MaxHeadBytes},
	)
	_ = pc.fr.WriteWindowUpdate(0, h2ConnWindow-65535)
	pc.scheduleFlush()
	return pc
}

// limit is how many streams this connection may carry at once.
func (pc *h2Conn) limit() int { return int(pc.peerMax.Load()) }

// send opens a stream for c, whose room the client has reserved.
func (pc *h2Conn) send(c *call) {
	pc.mu.Lock()
	if pc.dead || pc.goingAway || pc.nextID > h2MaxStreamID {
		away := !pc.dead && !pc.goingAway
		pc.goingAway = true
		pc.mu.Unlock()
		if away {
			pc.h.retire(pc, false) // ids used up: the next stream opens on a new connection
		}
		pc.h.ended(pc, 1)
		pc.h.submit(c)
		return
	}
	s := &h2Stream{id: pc.nextID, c: c, keepAll: c.r.Method == "GET", sendWin: pc.initWin, length: -1}
	pc.nextID += 2
	pc.open[s.id] = s
	pc.lastUsed = time.Now()
	pc.writeHeaders(s.id, c.r)
	if len(c.r.Body) > 0 {
		s.body = c.r.Body
		pc.blocked = append(pc.blocked, s)
		pc.pump()
	}
	pc.scheduleFlush()
	pc.mu.Unlock()
}

// connectionHeaders are the HTTP/1.1 headers HTTP/2 forbids (RFC 9113
// section 8.2.2); Host becomes :authority.
var connectionHeaders = []string{"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host", "te"}

// writeHeaders encodes r's header block as HEADERS and, past the API's
// frame size, CONTINUATION frames. pc.mu is held.
func (pc *h2Conn) writeHeaders(id uint32, r *Request) {
	pc.hbuf.Reset()
	e := pc.enc
	_ = e.WriteField(hpack.HeaderField{Name: ":method", Value: r.Method})
	_ = e.WriteField(hpack.HeaderField{Name: ":scheme", Value: "http"})
	_ = e.WriteField(hpack.HeaderField{Name: ":authority", Value: pc.h.host})
	pc.path = append(append(pc.path[:0], pc.h.base...), r.Path...)
	if r.Query != "" && r.Method == "GET" {
		pc.path = append(append(pc.path, '?'), r.Query...)
	}
	path := unsafeString(pc.path)
	// What differs from one client to the next (the path, the gateway's
	// per-connection headers) or from one request to the next (the key,
	// the length) is never indexed: with thousands of clients it would
	// only churn the API's table, and cost the encoder its evictions.
	_ = e.WriteField(hpack.HeaderField{Name: ":path", Value: path, Sensitive: true})
	for _, hd := range r.Header {
		name := lowerName(hd.Name)
		if containsString(connectionHeaders, name) {
			continue
		}
		_ = e.WriteField(hpack.HeaderField{Name: name, Value: hd.Value, Sensitive: true})
	}
	if r.Key.Prefix != "" {
		pc.key = r.Key.append(pc.key[:0])
		_ = e.WriteField(hpack.HeaderField{Name: "idempotency-key", Value: unsafeString(pc.key), Sensitive: true})
	}
	if r.ContentType != "" {
		_ = e.WriteField(hpack.HeaderField{Name: "content-type", Value: r.ContentType})
	}
	if len(r.Body) > 0 || r.Method == "POST" || r.Method == "DELETE" {
		pc.length = strconv.AppendInt(pc.length[:0], int64(len(r.Body)), 10)
		_ = e.WriteField(hpack.HeaderField{Name: "content-length", Value: unsafeString(pc.length), Sensitive: true})
	}
	block := pc.hbuf.Bytes()
	n := min(len(block), pc.maxFrame)
	_ = pc.fr.WriteHeaders(http2.HeadersFrameParam{
		StreamID: id, BlockFragment: block[:n], EndStream: len(r.Body) == 0, EndHeaders: n == len(block),
	})
	for block = block[n:]; len(block) > 0; block = block[n:] {
		n = min(len(block), pc.maxFrame)
		_ = pc.fr.WriteContinuation(id, n == len(block), block[:n])
	}
}

// lowerName returns an HTTP/2 field name: in lower case, without an
// allocation for the names the gateway sends (they repeat).
func lowerName(name string) string {
	if v, ok := lowerNames.Load(name); ok {
		return v.(string)
	}
	lower := strings.ToLower(name)
	if n := lowerNamesLen.Add(1); n <= 1024 {
		lowerNames.Store(name, lower)
	}
	return lower
}

var (
	lowerNames    sync.Map
	lowerNamesLen atomic.Int32
)

// unsafeString views b as a string, for a field that is never indexed:
// the encoder keeps no reference to it once WriteField returns.
func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// pump sends the request bodies the flow-control windows allow, oldest
// stream first. pc.mu is held.
func (pc *h2Conn) pump() {
	keep := pc.blocked[:0]
	for _, s := range pc.blocked {
		for len(s.body) > 0 && s.sendWin > 0 && pc.sendWin > 0 {
			n := int(min(int64(len(s.body)), s.sendWin, pc.sendWin, int64(pc.maxFrame)))
			_ = pc.fr.WriteData(s.id, n == len(s.body), s.body[:n])
			s.body = s.body[n:]
			s.sendWin -= int64(n)
			pc.sendWin -= int64(n)
		}
		if len(s.body) > 0 {
			keep = append(keep, s)
		}
	}
	clear(pc.blocked[len(keep):])
	pc.blocked = keep
}

// scheduleFlush wakes the writer if frames wait. pc.mu is held.
func (pc *h2Conn) scheduleFlush() {
	if pc.flushing || len(pc.out.b) == 0 {
		return
	}
	pc.flushing = true
	select {
	case pc.wake <- struct{}{}:
	default:
	}
}

// writeLoop hands the queued frames to the socket, all that wait in one
// write. nbio's write never blocks: it keeps what the kernel does not take.
func (pc *h2Conn) writeLoop() {
	defer pc.h.wg.Done()
	for {
		select {
		case <-pc.quit:
			return
		case <-pc.wake:
		}
		pc.mu.Lock()
		buf := pc.out.b
		pc.out.b, pc.spare = pc.spare[:0], nil
		pc.flushing = false
		pc.mu.Unlock()
		if len(buf) == 0 {
			continue
		}
		if _, err := pc.nb.Write(buf); err != nil {
			pc.fail(fmt.Errorf("writing to the API: %w", err))
			return
		}
		pc.mu.Lock()
		if pc.spare == nil && cap(buf) <= 1<<20 {
			pc.spare = buf[:0]
		}
		pc.mu.Unlock()
	}
}

// OnData parses what the API sent (loop.Handler).
func (pc *h2Conn) OnData(_ *nbio.Conn, data []byte) {
	pc.rdMu.Lock()
	err := pc.rd.feed(data)
	pc.rdMu.Unlock()
	if err != nil {
		pc.fail(err)
	}
}

// OnClose ends the connection (loop.Handler); every byte before the close
// has been parsed.
func (pc *h2Conn) OnClose(_ *nbio.Conn, err error) {
	if err == nil || errors.Is(err, io.EOF) {
		err = errServerClosed
	}
	pc.fail(err)
}

// take removes stream id if it is open, returns its call, and reports whether the
// connection should now close (it is going away with nothing left open).
func (pc *h2Conn) take(id uint32) (c *call, closing bool) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if s := pc.open[id]; s != nil {
		delete(pc.open, id)
		c = s.c
		s.c, s.body = nil, nil
		pc.lastUsed = time.Now()
	}
	return c, pc.goingAway && len(pc.open) == 0
}

// complete hands a whole answer to its request.
func (pc *h2Conn) complete(s *h2Stream) {
	c, closing := pc.take(s.id)
	if c == nil {
		return // timed out meanwhile
	}
	pc.h.ended(pc, 1) // the stream's room goes to the next waiting request first
	body := s.resp
	if s.over {
		body = nil
	}
	pc.resp = Response{Status: s.status, Header: s.header, Body: body, Truncated: s.over}
	pc.h.finish(c, &pc.resp, nil)
	pc.rd.recycle(s.resp)
	if closing {
		pc.fail(errGoAway)
	}
}

// reset ends stream id with err after the API reset it, or sends it again
// if the API said it did not process it.
func (pc *h2Conn) reset(id uint32, code http2.ErrCode, err error) {
	c, closing := pc.take(id)
	if c == nil {
		return
	}
	pc.h.ended(pc, 1)
	if code == http2.ErrCodeRefusedStream {
		pc.h.again(c)
	} else {
		pc.h.warnOnce(Cause(nil, err), err)
		pc.h.finish(c, nil, err)
	}
	if closing {
		pc.fail(errGoAway)
	}
}

// refuse sends RST_STREAM for stream id (its answer was malformed) and
// fails it.
func (pc *h2Conn) refuse(id uint32, code http2.ErrCode, why error) {
	pc.mu.Lock()
	_ = pc.fr.WriteRSTStream(id, code)
	pc.scheduleFlush()
	pc.mu.Unlock()
	pc.reset(id, http2.ErrCodeNo, fmt.Errorf("%w: %w", http1.ErrMalformed, why))
}

// goAway stops new streams on the connection; the streams the API will
// not process (past lastID) go again at once, elsewhere.
func (pc *h2Conn) goAway(lastID uint32, code http2.ErrCode) {
	pc.mu.Lock()
	pc.goingAway = true
	var unseen []*call
	for id, s := range pc.open {
		if id > lastID {
			delete(pc.open, id)
			unseen = append(unseen, s.c)
			s.c, s.body = nil, nil
		}
	}
	empty := len(pc.open) == 0
	pc.mu.Unlock()
	if code != http2.ErrCodeNo {
		pc.h.warnOnce(CauseLost, fmt.Errorf("%s sent GOAWAY with error %v", pc.h.addr, code))
	}
	pc.h.retire(pc, false)
	if len(unseen) > 0 {
		pc.h.ended(pc, len(unseen))
	}
	for _, c := range unseen {
		pc.h.again(c)
	}
	if empty {
		pc.fail(errGoAway)
	}
}

// tick resets the streams that have waited longer than the timeout since
// their request was queued (the connection carries on), and reports how
// long the connection has been idle (0 while streams are open).
func (pc *h2Conn) tick(now time.Time) {
	limit := pc.h.opts.Timeout
	pc.mu.Lock()
	var late []*call
	for id, s := range pc.open {
		if now.Sub(s.c.start) > limit {
			delete(pc.open, id)
			late = append(late, s.c)
			s.c, s.body = nil, nil
			_ = pc.fr.WriteRSTStream(id, http2.ErrCodeCancel)
		}
	}
	pc.scheduleFlush()
	closing := len(late) > 0 && pc.goingAway && len(pc.open) == 0
	pc.mu.Unlock()
	if len(late) == 0 {
		return
	}
	pc.h.ended(pc, len(late))
	for _, c := range late {
		pc.h.finish(c, nil, fmt.Errorf("%w: no answer from %s within %v", ErrTimeout, pc.h.addr, limit))
	}
	if closing {
		pc.fail(errGoAway)
	}
}

// idleFor is how long no stream has been open (0 while one is).
func (pc *h2Conn) idleFor(now time.Time) time.Duration {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if len(pc.open) > 0 {
		return 0
	}
	return now.Sub(pc.lastUsed)
}

// fail closes the connection once; its open streams fail with err (they
// may have been processed: the caller's retry policy decides).
func (pc *h2Conn) fail(err error) {
	pc.closeOnce.Do(func() {
		pc.mu.Lock()
		pc.dead = true
		var lost []*call
		for id, s := range pc.open {
			delete(pc.open, id)
			lost = append(lost, s.c)
			s.c, s.body = nil, nil
		}
		pc.mu.Unlock()
		close(pc.quit)
		pc.nb.Close()
		pc.h.retire(pc, true)
		if len(lost) == 0 {
			return
		}
		if !errors.Is(err, ErrClosed) && !errors.Is(err, http1.ErrMalformed) {
			err = fmt.Errorf("connection to %s lost before a whole answer: %w", pc.h.addr, err)
		}
		if !errors.Is(err, ErrClosed) {
			pc.h.warnOnce(Cause(nil, err), err)
		}
		for _, c := range lost {
			pc.h.finish(c, nil, err)
		}
	})
}

// write queues frames from the reader (acks, window updates) and flushes.
func (pc *h2Conn) write(f func(fr *http2.Framer) error) error {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if err := f(pc.fr); err != nil {
		return err
	}
	pc.scheduleFlush()
	return nil
}
