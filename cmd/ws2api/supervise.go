package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// As a container's first process (PID 1), ws2api cannot upgrade itself
// in place: the container ends when PID 1 exits, and an upgrade's old
// process exits once the new one has its connections. So PID 1 stays a
// small supervisor: it runs the gateway as its child, follows which
// process serves (the MAINPID notices an upgrade sends, over a
// notification socket of its own, as systemd's), forwards SIGTERM,
// SIGINT, SIGHUP, SIGUSR2 and SIGQUIT to it, reaps every orphan, and exits
// with the serving process's status once that one exits. `docker kill -s
// USR2 <container>` then upgrades the gateway to the binary at its path.

// envSupervised marks the gateway a supervisor started.
const envSupervised = "WS2API_SUPERVISED"

// supervising reports whether this process should supervise: it is PID 1
// and not itself started by one.
func supervising() bool { return os.Getpid() == 1 && os.Getenv(envSupervised) == "" }

// supervise runs the gateway under this process and returns its exit code.
func supervise() int {
	var r [6]byte
	_, _ = rand.Read(r[:])
	name := "@ws2api-init-" + hex.EncodeToString(r[:]) // abstract: the image may have no writable directory
	notes, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: "\x00" + name[1:], Net: "unixgram"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "ws2api: supervisor: notification socket:", err)
		return 1
	}
	defer notes.Close()
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR2, syscall.SIGQUIT, syscall.SIGCHLD)
	env := append(os.Environ(), envSupervised+"=1", "NOTIFY_SOCKET="+name)
	p, err := os.StartProcess(exePath, os.Args, &os.ProcAttr{Env: env, Files: []*os.File{os.Stdin, os.Stdout, os.Stderr}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "ws2api: supervisor:", err)
		return 1
	}
	mainPID := p.Pid
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			mainPID = latestMainPID(notes, mainPID)
			_ = syscall.Kill(mainPID, sig.(syscall.Signal))
			continue
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
			// The serving process may have changed: a new one says so
			// before the old one can exit (which waits for its "ready").
			mainPID = latestMainPID(notes, mainPID)
			if pid != mainPID {
				continue // an old process after its upgrade, or an orphan
			}
			switch {
			case ws.Exited():
				return ws.ExitStatus()
			case ws.Signaled():
				return 128 + int(ws.Signal())
			}
			return 1
		}
	}
	return 1
}

// latestMainPID reads the notices waiting on notes and returns the last
// MAINPID among them, else pid.
func latestMainPID(notes *net.UnixConn, pid int) int {
	buf := make([]byte, 512)
	for {
		_ = notes.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		n, err := notes.Read(buf)
		if err != nil {
			return pid
		}
		for line := range strings.SplitSeq(string(buf[:n]), "\n") {
			if v, ok := strings.CutPrefix(line, "MAINPID="); ok {
				if p, err := strconv.Atoi(v); err == nil {
					pid = p
				}
			}
		}
	}
}
