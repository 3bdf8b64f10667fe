package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/bench"
	"github.com/ws2api/ws2api/internal/testkit"
)

// apiProc is the echo API run as a process of its own: `ws2api bench api`,
// logging every request it answers 2xx to a file.
type apiProc struct {
	t    *testing.T
	addr string
	log  string
	args []string
	cmd  *exec.Cmd
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func startAPIProc(t *testing.T, addr, log string, args ...string) *apiProc {
	t.Helper()
	a := &apiProc{t: t, addr: addr, log: log, args: args}
	a.start()
	t.Cleanup(a.kill)
	return a
}

func (a *apiProc) start() {
	a.t.Helper()
	args := append([]string{"bench", "api", "-listen", a.addr, "-log", a.log}, a.args...)
	a.cmd = exec.Command(binary, args...)
	if err := a.cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", a.addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("echo API on %s did not start: %v", a.addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kill ends the API at once, as a crash or a deployment would.
func (a *apiProc) kill() {
	if a.cmd != nil && a.cmd.Process != nil {
		_ = a.cmd.Process.Kill()
		_ = a.cmd.Wait()
		a.cmd = nil
	}
}

func (a *apiProc) url() string { return "http://" + a.addr + "/" }

// waitAvailable waits until the API answers 2xx (its start-up 503 window
// is over).
func (a *apiProc) waitAvailable() {
	a.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Post(a.url()+"probe", "text/plain", strings.NewReader("probe"))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	a.t.Fatal("the API never became available")
}

// logged reads an API log: for each client id, the bodies of its POSTs in
// the order the API answered them; and the DELETEs.
func logged(t *testing.T, path string) (posts map[string][]string, deletes map[string]int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	posts, deletes = map[string][]string{}, map[string]int{}
	line := regexp.MustCompile(`^(\w+) /([^ ]*) (\S+) (".*")$`)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := line.FindStringSubmatch(sc.Text())
		if m == nil {
			t.Fatalf("malformed API log line %q", sc.Text())
		}
		body, err := strconv.Unquote(m[4])
		if err != nil {
			t.Fatal(err)
		}
		switch m[1] {
		case "POST":
			posts[m[2]] = append(posts[m[2]], body)
		case "DELETE":
			deletes[m[2]]++
		}
	}
	return posts, deletes
}

// chatter is clients numbered 0..n-1 each sending count numbered messages,
// one per interval, and reading the echoes.
type chatter struct {
	t       *testing.T
	conns   []*websocket.Conn
	mu      sync.Mutex
	replies map[string][]string
	dropped []string // clients whose connection ended before the test closed it
	readers sync.WaitGroup
	closing chan struct{}
}

func chat(t *testing.T, gateway string, n int) *chatter {
	t.Helper()
	ch := &chatter{t: t, replies: map[string][]string{}, closing: make(chan struct{})}
	for i := range n {
		id := fmt.Sprintf("c%d", i)
		c := testkit.Dial(t, "ws://"+gateway+"/"+id, nil)
		ch.conns = append(ch.conns, c)
		ch.readers.Go(func() {
			for {
				_, m, err := c.ReadMessage()
				if err != nil {
					select {
					case <-ch.closing:
					default:
						ch.mu.Lock()
						ch.dropped = append(ch.dropped, fmt.Sprintf("%s: %v", id, err))
						ch.mu.Unlock()
					}
					return
				}
				ch.mu.Lock()
				ch.replies[id] = append(ch.replies[id], string(m))
				ch.mu.Unlock()
			}
		})
	}
	return ch
}

// send has every client send count numbered messages, one per interval;
// it returns when all are written.
func (ch *chatter) send(count int, interval time.Duration) {
	var wg sync.WaitGroup
	for i, c := range ch.conns {
		wg.Go(func() {
			time.Sleep(time.Duration(i) * interval / time.Duration(len(ch.conns))) // spread the clients over the interval
			for n := range count {
				if err := c.WriteMessage(websocket.TextMessage, []byte(strconv.Itoa(n))); err != nil {
					ch.mu.Lock()
					ch.dropped = append(ch.dropped, fmt.Sprintf("c%d: write: %v", i, err))
					ch.mu.Unlock()
					return
				}
				time.Sleep(interval)
			}
		})
	}
	wg.Wait()
}

// waitReplies waits until every client has had count replies.
func (ch *chatter) waitReplies(count int, timeout time.Duration) {
	ch.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ch.mu.Lock()
		short := ""
		for i := range ch.conns {
			id := fmt.Sprintf("c%d", i)
			if len(ch.replies[id]) < count {
				short = fmt.Sprintf("%s has %d replies of %d", id, len(ch.replies[id]), count)
				break
			}
		}
		dropped := slices.Clone(ch.dropped)
		ch.mu.Unlock()
		if len(dropped) > 0 {
			ch.t.Fatalf("clients disconnected: %v", dropped)
		}
		if short == "" {
			return
		}
		if time.Now().After(deadline) {
			ch.t.Fatalf("after %v: %s", timeout, short)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (ch *chatter) close() {
	close(ch.closing)
	for _, c := range ch.conns {
		c.Close()
	}
	ch.readers.Wait()
}

// numbers is 0..n-1 as strings.
func numbers(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = strconv.Itoa(i)
	}
	return out
}

// checkDelivered checks that every client's messages reached the API in
// order. With exact, each exactly once; otherwise a message may appear
// twice in a row: one the API processed but whose answer it never sent
// (it was killed), so the gateway sent it again.
func checkDelivered(t *testing.T, posts map[string][]string, clients, count int, exact bool) {
	t.Helper()
	want := numbers(count)
	bad := 0
	for i := range clients {
		id := fmt.Sprintf("c%d", i)
		got := posts[id]
		if !exact {
			got = slices.Compact(slices.Clone(got))
		}
		if !slices.Equal(got, want) {
			if bad++; bad <= 3 {
				t.Errorf("%s: the API got %v, want 0..%d in order, once each", id, posts[id], count-1)
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d clients' messages were not delivered as sent", bad, clients)
	}
}

const (
	outageClients  = 200
	outageMessages = 60
	outageInterval = 100 * time.Millisecond
)

var outageFlags = []string{"-retry-first", "50ms", "-retry-max", "500ms"}

// The API process is killed for 3 s and started again while 200 clients
// each send 60 numbered messages, one per 100 ms.
func TestAPIRestartLosesNothing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	api := startAPIProc(t, freeAddr(t), filepath.Join(dir, "api.log"))
	gw := start(t, nil, append([]string{"-api", api.url()}, outageFlags...)...)
	ch := chat(t, gw.public, outageClients)
	defer ch.close()

	go func() {
		time.Sleep(2 * time.Second)
		api.kill()
		time.Sleep(3 * time.Second)
		api.start()
	}()
	ch.send(outageMessages, outageInterval)
	ch.waitReplies(outageMessages, 30*time.Second)
	posts, _ := logged(t, api.log)
	checkDelivered(t, posts, outageClients, outageMessages, false)
}

// The API answers 503 for 3 s in the middle of the run: a 503 is not an
// answer, so every message is sent again until it is, exactly once.
func TestAPI503sLoseNothing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	api := startAPIProc(t, freeAddr(t), filepath.Join(dir, "api.log"), "-unavailable-for", "3s")
	api.waitAvailable()
	gw := start(t, nil, append([]string{"-api", api.url()}, outageFlags...)...)
	ch := chat(t, gw.public, outageClients)
	defer ch.close()

	go func() {
		time.Sleep(2 * time.Second)
		_ = api.cmd.Process.Signal(syscall.SIGUSR1) // 503 for 3 s from now
	}()
	ch.send(outageMessages, outageInterval)
	ch.waitReplies(outageMessages, 30*time.Second)
	posts, _ := logged(t, api.log)
	checkDelivered(t, posts, outageClients, outageMessages, true)
	if status, body := get(t, gw.control+"/metrics"); status != 200 || !regexp.MustCompile(`(?m)^ws2api_api_retries_total{cause="status"} [1-9]`).MatchString(body) {
		t.Fatalf("no retries counted:\n%s", body)
	}
}

// Two API backends, one of which dies for good: its share moves to the
// other.
func TestOneOfTwoBackendsDyingLosesNothing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	log := filepath.Join(dir, "api.log")
	a := startAPIProc(t, freeAddr(t), log)
	b := startAPIProc(t, freeAddr(t), log)
	gw := start(t, nil, append([]string{"-api", a.url() + "," + b.url()}, outageFlags...)...)
	ch := chat(t, gw.public, outageClients)
	defer ch.close()

	go func() {
		time.Sleep(2 * time.Second)
		a.kill()
	}()
	ch.send(outageMessages, outageInterval)
	ch.waitReplies(outageMessages, 30*time.Second)
	posts, _ := logged(t, log)
	checkDelivered(t, posts, outageClients, outageMessages, false)
	_, body := get(t, gw.control+"/metrics")
	if !strings.Contains(body, `ws2api_api_backend_up{backend="`+a.url()+`"} 0`) ||
		!strings.Contains(body, `ws2api_api_backend_up{backend="`+b.url()+`"} 1`) {
		t.Fatalf("backend health not in the metrics:\n%s", body)
	}
}

// A long outage with low caps: clients that pile up too much are closed
// with 1013 and counted, and the gateway's memory stays bounded.
func TestLongOutageKeepsMemoryBounded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	api := startAPIProc(t, freeAddr(t), filepath.Join(dir, "api.log"))
	gw := start(t, nil, "-api", api.url(), "-retry-first", "50ms", "-retry-max", "200ms",
		"-max-pending", "64KiB", "-max-pending-total", "512KiB")
	const clients = 50
	conns := make([]*websocket.Conn, clients)
	for i := range conns {
		conns[i] = testkit.Dial(t, fmt.Sprintf("ws://%s/flood%d", gw.public, i), nil)
	}
	before := rss(t, gw.cmd.Process.Pid)
	api.kill()

	// Each client sends 200 KiB, four times what it may have waiting; all
	// together twenty times what the gateway may hold.
	msg := strings.Repeat("x", 1024)
	closed := make(chan int, clients)
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			for range 200 {
				if c.WriteMessage(websocket.TextMessage, []byte(msg)) != nil {
					break
				}
			}
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					if ce, ok := err.(*websocket.CloseError); ok {
						closed <- ce.Code
					}
					return
				}
			}
		})
	}
	wg.Wait()
	close(closed)
	n1013 := 0
	for code := range closed {
		if code == 1013 {
			n1013++
		}
	}
	if n1013 == 0 {
		t.Fatal("no client was closed with 1013")
	}
	// The outage goes on: retries keep running, memory must not grow.
	time.Sleep(2 * time.Second)
	after := rss(t, gw.cmd.Process.Pid)
	if grew := after - before; grew > 48<<20 {
		t.Fatalf("RSS grew by %d MiB during the outage", grew>>20)
	}
	body := ""
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		_, body = get(t, gw.control+"/metrics")
		closes := regexp.MustCompile(`(?m)^ws2api_closes_total\{cause="(backlog|gateway_full)"\} (\d+)$`).FindAllStringSubmatch(body, -1)
		counted := 0
		for _, m := range closes {
			n, _ := strconv.Atoi(m[2])
			counted += n
		}
		if counted == n1013 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d clients closed with 1013, %d counted by cause: %v", n1013, counted, closes)
		}
	}
	pending := regexp.MustCompile(`(?m)^ws2api_pending_bytes (\d+)$`).FindStringSubmatch(body)
	if pending == nil {
		t.Fatal("no ws2api_pending_bytes")
	}
	if n, _ := strconv.Atoi(pending[1]); n > 512<<10 {
		t.Fatalf("%d bytes waiting, over the 512 KiB cap", n)
	}
}

// rss reads a process's resident memory.
func rss(t *testing.T, pid int) int64 {
	t.Helper()
	st, err := bench.ReadProc(pid)
	if err != nil {
		t.Fatal(err)
	}
	return st.RSSBytes
}

// SIGTERM with messages waiting for an API that is down: the gateway closes
// its clients with 1001, keeps retrying, and once the API is back delivers
// every message and every DELETE before exiting 0.
func TestShutdownDeliversWhatIsPending(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	api := startAPIProc(t, freeAddr(t), filepath.Join(dir, "api.log"))
	gw := start(t, nil, "-api", api.url(), "-retry-first", "50ms", "-retry-max", "200ms", "-drain-timeout", "20s")
	const clients, count = 20, 10
	conns := make([]*websocket.Conn, clients)
	for i := range conns {
		conns[i] = testkit.Dial(t, fmt.Sprintf("ws://%s/c%d", gw.public, i), nil)
	}
	api.kill()
	for _, c := range conns {
		for n := range count {
			if err := c.WriteMessage(websocket.TextMessage, []byte(strconv.Itoa(n))); err != nil {
				t.Fatal(err)
			}
		}
	}
	time.Sleep(300 * time.Millisecond) // the messages reach the gateway and wait
	_ = gw.cmd.Process.Signal(syscall.SIGTERM)
	for _, c := range conns {
		testkit.ExpectClose(t, c, 1001, "going away", 5*time.Second)
	}
	if status, _ := get(t, gw.control+"/healthz"); status != 503 {
		t.Fatalf("healthz %d while draining, want 503", status)
	}
	time.Sleep(time.Second)
	api.start()
	if code := gw.stop(nil, 20*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	posts, deletes := logged(t, api.log)
	checkDelivered(t, posts, clients, count, true)
	for i := range clients {
		if n := deletes[fmt.Sprintf("c%d", i)]; n != 1 {
			t.Errorf("c%d: %d DELETEs, want 1", i, n)
		}
	}
}

// A second signal ends the process at once, drain or not.
func TestSecondSignalExitsAtOnce(t *testing.T) {
	t.Parallel()
	// An API that never answers keeps the drain waiting.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			go func() { _, _ = bufio.NewReader(c).ReadString(0) }()
		}
	}()
	// The connect GET hangs, so the client never completes: the drain waits
	// for it until the second signal.
	gw := start(t, nil, "-api", "http://"+ln.Addr().String()+"/", "-drain-timeout", "60s", "-timeout", "60s")
	conn, err := net.Dial("tcp", gw.public)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /waiting HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	time.Sleep(200 * time.Millisecond)
	_ = gw.cmd.Process.Signal(syscall.SIGTERM)
	time.Sleep(300 * time.Millisecond)
	select {
	case <-gw.exited:
		t.Fatal("exited on the first signal, with a connect still waiting for the API")
	default:
	}
	start := time.Now()
	_ = gw.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-gw.exited:
	case <-time.After(5 * time.Second):
		t.Fatal("still running 5 s after the second signal")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %v to exit after the second signal", d)
	}

}

// The API backends come from -api-file; after SIGHUP the gateway sends to
// the new list, its clients still connected.
func TestSIGHUPReloadsTheAPIBackends(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a := startAPIProc(t, freeAddr(t), filepath.Join(dir, "a.log"))
	b := startAPIProc(t, freeAddr(t), filepath.Join(dir, "b.log"))
	list := filepath.Join(dir, "backends")
	if err := os.WriteFile(list, []byte("# the API\n"+a.url()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	gw := start(t, nil, "-api-file", list)
	c := testkit.Dial(t, "ws://"+gw.public+"/hup", nil)
	_ = c.WriteMessage(websocket.TextMessage, []byte("to a"))
	testkit.Read(t, c, 5*time.Second)

	if err := os.WriteFile(list, []byte(b.url()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = gw.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(gw.logs(), "API backends reloaded") {
		if time.Now().After(deadline) {
			t.Fatalf("no reload logged:\n%s", gw.logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = c.WriteMessage(websocket.TextMessage, []byte("to b"))
	if _, got := testkit.Read(t, c, 5*time.Second); got != "to b" {
		t.Fatalf("reply %q", got)
	}
	postsA, _ := logged(t, a.log)
	postsB, _ := logged(t, b.log)
	if !slices.Equal(postsA["hup"], []string{"to a"}) || !slices.Equal(postsB["hup"], []string{"to b"}) {
		t.Fatalf("a got %v, b got %v", postsA["hup"], postsB["hup"])
	}

	// A bad file leaves the list as it was.
	if err := os.WriteFile(list, []byte("ftp://nope/\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = gw.cmd.Process.Signal(syscall.SIGHUP)
	for !strings.Contains(gw.logs(), "the old list stays") {
		if time.Now().After(deadline.Add(5 * time.Second)) {
			t.Fatalf("bad file not reported:\n%s", gw.logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = c.WriteMessage(websocket.TextMessage, []byte("still b"))
	if _, got := testkit.Read(t, c, 5*time.Second); got != "still b" {
		t.Fatalf("reply %q", got)
	}
}

// A SIGHUP sent the moment "ws2api serving" is logged is caught, not the
// end of the process (uncaught, SIGHUP terminates it: the handlers were
// once installed after that line, and a reload sent under load killed the
// gateway; SIGUSR2's handler is installed with it).
func TestSIGHUPSentAsItStartsServingIsCaught(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	for i := range 10 {
		gw := start(t, nil, "-api", api.URL())
		_ = gw.cmd.Process.Signal(syscall.SIGHUP)
		waitLog(t, gw, "SIGHUP: nothing to reload")
		if code := gw.stop(syscall.SIGTERM, 10*time.Second); code != 0 {
			t.Fatalf("round %d: exit %d after SIGTERM (-1: a signal ended it)\n%s", i, code, gw.logs())
		}
	}
}
