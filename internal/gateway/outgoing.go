package gateway

import (
	"cmp"
	"errors"
	"math"
	"net"
	"slices"
	"time"

	"github.com/ws2api/ws2api/internal/metrics"
	"github.com/ws2api/ws2api/internal/ws"
)

// What waits to be written to clients is bounded twice: per client by
// Options.MaxOutgoingBytes (nbio's MaxWriteBufferSize, or the TLS socket's
// own cap, closes the client on overflow) and in total by
// Options.MaxOutgoingTotal, here.
//
// Each connection counts its backlog, c.outq: the bytes handed to its
// socket's Write that the socket has not yet given to the kernel. A write
// adds its length before it is made; the socket reports what the kernel
// took (nbio's OnWrittenSize, through loop.WriteObserver, or the TLS
// socket's writer) and that is taken off. s.outgoing is the sum over all
// connections, what MaxOutgoingTotal bounds and ws2api_outgoing_bytes
// shows. A client that reads keeps a backlog near zero: its bytes go
// straight to the kernel. One that stops reading keeps all of its bytes
// in ws2api's memory, and so does every broadcast it is sent.
//
// A write that would take the total past MaxOutgoingTotal first sheds:
// the clients whose backlogs are oldest are closed at once, their backlog
// dropped, until the total is down to three quarters of the cap (so that
// the next writes do not shed again at once). They are slow consumers:
// the API gets their DELETE with 1008, counted as outgoing_total. The
// well-behaved clients, with nothing waiting, keep receiving.
//
// When its socket closes, a connection's backlog is retired: taken off
// the total once, and its counter set to outRetired, so that a write still
// racing with the close cannot count again.

// outRetired is c.outq once its socket has closed: far below zero, so
// that any write's addition leaves it negative.
const outRetired = math.MinInt64 / 2

// errShed closes a connection shed to keep MaxOutgoingTotal.
var errShed = errors.New("slow consumer: gateway outgoing total reached")

var closeOutgoingTotal = closeInfo{code: ws.ClosePolicyViolation, reason: "slow consumer", cause: metrics.CauseOutgoingTotal}

// writeLocked writes hdr then payload (hdr may be nil) to c's socket,
// counted in its backlog. c.mu is held. Two writes rather than nbio's
// Writev, which drops the buffers after a partial one and reports no
// write it completed.
func (c *conn) writeLocked(hdr, payload []byte) error {
	s := c.s
	n := int64(len(hdr) + len(payload))
	if s.outgoing.Load()+n > s.opts.MaxOutgoingTotal && !s.shed(c, n) {
		return errShed
	}
	before := c.outq.Add(n) - n
	if before < 0 { // retired: the socket has closed
		c.outq.Add(-n)
		return net.ErrClosed
	}
	s.outgoing.Add(n)
	for _, b := range [2][]byte{hdr, payload} {
		if len(b) == 0 {
			continue
		}
		if _, err := c.sock.Write(b); err != nil {
			c.taken(int(n))
			return err
		}
		n -= int64(len(b))
	}
	if before == 0 && c.outq.Load() > 0 {
		// A backlog begins: the kernel did not take all of this write.
		c.backlogSince.Store(time.Now().UnixNano())
		c.backlogFanout.Store(c.fanout)
	}
	return nil
}

// OnWritten takes n bytes the kernel took off c's backlog
// (loop.WriteObserver; called under the socket's lock, so atomics only).
func (c *conn) OnWritten(n int) { c.taken(n) }

func (c *conn) taken(n int) {
	if c.outq.Add(-int64(n)) >= 0 {
		c.s.outgoing.Add(-int64(n))
	}
}

// retireOut takes c's backlog off the total for good: its socket has
// closed, and its buffers with it.
func (c *conn) retireOut() {
	if old := c.outq.Swap(outRetired); old > 0 {
		c.s.outgoing.Add(-old)
	}
}

// shed closes the clients whose backlogs have waited longest (the largest
// first among those one broadcast began) until the total,
// with need bytes more, is within three quarters of MaxOutgoingTotal. The
// age decides first, not the size: a client that reads has emptied its
// backlog since a client that stopped began to pile up, however large its
// own is at this moment (a reader starved of CPU once held more than the
// stalled clients and was shed). Within one fan-out the ages differ by the
// order of writing, so there the size decides: the order once shed a
// reader written first in the broadcast that crossed the total. c, whose
// lock is held, is the writer: it reports whether c is still open. It
// takes no other connection's lock: a shed client is marked, its socket
// shut down from this goroutine (end: its poller closes it), and its
// OnClose does the rest.
func (s *Server) shed(c *conn, need int64) bool {
	s.shedMu.Lock()
	defer s.shedMu.Unlock()
	limit := s.opts.MaxOutgoingTotal
	if s.outgoing.Load()+need <= limit {
		return c.outq.Load() >= 0 // another shed made room
	}
	target := limit - limit/4 - need
	type backlog struct {
		c      *conn
		n      int64
		since  int64
		fanout uint64
	}
	var backlogs []backlog
	for i := range s.reg.shards {
		sh := &s.reg.shards[i]
		sh.mu.RLock()
		for _, o := range sh.m {
			if n := o.outq.Load(); n > 0 {
				backlogs = append(backlogs, backlog{o, n, o.backlogSince.Load(), o.backlogFanout.Load()})
			}
		}
		sh.mu.RUnlock()
	}
	// Oldest first; the backlogs one broadcast's fan-out began are as old
	// as its first, and the largest of them goes first: the kernel has
	// taken more of the same bytes from a client that reads, even one
	// whose process has not run since.
	first := map[uint64]int64{}
	for _, b := range backlogs {
		if f, ok := first[b.fanout]; b.fanout != 0 && (!ok || b.since < f) {
			first[b.fanout] = b.since
		}
	}
	for i := range backlogs {
		if f, ok := first[backlogs[i].fanout]; ok {
			backlogs[i].since = f
		}
	}
	slices.SortFunc(backlogs, func(a, b backlog) int {
		return cmp.Or(cmp.Compare(a.since, b.since), cmp.Compare(a.fanout, b.fanout), cmp.Compare(b.n, a.n))
	})
	closed := 0
	for _, b := range backlogs {
		if s.outgoing.Load() <= target {
			break
		}
		b.c.shed.Store(true) // OnClose reads it: the close's cause
		b.c.retireOut()      // first: from here writeLocked writes nothing more to it
		end(b.c.sock)
		closed++
	}
	if closed > 0 {
		s.warn.Warn(s.log, "outgoing total reached: clients with the oldest backlogs closed as slow consumers",
			"max_outgoing_total", limit, "closed", closed)
	}
	return c.outq.Load() >= 0
}

// Outgoing returns the bytes waiting to be written to clients, beyond what
// the kernel holds: what MaxOutgoingTotal bounds (ws2api_outgoing_bytes).
func (s *Server) Outgoing() int64 { return s.outgoing.Load() }
