package loop

import (
	"errors"
	"os"
	"strconv"
	"syscall"

	"github.com/lesismal/nbio"
	"golang.org/x/sys/unix"
)

// Detach takes c off the loop without closing it, for a binary upgrade
// that passes the socket to another process: once done runs, this
// process reads nothing more from it. done gets the bytes the kernel still
// held (read here, not delivered to c's handler) and a copy of the
// descriptor to pass on; c itself stays open until closed, which then
// sends nothing to the peer once another process holds the socket. done runs on c's poller
// and must not block; on an error the socket is left as it was, but off
// the loop. fd stays c's: it is valid until c is closed (close it on its
// poller, with Later, once fd is passed on), and no copy is made, which
// for tens of thousands of sockets would pass the process's open-file
// limit while they wait their turn to go.
//
// nbio (v1.6.12) never removes a socket from its poller's epoll set: its
// close relies on the kernel dropping the registration with the last
// descriptor, which a copy held by another process outlives, so the old
// process would go on hearing of the socket under a descriptor number it
// may reuse. Detach removes it itself, from every epoll set this process
// has (only c's poller knows it: the others answer ENOENT). It does so on
// c's poller, then reads what is left one turn later: events for c that
// the same epoll_wait returned are delivered to its handler as usual
// meanwhile, and none can come after.
func (l *Loop) Detach(c *nbio.Conn, done func(rest []byte, fd int, err error)) {
	p := placement(c.Hash(), len(l.later))
	l.Later(p, detachTask(func() {
		fd := c.Hash()
		for _, ep := range l.epollFDs() {
			_ = unix.EpollCtl(ep, unix.EPOLL_CTL_DEL, fd, &unix.EpollEvent{})
		}
		l.Later(p, detachTask(func() {
			rest, err := drain(fd)
			done(rest, fd, err)
		}))
	}))
}

type detachTask func()

func (t detachTask) RunLater() { t() }

// drain reads what the kernel holds for a non-blocking socket, up to
// EAGAIN. A peer's FIN or a reset ends it too: the process the socket
// goes to then sees the same.
func drain(fd int) ([]byte, error) {
	var out []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := syscall.Read(fd, buf)
		if n > 0 {
			out = append(out, buf[:n]...)
			continue
		}
		switch {
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EAGAIN), err == nil: // err == nil: n == 0, the peer's FIN
			return out, nil
		default:
			return out, err
		}
	}
}

// epollFDs lists this process's epoll descriptors (nbio's pollers, and
// the Go runtime's own), read once from /proc/self/fd.
func (l *Loop) epollFDs() []int {
	l.epollOnce.Do(func() {
		dir := "/proc/self/fd"
		entries, err := os.ReadDir(dir)
		if err != nil {
			return
		}
		for _, e := range entries {
			if target, err := os.Readlink(dir + "/" + e.Name()); err == nil && target == "anon_inode:[eventpoll]" {
				if fd, err := strconv.Atoi(e.Name()); err == nil {
					l.epfds = append(l.epfds, fd)
				}
			}
		}
	})
	return l.epfds
}
