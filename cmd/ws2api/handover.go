package main

import (
	be "encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/ws2api/ws2api/internal/cluster"
	"github.com/ws2api/ws2api/internal/gateway"
	"github.com/ws2api/ws2api/internal/hub"
)

// The upgrade link: after the listeners (upgrade.go), the two processes
// talk in records over their Unix socket, each a 4-byte big-endian length
// and a JSON rec. A connection's record carries its socket (SCM_RIGHTS,
// on the record's first bytes).
//
//	new -> old  ready                 the new process serves
//	old -> new  coming {ids}          the connections about to pass
//	old -> new  conns {states} + fds  connections (or gone: not coming),
//	                                  a few hundred at a time
//	old -> new  op {n, op | many}     an op on clients that reached the old
//	new -> old  result {n, ...}       its result
//	old -> new  done {taken, closed}  every connection passed or closed
//	new -> old  settled               their presence is in Redis (at once
//	                                  without a cluster): the old may go
//
// The old process keeps forwarding ops until it exits; the new one serves
// them until the link closes.

type rec struct {
	Type   string            `json:"t"`
	IDs    []string          `json:"ids,omitempty"`
	Conns  []*gateway.Moving `json:"conns,omitempty"`
	N      uint64            `json:"n,omitempty"`
	Op     *hub.Op           `json:"op,omitempty"`
	Many   *manyOp           `json:"many,omitempty"`
	Result *opResult         `json:"result,omitempty"`
	Taken  int               `json:"taken,omitempty"`
	Closed int               `json:"closed,omitempty"`

	files []*os.File // a conns record's sockets (nil for one gone), received beside it
}

// manyOp is an op on many clients (hub.Clients' PushMany, Broadcast,
// BroadcastGroup), which hub.Op does not carry.
type manyOp struct {
	Kind   string   `json:"kind"` // "push_many", "broadcast", "group"
	IDs    []string `json:"ids,omitempty"`
	Group  string   `json:"group,omitempty"`
	Binary bool     `json:"bin,omitempty"`
	Data   []byte   `json:"data,omitempty"`
}

type opResult struct {
	hub.Result
	Err          string   `json:"err,omitempty"`   // a hub.Named error's name, or the text of another
	Named        bool     `json:"named,omitempty"` // Err is a name
	N            int      `json:"count,omitempty"` // broadcasts: clients reached
	NotConnected []string `json:"not_connected,omitempty"`
}

// link is one end of the upgrade socket.
type link struct {
	c   *net.UnixConn
	wmu sync.Mutex

	// Reading (one goroutine): bytes read and not yet parsed, and the
	// descriptors received, in order.
	buf []byte
	fds []int

	// The old end's ops waiting for their results, and the new end's
	// word that the clients' presence is written.
	mu      sync.Mutex
	seq     uint64
	waiting map[uint64]chan *opResult
	settled chan struct{}
}

func newLink(c *net.UnixConn) *link {
	return &link{c: c, waiting: map[uint64]chan *opResult{}, settled: make(chan struct{})}
}

// send writes r, with the descriptors fds (those that are -1 left out).
func (l *link) send(r *rec, fds ...int) error {
	body, err := json.Marshal(r)
	if err != nil {
		return err
	}
	msg := be.BigEndian.AppendUint32(make([]byte, 0, 4+len(body)), uint32(len(body)))
	msg = append(msg, body...)
	l.wmu.Lock()
	defer l.wmu.Unlock()
	var pass []int
	for _, fd := range fds {
		if fd >= 0 {
			pass = append(pass, fd)
		}
	}
	if len(pass) == 0 {
		_, err = l.c.Write(msg)
		return err
	}
	n, _, err := l.c.WriteMsgUnix(msg, syscall.UnixRights(pass...), nil)
	if err == nil && n < len(msg) {
		_, err = l.c.Write(msg[n:]) // the descriptor went with the first bytes
	}
	return err
}

// receive reads the next record, with a conns record's sockets in
// r.files.
func (l *link) receive() (*rec, error) {
	for {
		if len(l.buf) >= 4 {
			n := int(be.BigEndian.Uint32(l.buf))
			if len(l.buf) >= 4+n {
				r := &rec{}
				err := json.Unmarshal(l.buf[4:4+n], r)
				l.buf = l.buf[4+n:]
				if err != nil {
					return nil, fmt.Errorf("upgrade link: %w", err)
				}
				for _, m := range r.Conns {
					var f *os.File
					if !m.Gone {
						if len(l.fds) == 0 {
							return nil, errors.New("upgrade link: a connection came without its socket")
						}
						f = os.NewFile(uintptr(l.fds[0]), "client socket")
						l.fds = l.fds[1:]
					}
					r.files = append(r.files, f)
				}
				return r, nil
			}
		}
		chunk, oob := make([]byte, 256<<10), make([]byte, syscall.CmsgSpace(256*4))
		n, oobn, _, _, err := l.c.ReadMsgUnix(chunk, oob)
		if oobn > 0 {
			fds, ferr := receivedFDs(oob[:oobn])
			for _, fd := range fds {
				syscall.CloseOnExec(fd)
			}
			l.fds = append(l.fds, fds...)
			if ferr != nil {
				return nil, ferr
			}
		}
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return nil, io.EOF
		}
		l.buf = append(l.buf, chunk[:n]...)
	}
}

func (l *link) close() {
	l.c.Close()
	l.mu.Lock()
	for n, ch := range l.waiting {
		close(ch)
		delete(l.waiting, n)
	}
	l.mu.Unlock()
	for _, fd := range l.fds {
		syscall.Close(fd)
	}
	l.fds = nil
}

// The old end: the new process's clients, as ops over the link
// (gateway.Server.HandOver's successor).

// readResults hands each result to the op waiting for it, until the link
// closes.
func (l *link) readResults() {
	for {
		r, err := l.receive()
		if err != nil {
			l.close()
			return
		}
		for _, f := range r.files {
			if f != nil {
				f.Close()
			}
		}
		if r.Type == "settled" {
			close(l.settled)
			continue
		}
		if r.Type != "result" || r.Result == nil {
			continue
		}
		l.mu.Lock()
		ch := l.waiting[r.N]
		delete(l.waiting, r.N)
		l.mu.Unlock()
		if ch != nil {
			ch <- r.Result
		}
	}
}

// errLinkDown: the new process did not answer an op (it is gone).
var errLinkDown = errors.New("upgrade: the new process is gone")

// do sends one op and waits for its result, for at most wait beyond the
// op's own time.
func (l *link) do(r *rec, wait time.Duration) *opResult {
	ch := make(chan *opResult, 1)
	l.mu.Lock()
	l.seq++
	r.N = l.seq
	l.waiting[r.N] = ch
	l.mu.Unlock()
	if err := l.send(r, -1); err != nil {
		return &opResult{Err: errLinkDown.Error()}
	}
	select {
	case res, ok := <-ch:
		if ok {
			return res
		}
	case <-time.After(wait):
		l.mu.Lock()
		delete(l.waiting, r.N)
		l.mu.Unlock()
	}
	return &opResult{Err: errLinkDown.Error()}
}

// opWait bounds a forwarded op beyond its own time: the new process may
// hold it until its client has arrived, a broadcast until all have. (A
// new process that dies ends the wait at once: the link closes.)
const opWait = gateway.ArrivalWait + 10*time.Second

func (res *opResult) err() error {
	switch {
	case res.Err == "":
		return nil
	case res.Named && hub.Named[res.Err] != nil:
		return hub.Named[res.Err]
	}
	return errors.New(res.Err)
}

// successor is hub.Clients over the link.
type successor struct{ l *link }

var _ hub.Clients = successor{}

func (s successor) one(op hub.Op) (hub.Result, error) {
	res := s.l.do(&rec{Type: "op", Op: &op}, opWait+op.Timeout())
	return res.Result, res.err()
}

func (s successor) Push(id string, binary bool, data []byte) error {
	_, err := s.one(hub.Op{Kind: hub.KindPush, ID: id, Binary: binary, Data: data})
	return err
}

func (s successor) Call(id string, binary bool, data []byte, wait time.Duration) (hub.Answer, error) {
	r, err := s.one(hub.Op{Kind: hub.KindCall, ID: id, Binary: binary, Data: data, Wait: wait})
	if err != nil || r.Answer == nil {
		return hub.Answer{}, err
	}
	return *r.Answer, nil
}

func (s successor) Info(id string) (hub.Info, error) {
	r, err := s.one(hub.Op{Kind: hub.KindInfo, ID: id})
	if err != nil || r.Info == nil {
		return hub.Info{}, err
	}
	return *r.Info, nil
}

func (s successor) Kick(id string, code int, reason string) error {
	_, err := s.one(hub.Op{Kind: hub.KindKick, ID: id, Code: code, Reason: reason})
	return err
}

func (s successor) Join(id, group string) error {
	_, err := s.one(hub.Op{Kind: hub.KindJoin, ID: id, Group: group})
	return err
}

func (s successor) Leave(id, group string) (bool, error) {
	r, err := s.one(hub.Op{Kind: hub.KindLeave, ID: id, Group: group})
	return r.Was, err
}

func (s successor) SetMeta(id, name, value string, remove bool) error {
	_, err := s.one(hub.Op{Kind: hub.KindMeta, ID: id, Name: name, Value: value, Remove: remove})
	return err
}

func (s successor) PushMany(ids []string, binary bool, data []byte) []string {
	res := s.l.do(&rec{Type: "op", Many: &manyOp{Kind: "push_many", IDs: ids, Binary: binary, Data: data}}, opWait)
	if res.err() != nil {
		return ids
	}
	return res.NotConnected
}

func (s successor) Broadcast(binary bool, data []byte) int {
	return s.l.do(&rec{Type: "op", Many: &manyOp{Kind: "broadcast", Binary: binary, Data: data}}, opWait).N
}

func (s successor) BroadcastGroup(group string, binary bool, data []byte) (int, error) {
	res := s.l.do(&rec{Type: "op", Many: &manyOp{Kind: "group", Group: group, Binary: binary, Data: data}}, opWait)
	return res.N, res.err()
}

// The new end: takes the connections over and serves the forwarded ops,
// until the link closes.
func (l *link) serveNew(gw *gateway.Server, bus *cluster.Bus, logf func(msg string, args ...any)) {
	done := false

	// Connections are taken over by a few goroutines at once: each costs
	// some system calls, and the old process sends them faster than one
	// goroutine takes them.
	adopting := make(chan adoption, 512)
	var adopters sync.WaitGroup
	for range max(runtime.GOMAXPROCS(0), 2) {
		adopters.Go(func() {
			for a := range adopting {
				if err := gw.Adopt(a.m, a.f); err != nil {
					logf("upgrade: a connection could not be taken over", "id", a.m.ID, "error", err)
				}
			}
		})
	}
	defer func() {
		if adopting != nil {
			close(adopting)
			adopters.Wait()
		}
		l.close()
		if !done {
			gw.Arrived(0, 0) // the old process died mid-way: nothing more comes
		}
		if bus != nil {
			bus.EndStandby() // the old process is gone, marker or not
		}
	}()
	for {
		r, err := l.receive()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				logf("upgrade: the link to the old process failed", "error", err)
			}
			return
		}
		switch r.Type {
		case "coming":
			gw.Expect(r.IDs)
		case "conns":
			for i, m := range r.Conns {
				if adopting == nil { // (none comes after done)
					_ = gw.Adopt(m, r.files[i])
					continue
				}
				adopting <- adoption{m, r.files[i]}
			}
		case "op":
			go l.serveOp(gw, r) // an op may wait for its client's arrival
		case "done":
			done = true
			close(adopting)
			adopters.Wait()
			adopting = nil
			gw.Arrived(r.Taken, r.Closed)
			go func() {
				if bus != nil {
					bus.Flush(5 * time.Second) // the clients' records name this node now
				}
				_ = l.send(&rec{Type: "settled"}, -1)
			}()
		}
	}
}

// adoption is one connection to take over, and its socket.
type adoption struct {
	m *gateway.Moving
	f *os.File
}

func (l *link) serveOp(gw *gateway.Server, r *rec) {
	res := &opResult{}
	var err error
	switch {
	case r.Op != nil:
		res.Result, err = r.Op.Apply(gw)
	case r.Many != nil:
		m := r.Many
		switch m.Kind {
		case "push_many":
			res.NotConnected = gw.PushMany(m.IDs, m.Binary, m.Data)
		case "broadcast":
			res.N = gw.Broadcast(m.Binary, m.Data)
		case "group":
			res.N, err = gw.BroadcastGroup(m.Group, m.Binary, m.Data)
		}
	}
	if err != nil {
		if name := hub.NameOf(err); name != "" {
			res.Err, res.Named = name, true
		} else {
			res.Err = err.Error()
		}
	}
	_ = l.send(&rec{Type: "result", N: r.N, Result: res}, -1)
}
