package gateway

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"sync"
	"time"

	"github.com/lesismal/nbio"
)

// socket is a client's byte stream as a conn uses it: an *nbio.Conn on the
// event loop, or a [tlsSocket]. Writes never block: what the client has
// not taken yet is queued, up to Options.MaxOutgoingBytes, past which the
// socket closes with nbio.ErrOverflow.
type socket interface {
	Write(b []byte) (int, error)
	Writev(bs [][]byte) (int, error)
	Close() error
	SetReadDeadline(t time.Time) error
}

var _ socket = (*nbio.Conn)(nil)

// A client served over TLS (Options.TLS) does not live on the event loop:
// crypto/tls, kept current with Go's security fixes, needs blocking reads,
// so each such client has a goroutine reading (which calls the conn's
// OnData and OnClose as the loop would) and one writing. That costs more
// memory per connection than the loop; at scale, TLS is terminated by
// HAProxy in front (see deploy/).

// serveTLS serves one accepted connection over TLS until it closes.
func (s *Server) serveTLS(raw net.Conn) {
	tc := tls.Server(raw, s.opts.TLS)
	t := &tlsSocket{tc: tc, raw: raw, maxOut: s.opts.MaxOutgoingBytes, flush: s.opts.CloseTimeout, wake: make(chan struct{}, 1)}
	// The handshake timeout covers the TLS handshake too: it happens
	// within the first Read.
	c := s.newConn(t, raw.RemoteAddr().String())
	go t.writeLoop()
	buf := make([]byte, 4<<10)
	for {
		n, err := tc.Read(buf)
		if n > 0 {
			c.OnData(nil, buf[:n])
		}
		if err != nil {
			c.OnClose(nil, t.abort(err))
			return
		}
	}
}

// tlsSocket queues what the conn writes for its writing goroutine.
type tlsSocket struct {
	tc     *tls.Conn
	raw    net.Conn
	maxOut int
	flush  time.Duration // how long Close waits for queued bytes to leave
	wake   chan struct{} // one token: something to write, or closing

	mu      sync.Mutex
	out     []byte
	closing bool
	err     error // why the socket closed, when ws2api decided it
}

func (t *tlsSocket) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closing {
		return 0, net.ErrClosed
	}
	if len(t.out)+len(b) > t.maxOut {
		t.closing, t.err = true, nbio.ErrOverflow
		t.raw.Close()
		return 0, nbio.ErrOverflow
	}
	t.out = append(t.out, b...)
	t.signal()
	return len(b), nil
}

func (t *tlsSocket) Writev(bs [][]byte) (int, error) {
	n := 0
	for _, b := range bs {
		m, err := t.Write(b)
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Close writes what is queued, within the flush time, then closes.
func (t *tlsSocket) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.closing {
		t.closing = true
		_ = t.raw.SetWriteDeadline(time.Now().Add(t.flush))
		t.signal()
	}
	return nil
}

func (t *tlsSocket) SetReadDeadline(d time.Time) error { return t.raw.SetReadDeadline(d) }

func (t *tlsSocket) signal() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// abort closes the socket after a failed read, dropping what is queued,
// and returns why it ended: ws2api's reason if it had one, else err.
func (t *tlsSocket) abort(err error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err == nil {
		t.err = err
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.err = nbio.ErrReadTimeout
		}
	}
	t.closing = true
	t.out = nil
	t.raw.Close()
	t.signal()
	return t.err
}

// writeLoop writes what the conn queued until the socket closes.
func (t *tlsSocket) writeLoop() {
	var buf []byte
	for range t.wake {
		t.mu.Lock()
		buf, t.out = t.out, buf[:0]
		if cap(t.out) > 64<<10 {
			t.out = nil
		}
		closing := t.closing
		t.mu.Unlock()
		if len(buf) > 0 {
			if _, err := t.tc.Write(buf); err != nil {
				t.raw.Close()
				return
			}
		}
		if closing {
			_ = t.tc.Close() // close_notify, then the socket
			return
		}
	}
}
