package gateway

import (
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ws2api/ws2api/internal/http1"
	"github.com/ws2api/ws2api/internal/hub"
	"github.com/ws2api/ws2api/internal/metrics"
	"github.com/ws2api/ws2api/internal/upstream"
	"github.com/ws2api/ws2api/internal/ws"
)

// What the control API calls: push to one client or many, describe one,
// close one, broadcast to all or to a group, manage groups and meta
// headers (the contract of internal/hub).

var _ hub.Clients = (*Server)(nil)

// open returns the open connection holding id, locked; the caller unlocks.
// One leaving for another process is not open here (handover.go): the op
// goes after it.
func (s *Server) open(id string) (*conn, error) {
	c := s.reg.get(id)
	if c == nil {
		return nil, hub.ErrNotConnected
	}
	c.mu.Lock()
	if c.state != stOpen || c.moving == detaching {
		c.mu.Unlock()
		return nil, hub.ErrNotConnected
	}
	return c, nil
}

func opcode(binary bool) ws.Opcode {
	if binary {
		return ws.OpBinary
	}
	return ws.OpText
}

// Push sends one message to the client holding id.
func (s *Server) Push(id string, binary bool, data []byte) error {
	s.awaitArrival(id)
	err := s.pushHere(id, binary, data)
	if n := s.next(); n != nil && err == hub.ErrNotConnected {
		return n.Push(id, binary, data) // it moved on meanwhile (handover.go)
	}
	return err
}

func (s *Server) pushHere(id string, binary bool, data []byte) error {
	c := s.reg.get(id)
	if c == nil {
		s.m.PushesNotFound.Inc()
		return hub.ErrNotConnected
	}
	if err := c.send(opcode(binary), data, metrics.SourcePush); err != nil {
		s.m.PushesNotFound.Inc()
		return err
	}
	s.m.Pushes.Inc()
	return nil
}

// PushMany sends one message to each of ids and returns those that are not
// connected. The frame is encoded once.
func (s *Server) PushMany(ids []string, binary bool, data []byte) (notConnected []string) {
	s.awaitAll()
	frame := s.newShared(opcode(binary), data)
	for _, id := range ids {
		if c := s.reg.get(id); c != nil && c.sendFrame(frame) {
			s.m.Pushes.Inc()
			s.m.MessagesOut[metrics.SourcePush].Inc()
			s.m.BytesOut.Add(len(data))
			continue
		}
		s.m.PushesNotFound.Inc()
		notConnected = append(notConnected, id)
	}
	if n := s.next(); n != nil && len(notConnected) > 0 {
		return n.PushMany(notConnected, binary, data) // they moved on meanwhile (handover.go)
	}
	return notConnected
}

// Info describes the connection holding id.
func (s *Server) Info(id string) (hub.Info, error) {
	s.awaitArrival(id)
	c, err := s.open(id)
	if err != nil {
		if n := s.next(); n != nil {
			return n.Info(id)
		}
		return hub.Info{}, err
	}
	defer c.mu.Unlock()
	pending := c.pendingMsgsLocked()
	meta := map[string]string{}
	for _, h := range c.apiHeader {
		if name, ok := strings.CutPrefix(h.Name, HeaderMetaPrefix); ok {
			meta[name] = h.Value
		}
	}
	return hub.Info{
		ID:              c.id,
		ConnectionID:    c.connID,
		ConnectedAt:     c.connectedAt.UTC(),
		LastActiveAt:    time.Unix(0, c.lastActive.Load()).UTC(),
		RemoteAddr:      c.remoteAddr,
		UserAgent:       c.userAgent,
		Subprotocol:     c.subprotocol,
		Groups:          append([]string{}, c.groups...),
		Meta:            meta,
		MessagesIn:      c.msgsIn.Load(),
		MessagesOut:     c.msgsOut.Load(),
		PendingMessages: pending,
		PendingBytes:    c.pendingBytes,
		Node:            s.node,
	}, nil
}

// Kick closes the client holding id with code and reason; the API gets the
// DELETE as for any close.
func (s *Server) Kick(id string, code int, reason string) error {
	s.awaitArrival(id)
	c, err := s.open(id)
	if err != nil {
		if n := s.next(); n != nil {
			return n.Kick(id, code, reason) // it moved on meanwhile (handover.go)
		}
		return err
	}
	defer c.mu.Unlock()
	c.closeLocked(closeInfo{code: code, reason: reason, cause: metrics.CauseKick})
	return nil
}

// CloseReplaced closes connection connID of id with 4000 "replaced", as
// when another connection takes its id: another node holds it now. A newer
// connection of id on this node is left alone. The API gets no DELETE for
// it (it saw the new connection's GET).
func (s *Server) CloseReplaced(id, connID string) {
	if c, err := s.open(id); err == nil {
		if c.connID == connID {
			c.closeLocked(closeReplaced)
		}
		c.mu.Unlock()
	}
}

// Join adds the client holding id to a group.
func (s *Server) Join(id, group string) error {
	s.awaitArrival(id)
	if err := ValidGroup(group); err != nil {
		return err
	}
	c, err := s.open(id)
	if err != nil {
		if n := s.next(); n != nil {
			return n.Join(id, group)
		}
		return err
	}
	defer c.mu.Unlock()
	c.joinLocked(group)
	return nil
}

// Leave removes the client holding id from a group; it reports whether it
// was in it.
func (s *Server) Leave(id, group string) (bool, error) {
	s.awaitArrival(id)
	if err := ValidGroup(group); err != nil {
		return false, err
	}
	c, err := s.open(id)
	if err != nil {
		if n := s.next(); n != nil {
			return n.Leave(id, group)
		}
		return false, err
	}
	defer c.mu.Unlock()
	return c.leaveLocked(group), nil
}

// Groups returns every group and its member count.
func (s *Server) Groups() map[string]int { return s.groups.sizes() }

// GroupMembers returns up to limit ids of a group's members, in order,
// after the id after; next is the cursor for the page after, "" at the
// end.
func (s *Server) GroupMembers(group, after string, limit int) (ids []string, next string, err error) {
	if err := ValidGroup(group); err != nil {
		return nil, "", err
	}
	all := make([]string, 0)
	for _, c := range s.groups.members(group) {
		all = append(all, c.id)
	}
	slices.Sort(all)
	i, _ := slices.BinarySearch(all, after)
	if i < len(all) && all[i] == after {
		i++
	}
	end := min(i+limit, len(all))
	ids = all[i:end]
	if end < len(all) {
		next = all[end-1]
	}
	return ids, next, nil
}

// SetMeta sets the client's X-Ws2api-Meta-<name> header to value, or
// removes it when remove is set. Requests already in flight keep the old
// headers.
func (s *Server) SetMeta(id, name, value string, remove bool) error {
	s.awaitArrival(id)
	if !http1.ValidToken(name) || !http1.ValidFieldValue(value) || len(value) > 8<<10 {
		return hub.ErrBadMeta
	}
	full := http1.CanonicalName(HeaderMetaPrefix + name)
	c, err := s.open(id)
	if err != nil {
		if n := s.next(); n != nil {
			return n.SetMeta(id, name, value, remove)
		}
		return err
	}
	defer c.mu.Unlock()
	// A new slice: the request in flight may still be reading the old one.
	h := make([]upstream.Header, 0, len(c.apiHeader)+1)
	for _, f := range c.apiHeader {
		if f.Name != full {
			h = append(h, f)
		}
	}
	if !remove {
		h = append(h, upstream.Header{Name: full, Value: value})
	}
	c.apiHeader = h
	return nil
}

// Broadcast sends one message to every open client and returns how many it
// was written to.
func (s *Server) Broadcast(binary bool, data []byte) int {
	if n := s.next(); n != nil {
		return n.Broadcast(binary, data)
	}
	s.awaitAll()
	return s.fanOut(s.reg.all(), binary, data)
}

// BroadcastGroup sends one message to every open client in group.
func (s *Server) BroadcastGroup(group string, binary bool, data []byte) (int, error) {
	if n := s.next(); n != nil {
		return n.BroadcastGroup(group, binary, data)
	}
	s.awaitAll()
	if err := ValidGroup(group); err != nil {
		return 0, err
	}
	return s.fanOut(s.groups.members(group), binary, data), nil
}

// fanOut writes one frame, encoded once, to every connection, the writes
// spread over the CPUs. It returns the number of clients written to: not
// those closed, nor those shed during the broadcast for their backlog
// (outgoing.go), which will never get it.
func (s *Server) fanOut(conns []*conn, binary bool, data []byte) int {
	s.m.Broadcasts.Inc()
	frame := s.newShared(opcode(binary), data)
	const chunk = 256
	workers := min(runtime.GOMAXPROCS(0), 1+len(conns)/chunk)
	written := make([]bool, len(conns))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(chunk)) - chunk
				if i >= len(conns) {
					return
				}
				for j := i; j < min(i+chunk, len(conns)); j++ {
					written[j] = conns[j].sendFrame(frame)
				}
			}
		})
	}
	wg.Wait()
	var n int64
	var away []string
	for j, c := range conns {
		switch {
		case written[j] && c.outq.Load() >= 0: // not retired since: shed, or closed
			n++
		case !written[j] && s.next() != nil && c.leaving():
			away = append(away, c.id)
		}
	}
	if next := s.next(); len(away) > 0 && next != nil {
		// A hand-over began during the fan-out: those already on their
		// way get it from the next process (handover.go).
		n += int64(len(away) - len(next.PushMany(away, binary, data)))
	}
	s.m.MessagesOut[metrics.SourceBroadcast].AddInt64(n)
	s.m.BytesOut.AddInt64(n * int64(len(data)))
	return int(n)
}

// sharedFrame is one message encoded once for many clients: as it is, and
// deflated for those that negotiated compression (encoded by the first
// of them to need it).
type sharedFrame struct {
	seq      uint64 // this fan-out's number: the backlogs it begins are as old as each other (shed)
	op       ws.Opcode
	data     []byte
	plain    []byte
	once     sync.Once
	deflated []byte
	wire     int // len of deflated's payload
}

func (s *Server) newShared(op ws.Opcode, data []byte) *sharedFrame {
	return &sharedFrame{seq: s.fanouts.Add(1), op: op, data: data,
		plain: ws.AppendFrame(make([]byte, 0, len(data)+ws.MaxHeaderLen), op, data, nil)}
}

// forConn returns the frame as c takes it.
func (f *sharedFrame) forConn(c *conn) []byte {
	if !c.compressesLocked(f.op, len(f.data)) {
		return f.plain
	}
	f.once.Do(func() {
		if deflated, smaller := deflateSmaller(nil, f.data); smaller {
			f.wire = len(deflated)
			f.deflated = ws.AppendCompressedFrame(make([]byte, 0, len(deflated)+ws.MaxHeaderLen), f.op, deflated)
		}
	})
	if f.deflated == nil {
		return f.plain // deflating made it no smaller: it goes as it is
	}
	c.s.m.CompressedOutMessage(f.wire)
	return f.deflated
}

// sendFrame writes a shared data frame if the connection is open.
func (c *conn) sendFrame(frame *sharedFrame) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stOpen || c.moving == detaching {
		return false
	}
	c.fanout = frame.seq
	err := c.writeLocked(nil, frame.forConn(c))
	c.fanout = 0
	if err != nil {
		return false
	}
	c.msgsOut.Add(1)
	return true
}
