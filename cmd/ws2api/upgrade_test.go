package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/testkit"
	"github.com/ws2api/ws2api/internal/testkit/race"
)

// A binary upgrade with kill -USR2, through two builds of the binary: the
// new one takes the listening sockets over, no connection attempt is
// refused meanwhile, the old process passes its clients over (none is
// closed) and exits 0; then back again (handover_test.go holds the
// hand-over itself to every message). A new binary
// that fails to start, or does not take over in time, leaves the old
// one serving.

// buildVersion builds ws2api with -X main.version=v into dir.
func buildVersion(t *testing.T, dir, v string) string {
	t.Helper()
	out := filepath.Join(dir, "ws2api-"+v)
	args := []string{"build", "-ldflags", "-X main.version=" + v, "-o", out, "."}
	if race.Enabled {
		args = append([]string{"build", "-race"}, args[1:]...)
	}
	cmd := exec.Command("go", args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", v, err, b)
	}
	return out
}

// install puts a binary where the running one was started from, as an
// installer does: written aside, renamed into place.
func install(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to+".new", b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(to+".new", to); err != nil {
		t.Fatal(err)
	}
}

// gone reports whether pid has exited (a zombie counts).
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && (f[0] == "Z" || f[0] == "X")
}

// upgradeOnce installs to at exe and sends SIGUSR2 to the process of p's
// line that serves now, and waits until that process is gone.
func upgradeOnce(t *testing.T, p *proc, exe, to string) {
	t.Helper()
	pids := servingPids(p)
	old := pids[len(pids)-1]
	install(t, to, exe)
	if err := syscall.Kill(old, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !gone(old) {
		if time.Now().After(deadline) {
			t.Fatalf("the old process %d is still there 30s after SIGUSR2", old)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// servingPids lists, in order, the pids that logged "ws2api serving" on
// p's output (p's own, then those its upgrades started).
func servingPids(p *proc) []int {
	var pids []int
	for line := range strings.SplitSeq(p.logs(), "\n") {
		var rec struct {
			Msg string  `json:"msg"`
			Pid float64 `json:"pid"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "ws2api serving" {
			pids = append(pids, int(rec.Pid))
		}
	}
	return pids
}

func TestUpgradeWithUSR2RefusesNoConnection(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	v2 := buildVersion(t, dir, "v2")
	v1 := filepath.Join(dir, "ws2api-dev")
	install(t, binary, v1)
	exe := filepath.Join(dir, "ws2api")
	install(t, v1, exe)
	api := testkit.NewAPI(t)
	// systemd's notification socket, as a Type=notify unit gives it.
	notifyAddr := filepath.Join(dir, "notify")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyAddr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	var notes []string
	var notesMu sync.Mutex
	go func() {
		buf := make([]byte, 512)
		for {
			n, err := notify.Read(buf)
			if err != nil {
				return
			}
			notesMu.Lock()
			notes = append(notes, string(buf[:n]))
			notesMu.Unlock()
		}
	}()
	p := startBinary(t, exe, []string{"NOTIFY_SOCKET=" + notifyAddr}, "-api", api.URL(), "-drain-timeout", "5s")
	t.Cleanup(func() { // the processes upgrades started, before p's own clean-up
		for _, pid := range servingPids(p)[1:] {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})

	// Twenty clients that reconnect when closed, and a stream of new
	// connections, each of which must be upgraded.
	const clients = 20
	var closes sync.Map // close code -> count
	var open sync.Map   // id -> its connection now
	var refused, dialed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range clients {
		id := fmt.Sprintf("u-%d", i)
		wg.Go(func() {
			for {
				c, _, err := websocket.DefaultDialer.Dial("ws://"+p.public+"/"+id, nil)
				if err != nil {
					refused.Add(1)
				} else {
					open.Store(id, c)
					_, _, err = c.ReadMessage()
					if ce, ok := err.(*websocket.CloseError); ok {
						n, _ := closes.LoadOrStore(ce.Code, new(atomic.Int64))
						n.(*atomic.Int64).Add(1)
					}
					c.Close()
				}
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		})
	}
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			c, _, err := websocket.DefaultDialer.Dial("ws://"+p.public+"/probe", nil)
			dialed.Add(1)
			if err != nil {
				refused.Add(1)
				continue
			}
			c.Close()
		}
	})
	// (A client of its own, with a timeout: a keep-alive connection to a
	// process that is gone must not hang the test.)
	hc := &http.Client{Timeout: 5 * time.Second}
	get := func(url string) string {
		t.Helper()
		resp, err := hc.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	waitConnected := func(n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			body := get(p.control + "/")
			var list struct {
				Connections int `json:"connections"`
			}
			_ = json.Unmarshal([]byte(body), &list)
			if list.Connections >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d clients connected, want %d", list.Connections, n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	version := func() string {
		t.Helper()
		body := get(p.control + "/metrics")
		for line := range strings.SplitSeq(body, "\n") {
			if v, ok := strings.CutPrefix(line, `ws2api_build_info{version="`); ok {
				return v[:strings.IndexByte(v, '"')]
			}
		}
		return ""
	}
	upgrade := func(to, want string) {
		t.Helper()
		upgradeOnce(t, p, exe, to)
		if got := version(); got != want {
			t.Fatalf("after the upgrade ws2api_build_info says version %q, want %q", got, want)
		}
		waitConnected(clients)
	}

	waitConnected(clients)
	if v := version(); v != "dev" {
		t.Fatalf("version %q before the upgrade", v)
	}
	upgrade(v2, "v2")
	upgrade(v1, "dev")
	close(stop)
	open.Range(func(_, c any) bool { c.(*websocket.Conn).Close(); return true })
	wg.Wait()

	if refused.Load() != 0 {
		t.Errorf("%d connection attempts of %d failed during the upgrades", refused.Load(), dialed.Load()+clients)
	}
	closes.Range(func(code, n any) bool {
		t.Errorf("%d clients closed with %v: a connection must pass over, not close", n.(*atomic.Int64).Load(), code)
		return true
	})
	// systemd heard each process become ready, and the new one take over
	// as the main process before the old one stopped.
	pids := servingPids(p)
	want := []string{"READY=1",
		"MAINPID=" + strconv.Itoa(pids[1]) + "\nREADY=1", "STOPPING=1",
		"MAINPID=" + strconv.Itoa(pids[2]) + "\nREADY=1", "STOPPING=1"}
	notesMu.Lock()
	got := append([]string(nil), notes...)
	notesMu.Unlock()
	if !slices.Equal(got, want) {
		t.Errorf("systemd was told %q, want %q", got, want)
	}
	select { // (gone() saw it exit; this is what orders reading its status after cmd.Wait's write)
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the first process has not been reaped")
	}
	if p.exitErr != nil || !strings.Contains(p.logs(), `"msg":"upgrade: the new process serves"`) {
		t.Errorf("the first process: exit %v, log:\n%s", p.exitErr, p.logs())
	}
}

func TestUpgradeThatFailsLeavesTheOldProcessServing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	exe := filepath.Join(dir, "ws2api")
	install(t, binary, exe)
	api := testkit.NewAPI(t)
	p := startBinary(t, exe, nil, "-api", api.URL(), "-upgrade-timeout", "1s")
	c := testkit.Dial(t, "ws://"+p.public+"/keeper", nil)
	stillServes := func(round string) {
		t.Helper()
		if status, body := post(t, p.control+"/keeper", round); status != http.StatusOK {
			t.Fatalf("%s: push %d %s", round, status, body)
		}
		if _, got := testkit.Read(t, c, 5*time.Second); got != round {
			t.Fatalf("%s: the client got %q", round, got)
		}
		if d, _, err := websocket.DefaultDialer.Dial("ws://"+p.public+"/newcomer", nil); err != nil {
			t.Fatalf("%s: a new client: %v", round, err)
		} else {
			d.Close()
		}
	}
	for _, tc := range []struct{ script, log string }{
		{"#!/bin/sh\nexit 3\n", "the new process exited before taking over: exit status 3"},
		{"#!/bin/sh\nexec sleep 30\n", "the new process did not take over within 1s"},
	} {
		if err := os.WriteFile(exe+".new", []byte(tc.script), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(exe+".new", exe); err != nil {
			t.Fatal(err)
		}
		if err := p.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
			t.Fatal(err)
		}
		waitLog(t, p, tc.log)
		if !strings.Contains(p.logs(), "upgrade failed: this process serves on") {
			t.Fatalf("no line saying the upgrade failed:\n%s", p.logs())
		}
		stillServes(tc.log)
	}
}

// In a container ws2api is PID 1, whose exit ends the container: it then
// supervises the gateway (supervise.go). Here a PID namespace of its own
// (unshare, as a container runtime makes one): SIGUSR2 to PID 1 upgrades
// the gateway without closing a client, PID 1 stays, and SIGTERM to it
// drains the serving process, whose exit status PID 1 returns.
func TestUpgradeAsAContainersFirstProcess(t *testing.T) {
	t.Parallel()
	unshare := tool(t, "unshare")
	dir := t.TempDir()
	v2 := buildVersion(t, dir, "v2")
	exe := filepath.Join(dir, "ws2api")
	install(t, binary, exe)
	wrapper := filepath.Join(dir, "container")
	script := "#!/bin/sh\nexec " + unshare + " --fork --pid --mount-proc " + exe + ` "$@"` + "\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	api := testkit.NewAPI(t)
	p := startBinary(t, wrapper, nil, "-api", api.URL())
	// PID 1 of the namespace, as the host sees it: unshare's child.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p.cmd.Process.Pid, p.cmd.Process.Pid))
	if err != nil || len(strings.Fields(string(b))) != 1 {
		t.Fatalf("unshare's children: %q %v", b, err)
	}
	pid1, _ := strconv.Atoi(strings.Fields(string(b))[0])
	if pids := servingPids(p); len(pids) != 1 || pids[0] == 1 {
		t.Fatalf("the gateway serves as pid %v in the namespace: want a child of PID 1", pids)
	}
	c := testkit.Dial(t, "ws://"+p.public+"/boxed", nil)
	install(t, v2, exe)
	if err := syscall.Kill(pid1, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	waitLog(t, p, `"msg":"upgrade: connections handed over"`)
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, body := get(t, p.control+"/metrics"); strings.Contains(body, `ws2api_build_info{version="v2"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no v2 serving 10s after SIGUSR2 to PID 1")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if status, body := post(t, p.control+"/boxed", "after"); status != http.StatusOK {
		t.Fatalf("push after the upgrade: %d %s", status, body)
	}
	if _, got := testkit.Read(t, c, 5*time.Second); got != "after" {
		t.Fatalf("the client got %q after the upgrade", got)
	}
	if gone(pid1) {
		t.Fatal("PID 1 exited with the old gateway: the container would have ended")
	}
	if err := syscall.Kill(pid1, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testkit.ExpectClose(t, c, 1001, "going away", 10*time.Second)
	if code := p.stop(nil, 15*time.Second); code != 0 {
		t.Fatalf("the container exited %d after SIGTERM, want the gateway's 0\n%s", code, p.logs())
	}
}

// A new binary that takes the listeners, says it is ready, then cannot
// take a connection (goneafterready: its end of the link is shut): the
// old process keeps every client, accepts again and serves on, and says
// so in its log.
func TestUpgradeThatFailsDuringTheHandOver(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fake := filepath.Join(dir, "goneafterready")
	if out, err := exec.Command("go", "build", "-o", fake, "./testdata/goneafterready").CombinedOutput(); err != nil {
		t.Fatalf("building the fake: %v\n%s", err, out)
	}
	exe := filepath.Join(dir, "ws2api")
	install(t, binary, exe)
	api := testkit.NewAPI(t)
	p := startBinary(t, exe, nil, "-api", api.URL())
	var clients []*websocket.Conn
	for i := range 5 {
		clients = append(clients, testkit.Dial(t, fmt.Sprintf("ws://%s/stay-%d", p.public, i), nil))
	}
	install(t, fake, exe)
	if err := p.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	waitLog(t, p, "upgrade failed during the hand-over")
	for i, c := range clients {
		id := fmt.Sprintf("stay-%d", i)
		if status, body := post(t, p.control+"/"+id, "still here"); status != http.StatusOK {
			t.Fatalf("push to %s after the failed hand-over: %d %s", id, status, body)
		}
		if _, got := testkit.Read(t, c, 5*time.Second); got != "still here" {
			t.Fatalf("%s got %q", id, got)
		}
		_ = c.WriteMessage(websocket.TextMessage, []byte("and talking"))
		if _, got := testkit.Read(t, c, 5*time.Second); got != "echo:and talking" {
			t.Fatalf("%s's message answered %q", id, got)
		}
	}
	d, _, err := websocket.DefaultDialer.Dial("ws://"+p.public+"/newcomer", nil)
	if err != nil {
		t.Fatalf("a new client after the failed hand-over: %v", err)
	}
	d.Close()
	if n := strings.Count(p.logs(), `"msg":"ws2api serving"`); n != 1 {
		t.Fatalf("%d processes said they serve", n)
	}
}
