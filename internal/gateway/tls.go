package gateway

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"sync"
	"time"

	"github.com/lesismal/nbio"

	"github.com/ws2api/ws2api/internal/loop"
)

// socket is a client's byte stream as a conn uses it: an *nbio.Conn on the
// event loop, or a [tlsSocket]. Writes never block: what the client has
// not taken yet is queued, up to Options.MaxOutgoingBytes, past which the
// socket closes with nbio.ErrOverflow.
type socket interface {
	Write(b []byte) (int, error)
	Close() error
	// CloseWithError closes at once, dropping what is queued; OnClose
	// gets err.
	CloseWithError(err error) error
	SetReadDeadline(t time.Time) error
}

var _ socket = (*nbio.Conn)(nil)

// end closes a client's socket from any goroutine: an event-loop socket is
// shut down, and its poller closes it (loop.Shutdown: a close from
// elsewhere could let a stale event close the next connection given its
// descriptor; one already closed, or reset by its peer, needs nothing); a
// TLS one, which owns its goroutines, is closed.
func end(s socket) {
	if nc, ok := s.(*nbio.Conn); ok {
		loop.Shutdown(nc)
		return
	}
	_ = s.Close()
}

// A client served over TLS (Options.TLS) does not live on the event loop:
// crypto/tls, kept current with Go's security fixes, needs blocking reads.
// Each such client has a goroutine reading, which calls the conn's OnData
// and OnClose as the loop would, and, while there is something to write, a
// goroutine writing. The TLS handshake runs on a goroutine of its own that
// ends with it, so that the deep stack the handshake's cryptography needs
// is not kept for the connection's life. That still costs far more memory
// per connection than the event loop (BENCHMARKS.md: TLS); at scale, TLS
// is terminated by HAProxy or nginx in front (deploy/).

// serveTLS serves one accepted connection over TLS: it runs the handshake,
// then hands the connection to a reading goroutine.
func (s *Server) serveTLS(raw net.Conn) {
	tc := tls.Server(raw, s.opts.TLS)
	t := &tlsSocket{tc: tc, raw: raw, maxOut: s.opts.MaxOutgoingBytes, flushTime: s.opts.CloseTimeout}
	// The handshake timeout covers the TLS handshake too.
	c := s.newConn(t, raw.RemoteAddr().String())
	t.written = c.OnWritten
	if err := tc.Handshake(); err != nil {
		c.OnClose(nil, t.abort(err))
		return
	}
	go t.readLoop(c)
}

// peerCerts returns the certificates a TLS client sent, the leaf first, if
// ws2api verified them (Options.TLS asks for client certificates); nil
// for any other socket.
func peerCerts(s socket) []*x509.Certificate {
	t, ok := s.(*tlsSocket)
	if !ok {
		return nil
	}
	if st := t.tc.ConnectionState(); len(st.VerifiedChains) > 0 {
		return st.PeerCertificates
	}
	return nil
}

// tlsReadBuffer is the reading goroutine's buffer: crypto/tls holds a
// whole record itself, this is only what one Read hands over.
const tlsReadBuffer = 1 << 10

func (t *tlsSocket) readLoop(c *conn) {
	buf := make([]byte, tlsReadBuffer)
	for {
		n, err := t.tc.Read(buf)
		if n > 0 {
			c.OnData(nil, buf[:n])
		}
		if err != nil {
			c.OnClose(nil, t.abort(err))
			return
		}
	}
}

// tlsSocket queues what the conn writes for a writing goroutine, started
// when there is something to write and gone when it is written.
type tlsSocket struct {
	tc        *tls.Conn
	raw       net.Conn
	maxOut    int
	flushTime time.Duration // how long Close waits for queued bytes to leave
	written   func(n int)   // told of the bytes handed to crypto/tls, under mu (outgoing.go)

	mu      sync.Mutex
	out     []byte
	writing bool // a flush goroutine runs
	closing bool
	aborted bool  // closed at once: what is queued is dropped, and no more writes are reported
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
	t.startFlush()
	return len(b), nil
}

// CloseWithError closes the socket at once, dropping what is queued; the
// reading goroutine then ends the conn with err.
func (t *tlsSocket) CloseWithError(err error) error {
	_ = t.abort(err)
	return nil
}

// Close writes what is queued, within the flush time, then closes.
func (t *tlsSocket) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.closing {
		t.closing = true
		_ = t.raw.SetWriteDeadline(time.Now().Add(t.flushTime))
		t.startFlush()
	}
	return nil
}

func (t *tlsSocket) SetReadDeadline(d time.Time) error { return t.raw.SetReadDeadline(d) }

// startFlush starts the writing goroutine unless it runs; t.mu is held.
func (t *tlsSocket) startFlush() {
	if !t.writing {
		t.writing = true
		go t.flush()
	}
}

// flush writes what is queued until nothing is; then, if the socket is
// closing, it closes it.
func (t *tlsSocket) flush() {
	for {
		t.mu.Lock()
		buf := t.out
		t.out = nil
		if len(buf) == 0 {
			closing := t.closing
			t.writing = closing // a closed socket never needs another
			t.mu.Unlock()
			if closing {
				_ = t.tc.Close() // close_notify, then the socket
			}
			return
		}
		t.mu.Unlock()
		if _, err := t.tc.Write(buf); err != nil {
			t.raw.Close() // the reading goroutine sees it and ends the conn
			t.mu.Lock()
			t.closing, t.out = true, nil
			t.mu.Unlock()
			return
		}
		// Keep a small buffer for the next write.
		t.mu.Lock()
		if t.written != nil && !t.aborted {
			t.written(len(buf))
		}
		if t.out == nil && cap(buf) <= 4<<10 {
			t.out = buf[:0]
		}
		t.mu.Unlock()
	}
}

// abort closes the socket after a failed read or handshake, dropping what
// is queued, and returns why it ended: ws2api's reason if it had one, else
// err.
func (t *tlsSocket) abort(err error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err == nil {
		t.err = err
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.err = nbio.ErrReadTimeout
		}
	}
	t.closing, t.aborted = true, true
	t.out = nil
	t.raw.Close()
	return t.err
}
