// Package gateway owns the client side of ws2api: it accepts sockets on the
// public listener, upgrades them once the API agrees, keeps the registry of
// connected ids, and runs each connection's small state machine.
//
// A message's way through, file by file:
//
//	server.go    accept -> nbio's event loop (no goroutine per connection)
//	tls.go       or, with Options.TLS, crypto/tls on a reading goroutine
//	             (and a writing one while there is data to send)
//	upgrade.go   request head -> GET <api><id> -> 101, or 400/403/502/504
//	             (or, in demo mode only, Options.Page for a plain GET /)
//	origins.go   the Origin allow-list, checked before the API is asked
//	conn.go      bytes -> frames -> messages; close handshake
//	forward.go   message -> per-connection queue -> POST -> reply frame;
//	             close -> DELETE after the pending POSTs
//	registry.go  id -> connection, for the control API; as an id comes
//	             and goes, conn.go tells Options.Presence (the cluster bus,
//	             internal/cluster)
//	hub.go       push, info, kick, broadcast (what the control API calls)
//	keepalive.go pings for silent clients, closes for dead and idle ones;
//	             the message rate, which paces a client's POSTs
//	handover.go  a binary upgrade: connections passed to the new process
//	             with their state, and taken over there
//
// Event-loop callbacks never block: requests to the API are handed to an
// [upstream.Client] and answered on its goroutines.
package gateway

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ws2api/ws2api/internal/hub"
	"github.com/ws2api/ws2api/internal/loop"
	"github.com/ws2api/ws2api/internal/metrics"
	"github.com/ws2api/ws2api/internal/upstream"
	"github.com/ws2api/ws2api/internal/warnlog"
)

// Options configures a [Server]. Every field but API has a default, noted
// beside it, that New fills in; for the limits marked "zero: off", the
// command's flags hold the defaults.
type Options struct {
	// API receives every request: the connect GETs (never retried: a
	// client waiting for its upgrade gets an answer at once), the POSTs and
	// the DELETEs (retried by Retry).
	API upstream.Client
	// Retry says when a failed POST or DELETE goes again. Default: the
	// policy's defaults.
	Retry upstream.RetryPolicy
	// Logger gets one line per event worth a person's attention. Default:
	// slog.Default().
	Logger *slog.Logger
	// Metrics receives the gateway's figures. Default: a fresh set.
	Metrics *metrics.Metrics

	// MaxMessageBytes bounds one client message (joined fragments, and
	// inflated if compressed); a longer one closes the client with 1009.
	// Default 1 MiB.
	MaxMessageBytes int64
	// Compression accepts permessage-deflate from clients that offer it,
	// without context takeover either way (no state kept between messages).
	Compression bool
	// CompressMin is the smallest message sent compressed to a client that
	// negotiated it; smaller ones go as they are (either is valid), and so
	// does one that deflating does not make smaller. Default 256 bytes.
	CompressMin int
	// MaxPendingBytes bounds one client's messages waiting for the API; past
	// it the client is closed with 1013. Each message counts its payload
	// and 256 bytes for its buffer. Default 5 MiB.
	MaxPendingBytes int64
	// MaxPendingTotal bounds all clients' messages waiting for the API,
	// counted the same way, so that a long outage with many clients cannot
	// exhaust memory: past it, a client that sends is closed with 1013.
	// Default 1 GiB.
	MaxPendingTotal int64
	// MaxOutgoingBytes bounds the bytes waiting to be written to one client
	// (beyond what the kernel holds); a client that lets more pile up is
	// closed as a slow consumer. Default 4 MiB.
	MaxOutgoingBytes int
	// MaxOutgoingTotal bounds the bytes waiting to be written to all
	// clients, counted the same way: a write that would pass it first
	// closes the clients with the oldest backlogs, as slow consumers,
	// until the total is three quarters of it (outgoing.go). Default 1 GiB.
	MaxOutgoingTotal int64
	// MaxHeaderBytes bounds an upgrade request's head. Default 8 KiB.
	MaxHeaderBytes int
	// HandshakeTimeout bounds the time from accept to a complete request
	// head. Default 10s.
	HandshakeTimeout time.Duration
	// CloseTimeout bounds the wait for a client's close frame after ws2api
	// sent its own. Default 3s.
	CloseTimeout time.Duration
	// ForwardHeaders are the client's handshake headers sent on with the
	// connect GET. Default Origin, Cookie, Authorization, User-Agent,
	// Sec-WebSocket-Protocol.
	ForwardHeaders []string
	// Loop is the event loop the clients' sockets live on; share it with
	// the API client so that a message stays on one poller goroutine from
	// client to API and back. Default: a loop of the server's own with
	// Pollers pollers.
	Loop *loop.Loop
	// Pollers is the number of event-loop goroutines when the server makes
	// its own loop. Default the number of CPUs.
	Pollers int
	// MaxConns bounds the clients connected or being upgraded at once; an
	// upgrade past it is answered 503. Default: the process's open-file
	// limit less 1,024 (kept for the API and control connections).
	MaxConns int
	// MaxConnecting bounds the upgrades whose connect GET waits for the API
	// or is in flight; an upgrade past it is answered 503 with Retry-After,
	// so that a slow API cannot make handshakes (and their cookies) pile up.
	// Default 4096.
	MaxConnecting int
	// MaxMessageRate bounds the messages per second of one client that go
	// to the API, averaged over a second (a burst of that many is allowed);
	// the messages of a client sending faster wait their turn in its queue,
	// within MaxPendingBytes. Zero: off.
	MaxMessageRate float64
	// PingInterval: a client silent that long is pinged; one that then
	// sends nothing for PingTimeout is taken for dead, closed, and its
	// DELETE sent with code 1006. Zero: off. PingTimeout default 20s.
	PingInterval time.Duration
	PingTimeout  time.Duration
	// IdleTimeout closes, with 1001 "idle timeout", a client with no
	// message either way for that long (pings do not count). Zero: off.
	IdleTimeout time.Duration
	// Origins, when not empty, is the allow-list of browser origins: an
	// upgrade whose Origin header is another is answered 403 without
	// asking the API. Entries are scheme://host[:port], where host may
	// start with "*." for any subdomain, or "null". Clients that send no
	// Origin (devices, servers) are not affected.
	Origins []string

	// TrustedProxies are the peers (CIDRs or addresses: 10.0.0.0/8,
	// 127.0.0.1) whose X-Forwarded-For, X-Forwarded-Proto and
	// X-Forwarded-Host are passed on to the API (X-Forwarded-For with the
	// peer appended). From any other peer they are dropped and ws2api sets
	// its own (forwarded.go). Default: none.
	TrustedProxies []string

	// Presence, when set, hears of every id that connects to this node and
	// every id that leaves it (internal/cluster keeps the cluster's map of
	// ids to nodes with it). Its methods must not block.
	Presence Presence

	// TLS, when set, makes Serve speak TLS (wss): see tls.go. Default
	// plain TCP (ws), TLS being terminated in front.
	TLS *tls.Config

	// Page, when set, is an HTML page answered to a plain GET / (not an
	// upgrade): `ws2api demo`'s page. Production gateways leave it nil,
	// and a plain GET gets 400.
	Page []byte
	// Node names this process in connection ids (and on the cluster bus).
	// Default: random. A process started by a binary upgrade takes the
	// old one's, with connection numbers from After on, so that the
	// connections it takes over keep their ids (handover.go).
	Node  string
	After uint64
}

// Presence is told which ids this node holds, and by which connection
// (its X-Ws2api-Connection-Id): Connected when an id's connection opens
// (also when it replaces another on this node), Disconnected when the id
// has no connection here any more.
type Presence interface {
	Connected(id, connID string)
	Disconnected(id, connID string)
}

// DefaultForwardHeaders is the default of Options.ForwardHeaders.
var DefaultForwardHeaders = []string{"Origin", "Cookie", "Authorization", "User-Agent", "Sec-WebSocket-Protocol"}

// Defaults are the values Options' zero fields take, and the flags'
// defaults (cmd/ws2api): each is written here only. (The flags also turn on
// what a library user gets only by asking: a 30 s ping, a message rate.)
var Defaults = Options{
	MaxMessageBytes:  1 << 20,
	CompressMin:      DefaultCompressMin,
	MaxPendingBytes:  5 << 20,
	MaxPendingTotal:  1 << 30,
	MaxOutgoingBytes: 4 << 20,
	MaxOutgoingTotal: 1 << 30,
	MaxHeaderBytes:   8 << 10,
	HandshakeTimeout: 10 * time.Second,
	CloseTimeout:     3 * time.Second,
	MaxConnecting:    4096,
	PingTimeout:      20 * time.Second,
	ForwardHeaders:   DefaultForwardHeaders,
}

func (o Options) withDefaults() (Options, error) {
	if o.API == nil {
		return o, errors.New("gateway: Options.API is required")
	}
	o.Retry = o.Retry.WithDefaults()
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Metrics == nil {
		o.Metrics = metrics.New()
	}
	d := Defaults
	if o.MaxMessageBytes <= 0 {
		o.MaxMessageBytes = d.MaxMessageBytes
	}
	if o.CompressMin == 0 {
		o.CompressMin = d.CompressMin
	}
	if o.MaxPendingBytes <= 0 {
		o.MaxPendingBytes = d.MaxPendingBytes
	}
	if o.MaxPendingTotal <= 0 {
		o.MaxPendingTotal = d.MaxPendingTotal
	}
	if o.MaxOutgoingBytes <= 0 {
		o.MaxOutgoingBytes = d.MaxOutgoingBytes
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = d.MaxHeaderBytes
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = d.HandshakeTimeout
	}
	if o.CloseTimeout <= 0 {
		o.CloseTimeout = d.CloseTimeout
	}
	if o.ForwardHeaders == nil {
		o.ForwardHeaders = d.ForwardHeaders
	}
	var err error
	if o.ForwardHeaders, err = forwardHeaders(o.ForwardHeaders); err != nil {
		return o, err
	}
	if o.MaxOutgoingTotal <= 0 {
		o.MaxOutgoingTotal = d.MaxOutgoingTotal
	}
	if o.Pollers <= 0 {
		o.Pollers = runtime.NumCPU()
	}
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns()
	}
	if o.MaxConnecting <= 0 {
		o.MaxConnecting = d.MaxConnecting
	}
	if o.MaxMessageRate < 0 || o.PingInterval < 0 || o.IdleTimeout < 0 {
		return o, errors.New("gateway: MaxMessageRate, PingInterval and IdleTimeout must not be negative")
	}
	if o.PingTimeout <= 0 {
		o.PingTimeout = d.PingTimeout
	}
	return o, nil
}

// DefaultMaxConns is the default of Options.MaxConns: the open-file limit
// less 1,024, at least 1.
func DefaultMaxConns() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<40 {
		return 1 << 20
	}
	return max(int(rl.Cur)-1024, 1)
}

// Server is the public side of one ws2api node.
type Server struct {
	opts    Options
	log     *slog.Logger
	m       *metrics.Metrics
	loop    *loop.Loop
	ownLoop bool
	reg     registry
	groups  groups

	node    string        // random per process: makes connection ids unique across restarts
	connSeq atomic.Uint64 // last connection number handed out

	draining    atomic.Bool
	restarting  atomic.Bool  // the drain is a binary upgrade's (Restart)
	handshaking atomic.Int64 // connections still sending their upgrade request head
	admitted    atomic.Int64 // connections past their request head, for MaxConns
	connecting  atomic.Int64 // connect GETs waiting or in flight, for MaxConnecting
	apiWork     atomic.Int64 // connections with a request to the API in flight or due
	origins     originList
	trusted     []netip.Prefix // Options.TrustedProxies

	outgoing atomic.Int64  // bytes waiting to be written to clients, for MaxOutgoingTotal (outgoing.go)
	fanouts  atomic.Uint64 // broadcasts' fan-outs numbered so far (hub.go)
	shedMu   sync.Mutex    // one shed at a time

	// deletesDue counts the connections the API accepted whose DELETE it
	// has not answered yet (open ones included): what a cut-short drain
	// leaves undelivered.
	deletesDue atomic.Int64

	rateInterval int64        // nanoseconds between messages at MaxMessageRate; 0: no limit
	epoch        time.Time    // New's time: the monotonic clock of conn.rateTAT
	clock        atomic.Int64 // unix nanoseconds at the keeper's last tick (keepalive.go)
	keeperStop   chan struct{}
	keeperOnce   sync.Once
	pending      pendingGauge

	retryMu  sync.Mutex
	retrying map[*conn]struct{} // connections waiting to send a request again

	// A binary upgrade (handover.go): in the old process, where ops on
	// clients go once its connections are moving; in the new one, the ids
	// still coming and what waits for them.
	successor  atomic.Pointer[hub.Clients]
	expecting  atomic.Bool // Expect was told of ids, Arrived not yet
	comingMu   sync.Mutex
	announced  chan struct{} // closed by Expect
	coming     map[string]chan struct{}
	allArrived chan struct{}

	mu     sync.Mutex
	ln     net.Listener
	accept sync.WaitGroup
	stop   sync.Once
	warn   warnlog.Limiter
}

// New checks the options and starts the event loop; [Server.Serve] then
// feeds it connections.
func New(opts Options) (*Server, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	var node [4]byte
	_, _ = rand.Read(node[:])
	s := &Server{
		opts:  opts,
		log:   opts.Logger,
		m:     opts.Metrics,
		node:  hex.EncodeToString(node[:]),
		epoch: time.Now(),
	}
	if opts.Node != "" {
		s.node = opts.Node
		s.connSeq.Store(opts.After)
	}
	s.reg.init()
	s.groups.init()
	s.pending.m = s.m
	s.retrying = map[*conn]struct{}{}
	if s.origins, err = parseOrigins(opts.Origins); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if s.trusted, err = ParseTrustedProxies(opts.TrustedProxies); err != nil {
		return nil, fmt.Errorf("gateway: trusted proxy %w", err)
	}
	s.m.Gauge("ws2api_outgoing_bytes", "Bytes waiting to be written to clients, beyond what the kernel holds (bounded by -max-outgoing-total).",
		func() float64 { return float64(s.outgoing.Load()) })
	if opts.MaxMessageRate > 0 {
		s.rateInterval = max(int64(float64(time.Second)/opts.MaxMessageRate), 1)
	}
	s.loop = opts.Loop
	if s.loop == nil {
		if s.loop, err = loop.New("ws2api", opts.Pollers, opts.MaxOutgoingBytes); err != nil {
			return nil, fmt.Errorf("gateway: %w", err)
		}
		s.ownLoop = true
	}
	s.loop.OnAccept(s.accepted)
	if opts.PingInterval > 0 || opts.IdleTimeout > 0 {
		s.keeperStop = make(chan struct{})
		s.clock.Store(time.Now().UnixNano())
		go s.keep(s.keeperStop)
	}
	return s, nil
}

// Serve accepts connections on ln until [Server.Shutdown] closes it. It
// returns nil after a shutdown, or the error that stopped accepting.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.draining.Load() {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.ln = ln
	s.accept.Add(1)
	s.mu.Unlock()
	defer s.accept.Done()

	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				if s.draining.Load() {
					return nil
				}
				return err
			}
			// Out of file descriptors and the like: wait, do not spin.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.warn.Warn(s.log, "accept failed", "error", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if s.opts.TLS != nil {
			go s.serveTLS(c)
			continue
		}
		if err := s.loop.AddAccepted(c); err != nil {
			s.warn.Warn(s.log, "cannot add connection to the event loop", "error", err)
			c.Close()
		}
	}
}

// Draining reports whether Shutdown has begun (for /healthz).
func (s *Server) Draining() bool { return s.draining.Load() }

// Shutdown stops accepting, closes every client with 1001 "going away", and
// waits until the API has been sent every pending message and every DELETE,
// or ctx ends: then it returns a [*DrainError] saying what is undelivered.
// It then stops the event loop.
func (s *Server) Shutdown(ctx context.Context) error { return s.shutdown(ctx, closeShutdown) }

// drainClose is how a drain closes a client: 1012 after an upgrade, else
// 1001.
func (s *Server) drainClose() closeInfo {
	if s.restarting.Load() {
		return closeRestart
	}
	return closeShutdown
}

// Restart is Shutdown for a binary upgrade: the clients are closed with
// 1012 "service restart", to reconnect at once (to the new process).
func (s *Server) Restart(ctx context.Context) error { return s.shutdown(ctx, closeRestart) }

func (s *Server) shutdown(ctx context.Context, why closeInfo) error {
	s.stopAccepting(why == closeRestart)

	for _, c := range s.reg.all() {
		c.closeWith(why)
	}
	err := s.waitIdle(ctx)
	if s.keeperStop != nil {
		s.keeperOnce.Do(func() { close(s.keeperStop) })
	}
	if s.ownLoop {
		s.stop.Do(s.loop.Stop)
	}
	return err
}

// stopAccepting closes the listener and waits for its accept loop: the
// drain (of a shutdown, or of a binary upgrade when restart) begins.
func (s *Server) stopAccepting(restart bool) {
	s.restarting.Store(restart)
	s.mu.Lock()
	s.draining.Store(true)
	ln := s.ln
	s.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	s.accept.Wait()
}

// waitIdle waits until no client is connected and no request to the API is
// due.
func (s *Server) waitIdle(ctx context.Context) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		// (After an upgrade, a connection accepted just before the
		// listener closed is let through its upgrade, then closed with
		// 1012, rather than refused: it is waited for too.)
		if s.reg.count() == 0 && s.apiWork.Load() == 0 && (!s.restarting.Load() || s.handshaking.Load() == 0) {
			return nil
		}
		select {
		case <-ctx.Done():
			return &DrainError{Clients: s.reg.count(), Messages: s.pending.msgs.Load(), Bytes: s.pending.bytes.Load(),
				Deletes: s.deletesDue.Load(), Err: ctx.Err()}
		case <-tick.C:
		}
	}
}

// DrainError is a drain cut short: what the API has not been sent (or has
// not answered) when [Server.Shutdown]'s context ended.
type DrainError struct {
	Clients  int   // clients still connected
	Messages int64 // client messages not delivered to the API
	Bytes    int64 // their payload bytes
	Deletes  int64 // DELETEs not delivered: the API does not learn of those ends
	Err      error // the context's error
}

func (e *DrainError) Error() string {
	return fmt.Sprintf("gateway: drain: %d messages (%d bytes) and %d DELETEs undelivered, %d clients connected: %v",
		e.Messages, e.Bytes, e.Deletes, e.Clients, e.Err)
}

func (e *DrainError) Unwrap() error { return e.Err }

// Lost reports whether the drain leaves a message or a DELETE undelivered
// (and not only, say, a connect GET unanswered).
func (e *DrainError) Lost() bool { return e.Messages > 0 || e.Deletes > 0 }

// RetryNow sends again, within the next quarter second, every request
// waiting out a backoff: the API is back (upstream.PoolOptions.OnRecover),
// so the backlog drains now rather than when each backoff ends. The
// spread keeps the returning API from getting them all at once.
func (s *Server) RetryNow() {
	s.retryMu.Lock()
	waiting := make([]*conn, 0, len(s.retrying))
	for c := range s.retrying {
		waiting = append(waiting, c)
	}
	s.retryMu.Unlock()
	for _, c := range waiting {
		c.mu.Lock()
		if c.waiting == waitBackoff {
			c.timer.Reset(time.Duration(mrand.Int64N(int64(250 * time.Millisecond))))
		}
		c.mu.Unlock()
	}
}

// Count returns the number of connected clients.
func (s *Server) Count() int { return s.reg.count() }

// SetPresence sets Options.Presence for a server made before what it
// reports to (the cluster bus needs the server): call it before Serve.
func (s *Server) SetPresence(p Presence) { s.opts.Presence = p }

// Held returns the ids connected to this node with their connections' ids,
// in no order.
func (s *Server) Held() []hub.Held { return s.reg.held() }

// Node returns this node's name: random, made at start, the prefix of its
// connection ids.
func (s *Server) Node() string { return s.node }

// Connections returns the number of the last connection id handed out.
func (s *Server) Connections() uint64 { return s.connSeq.Load() }

// newConnID returns an id unique to one connection for its life:
// X-Ws2api-Connection-Id.
func (s *Server) newConnID() string {
	n := s.connSeq.Add(1)
	var b [32]byte
	out := append(b[:0], s.node...)
	out = append(out, '-')
	out = appendBase36(out, n)
	return string(out)
}

func appendBase36(b []byte, n uint64) []byte {
	const digits = "0123456789abcdefghijklmnopqrstuvwxyz"
	var tmp [13]byte
	i := len(tmp)
	for {
		i--
		tmp[i] = digits[n%36]
		n /= 36
		if n == 0 {
			break
		}
	}
	return append(b, tmp[i:]...)
}

// pendingGauge tracks messages and bytes waiting for the API across all
// connections.
type pendingGauge struct {
	m     *metrics.Metrics
	msgs  atomic.Int64
	bytes atomic.Int64 // payload
	held  atomic.Int64 // payload and msgOverhead a message: what MaxPendingTotal bounds
}

func (p *pendingGauge) add(msgs, bytes int64) {
	p.held.Add(bytes + msgs*msgOverhead)
	p.m.PendingMessages.Set(float64(p.msgs.Add(msgs)))
	p.m.PendingBytes.Set(float64(p.bytes.Add(bytes)))
}

// reserve adds one message of n bytes if the total stays within max, and
// reports whether it did. One atomic add decides, so that connections on
// different pollers cannot both pass a check and together exceed max.
func (p *pendingGauge) reserve(n, max int64) bool {
	cost := n + msgOverhead
	if p.held.Add(cost) > max {
		p.held.Add(-cost)
		return false
	}
	p.m.PendingMessages.Set(float64(p.msgs.Add(1)))
	p.m.PendingBytes.Set(float64(p.bytes.Add(n)))
	return true
}

// Connecting is the number of upgrades whose connect GET waits for the API
// or is in flight (bounded by Options.MaxConnecting).
func (s *Server) Connecting() int { return int(s.connecting.Load()) }

// MaxConns is the bound on connected clients in force (Options.MaxConns,
// or its default).
func (s *Server) MaxConns() int { return s.opts.MaxConns }

// DefaultCompressMin is the default of Options.CompressMin: OCPP messages
// under about 200 bytes come out of deflate, on their own, a few bytes
// longer than they went in (BENCHMARKS.md, "Compression"), so below it
// deflating would only cost CPU.
const DefaultCompressMin = 256
