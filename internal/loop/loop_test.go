package loop

import (
	"bytes"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lesismal/nbio"
	"golang.org/x/sys/unix"
)

// A loop stopped as soon as it is made stops: nbio loses a Stop that comes
// before its poller goroutines run, and such a poller spins for ever (New
// waits for them).
func TestStopRightAfterNew(t *testing.T) {
	for range 300 {
		l, err := New("t", 2, 0)
		if err != nil {
			t.Fatal(err)
		}
		l.Stop()
	}
}

// Every poller gets a trigger of its own, whatever the number of pollers:
// New can only wait on pollers that have one. (Descriptors are handed out
// lowest first, which once left one poller of two without a trigger in
// about one loop of 130, and the Stop of such a loop hung.)
func TestEveryPollerHasItsTrigger(t *testing.T) {
	for _, pollers := range []int{1, 2, 3, 4, 6, 8} {
		for range 100 {
			l, err := New("t", pollers, 0)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[*trigger]bool{}
			for p, tr := range l.later {
				if tr == nil || seen[tr] {
					l.Stop()
					t.Fatalf("%d pollers: poller %d has no trigger of its own", pollers, p)
				}
				seen[tr] = true
			}
			l.Stop()
		}
	}
}

// Each poller's trigger is on the nbio poller that startTriggers filed it
// under: nbio v1.6.12 places a connection on poller descriptor % pollers
// (engine.go, (*Engine).AddConn), placement assumes so, and Later and New
// rely on it (see trigger). The triggers sit on as many nbio pollers as
// there are, and every connection, whatever its descriptor, is on the
// poller of the trigger filed under placement(descriptor). nbio shows
// which poller a connection is on through PollerBuffer, one buffer per
// poller.
func TestTriggersAreOnThePollersTheyAreFiledUnder(t *testing.T) {
	for _, pollers := range []int{2, 3, 4} {
		l, err := New("t", pollers, 0)
		if err != nil {
			t.Fatal(err)
		}
		pollerOf := func(c *nbio.Conn) *byte { return &l.engine.PollerBuffer(c)[0] }
		filed := map[*byte]int{}
		for p, tr := range l.later {
			if q, ok := filed[pollerOf(tr.c)]; ok {
				l.Stop()
				t.Fatalf("%d pollers: the triggers filed under pollers %d and %d are on the same nbio poller", pollers, q, p)
			}
			filed[pollerOf(tr.c)] = p
		}
		// Descriptors come lowest first, so connections made one after the
		// other can keep the same remainder: after a remainder seen before,
		// one more descriptor held shifts the next.
		seen := map[int]bool{}
		for range 8 * pollers {
			nb, _ := pair(t, l, &recorder{closed: make(chan error, 1)})
			p := placement(nb.Hash(), pollers)
			if got, ok := filed[pollerOf(nb)]; !ok {
				l.Stop()
				t.Fatalf("%d pollers: a connection with descriptor %d is on an nbio poller without a trigger", pollers, nb.Hash())
			} else if got != p {
				l.Stop()
				t.Fatalf("%d pollers: a connection with descriptor %d is on the poller of trigger %d, not %d", pollers, nb.Hash(), got, p)
			}
			if !seen[p] {
				seen[p] = true
				if len(seen) == pollers {
					break
				}
				continue
			}
			fd, err := syscall.Open(os.DevNull, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { syscall.Close(fd) })
		}
		l.Stop()
		if len(seen) < pollers {
			t.Fatalf("%d pollers: the connections made reached only %d of them", pollers, len(seen))
		}
	}
}

// recorder is a Handler that keeps what arrived and reports the close.
type recorder struct {
	mu     sync.Mutex
	got    []byte
	closed chan error
}

func (r *recorder) OnData(_ *nbio.Conn, data []byte) {
	r.mu.Lock()
	r.got = append(r.got, data...)
	r.mu.Unlock()
}

func (r *recorder) OnClose(_ *nbio.Conn, err error) { r.closed <- err }

// A peer that sends more than three read buffers and hangs up loses
// nothing: nbio's own read loop stopped after three buffers and, seeing the
// hangup in the same event, closed the socket with the rest unread (a
// client's last large message before its FIN, the end of an API's
// close-delimited answer). The bytes and the hangup are both waiting before
// the socket joins the loop, so the first event carries them together.
func TestEveryByteBeforeAHangupIsDelivered(t *testing.T) {
	l, err := New("t", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	peer := fds[0]
	_ = syscall.SetsockoptInt(peer, syscall.SOL_SOCKET, syscall.SO_SNDBUF, 4<<20)
	var sent []byte
	chunk := make([]byte, 16<<10)
	for i := 0; ; i++ {
		for j := range chunk {
			chunk[j] = byte(i + j)
		}
		n, err := syscall.Write(peer, chunk)
		if n > 0 {
			sent = append(sent, chunk[:n]...)
		}
		if err != nil {
			break // EAGAIN: the socket holds all it can
		}
	}
	if len(sent) <= readsPerTurn*readBufferSize {
		t.Fatalf("the socket took only %d bytes; the test needs more than %d", len(sent), readsPerTurn*readBufferSize)
	}
	_ = syscall.Shutdown(peer, syscall.SHUT_WR)
	defer syscall.Close(peer)

	f := os.NewFile(uintptr(fds[1]), "reader")
	conn, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{closed: make(chan error, 1)}
	if _, err := l.Add(conn, r); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("no close")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !bytes.Equal(r.got, sent) {
		t.Fatalf("delivered %d of the %d bytes sent before the hangup", len(r.got), len(sent))
	}
}

// CloseWrite ends a connection from outside its poller without closing
// the descriptor: the peer reads everything, then the end, and when it
// hangs up the poller closes the socket. Once closed, CloseWrite does
// nothing.
func TestCloseWriteLetsThePeerReadToTheEndThenThePollerCloses(t *testing.T) {
	l, err := New("t", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	r := &recorder{closed: make(chan error, 1)}
	nb, peer := pair(t, l, r)
	if _, err := nb.Write([]byte("the answer")); err != nil {
		t.Fatal(err)
	}
	if !CloseWrite(nb) {
		t.Fatal("CloseWrite of an open connection did nothing")
	}
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(peer)
	if err != nil || string(got) != "the answer" {
		t.Fatalf("the peer read %q, %v", got, err)
	}
	select {
	case <-r.closed:
		t.Fatal("closed before the peer hung up")
	default:
	}
	peer.Close()
	select {
	case <-r.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the poller did not close the socket after the peer hung up")
	}
	if CloseWrite(nb) {
		t.Fatal("CloseWrite of a closed connection reported success")
	}
}

// blocker holds its poller in OnData until released.
type blocker struct {
	in      chan struct{}
	release chan struct{}
}

func (b *blocker) OnData(*nbio.Conn, []byte) { b.in <- struct{}{}; <-b.release }
func (b *blocker) OnClose(*nbio.Conn, error) {}

// pair returns a connection on l with handler h, and its peer.
func pair(t *testing.T, l *Loop, h Handler) (*nbio.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	ours, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	nb, err := l.Add(ours, h)
	if err != nil {
		t.Fatal(err)
	}
	return nb, peer
}

// Shutdown from another goroutine leaves the descriptor to the poller:
// while the poller is held elsewhere, the descriptor stays open (a close
// here would free it at once, for the next accepted connection to take
// while a stale event of it may still wait in the poller's batch); once
// the poller runs, it closes the socket and the peer sees the end. Once
// closed, Shutdown does nothing.
func TestShutdownLeavesTheCloseToThePoller(t *testing.T) {
	l, err := New("t", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	r := &recorder{closed: make(chan error, 1)}
	nb, peer := pair(t, l, r)
	b := &blocker{in: make(chan struct{}), release: make(chan struct{})}
	_, holder := pair(t, l, b)
	if _, err := holder.Write([]byte("hold")); err != nil {
		t.Fatal(err)
	}
	<-b.in // the one poller is held in the blocker's OnData
	if !Shutdown(nb) {
		t.Fatal("Shutdown of an open connection did nothing")
	}
	if _, err := unix.FcntlInt(uintptr(nb.Hash()), unix.F_GETFD, 0); err != nil {
		t.Fatalf("the descriptor was freed by Shutdown, off the poller: %v", err)
	}
	close(b.release)
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := peer.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("the peer read %d, %v; want the end", n, err)
	}
	select {
	case <-r.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the poller did not close the socket after Shutdown")
	}
	if Shutdown(nb) {
		t.Fatal("Shutdown of a closed connection reported success")
	}
}

// Every socket on the loop is close-on-exec, however it came (Add after
// Wrap, an accepted one, a dialed one): a process ws2api starts, a binary
// upgrade, must not inherit connections and keep them open.
func TestEverySocketIsCloseOnExec(t *testing.T) {
	l, err := New("t", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *nbio.Conn, 1)
	l.OnAccept(func(c *nbio.Conn) Handler { accepted <- c; return &recorder{closed: make(chan error, 1)} })
	added, peer := pair(t, l, &recorder{closed: make(chan error, 1)})
	_ = peer
	dialed := make(chan *nbio.Conn, 1)
	if err := l.DialAsync(ln.Addr().String(), func(c *nbio.Conn, err error) {
		if err == nil {
			c.SetSession(&recorder{closed: make(chan error, 1)})
		}
		dialed <- c
	}); err != nil {
		t.Fatal(err)
	}
	other, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.AddAccepted(other); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*nbio.Conn{"added": added, "accepted": <-accepted, "dialed": <-dialed} {
		if c == nil {
			t.Fatalf("no %s connection", name)
		}
		flags, err := unix.FcntlInt(uintptr(c.Hash()), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("the %s connection's descriptor: flags %#x, %v; want FD_CLOEXEC", name, flags, err)
		}
	}
}
