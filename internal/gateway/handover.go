package gateway

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lesismal/nbio"

	"github.com/ws2api/ws2api/internal/hub"
	"github.com/ws2api/ws2api/internal/upstream"
	"github.com/ws2api/ws2api/internal/ws"
)

// A binary upgrade passes every open client connection it can to the new
// process, with its state, so that neither the client nor the API sees it
// end (cmd/ws2api/upgrade.go carries the bytes between the processes):
//
//	old  HandOver: stops accepting; an op on a client that has left, and
//	     every broadcast, goes to the new process (succ); says which ids
//	     are coming (announce)
//	old  each connection, moving: its messages are still read, but queue
//	     for the new process; the request in flight is let finish, within
//	     the wait; pings go unanswered; once nothing is in flight and its
//	     backlog is written, it is detached from the loop (loop.Detach) and
//	     its state and socket are sent; the old process closes its own copy
//	     of the descriptor (no close frame, no DELETE)
//	new  Expect: ops on a coming id wait until it arrives (a broadcast
//	     until all have); Adopt: the connection carries on where it was,
//	     its waiting messages sent to the API, the one that was in flight
//	     with its Idempotency-Key; Arrived: the rest are not coming
//
// A connection that cannot pass (TLS, which this process terminates
// itself; an upgrade the API is still deciding; a backlog the client does
// not read within the wait) is closed with 1012 "service restart" as
// before, and its DELETE sent by the old process.

// Moving is one connection on its way to another process: what the new
// process needs to carry on as if nothing happened. Its JSON crosses the
// upgrade socket.
type Moving struct {
	ID          string            `json:"id"`
	Gone        bool              `json:"gone,omitempty"` // not coming after all: it closed, or was closed with 1012
	ConnID      string            `json:"conn_id,omitempty"`
	Path        string            `json:"path,omitempty"`
	RemoteAddr  string            `json:"remote_addr,omitempty"`
	Subprotocol string            `json:"subprotocol,omitempty"`
	UserAgent   string            `json:"user_agent,omitempty"`
	Groups      []string          `json:"groups,omitempty"`
	Header      []upstream.Header `json:"header,omitempty"` // X-Ws2api-Connection-Id and meta headers
	ConnectedAt time.Time         `json:"connected_at"`
	LastActive  time.Time         `json:"last_active"`
	PingEvery   time.Duration     `json:"ping_every,omitempty"`
	Deflate     bool              `json:"deflate,omitempty"`
	DropData    bool              `json:"drop_data,omitempty"`
	In          []byte            `json:"in,omitempty"`       // bytes read but not yet parsed: part of a frame, or frames
	Fragment    ws.Fragment       `json:"fragment,omitzero"`  // a fragmented message begun
	Waiting     []Waiting         `json:"waiting,omitempty"`  // messages not yet answered by the API, oldest first
	KeySeq      uint64            `json:"key_seq,omitempty"`  // the Idempotency-Keys used so far
	MsgsIn      uint64            `json:"msgs_in,omitempty"`  // counters, for Info
	MsgsOut     uint64            `json:"msgs_out,omitempty"` //
	// The rate limits' theoretical arrival times, relative to the moment
	// the state was taken (keepalive.go).
	RateTAT, CtlTAT, FloodTAT time.Duration `json:",omitempty"`
}

// Waiting is a client message the API has not answered. Key is its
// Idempotency-Key's sequence number if it was sent already (the new
// process sends it again with the same key), 0 if not.
type Waiting struct {
	Binary bool   `json:"bin,omitempty"`
	Body   []byte `json:"body,omitempty"`
	Key    uint64 `json:"key,omitempty"`
}

// moveStage is where a connection is in a hand-over (conn.moving).
type moveStage uint8

const (
	notMoving moveStage = iota
	moving              // messages queue for the new process; the request in flight may finish
	detaching           // off the loop: its state is being taken; an answer to it now is ignored
)

// HandoverWait bounds how long the old process waits for a connection's
// request in flight, a call waiting on it and its backlog: a request
// still in flight then passes as waiting (the API may see it twice, with
// one key), a call is answered 410, and a client that did not read its
// backlog is closed with 1012.
const HandoverWait = time.Second

// HandOver passes this process's open plain connections on (see the top
// of this file): succ serves the ops on clients that have left this
// process, and every broadcast, from now on; announce
// gets the ids that will come, send connections' states and their
// sockets' descriptors (valid during the call), a few hundred at a time,
// where a Moving with Gone set (and fd -1) is one not coming after all. It
// returns once each has been sent or closed, with the counts, or when ctx
// ends. If send fails (the new process is gone), it stops: the
// connections not yet on their way stay here, served as before, and
// Resume serves a listener again.
func (s *Server) HandOver(ctx context.Context, succ hub.Clients, announce func(ids []string) error,
	send func(ms []*Moving, fds []int) error) (moved, closed int, err error) {
	s.stopAccepting(true)
	s.successor.Store(&succ)

	var queued []*conn
	var ids []string
	for _, c := range s.reg.all() {
		c.mu.Lock()
		_, plain := c.sock.(*nbio.Conn)
		switch {
		case c.state != stOpen:
		case !plain:
			c.closeLocked(closeRestart)
			closed++
		default:
			queued = append(queued, c)
			ids = append(ids, c.id)
		}
		c.mu.Unlock()
	}
	if err := announce(ids); err != nil {
		s.successor.Store(nil) // nothing moved: this process serves on (Resume)
		return 0, closed, err
	}

	type sent struct {
		m    *Moving
		fd   int
		nc   *nbio.Conn
		fail error
	}
	out := make(chan sent, len(queued))
	var unsent atomic.Int64 // moving, not yet sent: at most handoverWindow
	var broken atomic.Bool  // a send failed: the new process is gone
	var wg sync.WaitGroup
	wg.Go(func() {
		var batch []sent
		var ms []*Moving
		var fds []int
		for x := range out {
			// What is ready goes in one message: a system call and a
			// wake-up of the new process for many connections.
			batch = append(batch[:0], x)
		more:
			for len(batch) < sendBatch {
				select {
				case y, ok := <-out:
					if !ok {
						break more
					}
					batch = append(batch, y)
				default:
					break more
				}
			}
			ms, fds = ms[:0], fds[:0]
			for _, y := range batch {
				fd := -1
				if y.fail == nil {
					fd = y.fd
				}
				ms, fds = append(ms, y.m), append(fds, fd)
			}
			if serr := send(ms, fds); serr != nil && err == nil {
				err = serr
				broken.Store(true)
			}
			for _, y := range batch {
				if y.nc != nil {
					s.loop.Later(y.nc.Hash(), closeTask{y.nc})
				}
			}
			unsent.Add(-int64(len(batch)))
		}
	})
	type going struct {
		c     *conn
		until time.Time // the end of its wait (HandoverWait)
	}
	var active []going
	var detached sync.WaitGroup
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for len(queued) > 0 || len(active) > 0 {
		if broken.Load() {
			// The rest stay: nothing more goes to a process that is gone.
			for _, g := range active {
				g.c.stay()
			}
			active, queued = nil, nil
			break
		}
		now := time.Now()
		// A window of connections moves at a time: each one's pause is
		// the window's passage, not the whole hand-over's.
		for len(queued) > 0 && unsent.Load() < handoverWindow {
			c := queued[0]
			queued = queued[1:]
			unsent.Add(1)
			c.mu.Lock()
			if c.state == stOpen {
				c.moving = moving
			}
			c.mu.Unlock()
			active = append(active, going{c, now.Add(HandoverWait)})
		}
		rest := active[:0]
		for _, g := range active {
			c := g.c
			switch c.handOverStep(!now.Before(g.until)) {
			case stepWait:
				rest = append(rest, g)
			case stepGone:
				out <- sent{m: &Moving{ID: c.id, Gone: true}, fail: errGone}
				closed++
			case stepDetach:
				moved++
				detached.Add(1)
				nc := c.sock.(*nbio.Conn)
				s.loop.Detach(nc, func(rest []byte, fd int, derr error) {
					defer detached.Done()
					m := c.takeState(rest)
					if derr != nil {
						s.log.Warn("upgrade: could not detach a connection; it is lost to both processes", "id", m.ID, "error", derr)
						out <- sent{m: &Moving{ID: m.ID, Gone: true}, nc: nc, fail: derr}
						return
					}
					out <- sent{m: m, fd: fd, nc: nc}
				})
			}
		}
		active = rest
		if len(queued) == 0 && len(active) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			for _, g := range active {
				g.c.abortMove()
			}
			for _, c := range queued {
				c.abortMove()
			}
			detached.Wait()
			close(out)
			wg.Wait()
			return moved, closed + len(active) + len(queued), ctx.Err()
		case <-tick.C:
		}
	}
	detached.Wait()
	close(out)
	wg.Wait()
	if err != nil {
		s.successor.Store(nil) // this process serves its clients again
	}
	return moved, closed, err
}

// Resume serves again after a hand-over that failed (HandOver's error):
// ln is a new listener on the same socket (the old one was closed).
func (s *Server) Resume(ln net.Listener) error {
	s.successor.Store(nil)
	s.mu.Lock()
	s.draining.Store(false)
	s.restarting.Store(false)
	s.mu.Unlock()
	return s.Serve(ln)
}

// leaving reports whether c is on its way to the next process, or gone
// there: an op on it goes after it.
func (c *conn) leaving() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.moving == detaching || c.state == stMoved
}

// stay keeps c here: the hand-over stopped before it was on its way.
func (c *conn) stay() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.moving == moving {
		c.stopMovingLocked()
	}
}

// handoverWindow bounds the connections moving at once (HandOver): the
// others carry on in the old process meanwhile. sendBatch bounds those
// sent in one message (SCM_RIGHTS carries at most 253 descriptors).
const (
	handoverWindow = 4096
	sendBatch      = 200
)

var errGone = errors.New("not coming")

type closeTask struct{ nc *nbio.Conn }

func (t closeTask) RunLater() { _ = t.nc.Close() }

type handOverStep uint8

const (
	stepWait   handOverStep = iota
	stepDetach              // c.moving is now detaching
	stepGone                // it closed, or was closed with 1012
)

// handOverStep says whether c can be detached now: nothing in flight to
// the API, no call waiting, its backlog written; late (the wait is over)
// detaches it with a request still in flight, ends its calls, and closes
// it with 1012 if its backlog is still there.
func (c *conn) handOverStep(late bool) handOverStep {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stOpen {
		c.stopMovingLocked()
		return stepGone
	}
	inFlight := c.api == apiPosting && c.waiting == waitNone
	if !late && (inFlight || len(c.calls) > 0 || c.outq.Load() != 0) {
		return stepWait
	}
	if c.outq.Load() != 0 {
		c.stopMovingLocked()
		c.closeLocked(closeRestart)
		return stepGone
	}
	c.wakeCallsLocked()
	c.moving = detaching
	return stepDetach
}

// abortMove closes c with 1012, as if it had never been moving.
func (c *conn) abortMove() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.moving == detaching {
		return // on its way: its poller finishes it
	}
	c.stopMovingLocked()
	c.closeLocked(closeRestart)
}

// stopMovingLocked makes c an ordinary connection of this process again
// (it closed, or is closed with 1012): its queued messages go to the API.
func (c *conn) stopMovingLocked() {
	if c.moving == notMoving {
		return
	}
	c.moving = notMoving
	if c.api == apiIdle && len(c.queue) > 0 {
		c.nextLocked()
	}
}

// takeState ends c's life in this process and returns what the next one
// needs; rest is what the kernel still held. On c's poller, off the loop.
func (c *conn) takeState(rest []byte) *Moving {
	s := c.s
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	t := int64(now.Sub(s.epoch))
	m := &Moving{
		ID: c.id, ConnID: c.connID, Path: c.path, RemoteAddr: c.remoteAddr, Subprotocol: c.subprotocol,
		UserAgent: c.userAgent, Groups: append([]string(nil), c.groups...), Header: c.apiHeader,
		ConnectedAt: c.connectedAt, LastActive: time.Unix(0, c.lastActive.Load()), PingEvery: c.pingEvery,
		Deflate: c.rd.Deflate, DropData: c.dropData, In: append(append([]byte(nil), c.in...), rest...),
		Fragment: c.rd.Fragment(), KeySeq: c.keySeq, MsgsIn: c.msgsIn.Load(), MsgsOut: c.msgsOut.Load(),
		RateTAT: time.Duration(c.rateTAT - t), CtlTAT: time.Duration(c.ctlTAT - t), FloodTAT: time.Duration(c.floodTAT - t),
	}
	msgs, bytes := int64(0), int64(0)
	if c.api == apiPosting {
		// In flight or waiting to go again: the next process sends it
		// with its key. An answer that still comes here is ignored
		// (answered), and its buffer left to the collector: the API
		// client may be writing it.
		if c.timer != nil {
			c.timer.Stop()
		}
		if c.waiting == waitBackoff {
			s.retryMu.Lock()
			delete(s.retrying, c)
			s.retryMu.Unlock()
		}
		c.waiting = waitNone
		_ = s.opts.API.Cancel(&c.req)
		m.Waiting = append(m.Waiting, Waiting{Binary: c.sending.op == ws.OpBinary, Body: append([]byte(nil), *c.sending.buf...), Key: c.req.Key.Seq})
		msgs, bytes = msgs+1, bytes+int64(len(*c.sending.buf))
		c.sending = message{}
	}
	for i, msg := range c.queue {
		m.Waiting = append(m.Waiting, Waiting{Binary: msg.op == ws.OpBinary, Body: append([]byte(nil), *msg.buf...)})
		msgs, bytes = msgs+1, bytes+int64(len(*msg.buf))
		putBuf(msg.buf)
		c.queue[i] = message{}
	}
	c.queue = nil
	c.pendingBytes = 0
	s.pending.add(-msgs, -bytes)
	c.setAPILocked(apiDone)

	c.state = stMoved
	c.in = nil
	c.retireOut()
	s.reg.remove(c) // (the record of it in Redis, if any, the next process rewrites)
	c.leaveAllLocked()
	s.deletesDue.Add(-1)
	s.m.Connections.Dec()
	if c.admitted {
		c.admitted = false
		s.admitted.Add(-1)
	}
	if c.closeTimer != nil {
		c.closeTimer.Stop()
	}
	return m
}

// HandingOver reports a hand-over under way, in either process: an op on
// clients may wait (for the other process, or for its client's arrival),
// so it must not run on the event loop (control.Hub).
func (s *Server) HandingOver() bool { return s.expecting.Load() || s.successor.Load() != nil }

// next returns where ops on clients go while this process hands its
// connections over, nil before.
func (s *Server) next() hub.Clients {
	if p := s.successor.Load(); p != nil {
		return *p
	}
	return nil
}

// AwaitHandover readies a process started by an upgrade, before it
// serves: until the old process has said which ids are coming (Expect), an
// op on a client this process does not hold waits, and then, for an id
// that is coming, until it has come; a broadcast waits until all have
// (Arrived). Each wait is bounded by ArrivalWait.
func (s *Server) AwaitHandover() {
	s.comingMu.Lock()
	defer s.comingMu.Unlock()
	s.announced = make(chan struct{})
	s.allArrived = make(chan struct{})
	s.expecting.Store(true)
}

// ArrivalWait bounds an op's wait for a connection coming from the old
// process, and a broadcast's for all of them: longer than a hand-over
// takes (1.4 s for 15,000 connections on two cores, some 20 s projected
// for 250,000). Only a hand-over that stalls reaches it: one whose old
// process dies ends every wait at once (Arrived).
const ArrivalWait = time.Minute

// Expect is the old process's list of the ids that are coming.
func (s *Server) Expect(ids []string) {
	s.comingMu.Lock()
	defer s.comingMu.Unlock()
	s.coming = make(map[string]chan struct{}, len(ids))
	for _, id := range ids {
		s.coming[id] = make(chan struct{})
	}
	if s.announced != nil {
		close(s.announced)
		s.announced = nil
	}
}

// arrivedLocked releases the ops waiting for id. comingMu is held.
func (s *Server) arrivedLocked(id string) {
	if ch, ok := s.coming[id]; ok {
		close(ch)
		delete(s.coming, id)
	}
}

// Arrived ends the hand-over: every connection that was coming has come,
// or is not coming (the old process may also have died: the link closed);
// taken and closed are the old process's counts.
func (s *Server) Arrived(taken, closed int) {
	s.comingMu.Lock()
	defer s.comingMu.Unlock()
	for id := range s.coming {
		s.arrivedLocked(id)
	}
	for _, ch := range []*chan struct{}{&s.announced, &s.allArrived} {
		if *ch != nil {
			close(*ch)
			*ch = nil
		}
	}
	s.expecting.Store(false)
	s.m.Upgraded["taken_over"].Add(taken)
	s.m.Upgraded["closed"].Add(closed)
}

// awaitArrival waits, while a hand-over is under way, until id is known
// not to be coming or has come; awaitAll until every one has.
func (s *Server) awaitArrival(id string) {
	if !s.expecting.Load() {
		return
	}
	timeout := time.After(ArrivalWait)
	s.comingMu.Lock()
	announced := s.announced
	s.comingMu.Unlock()
	if announced != nil {
		select {
		case <-announced:
		case <-timeout:
			return
		}
	}
	s.comingMu.Lock()
	ch := s.coming[id]
	s.comingMu.Unlock()
	if ch != nil {
		select {
		case <-ch:
		case <-timeout:
		}
	}
}

func (s *Server) awaitAll() {
	if !s.expecting.Load() {
		return
	}
	s.comingMu.Lock()
	ch := s.allArrived
	s.comingMu.Unlock()
	if ch != nil {
		select {
		case <-ch:
		case <-time.After(ArrivalWait):
		}
	}
}

// Adopt carries on a connection another process passed over, its socket
// f (which Adopt closes), where it was. m.Gone ends the wait for one
// that is not coming.
func (s *Server) Adopt(m *Moving, f *os.File) error {
	if m.Gone {
		s.comingMu.Lock()
		s.arrivedLocked(m.ID)
		s.comingMu.Unlock()
		return nil
	}
	defer func() {
		s.comingMu.Lock()
		s.arrivedLocked(m.ID)
		s.comingMu.Unlock()
	}()
	nconn, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return err
	}
	c := &conn{s: s, connID: m.ConnID, remoteAddr: m.RemoteAddr}
	c.mu.Lock() // before the loop has it: its callbacks wait until c is whole
	defer c.mu.Unlock()
	nc, err := s.loop.Add(nconn, c)
	if err != nil {
		return err
	}
	c.sock = nc
	now := time.Now()
	t := int64(now.Sub(s.epoch))
	c.state, c.upgraded, c.admitted = stOpen, true, true
	s.admitted.Add(1)
	c.id, c.path, c.subprotocol, c.userAgent = m.ID, m.Path, m.Subprotocol, intern(m.UserAgent)
	c.apiHeader, c.connectedAt, c.pingEvery = m.Header, m.ConnectedAt, m.PingEvery
	c.rd.Deflate, c.dropData, c.keySeq = m.Deflate, m.DropData, m.KeySeq
	c.rd.Resume(m.Fragment)
	c.rateTAT, c.ctlTAT, c.floodTAT = t+int64(m.RateTAT), t+int64(m.CtlTAT), t+int64(m.FloodTAT)
	c.msgsIn.Store(m.MsgsIn)
	c.msgsOut.Store(m.MsgsOut)
	c.lastActive.Store(m.LastActive.UnixNano())
	c.lastRead.Store(s.clock.Load()) // the pause was ours, not the client's
	c.setAPILocked(apiIdle)
	s.deletesDue.Add(1)
	s.m.Connections.Inc()
	replaced := false
	if newer := s.reg.swap(c); newer != nil {
		// The client connected again meanwhile, to this process: the
		// newer connection wins, as it would have in the old one.
		s.reg.swap(newer)
		replaced = true
	} else {
		if s.opts.Presence != nil {
			s.opts.Presence.Connected(c.id, c.connID)
		}
		for _, g := range m.Groups {
			c.joinLocked(g)
		}
	}
	for _, w := range m.Waiting {
		op := ws.OpText
		if w.Binary {
			op = ws.OpBinary
		}
		msg := message{op: op, buf: getBuf(w.Body)}
		c.pendingBytes += int64(len(w.Body))
		s.pending.add(1, int64(len(w.Body)))
		switch {
		case c.api != apiIdle:
			c.queue = append(c.queue, msg)
		case w.Key != 0: // sent already: again, with its key
			c.setAPILocked(apiPosting)
			c.startPOSTKeyedLocked(msg, upstream.Key{Prefix: c.connID, Seq: w.Key})
		default:
			c.setAPILocked(apiPosting)
			c.startPOSTLocked(msg)
		}
	}
	if replaced {
		c.closeLocked(closeReplaced)
	}
	if len(m.In) > 0 {
		c.readFramesLocked(m.In)
	}
	return nil
}
