package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/ws2api/ws2api/internal/gateway"
)

// A binary upgrade, started by SIGUSR2 (nginx's convention):
//
//	old  starts the executable at its own path (the new binary, once it
//	     is on disk there) with the same arguments and environment, plus
//	     WS2API_UPGRADE_FD=3: its end of a Unix socket pair
//	old  passes its listening sockets over it (SCM_RIGHTS)
//	new  serves them, alongside the old for a moment, and says "ready"
//	     (and tells systemd it is the main process now)
//	old  stops accepting and passes its open client connections over,
//	     each with its state (handover.go, gateway/handover.go); those it
//	     cannot pass it closes with 1012 "service restart", delivers what
//	     they sent, and exits 0
//
// No connection is refused on the way: the listening sockets are the same
// ones throughout. If the new process exits, or is not ready within
// -upgrade-timeout, the old one keeps serving everything and logs why.

// envUpgradeFD names, in a process an upgrade started, the descriptor of
// its socket to the old process.
const envUpgradeFD = "WS2API_UPGRADE_FD"

// exePath is the executable's path, read at start: once the binary is
// replaced, /proc/self/exe names the old, deleted file, and this path the
// new one.
var exePath, _ = os.Executable()

// inherited is what a process started by an upgrade takes over.
type inherited struct {
	public, control net.Listener
	conn            *net.UnixConn // to the old process
	// The old process's node name, which this one keeps (the connections
	// it takes over are named by it), and where its own connection
	// numbers start.
	node  string
	after uint64
}

// inheritListeners receives the listeners from the old process, if this
// process was started by an upgrade (nil otherwise).
func inheritListeners(getenv func(string) string) (*inherited, error) {
	v := getenv(envUpgradeFD)
	if v == "" {
		return nil, nil
	}
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("upgrade: bad %s %q", envUpgradeFD, v)
	}
	f := os.NewFile(uintptr(fd), "upgrade socket")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("upgrade: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, errors.New("upgrade: " + envUpgradeFD + " is not a Unix socket")
	}
	_ = uc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf, oob := make([]byte, 128), make([]byte, syscall.CmsgSpace(2*4))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	_ = uc.SetReadDeadline(time.Time{})
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("upgrade: receiving the listeners: %w", err)
	}
	fds, err := receivedFDs(oob[:oobn])
	var node string
	var after uint64
	if _, serr := fmt.Sscanf(string(buf[:n]), "listeners %s %d\n", &node, &after); serr != nil && err == nil {
		err = serr
	}
	if err != nil || len(fds) != 2 {
		for _, fd := range fds {
			syscall.Close(fd)
		}
		uc.Close()
		return nil, fmt.Errorf("upgrade: the old process sent %q and %d descriptors, want the two listeners (%v)", buf[:n], len(fds), err)
	}
	h := &inherited{conn: uc, node: node, after: after}
	for i, dst := range []*net.Listener{&h.public, &h.control} {
		f := os.NewFile(uintptr(fds[i]), "listener")
		*dst, err = net.FileListener(f)
		f.Close()
		if err != nil {
			h.close()
			return nil, fmt.Errorf("upgrade: listener: %w", err)
		}
	}
	return h, nil
}

func receivedFDs(oob []byte) ([]int, error) {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	for _, m := range msgs {
		got, err := syscall.ParseUnixRights(&m)
		if err != nil {
			return fds, err
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

func (h *inherited) close() {
	for _, ln := range []net.Listener{h.public, h.control} {
		if ln != nil {
			ln.Close()
		}
	}
	h.conn.Close()
}

// ready tells the old process that this one serves, and returns the link
// its connections come over.
func (h *inherited) ready() (*link, error) {
	l := newLink(h.conn)
	if err := l.send(&rec{Type: "ready"}, -1); err != nil {
		l.close()
		return nil, err
	}
	return l, nil
}

// upgrade starts the new process and hands it the listeners; it returns
// the link to the new process once it serves, or why it does not (the
// old one then serves on).
func (n *node) upgrade(timeout time.Duration) (*link, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "upgrade socket"), os.NewFile(uintptr(fds[1]), "upgrade socket")
	cmd := exec.Command(exePath, os.Args[1:]...)
	cmd.Env = append(os.Environ(), envUpgradeFD+"=3")
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	err = cmd.Start()
	theirs.Close()
	if err != nil {
		ours.Close()
		return nil, fmt.Errorf("starting %s: %w", exePath, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// fail ends an upgrade that did not happen: a new process that exited
	// meanwhile says why in its exit status, one still there is killed.
	fail := func(err error) error {
		select {
		case status := <-exited:
			err = fmt.Errorf("the new process exited before taking over: %v", status)
		case <-time.After(time.Second):
			_ = cmd.Process.Kill()
		}
		ours.Close()
		return err
	}
	c, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		return nil, fail(err)
	}
	uc := c.(*net.UnixConn)
	var files []*os.File
	for _, ln := range []net.Listener{n.publicLn, n.controlLn} {
		f, err := ln.(*net.TCPListener).File() // a copy of the descriptor
		if err != nil {
			uc.Close()
			return nil, fail(err)
		}
		defer f.Close()
		files = append(files, f)
	}
	// The node's name goes on; the new process numbers its connections
	// from far beyond this one's, which may still accept a few.
	hello := fmt.Sprintf("listeners %s %d\n", n.gw.Node(), n.gw.Connections()+1<<32)
	if _, _, err := uc.WriteMsgUnix([]byte(hello), syscall.UnixRights(int(files[0].Fd()), int(files[1].Fd())), nil); err != nil {
		uc.Close()
		return nil, fail(fmt.Errorf("passing the listeners: %w", err))
	}
	l := newLink(uc)
	ready := make(chan error, 1)
	go func() {
		r, err := l.receive()
		if err == nil && r.Type != "ready" {
			err = fmt.Errorf("it said %q", r.Type)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			l.close()
			return nil, fail(fmt.Errorf("the new process did not take over: %v", err))
		}
		n.log.Info("upgrade: the new process serves", "pid", cmd.Process.Pid)
		return l, nil
	case status := <-exited:
		l.close()
		return nil, fmt.Errorf("the new process exited before taking over: %v", status)
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		l.close()
		return nil, fmt.Errorf("the new process did not take over within %v", timeout)
	}
}

// handOver passes the gateway's connections to the new process over l
// (gateway.Server.HandOver), within -drain-timeout; ops on clients that
// reach this process go over l from now on, until it exits. An error is a
// hand-over cut short by the new process's end: this one serves on.
func (n *node) handOver(l *link) error {
	go l.readResults()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.drainTimeout)
	defer cancel()
	announce := func(ids []string) error { return l.send(&rec{Type: "coming", IDs: ids}, -1) }
	send := func(ms []*gateway.Moving, fds []int) error { return l.send(&rec{Type: "conns", Conns: ms}, fds...) }
	moved, closed, err := n.gw.HandOver(ctx, successor{l}, announce, send)
	if derr := l.send(&rec{Type: "done", Taken: moved, Closed: closed}, -1); err == nil {
		err = derr
	}
	took := time.Since(start).Round(time.Millisecond).String()
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		n.log.Error("upgrade: hand-over cut short: the new process is gone", "handed_over", moved, "closed", closed, "took", took, "error", err)
		return err
	}
	// In a cluster the other nodes find the clients through Redis: this
	// process forwards what still reaches it until the new one has
	// written where they are.
	select {
	case <-l.settled:
	case <-time.After(5 * time.Second):
	}
	if n.bus != nil {
		n.bus.HandOff(5 * time.Second) // the new process serves the node's requests from here
	}
	if err != nil { // -drain-timeout: the rest were closed with 1012
		n.log.Error("upgrade: hand-over incomplete within -drain-timeout", "handed_over", moved, "closed", closed, "took", took, "error", err)
		return nil
	}
	n.log.Info("upgrade: connections handed over", "handed_over", moved, "closed_1012", closed, "took", took)
	return nil
}

// spareListeners are copies of the listening sockets, kept through a
// hand-over in case it fails.
type spareListeners [2]*os.File

func listenerFiles(public, control net.Listener) (spareListeners, error) {
	var s spareListeners
	for i, ln := range []net.Listener{public, control} {
		f, err := ln.(*net.TCPListener).File()
		if err != nil {
			s.close()
			return s, err
		}
		s[i] = f
	}
	return s, nil
}

func (s spareListeners) listeners() (public, control net.Listener, err error) {
	defer s.close()
	if public, err = net.FileListener(s[0]); err != nil {
		return nil, nil, err
	}
	if control, err = net.FileListener(s[1]); err != nil {
		public.Close()
		return nil, nil, err
	}
	return public, control, nil
}

func (s spareListeners) close() {
	for _, f := range s {
		if f != nil {
			f.Close()
		}
	}
}

// sdNotify tells systemd (Type=notify) of a state change; nothing without
// $NOTIFY_SOCKET.
func sdNotify(state string) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return
	}
	if addr[0] == '@' {
		addr = "\x00" + addr[1:] // abstract namespace
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return
	}
	defer c.Close()
	_, _ = c.Write([]byte(state))
}
