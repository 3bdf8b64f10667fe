// Package loop owns the event loop that every socket of a ws2api node runs
// on: nbio's non-blocking engine, shared by the clients' connections and
// the connections to the API, so that a message can go from a client to the
// API and back without a goroutine switch.
//
// Each connection has a [Handler]; the loop calls it with what its socket
// delivered and when it closed, on the poller goroutine that owns the
// socket. [Loop.Later] runs a task on a poller's next turn; New uses it to
// know that every poller runs before it returns (nbio loses a Stop that
// comes earlier). nbio has no way to run a task on a chosen poller: Later
// rides on one socket per poller, placed by nbio's placement rule (see
// [trigger]). [Loop.Detach] takes a socket off the loop without closing it,
// for a binary upgrade that passes it to another process (detach.go).
package loop

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/lesismal/nbio"
	"golang.org/x/sys/unix"
)

// Handler receives one connection's events, on its poller goroutine. It
// must never block.
type Handler interface {
	OnData(c *nbio.Conn, data []byte)
	OnClose(c *nbio.Conn, err error)
}

// WriteObserver is a Handler told how many of the bytes written to its
// connection the kernel took, whether at once in Write or later from
// nbio's buffer; with what it handed to Write, that says what nbio still
// holds for it. OnWritten is called under the connection's own lock: it
// must not block, nor take a lock that a writer to the connection holds.
type WriteObserver interface {
	OnWritten(n int)
}

// Task is work for [Loop.Later].
type Task interface {
	RunLater()
}

// Loop is an nbio engine with per-connection handlers.
type Loop struct {
	engine *nbio.Engine
	later  []*trigger // by poller

	mu     sync.Mutex
	accept func(*nbio.Conn) Handler

	epollOnce sync.Once
	epfds     []int // the process's epoll descriptors (detach.go)
}

// New starts an engine with the given number of pollers (0: one per CPU).
// maxWriteBuffer bounds the bytes nbio holds for one connection that the
// kernel would not take (0: no bound): past it the connection is closed
// with nbio.ErrOverflow.
func New(name string, pollers, maxWriteBuffer int) (*Loop, error) {
	if pollers <= 0 {
		pollers = runtime.NumCPU()
	}
	setNBIOLogger()
	l := &Loop{}
	l.engine = nbio.NewEngine(nbio.Config{Name: name, NPoller: pollers, ReadBufferSize: readBufferSize, MaxWriteBufferSize: maxWriteBuffer})
	l.engine.OnOpen(l.onOpen)
	l.engine.OnRead(l.onRead)
	l.engine.OnWrittenSize(func(c *nbio.Conn, _ []byte, n int) {
		if w, ok := c.Session().(WriteObserver); ok {
			w.OnWritten(n)
		}
	})
	l.engine.OnClose(func(c *nbio.Conn, err error) {
		if h, ok := c.Session().(Handler); ok {
			h.OnClose(c, err)
		}
	})
	if err := l.engine.Start(); err != nil {
		return nil, fmt.Errorf("event loop: %w", err)
	}
	if err := l.startTriggers(); err != nil {
		// A poller not yet running would miss the Stop (see below): give
		// them time to start. No event can replace this sleep: the pollers
		// at risk are those no trigger reached, and nothing of ours is on
		// them to report that they run (see trigger).
		time.Sleep(100 * time.Millisecond)
		l.engine.Stop()
		return nil, err
	}
	// nbio's poller clears its shutdown flag as its goroutine starts: a
	// Stop before that is lost, and the poller then spins on the stop
	// event for ever. Return only once every poller has run a task.
	if err := l.waitPollers(10 * time.Second); err != nil {
		return nil, err
	}
	l.epollFDs() // now, while the process has few descriptors to look through (detach.go)
	return l, nil
}

// started is a task that reports that its poller runs.
type started chan struct{}

func (s started) RunLater() { close(s) }

// waitPollers waits until each poller has run a task from its trigger.
func (l *Loop) waitPollers(timeout time.Duration) error {
	seen := map[*trigger]bool{}
	var waits []started
	for _, t := range l.later {
		if !seen[t] {
			seen[t] = true
			s := make(started)
			t.add(s)
			waits = append(waits, s)
		}
	}
	deadline := time.After(timeout)
	for _, s := range waits {
		select {
		case <-s:
		case <-deadline:
			return errors.New("event loop: the pollers did not start")
		}
	}
	return nil
}

// readBufferSize is what one read takes at most (nbio's default), into
// the buffer of the poller that reads.
const readBufferSize = 64 << 10

// readsPerTurn bounds the reads one socket gets in a poller's turn while
// its peer keeps sending, so that one busy socket cannot starve the others
// (the poller comes back to it next turn).
const readsPerTurn = 3

// onRead reads a socket that is ready (nbio calls it instead of its own
// read loop, on the socket's poller). nbio's loop reads at most three
// buffers and then, if the event also reports a hangup, closes the socket
// with whatever the kernel still holds unread: a client's last large
// message before its FIN, or the end of an API's close-delimited answer,
// would be lost. Here a socket whose peer has hung up is read to its end
// first; nbio's close that follows then loses nothing.
func (l *Loop) onRead(c *nbio.Conn) {
	buf := l.engine.PollerBuffer(c) // c's poller's, unused by nbio once OnRead is set
	h, _ := c.Session().(Handler)
	for i := 1; ; i++ {
		_, n, err := c.ReadAndGetConn(&buf)
		if n > 0 && h != nil {
			h.OnData(c, buf[:n])
		}
		switch {
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EAGAIN):
			return
		case err != nil:
			_ = c.CloseWithError(err)
			return
		case n == 0: // the peer's FIN, after every byte it sent
			_ = c.CloseWithError(io.EOF)
			return
		case n < len(buf):
			return // drained (a hangup, if any, came after these bytes)
		case i >= readsPerTurn && !hungUp(c.Hash()):
			return
		}
	}
}

// CloseWrite shuts down the writing side of c if it is still open (the
// peer reads what the kernel holds for it, then the end), and reports
// whether it did. Bytes nbio still buffers for c would be lost: call it once
// everything written has reached the kernel (see WriteObserver).
//
// It is the safe way to end a connection from outside its poller: nbio
// keeps the events one epoll_wait returned and handles them one by one,
// looking each socket up by its descriptor. A socket closed by another
// goroutine in the meantime frees its descriptor, the next accepted
// connection can get the same number, and a hangup event of the old one,
// still in the poller's batch, then closes the new one (seen: a control
// request answered with nothing). After CloseWrite the peer closes, and
// the poller closes the socket while it handles that socket's own event.
func CloseWrite(c *nbio.Conn) bool { return shutdown(c, syscall.SHUT_WR) }

// Shutdown ends c from any goroutine without freeing its descriptor: both
// directions are shut down (the peer reads what the kernel holds, then the
// end), and the poller, woken by it, closes c while it handles c's own
// event, calling its handler's OnClose. What nbio still buffers for c is
// dropped, as by Close. It reports whether it shut c down (false: c was
// already closed, or its peer had reset it, which wakes the poller too).
//
// Closing from another goroutine frees the descriptor at once, and a
// stale event of it still in a poller's batch can then close the next
// connection given the same number (see CloseWrite): a shed slow consumer
// once cost a control request its answer that way.
func Shutdown(c *nbio.Conn) bool { return shutdown(c, syscall.SHUT_RDWR) }

// shutdown shuts c's socket down (how: SHUT_WR or SHUT_RDWR) if it is still
// open: nbio marks a socket closed, under this lock, before it frees the
// descriptor, so the number is still c's here.
func shutdown(c *nbio.Conn, how int) bool {
	c.Lock()
	defer c.Unlock()
	if closed, _ := c.IsClosed(); closed {
		return false
	}
	return syscall.Shutdown(c.Hash(), how) == nil
}

// hungUp reports whether the peer of socket fd has shut down its side.
func hungUp(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0 && fds[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
}

// OnAccept sets what gives an accepted connection its handler; call it
// before handing the loop accepted connections.
func (l *Loop) OnAccept(f func(*nbio.Conn) Handler) {
	l.mu.Lock()
	l.accept = f
	l.mu.Unlock()
}

func (l *Loop) onOpen(c *nbio.Conn) {
	closeOnExec(c)
	if c.Session() != nil {
		return // added by Add, with its handler
	}
	l.mu.Lock()
	accept := l.accept
	l.mu.Unlock()
	if accept == nil {
		return
	}
	if h := accept(c); h != nil {
		c.SetSession(h)
		// Publish h to the poller (see Add).
		_ = c.SetWriteDeadline(time.Time{})
	}
}

// Add hands conn to the loop with its handler; conn must not be used
// otherwise afterwards. h must be fully set up: its callbacks may run before
// Add returns. (Wrap conn with [Wrap] first to know its *nbio.Conn.)
func (l *Loop) Add(conn net.Conn, h Handler) (*nbio.Conn, error) {
	nc, err := Wrap(conn)
	if err != nil {
		return nil, err
	}
	nc.SetSession(h)
	// The poller reads the connection under its own mutex; passing through
	// that mutex here publishes h to it (nbio's hand-off through epoll is
	// invisible to the race detector).
	_ = nc.SetReadDeadline(time.Time{})
	if _, err := l.engine.AddConn(nc); err != nil {
		return nil, err
	}
	return nc, nil
}

// Wrap turns conn into the *nbio.Conn the loop will know it by (conn is
// closed on failure).
func Wrap(conn net.Conn) (*nbio.Conn, error) {
	nc, err := nbio.NBConn(conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	closeOnExec(nc)
	return nc, nil
}

// closeOnExec marks c's descriptor close-on-exec. nbio takes a socket over
// with syscall.Dup (dupStdConn), which does not: a process this one starts
// (a binary upgrade) would inherit every connection, and keep each open
// after this process closed it, the peer never seeing the end.
func closeOnExec(c *nbio.Conn) { syscall.CloseOnExec(c.Hash()) }

// AddAll hands every connection ln accepts to the loop (see OnAccept),
// on a goroutine of its own, until ln is closed.
func (l *Loop) AddAll(ln net.Listener) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = l.AddAccepted(c)
		}
	}()
}

// AddAccepted hands an accepted connection to the loop; accept gives it
// its handler.
func (l *Loop) AddAccepted(conn net.Conn) error {
	_, err := l.engine.AddConn(conn)
	return err
}

// DialAsync connects to a TCP address from the loop; done runs once the
// connection is up (give it its handler there, with SetSession) or failed.
func (l *Loop) DialAsync(addr string, done func(*nbio.Conn, error)) error {
	return l.engine.DialAsync("tcp", addr, func(c *nbio.Conn, err error) {
		if err == nil {
			closeOnExec(c)
		}
		done(c, err)
	})
}

// Later runs t on poller p's next turn (at once if p is idle). Tasks
// queued during one turn run together on the next.
func (l *Loop) Later(p int, t Task) { l.later[p%len(l.later)].add(t) }

// Stop closes every connection and stops the pollers.
func (l *Loop) Stop() {
	l.engine.Stop()
	closed := map[*trigger]bool{}
	for _, t := range l.later {
		if t != nil && !closed[t] {
			closed[t] = true
			syscall.Close(t.w)
		}
	}
}

// trigger is one poller's queue of tasks for its next turn: a socketpair
// whose reading end lives on that poller. Queuing the first task writes a
// byte to it; the poller reads the byte on its next turn and runs the
// tasks.
//
// Triggers are a workaround for nbio v1.6.12 (go.mod), which offers no way
// to run a function on a chosen poller's goroutine. What they must
// guarantee: a task given to Later(p) runs on the goroutine of the poller
// that owns every socket whose descriptor % pollers is p, and the triggers
// of the pollers 0 to n-1 sit on n different pollers. New needs the second
// half: nbio's (*poller).readWriteLoop (poller_epoll.go) sets
// `p.shutdown = false` as its goroutine starts, so a (*poller).stop that
// comes first is lost and the poller spins on its eventfd for ever (Stop
// then waits for it for ever); only a poller that has run one of our tasks
// is known to be past that line, and only if every poller has a trigger
// of its own does a task run by each trigger mean that every poller has.
//
// The placement rule it relies on: nbio's (*Engine).AddConn (engine.go)
// puts a connection on `g.pollers[c.Hash()%len(g.pollers)]` (the same
// expression as in (*Engine).addDialer, and in (*poller).acceptorLoop for
// nbio's own listeners), where (*Conn).Hash (conn_unix.go) is the
// descriptor, which dupStdConn (net_unix.go) got from syscall.Dup: the
// lowest one free. placement says it once; startTriggers files a trigger
// under placement(descriptor) and steers descriptors onto the pollers
// still without one. Were nbio to place connections otherwise (round
// robin, by load), a trigger would serve a poller other than the one it is
// filed under, two could share one, and New could return before a poller
// ran, for a Stop to hang later: TestTriggersAreOnThePollersTheyAreFiledUnder
// fails then. Nothing else here depends on the rule (onRead reads into
// nbio's buffer of the poller that reads).
//
// New's 100 ms sleep (since startTriggers could fail, 5a4fd39) is on that
// failure path only: it gives the pollers no trigger reached time to start
// before the Stop. It cannot become a wait for an event, since nothing of
// ours is on those pollers to report that they run.
//
// What would let the workaround go: a per-poller task API in nbio, say
// (*Engine).ExecuteOn(i int, f func()), queuing f for poller i and waking
// it through the eventfd each poller already has (today written only by
// stop). Later would call it; trigger, startTriggers, placement, missing,
// steer and newTrigger would go, and so would the sleep, since every
// poller could then be waited for. (readWriteLoop leaving shutdown as
// newPoller made it, false, instead of clearing it, would make an early
// Stop safe and remove the need to wait at all.)
type trigger struct {
	c     *nbio.Conn // reading end, on the poller the trigger serves
	w     int        // writing end
	mu    sync.Mutex
	tasks []Task
	spare []Task
	armed bool
}

func (t *trigger) add(task Task) {
	t.mu.Lock()
	t.tasks = append(t.tasks, task)
	arm := !t.armed
	t.armed = true
	t.mu.Unlock()
	if arm {
		for {
			_, err := syscall.Write(t.w, []byte{1})
			if !errors.Is(err, syscall.EINTR) {
				break // EAGAIN: bytes are already waiting, the poller will run
			}
		}
	}
}

// OnData runs the queued tasks.
func (t *trigger) OnData(_ *nbio.Conn, _ []byte) {
	t.mu.Lock()
	tasks := t.tasks
	t.tasks, t.spare = t.spare[:0], nil
	t.armed = false
	t.mu.Unlock()
	for i, task := range tasks {
		task.RunLater()
		tasks[i] = nil
	}
	t.mu.Lock()
	if t.spare == nil && cap(tasks) <= 4096 {
		t.spare = tasks[:0]
	}
	t.mu.Unlock()
}

// OnClose implements Handler.
func (t *trigger) OnClose(*nbio.Conn, error) {}

// startTriggers gives every poller a trigger of its own. nbio places a
// connection on poller fd % pollers (see trigger), and descriptors are
// handed out lowest first, so a run of socketpairs can keep landing on the
// same poller: after a miss, steer holds spare descriptors until the next
// one made should land on a poller still without a trigger. Every poller
// must have one: New waits on them to know each poller runs.
func (l *Loop) startTriggers() error {
	n := l.engine.NPoller
	l.later = make([]*trigger, n)
	var missed []*nbio.Conn
	var held []int // descriptors kept taken until every poller has its trigger
	defer func() {
		for _, c := range missed {
			c.Close()
		}
		for _, fd := range held {
			syscall.Close(fd)
		}
	}()
	found, offset, spare := 0, 1, -1
	for tries := 0; found < n && tries < 8*n; tries++ {
		lowest := -1
		if spare >= 0 {
			lowest = steer(spare, l.missing(), offset, n, &held)
		}
		t, nc, err := l.newTrigger()
		if err != nil {
			return err
		}
		if lowest >= 0 {
			offset = nc.Hash() - lowest // learn how far past the lowest free descriptor a trigger lands
		}
		if p := placement(nc.Hash(), n); l.later[p] == nil {
			l.later[p] = t
			found++
			continue
		}
		// Both ends stay open: closing the writing end would let the poller
		// close the reading end and free its descriptor for the next try.
		missed = append(missed, nc)
		held = append(held, t.w)
		spare = t.w
	}
	if found < n {
		return fmt.Errorf("event loop: only %d of %d pollers got a trigger", found, n)
	}
	return nil
}

// placement is the poller, of n, that nbio puts a socket with descriptor fd
// on: nbio v1.6.12's rule (see trigger).
func placement(fd, n int) int { return fd % n }

// missing returns the first poller without a trigger.
func (l *Loop) missing() int {
	for p, t := range l.later {
		if t == nil {
			return p
		}
	}
	return 0
}

// steer takes descriptors (duplicates of fd) until the lowest free one, d,
// is such that a trigger made next, landing offset past it, goes to poller
// want, and returns d (-1 if it gave up).
func steer(fd, want, offset, n int, held *[]int) int {
	for range n {
		d, err := syscall.Dup(fd)
		if err != nil {
			return -1
		}
		if placement(d+offset, n) == want {
			syscall.Close(d)
			return d
		}
		*held = append(*held, d)
	}
	return -1
}

func (l *Loop) newTrigger() (*trigger, *nbio.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("event loop trigger: %w", err)
	}
	f := os.NewFile(uintptr(fds[1]), "trigger")
	conn, err := net.FileConn(f)
	f.Close()
	if err != nil {
		syscall.Close(fds[0])
		return nil, nil, fmt.Errorf("event loop trigger: %w", err)
	}
	t := &trigger{w: fds[0]}
	nc, err := l.Add(conn, t)
	if err != nil {
		syscall.Close(fds[0])
		return nil, nil, fmt.Errorf("event loop trigger: %w", err)
	}
	t.c = nc
	return t, nc, nil
}
