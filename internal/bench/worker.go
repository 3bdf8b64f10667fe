package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lesismal/nbio"

	"github.com/ws2api/ws2api/internal/loop"
	"github.com/ws2api/ws2api/internal/ws"
)

// workerConfig is one worker's share of a load run.
type workerConfig struct {
	URL      string        `json:"url"`      // ws://host:port/ base; the id is appended
	First    int           `json:"first"`    // global index of this worker's first connection
	Count    int           `json:"count"`    // connections this worker opens
	Total    int           `json:"total"`    // connections in the whole run (for the ramp)
	Ramp     time.Duration `json:"ramp"`     // time to open all Total connections; 0: as fast as possible
	Dialers  int           `json:"dialers"`  // handshakes in progress at once
	Interval time.Duration `json:"interval"` // each connection sends one message this often; 0: never
	Size     int           `json:"size"`     // message size in bytes
	Prefix   string        `json:"prefix"`   // id prefix
	Sources  bool          `json:"sources"`  // spread connections over 127.0.1.x source addresses
	Insecure bool          `json:"insecure"` // wss: accept any certificate
	Compress bool          `json:"compress"` // offer permessage-deflate; pad messages with OCPP-like JSON
	OCPP     bool          `json:"ocpp"`     // chargers: boot, heartbeat every Interval, answer CALLs (ocpp.go)
}

// deflateOffer is what a load connection offers with -compression: what
// the gateway answers (no context takeover either way).
const deflateOffer = "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"

// ocppPad fills messages with -compression: a MeterValues body, text that
// deflates as a charger's would, not a run of one letter.
const ocppPad = `[2,"3f1c","MeterValues",{"connectorId":1,"transactionId":48213,"meterValue":[{"timestamp":"2026-12-01T10:00:00Z","sampledValue":[{"value":"18342.7","context":"Sample.Periodic","measurand":"Energy.Active.Import.Register","unit":"Wh"},{"value":"7.36","measurand":"Power.Active.Import","unit":"kW"},{"value":"231.4","measurand":"Voltage","phase":"L1","unit":"V"}]}]}]`

// offer returns the header lines a connection's upgrade adds: the deflate
// offer, the OCPP subprotocol.
func (cfg *workerConfig) offer() string {
	s := ""
	if cfg.Compress {
		s = deflateOffer
	}
	if cfg.OCPP {
		s += "Sec-WebSocket-Protocol: " + ocppProtocol + "\r\n"
	}
	return s
}

// report is a worker's cumulative counts, sent every second.
type report struct {
	Worker      int    `json:"worker"`
	Connected   int64  `json:"connected"` // open now
	ConnectOK   int64  `json:"connect_ok"`
	ConnectFail int64  `json:"connect_fail"`
	Sent        int64  `json:"sent"`
	Recv        int64  `json:"recv"`   // replies to our messages
	Pushes      int64  `json:"pushes"` // pushes and broadcasts received
	Closed      int64  `json:"closed"` // connections the server closed or that dropped
	Errors      int64  `json:"errors"` // send failures, bad frames
	Pings       int64  `json:"pings"`  // pings from the gateway, answered
	LastError   string `json:"last_error,omitempty"`
	Lat         Counts `json:"lat"`      // reply latency
	PushLat     Counts `json:"push_lat"` // push and broadcast latency
	ConnLat     Counts `json:"conn_lat"` // dial to 101
	Done        bool   `json:"done"`     // the worker is finished

	// The OCPP shape: Sent, Recv and Lat are the heartbeats.
	Boots   int64  `json:"boots,omitempty"`    // BootNotifications sent
	BootsOK int64  `json:"boots_ok,omitempty"` // and answered
	Calls   int64  `json:"calls,omitempty"`    // CALLs received and answered
	CallLat Counts `json:"call_lat,omitempty"` // a call's POST to the charger's receipt
}

// worker opens and drives its share of the connections.
type worker struct {
	cfg   workerConfig
	index int
	loop  *loop.Loop

	connected, connectOK, connectFail atomic.Int64
	sent, recv, pushes, closed, errs  atomic.Int64
	lastErr                           atomic.Value
	finishing                         atomic.Bool // closing our own connections: not errors
	lat, pushLat, connLat             Histogram
	pings                             atomic.Int64
	boots, bootsOK, calls             atomic.Int64 // the OCPP shape
	callLat                           Histogram

	mu    sync.Mutex
	slots [][]*loadConn // the send schedule: slot k sends at tick k
	all   []*loadConn
}

// wire is a load connection's socket: an *nbio.Conn, or for wss a
// *tls.Conn read by a goroutine of its own.
type wire interface {
	Write(b []byte) (int, error)
	Close() error
}

// tick is the send scheduler's resolution.
const tick = 10 * time.Millisecond

type loadConn struct {
	w   *worker
	idx int
	nc  wire
	key [4]byte

	// While its upgrade is in progress (openAsync).
	shaking  bool
	started  time.Time
	shakeEnd func()

	mu    sync.Mutex
	in    []byte
	rd    ws.Reader
	zbuf  []byte // a message deflated, with -compression
	seq   int
	buf   []byte
	frame []byte
}

func newWorker(cfg workerConfig, index int) (*worker, error) {
	w := &worker{cfg: cfg, index: index}
	l, err := loop.New("bench", 1, 0)
	if err != nil {
		return nil, err
	}
	w.loop = l
	return w, nil
}

func (w *worker) noteError(err error) { w.lastErr.Store(err.Error()) }

// OnData implements loop.Handler.
func (lc *loadConn) OnData(_ *nbio.Conn, data []byte) { lc.onData(data) }

// OnClose implements loop.Handler.
func (lc *loadConn) OnClose(_ *nbio.Conn, err error) { lc.closed(err) }

// closed counts a connection's end.
func (lc *loadConn) closed(err error) {
	w := lc.w
	lc.mu.Lock()
	shaking := lc.shaking
	lc.mu.Unlock()
	if shaking {
		lc.handshakeFailed(fmt.Errorf("connection closed during the upgrade: %v", err))
		return
	}
	w.connected.Add(-1)
	if w.finishing.Load() {
		return
	}
	w.closed.Add(1)
	if err != nil {
		w.noteError(fmt.Errorf("connection closed: %w", err))
	}
}

// readLoop feeds a wss connection's bytes to onData until it ends.
func (lc *loadConn) readLoop(conn net.Conn) {
	buf := make([]byte, 4<<10)
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			lc.onData(buf[:n])
		}
		if err != nil {
			conn.Close()
			lc.closed(err)
			return
		}
	}
}

func (w *worker) snapshot(done bool) report {
	r := report{
		Worker: w.index, Connected: w.connected.Load(), ConnectOK: w.connectOK.Load(), ConnectFail: w.connectFail.Load(),
		Sent: w.sent.Load(), Recv: w.recv.Load(), Pushes: w.pushes.Load(), Closed: w.closed.Load(), Errors: w.errs.Load(),
		Pings: w.pings.Load(), Lat: w.lat.Snapshot(), PushLat: w.pushLat.Snapshot(), ConnLat: w.connLat.Snapshot(), Done: done,
	}
	if w.cfg.OCPP {
		r.Boots, r.BootsOK, r.Calls, r.CallLat = w.boots.Load(), w.bootsOK.Load(), w.calls.Load(), w.callLat.Snapshot()
	}
	if e, ok := w.lastErr.Load().(string); ok {
		r.LastError = e
	}
	return r
}

// run opens the connections at the ramp's pace, then sends on schedule
// until sending ends; the connections stay open until ctx ends.
func (w *worker) run(ctx, sending context.Context) {
	defer w.loop.Stop()
	cfg := w.cfg
	if cfg.Interval > 0 {
		w.slots = make([][]*loadConn, max(1, int(cfg.Interval/tick)))
	}
	jobs := make(chan int)
	var dialers sync.WaitGroup
	if _, _, secure, _ := splitWSURL(w.urlFor(0)); cfg.Sources || secure {
		// Bound to 127.0.1.x sources, or wss: Go's dialer, a goroutine
		// per handshake in progress.
		for range max(1, cfg.Dialers) {
			dialers.Go(func() {
				for i := range jobs {
					w.open(ctx, i)
				}
			})
		}
	} else {
		// nbio's non-blocking dial: the handshakes run on the event loop,
		// at most Dialers at once. On loopback connect() runs the whole TCP
		// handshake, so a few goroutines issue them.
		slots := make(chan struct{}, max(1, cfg.Dialers))
		var shaking sync.WaitGroup
		for range 4 {
			dialers.Go(func() {
				for i := range jobs {
					slots <- struct{}{}
					shaking.Add(1)
					w.openAsync(i, func() { <-slots; shaking.Done() })
				}
			})
		}
		defer shaking.Wait()
	}
	// The ramp is shared by all workers: connection g opens at g*Ramp/Total.
	start := time.Now()
	go func() {
		defer close(jobs)
		for i := range cfg.Count {
			g := cfg.First + i
			if cfg.Ramp > 0 {
				at := start.Add(time.Duration(int64(cfg.Ramp) * int64(g) / int64(max(1, cfg.Total))))
				if d := time.Until(at); d > 0 {
					select {
					case <-time.After(d):
					case <-ctx.Done():
						return
					}
				}
			}
			select {
			case jobs <- g:
			case <-ctx.Done():
				return
			}
		}
	}()
	sendDone := make(chan struct{})
	go func() {
		defer close(sendDone)
		if cfg.Interval > 0 {
			w.schedule(sending)
		}
	}()
	dialers.Wait()
	<-ctx.Done()
	<-sendDone
	w.finishing.Store(true)
	w.mu.Lock()
	all := w.all
	w.mu.Unlock()
	for _, lc := range all {
		_ = lc.nc.Close()
	}
}

// sendOnce sends one message on every open connection.
func (w *worker) sendOnce() {
	w.mu.Lock()
	all := append([]*loadConn(nil), w.all...)
	w.mu.Unlock()
	for _, lc := range all {
		lc.send('m')
	}
}

// schedule sends from slot k at tick k: each connection once per interval,
// the connections spread evenly over it.
func (w *worker) schedule(ctx context.Context) {
	t := time.NewTicker(tick)
	defer t.Stop()
	for k := 0; ; k++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.mu.Lock()
		slot := w.slots[k%len(w.slots)]
		w.mu.Unlock()
		for _, lc := range slot {
			lc.send('m')
		}
	}
}

func (w *worker) sourceAddr(g int) *net.TCPAddr {
	if !w.cfg.Sources {
		return nil
	}
	return &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(1+(g/20000)%250))}
}

// open dials connection g, upgrades it and hands it to the event loop.
func (w *worker) open(ctx context.Context, g int) {
	id := w.cfg.Prefix + strconv.Itoa(g)
	start := time.Now()
	fail := func(err error) {
		w.connectFail.Add(1)
		w.noteError(fmt.Errorf("connect %s: %w", id, err))
	}
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: w.sourceAddr(g), Control: bindNoPort}
	host, path, secure, err := splitWSURL(w.urlFor(g))
	if err != nil {
		fail(err)
		return
	}
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		fail(err)
		return
	}
	if secure {
		name, _, _ := net.SplitHostPort(host)
		conn = tls.Client(conn, &tls.Config{ServerName: name, InsecureSkipVerify: w.cfg.Insecure, NextProtos: []string{"http/1.1"}})
	}
	var key [16]byte
	for i := range key {
		key[i] = byte(rand.Uint32())
	}
	req := "GET " + path + id + " HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + b64(key[:]) + "\r\n" + w.cfg.offer() + "\r\n"
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		conn.Close()
		fail(err)
		return
	}
	// Read the answer head byte-exact: what follows it belongs to the
	// event loop.
	head := make([]byte, 0, 256)
	one := make([]byte, 512)
	for !bytes.Contains(head, []byte("\r\n\r\n")) {
		n, err := conn.Read(one)
		if err != nil {
			conn.Close()
			fail(err)
			return
		}
		head = append(head, one[:n]...)
		if len(head) > 16<<10 {
			conn.Close()
			fail(errors.New("answer head too long"))
			return
		}
	}
	end := bytes.Index(head, []byte("\r\n\r\n")) + 4
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(head[:end])), nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		conn.Close()
		if err == nil {
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		fail(err)
		return
	}
	if w.cfg.OCPP && resp.Header.Get("Sec-WebSocket-Protocol") != ocppProtocol {
		conn.Close()
		fail(errors.New("the gateway chose no subprotocol " + ocppProtocol + ": a charger hangs up"))
		return
	}
	_ = conn.SetDeadline(time.Time{})
	lc := &loadConn{w: w, idx: g}
	lc.rd.Deflate = w.cfg.Compress && resp.Header.Get("Sec-WebSocket-Extensions") != ""
	binaryKey := rand.Uint32()
	lc.key = [4]byte{byte(binaryKey), byte(binaryKey >> 8), byte(binaryKey >> 16), byte(binaryKey >> 24)}
	if secure {
		lc.nc = conn
		w.connected.Add(1)
		go lc.readLoop(conn)
	} else {
		nc, err := loop.Wrap(conn)
		if err != nil {
			fail(err)
			return
		}
		lc.nc = nc
		w.connected.Add(1)
		if _, err := w.loop.Add(nc, lc); err != nil {
			w.connected.Add(-1)
			fail(err)
			return
		}
	}
	w.connLat.Record(time.Since(start))
	w.connectOK.Add(1)
	if rest := head[end:]; len(rest) > 0 {
		lc.onData(rest)
	}
	w.keep(lc)
	if w.cfg.OCPP {
		lc.send('b')
	}
}

// keep adds an upgraded connection to those that send, in a random slot
// of the sending schedule; a charger's heartbeats wait for its boot to be
// answered (beat).
func (w *worker) keep(lc *loadConn) {
	w.mu.Lock()
	w.all = append(w.all, lc)
	if w.slots != nil && !w.cfg.OCPP {
		k := rand.IntN(len(w.slots))
		w.slots[k] = append(w.slots[k], lc)
	}
	w.mu.Unlock()
}

// openAsync dials connection g on the event loop and sends its upgrade
// request; onData completes the handshake. done is called once the
// handshake succeeded or failed.
func (w *worker) openAsync(g int, done func()) {
	id := w.cfg.Prefix + strconv.Itoa(g)
	host, path, _, err := splitWSURL(w.urlFor(g))
	if err != nil {
		w.connectFail.Add(1)
		w.noteError(err)
		done()
		return
	}
	lc := &loadConn{w: w, idx: g, shaking: true, started: time.Now(), shakeEnd: done}
	k := rand.Uint32()
	lc.key = [4]byte{byte(k), byte(k >> 8), byte(k >> 16), byte(k >> 24)}
	w.publish()
	// Not DialAsyncTimeout: it arms its timer after the socket is live, and
	// on loopback the connect can finish first, leaving a timer that closes
	// the connection later. The read deadline below bounds the handshake.
	err = w.loop.DialAsync(host, func(c *nbio.Conn, err error) {
		w.publish()
		if err != nil {
			lc.handshakeFailed(fmt.Errorf("connect %s: %w", id, err))
			return
		}
		var key [16]byte
		for i := range key {
			key[i] = byte(rand.Uint32())
		}
		lc.mu.Lock()
		lc.nc = c
		c.SetSession(lc)
		lc.mu.Unlock()
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		req := "GET " + path + id + " HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + b64(key[:]) + "\r\n" + w.cfg.offer() + "\r\n"
		if _, err := c.Write([]byte(req)); err != nil {
			lc.handshakeFailed(fmt.Errorf("connect %s: %w", id, err))
		}
	})
	if err != nil {
		lc.handshakeFailed(fmt.Errorf("connect %s: %w", id, err))
	}
}

// publish passes through w.mu: called by openAsync after making a
// loadConn and by the dial callback before using it, it orders the two for
// the race detector, which cannot see nbio's own hand-off (its code is
// built without race instrumentation).
func (w *worker) publish() {
	w.mu.Lock()
	//lint:ignore SA2001 the empty critical section is the point: it orders
	w.mu.Unlock()
}

// handshakeFailed counts a failed upgrade, once.
func (lc *loadConn) handshakeFailed(err error) {
	lc.mu.Lock()
	shaking := lc.shaking
	lc.shaking = false
	lc.mu.Unlock()
	if !shaking {
		return
	}
	lc.w.connectFail.Add(1)
	lc.w.noteError(err)
	if lc.nc != nil {
		_ = lc.nc.Close()
	}
	lc.shakeEnd()
}

// shaken completes an upgrade whose answer head is head; lc.mu is held.
func (lc *loadConn) shaken(head []byte) bool {
	w := lc.w
	if !bytes.HasPrefix(head, []byte("HTTP/1.1 101 ")) {
		line, _, _ := bytes.Cut(head, []byte("\r\n"))
		lc.mu.Unlock()
		lc.handshakeFailed(fmt.Errorf("connect %s%d: %s", w.cfg.Prefix, lc.idx, line))
		lc.mu.Lock()
		return false
	}
	lower := bytes.ToLower(head)
	if w.cfg.OCPP && !bytes.Contains(lower, []byte("\r\nsec-websocket-protocol: "+ocppProtocol+"\r\n")) {
		lc.mu.Unlock()
		lc.handshakeFailed(fmt.Errorf("connect %s%d: the gateway chose no subprotocol %s: a charger hangs up", w.cfg.Prefix, lc.idx, ocppProtocol))
		lc.mu.Lock()
		return false
	}
	lc.shaking = false
	lc.rd.Deflate = w.cfg.Compress && bytes.Contains(lower, []byte("sec-websocket-extensions: permessage-deflate"))
	_ = lc.nc.(*nbio.Conn).SetReadDeadline(time.Time{}) // only openAsync's connections shake here
	w.connLat.Record(time.Since(lc.started))
	w.connectOK.Add(1)
	w.connected.Add(1)
	w.keep(lc)
	if w.cfg.OCPP {
		lc.sendLocked('b')
	}
	lc.shakeEnd()
	return true
}

// send writes one message: kind, the send time, the connection, a sequence
// number, padded to the configured size. The echo API sends it back. In the
// OCPP shape it is a CALL (ocpp.go): kind 'b' a BootNotification, else a
// Heartbeat.
func (lc *loadConn) send(kind byte) {
	lc.mu.Lock()
	err := lc.write(kind)
	lc.mu.Unlock()
	lc.sent(kind, err)
}

// sendLocked is send with lc.mu held.
func (lc *loadConn) sendLocked(kind byte) { lc.sent(kind, lc.write(kind)) }

// sent counts a message written, or its failure.
func (lc *loadConn) sent(kind byte, err error) {
	switch {
	case err != nil:
		lc.w.errs.Add(1)
		lc.w.noteError(fmt.Errorf("send: %w", err))
	case kind == 'b':
		lc.w.boots.Add(1)
	default:
		lc.w.sent.Add(1)
	}
}

// write builds and writes one message; lc.mu is held.
func (lc *loadConn) write(kind byte) error {
	lc.seq++
	if lc.w.cfg.OCPP {
		lc.buf = appendOCPPCall(lc.buf[:0], kind, lc.idx, lc.seq)
		return lc.writeText(lc.buf)
	}
	p := lc.buf[:0]
	p = append(p, kind)
	p = strconv.AppendInt(p, time.Now().UnixNano(), 10)
	p = append(p, ' ')
	p = strconv.AppendInt(p, int64(lc.idx), 10)
	p = append(p, ' ')
	p = strconv.AppendInt(p, int64(lc.seq), 10)
	p = append(p, ' ')
	for len(p) < lc.w.cfg.Size {
		if lc.w.cfg.Compress {
			p = append(p, ocppPad[:min(len(ocppPad), lc.w.cfg.Size-len(p))]...)
			continue
		}
		p = append(p, 'x')
	}
	lc.buf = p
	return lc.writeText(p)
}

// writeText writes p as a text frame, deflated if negotiated; lc.mu is
// held.
func (lc *loadConn) writeText(p []byte) error {
	if lc.rd.Deflate {
		// Deflated on its own (no context takeover), RSV1 on, masked.
		lc.zbuf = ws.AppendDeflated(lc.zbuf[:0], p)
		lc.frame = ws.AppendHeader(lc.frame[:0], ws.OpText, true, len(lc.zbuf), &lc.key)
		lc.frame[0] |= 0x40 // RSV1
		start := len(lc.frame)
		lc.frame = append(lc.frame, lc.zbuf...)
		ws.Mask(lc.frame[start:], lc.key, 0)
	} else {
		lc.frame = ws.AppendFrame(lc.frame[:0], ws.OpText, p, &lc.key)
	}
	_, err := lc.nc.Write(lc.frame)
	return err
}

func (lc *loadConn) onData(data []byte) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	buf := append(lc.in, data...)
	if lc.shaking {
		end := bytes.Index(buf, []byte("\r\n\r\n"))
		if end < 0 {
			lc.in = buf
			return
		}
		if !lc.shaken(buf[:end+4]) {
			return
		}
		buf = buf[end+4:]
	}
	for len(buf) > 0 {
		m, n, err := lc.rd.Next(buf, ws.Client, 64<<20)
		if err != nil {
			lc.w.errs.Add(1)
			lc.w.noteError(fmt.Errorf("frame from the gateway: %w", err))
			_ = lc.nc.Close()
			return
		}
		if n == 0 {
			break
		}
		buf = buf[n:]
		switch m.Op {
		case ws.OpText, ws.OpBinary:
			lc.received(m.Payload)
		case ws.OpPing:
			lc.w.pings.Add(1)
			_, _ = lc.nc.Write(ws.AppendFrame(nil, ws.OpPong, m.Payload, &lc.key))
		case ws.OpClose:
			code, reason, _ := ws.ParseClose(m.Payload)
			lc.w.noteError(fmt.Errorf("closed by the gateway: %d %s", code, reason))
			_, _ = lc.nc.Write(ws.AppendFrame(nil, ws.OpClose, ws.AppendClose(nil, code, ""), &lc.key))
			_ = lc.nc.Close()
			return
		}
	}
	lc.in = append(lc.in[:0], buf...)
	if len(lc.in) == 0 {
		lc.in = nil
	}
}

// received records a message's latency from the send time it carries;
// lc.mu is held.
func (lc *loadConn) received(p []byte) {
	if lc.w.cfg.OCPP {
		lc.receivedOCPP(p)
		return
	}
	now := time.Now().UnixNano()
	if len(p) < 2 {
		return
	}
	kind := p[0]
	end := bytes.IndexByte(p, ' ')
	if end < 0 {
		end = len(p)
	}
	ts, err := strconv.ParseInt(string(p[1:end]), 10, 64)
	if err != nil {
		lc.w.errs.Add(1)
		lc.w.noteError(fmt.Errorf("unexpected message %q", truncate(p, 40)))
		return
	}
	d := time.Duration(now - ts)
	switch kind {
	case 'm':
		lc.w.recv.Add(1)
		lc.w.lat.Record(d)
	default:
		lc.w.pushes.Add(1)
		lc.w.pushLat.Record(d)
	}
}

func truncate(p []byte, n int) []byte {
	if len(p) > n {
		return p[:n]
	}
	return p
}

// urlFor is the gateway connection g goes to: with several URLs (a
// cluster's nodes, comma-separated), they take turns.
func (w *worker) urlFor(g int) string {
	urls := strings.Split(w.cfg.URL, ",")
	return urls[g%len(urls)]
}

// splitWSURL splits ws://host:port/base/ (or wss://) into host:port and
// /base/.
func splitWSURL(u string) (host, path string, secure bool, err error) {
	rest, ok := cutPrefix(u, "ws://")
	if !ok {
		if rest, secure = cutPrefix(u, "wss://"); !secure {
			return "", "", false, fmt.Errorf("url %q: want ws://host:port/ or wss://host:port/", u)
		}
	}
	host, path = rest, "/"
	if i := bytes.IndexByte([]byte(rest), '/'); i >= 0 {
		host, path = rest[:i], rest[i:]
	}
	if path[len(path)-1] != '/' {
		path += "/"
	}
	return host, path, secure, nil
}

func cutPrefix(s, p string) (string, bool) {
	if len(s) >= len(p) && s[:len(p)] == p {
		return s[len(p):], true
	}
	return s, false
}

// runWorker is `ws2api bench worker`: one process's share of a run. The
// parent sends its config as the first JSON line on stdin, then
// commands ({"cmd":"once"}, {"cmd":"stop-sending"}), then closes stdin to
// end it. Reports go to
// stdout, one JSON line a second.
func runWorker(ctx context.Context, stdin io.Reader, stdout io.Writer) error {
	dec := json.NewDecoder(stdin)
	var msg struct {
		Index  int          `json:"index"`
		Config workerConfig `json:"config"`
	}
	if err := dec.Decode(&msg); err != nil {
		return fmt.Errorf("worker config: %w", err)
	}
	w, err := newWorker(msg.Config, msg.Index)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sending, stopSending := context.WithCancel(ctx)
	defer stopSending()
	go func() {
		defer cancel()
		for {
			var cmd struct {
				Cmd string `json:"cmd"`
			}
			if dec.Decode(&cmd) != nil {
				return // stdin closed: the parent is done
			}
			switch cmd.Cmd {
			case "stop-sending":
				stopSending()
			case "once":
				go w.sendOnce()
			}
		}
	}()
	done := make(chan struct{})
	go func() {
		w.run(ctx, sending)
		close(done)
	}()
	enc := json.NewEncoder(stdout)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-done:
			return enc.Encode(w.snapshot(true))
		case <-t.C:
			if err := enc.Encode(w.snapshot(false)); err != nil {
				return err
			}
		}
	}
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// bindNoPort lets the kernel pick the source port at connect time, by the
// whole address 4-tuple, instead of at bind time among ports free on the
// source address: without it, binding to 127.0.1.x slows to a crawl and
// then fails once tens of thousands of ports are in use or in TIME_WAIT.
func bindNoPort(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}
