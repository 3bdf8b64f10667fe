package gateway

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ws2api/ws2api/internal/metrics"
	"github.com/ws2api/ws2api/internal/ws"
)

// ErrNotConnected is returned for an id with no open connection on this
// node.
var ErrNotConnected = errors.New("not connected")

// Push sends one message to the client holding id.
func (s *Server) Push(id string, binary bool, data []byte) error {
	c := s.reg.get(id)
	if c == nil {
		s.m.PushesNotFound.Inc()
		return ErrNotConnected
	}
	op := ws.OpText
	if binary {
		op = ws.OpBinary
	}
	if err := c.send(op, data, metrics.SourcePush); err != nil {
		s.m.PushesNotFound.Inc()
		return err
	}
	s.m.Pushes.Inc()
	return nil
}

// Info is what the control API tells of one connection.
type Info struct {
	ID              string    `json:"id"`
	ConnectionID    string    `json:"connection_id"`
	ConnectedAt     time.Time `json:"connected_at"`
	LastActiveAt    time.Time `json:"last_active_at"`
	RemoteAddr      string    `json:"remote_addr"`
	Subprotocol     string    `json:"subprotocol"`
	PendingMessages int       `json:"pending_messages"`
	PendingBytes    int64     `json:"pending_bytes"`
}

// Info describes the connection holding id.
func (s *Server) Info(id string) (Info, error) {
	c := s.reg.get(id)
	if c == nil {
		return Info{}, ErrNotConnected
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stOpen {
		return Info{}, ErrNotConnected
	}
	pending := len(c.queue)
	if c.busy && !c.deleteSent {
		pending++ // the one in flight
	}
	return Info{
		ID:              c.id,
		ConnectionID:    c.connID,
		ConnectedAt:     c.connectedAt.UTC(),
		LastActiveAt:    time.Unix(0, c.lastActive.Load()).UTC(),
		RemoteAddr:      c.remoteAddr,
		Subprotocol:     c.subprotocol,
		PendingMessages: pending,
		PendingBytes:    c.pendingBytes,
	}, nil
}

// Kick closes the client holding id with code and reason; the API gets the
// DELETE as for any close.
func (s *Server) Kick(id string, code int, reason string) error {
	c := s.reg.get(id)
	if c == nil {
		return ErrNotConnected
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stOpen {
		return ErrNotConnected
	}
	c.closeLocked(closeInfo{code: code, reason: reason, cause: metrics.CauseKick})
	return nil
}

// Broadcast sends one message to every open client and returns how many it
// was written to. The frame is encoded once; the writes are spread over the
// CPUs.
func (s *Server) Broadcast(binary bool, data []byte) int {
	s.m.Broadcasts.Inc()
	op := ws.OpText
	if binary {
		op = ws.OpBinary
	}
	frame := ws.AppendFrame(make([]byte, 0, len(data)+ws.MaxHeaderLen), op, data, nil)
	conns := s.reg.all()
	workers := min(runtime.GOMAXPROCS(0), 1+len(conns)/256)
	var next, sent atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(256)) - 256
				if i >= len(conns) {
					return
				}
				for _, c := range conns[i:min(i+256, len(conns))] {
					if c.sendFrame(frame) {
						sent.Add(1)
					}
				}
			}
		})
	}
	wg.Wait()
	n := sent.Load()
	s.m.MessagesOut[metrics.SourceBroadcast].AddInt64(n)
	s.m.BytesOut.AddInt64(n * int64(len(data)))
	return int(n)
}

// sendFrame writes an encoded data frame if the connection is open.
func (c *conn) sendFrame(frame []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stOpen {
		return false
	}
	_, err := c.nc.Write(frame)
	return err == nil
}
