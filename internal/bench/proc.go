package bench

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
)

// ProcStat is what /proc tells of a process: resident memory and CPU time.
type ProcStat struct {
	RSSBytes int64
	CPUTicks int64 // user + system, in clock ticks (USER_HZ, 100 a second on Linux)
	Threads  int
	FDs      int
}

// clockTicks is USER_HZ: Linux reports CPU times in hundredths of a second
// to user space on every architecture Go supports.
const clockTicks = 100

// ReadProc reads /proc/<pid>.
func ReadProc(pid int) (ProcStat, error) {
	var st ProcStat
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return st, err
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			st.RSSBytes = kb << 10
		case "Threads:":
			st.Threads, _ = strconv.Atoi(f[1])
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return st, err
	}
	// The command name is in parentheses and may hold spaces: fields are
	// counted after its closing one.
	s := string(stat)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		f := strings.Fields(s[i+1:])
		if len(f) > 13 {
			utime, _ := strconv.ParseInt(f[11], 10, 64)
			stime, _ := strconv.ParseInt(f[12], 10, 64)
			st.CPUTicks = utime + stime
		}
	}
	if fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		st.FDs = len(fds)
	}
	return st, nil
}

// SockStat is the kernel's own TCP memory (all sockets of the machine).
type SockStat struct {
	TCPInUse    int
	TCPMemPages int64 // pages of 4 KiB the kernel holds for TCP buffers
}

// ReadSockStat reads /proc/net/sockstat.
func ReadSockStat() (SockStat, error) {
	var st SockStat
	b, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return st, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "TCP:" {
			continue
		}
		for i := 1; i+1 < len(f); i += 2 {
			v, _ := strconv.ParseInt(f[i+1], 10, 64)
			switch f[i] {
			case "inuse":
				st.TCPInUse = int(v)
			case "mem":
				st.TCPMemPages = v
			}
		}
	}
	return st, nil
}

// procSample is one reading of the gateway and of the kernel's memory.
type procSample struct {
	rss      int64
	cpuTicks int64
	fds      int
	threads  int
	tcpPages int64
	slab     int64 // bytes of kernel slab memory (sockets, files, epoll items...)
}

// readSlab returns the kernel's slab memory in bytes (/proc/meminfo).
func readSlab() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "Slab:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// gatewayWatch reads the gateway's figures at the points of a run.
type gatewayWatch struct {
	pid      int
	base     procSample
	idle     procSample
	afterOne *procSample
}

func watchGateway(pid int) (*gatewayWatch, error) {
	g := &gatewayWatch{pid: pid}
	if _, err := ReadProc(pid); err != nil {
		return nil, fmt.Errorf("gateway pid %d: %w", pid, err)
	}
	g.base = g.read()
	return g, nil
}

func (g *gatewayWatch) read() procSample {
	st, _ := ReadProc(g.pid)
	ss, _ := ReadSockStat()
	return procSample{rss: st.RSSBytes, cpuTicks: st.CPUTicks, fds: st.FDs, threads: st.Threads, tcpPages: ss.TCPMemPages, slab: readSlab()}
}

// figures turns the readings into per-connection costs, for conns
// connections open.
func (g *gatewayWatch) figures(conns int64) *GatewayFigures {
	n := float64(max(1, conns))
	f := &GatewayFigures{
		RSSBaseMiB:          mib(g.base.rss),
		RSSIdleMiB:          mib(g.idle.rss),
		IdleKiBPerConn:      float64(g.idle.rss-g.base.rss) / 1024 / n,
		KernelTCPKiBPerConn: float64((g.idle.tcpPages-g.base.tcpPages)*4) / n,
		// Both ends of each connection are on this machine: half the slab
		// growth is the gateway's side.
		KernelSlabKiBPerConn: float64(g.idle.slab-g.base.slab) / 1024 / n / 2,
		FDs:                  g.idle.fds,
		Threads:              g.idle.threads,
	}
	if g.afterOne != nil {
		f.RSSAfterOneMiB = mib(g.afterOne.rss)
		f.AfterOneKiBPerConn = float64(g.afterOne.rss-g.base.rss) / 1024 / n
	}
	return f
}

// atomicInt is an int64 counter.
type atomicInt = atomic.Int64
