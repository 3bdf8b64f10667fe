package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/testkit"
)

// The API conformance matrix: the gateway, run as a process with its
// default flags (only -api set), in front of each kind of server its users
// run their API on, every one a real process: php -S (one worker, then
// eight), nginx with php-fpm, Apache with mod_php, Node's http module, Go's
// net/http and Python's http.server (HTTP/1.0, close-delimited answers).
// They all run one behaviour, written once per language in
// testdata/conformance (router.php is shared by the three PHP servers):
//
//	GET /<id>            ok
//	POST over 100000 B   the message's SHA-256, in hex
//	POST echo:<text>     <text>
//	POST big:<n>         n bytes of bigPattern
//	POST sleep:<ms>:<t>  <t>, ms milliseconds later
//	POST close:<text>    <text>, with Connection: close
//	POST chunked:<text>  <text> in two flushed halves (chunked where the server can)
//	POST anything else   the message itself
//	DELETE               200, no body
//
// and append every request to a log, one line each: method, id,
// Idempotency-Key (- when none), body size, and the body percent-encoded
// (- when empty) or, over 64 bytes, sha256:<hex>. The test counts from it
// how often each message reached the API and with which keys.
//
// What the servers themselves do shapes some cases; each case first asks
// its server directly (apiServer.direct) and its figure says how it framed
// the answer:
//   - php -S closes the connection after every answer and never chunks:
//     its bodies are close-delimited, as Python's HTTP/1.0 ones are.
//   - nginx drops php-fpm's Connection: close and keeps the connection.
//   - Apache's prefork workers are each held by an idle keep-alive
//     connection for KeepAliveTimeout (5 s): 20 connects at once against
//     16 workers wait that long for the last ones.
//
// TestConformanceFaults drives the gateway against faultAPI, an HTTP/1.1
// server written by hand here so that it can lie.

const (
	bigSize  = 1 << 20 // the default -max-message-size
	bigCount = 100
)

// apiKind is one kind of API server of the matrix.
type apiKind struct {
	name string
	// workers is how many requests the server serves at once; 1 means one
	// after another, and then a slow request necessarily delays the others
	// (1000: an event loop or a thread per connection, no fixed pool).
	workers int
	// configure adds the server's processes to s, in start order.
	configure func(t *testing.T, s *apiServer)
}

func apiKinds(goAPI string) []apiKind {
	return []apiKind{
		{"php-S", 1, func(t *testing.T, s *apiServer) { phpS(t, s, 0) }},
		{"php-S-workers8", 8, func(t *testing.T, s *apiServer) { phpS(t, s, 8) }},
		{"nginx+php-fpm", 16, nginxFPM},
		{"apache-mod_php", 16, apacheModPHP},
		{"node-http", 1000, func(t *testing.T, s *apiServer) {
			s.add(true, "node", "", nil, tool(t, "node"), confFile("server.js"), s.addr, s.log)
		}},
		{"go-net_http", 1000, func(t *testing.T, s *apiServer) {
			s.add(true, "go API", "", nil, goAPI, s.addr, s.log)
		}},
		{"python-http1.0", 1000, func(t *testing.T, s *apiServer) {
			s.add(true, "python", "", nil, tool(t, "python3"), confFile("server.py"), s.addr, s.log)
		}},
	}
}

var conformanceCases = []struct {
	name string
	run  func(t *testing.T, r *confRun)
}{
	{"a.connect", caseConnect},
	{"b.1MiB-replies", caseBigReplies},
	{"c.1MiB-messages", caseBigMessages},
	{"d.connection-close", caseConnectionClose},
	{"e.chunked", caseChunked},
	{"f.slow-handler", caseSlowHandler},
	{"g.20-connects", caseConnectBurst},
	{"h.kill-restart", caseKillRestart},
}

// confRun is one case against one server, with a gateway of its own.
type confRun struct {
	kind apiKind
	api  *apiServer
	gw   *proc
	fig  *figure
}

func (r *confRun) ws(id string) string { return "ws://" + r.gw.public + "/" + id }

func TestConformance(t *testing.T) {
	t.Parallel()
	table := &resultTable{}
	t.Cleanup(func() { t.Log("conformance matrix:\n" + table.String()) })
	goAPI := filepath.Join(t.TempDir(), "goapi")
	if out, err := exec.Command("go", "build", "-o", goAPI, "./testdata/conformance/goapi").CombinedOutput(); err != nil {
		t.Fatalf("building the Go API: %v\n%s", err, out)
	}
	for _, kind := range apiKinds(goAPI) {
		t.Run(kind.name, func(t *testing.T) {
			t.Parallel()
			for _, c := range conformanceCases {
				t.Run(c.name, func(t *testing.T) {
					r := &confRun{kind: kind, fig: table.row(t, kind.name, c.name)}
					t.Parallel()
					r.api = startAPIServer(t, kind)
					r.gw = start(t, nil, "-api", r.api.url())
					c.run(t, r)
				})
			}
		})
	}
}

// a. The upgrade, one text round trip, and the close's DELETE.
func caseConnect(t *testing.T, r *confRun) {
	c := testkit.Dial(t, r.ws("a1"), nil)
	send(t, c, "echo:hello conformance")
	_, got := testkit.Read(t, c, 10*time.Second)
	r.fig.set("reply %q", got)
	if got != "hello conformance" {
		t.Fatalf("reply %q, want %q", got, "hello conformance")
	}
	_ = c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1000, "bye"))
	r.api.waitLogged(t, "DELETE a1", 10*time.Second, func(d delivery) bool { return d.method == "DELETE" && d.id == "a1" })
	r.fig.set("101, reply, DELETE")
}

// b. 1 MiB answers, 100 in a row on one client, each intact.
func caseBigReplies(t *testing.T, r *confRun) {
	want := bigPattern(bigSize)
	msg := fmt.Sprintf("big:%d", bigSize)
	body, framing, _ := r.api.direct(t, msg)
	if body != string(want) {
		t.Fatalf("harness: the server itself answers %s with %d bytes, not the pattern", msg, len(body))
	}
	c := testkit.Dial(t, r.ws("b1"), nil)
	for i := range bigCount {
		send(t, c, msg)
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, got, err := c.ReadMessage()
		if err != nil {
			r.fig.set("%d/%d intact, then no reply: %v (%s)", i, bigCount, err, framing)
			t.Fatalf("reply %d: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			r.fig.set("%d/%d intact, then %d bytes, first wrong at %d (%s)", i, bigCount, len(got), firstDiff(got, want), framing)
			t.Fatalf("reply %d: %d bytes, first difference at %d; want the %d-byte pattern", i, len(got), firstDiff(got, want), len(want))
		}
	}
	r.fig.set("%d/%d intact (%s)", bigCount, bigCount, framing)
}

// c. 1 MiB messages, 100 in a row, each reaching the API intact: it
// answers with their hash.
func caseBigMessages(t *testing.T, r *confRun) {
	msg := make([]byte, bigSize)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range msg {
		msg[i] = 'a' + byte(rng.IntN(26))
	}
	if body, _, _ := r.api.direct(t, string(msg)); body != sha256Hex(msg) {
		t.Fatalf("harness: the server itself answers a 1 MiB message with %q, not its hash", body)
	}
	c := testkit.Dial(t, r.ws("c1"), nil)
	for i := range bigCount {
		copy(msg, fmt.Sprintf("%06d", i))
		send(t, c, string(msg))
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, got, err := c.ReadMessage()
		if err != nil {
			r.fig.set("%d/%d intact, then no reply: %v", i, bigCount, err)
			t.Fatalf("message %d: %v", i, err)
		}
		if string(got) != sha256Hex(msg) {
			r.fig.set("%d/%d intact, then hash %.16s…", i, bigCount, got)
			t.Fatalf("message %d: the API saw a message hashing to %q, want %q", i, got, sha256Hex(msg))
		}
	}
	r.fig.set("%d/%d intact", bigCount, bigCount)
}

// d. Every answer says Connection: close: each message is still POSTed
// exactly once (the server closed after answering, so nothing it did not
// answer was processed) and the replies come in order.
func caseConnectionClose(t *testing.T, r *confRun) {
	const clients, count = 3, 20
	body, _, closes := r.api.direct(t, "close:probe")
	if body != "probe" {
		t.Fatalf("harness: the server itself answers close:probe with %q", body)
	}
	how := "the server closes"
	if !closes {
		how = "the server keeps the connection (nginx drops php's Connection: close)"
	}
	sent, conns := map[string][]string{}, make([]*websocket.Conn, clients)
	for k := range clients {
		id := fmt.Sprintf("d%d", k)
		conns[k] = testkit.Dial(t, r.ws(id), nil)
		for i := range count {
			sent[id] = append(sent[id], fmt.Sprintf("close:%s-%d", id, i))
		}
	}
	for k, c := range conns {
		for _, m := range sent[fmt.Sprintf("d%d", k)] {
			send(t, c, m)
		}
	}
	replies := map[string][]string{}
	for k, c := range conns {
		id := fmt.Sprintf("d%d", k)
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		for range count {
			_, m, err := c.ReadMessage()
			if err != nil {
				t.Errorf("%s: %v", id, err)
				break
			}
			replies[id] = append(replies[id], string(m))
		}
	}
	lt := tallyLog(r.api.deliveries(t), sent)
	rt := tallyReplies(replies, sent, closeAnswers)
	r.fig.set("%v; %v; %s", lt, rt, how)
	if lt.lost+lt.dups+lt.reordered+lt.foreign > 0 || !rt.ok() {
		t.Fatalf("want every message POSTed exactly once, in order, and its reply back in order: %v; %v", lt, rt)
	}
}

// closeAnswers: close:<text> is answered <text>.
func closeAnswers(msg string) []string { return []string{strings.TrimPrefix(msg, "close:")} }

// e. Chunked answers, of sizes around PHP's 4 KiB output buffer and up,
// arrive whole.
func caseChunked(t *testing.T, r *confRun) {
	body, framing, _ := r.api.direct(t, "chunked:abcdef")
	if body != "abcdef" {
		t.Fatalf("harness: the server itself answers chunked:abcdef with %q", body)
	}
	if framing != "chunked" {
		framing += ": this server cannot chunk" // php -S and HTTP/1.0 close every answer
	}
	c := testkit.Dial(t, r.ws("e1"), nil)
	var want []string
	for i, n := range []int{2, 11, 100, 1000, 4095, 4097, 16384, 65536, 99000} {
		text := strings.Repeat(strconv.Itoa(i), n)
		want = append(want, text)
		send(t, c, "chunked:"+text)
	}
	for i, w := range want {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, got, err := c.ReadMessage()
		if err != nil {
			r.fig.set("%d/%d whole, then: %v (%s)", i, len(want), err, framing)
			t.Fatalf("reply %d: %v", i, err)
		}
		if string(got) != w {
			r.fig.set("%d/%d whole, then %d bytes for %d (%s)", i, len(want), len(got), len(w), framing)
			t.Fatalf("reply %d: %d bytes %.20q…, want %d bytes %.20q…", i, len(got), got, len(w), w)
		}
	}
	r.fig.set("%d/%d whole (%s)", len(want), len(want), framing)
}

// f. A slow answer delays only its own client: while client A's request
// sleeps 3 s in the API, ten other clients' messages are answered at once.
// A server with one worker cannot do that: there every message must still
// be answered, intact, after A's.
func caseSlowHandler(t *testing.T, r *confRun) {
	const others = 10
	a := testkit.Dial(t, r.ws("f-a"), nil)
	conns := make([]*websocket.Conn, others)
	for i := range conns {
		conns[i] = testkit.Dial(t, r.ws(fmt.Sprintf("f%d", i)), nil)
	}
	type reply struct {
		at  time.Time
		d   time.Duration
		got string
		err error
	}
	read := func(c *websocket.Conn, sent time.Time) reply {
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, m, err := c.ReadMessage()
		return reply{time.Now(), time.Since(sent), string(m), err}
	}
	aSent := time.Now()
	send(t, a, "sleep:3000:a")
	aReply := make(chan reply, 1)
	go func() { aReply <- read(a, aSent) }()
	// A's request is in the API's hands before the others send.
	r.api.waitLogged(t, "A's POST", 10*time.Second, func(d delivery) bool { return d.method == "POST" && d.id == "f-a" })
	replies := make([]reply, others)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			sent := time.Now()
			if err := c.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf("echo:x%d", i))); err != nil {
				replies[i] = reply{err: err}
				return
			}
			replies[i] = read(c, sent)
		})
	}
	wg.Wait()
	ar := <-aReply
	var worst time.Duration
	bad := []string{}
	for i, rp := range replies {
		worst = max(worst, rp.d)
		if rp.err != nil || rp.got != fmt.Sprintf("x%d", i) {
			bad = append(bad, fmt.Sprintf("f%d: %q %v", i, rp.got, rp.err))
		}
	}
	if ar.err != nil || ar.got != "a" {
		bad = append(bad, fmt.Sprintf("A: %q %v", ar.got, ar.err))
	}
	if r.kind.workers == 1 {
		r.fig.set("one worker, so HOL by design: others waited up to %v, A %v; %d bad", worst.Round(time.Millisecond), ar.d.Round(time.Millisecond), len(bad))
		if len(bad) > 0 {
			t.Fatalf("with one worker every message must still be answered, intact: %v", bad)
		}
		return
	}
	late := 0
	for _, rp := range replies {
		if rp.d > time.Second || (rp.err == nil && ar.err == nil && !rp.at.Before(ar.at)) {
			late++
		}
	}
	r.fig.set("worst other client %v (A %v); %d of %d late", worst.Round(time.Millisecond), ar.d.Round(time.Millisecond), late, others)
	if len(bad) > 0 {
		t.Errorf("replies missing or wrong: %v", bad)
	}
	if late > 0 {
		t.Fatalf("head-of-line blocking: %d of %d other clients' replies took over 1 s or came after A's 3 s answer (worst %v)", late, others, worst)
	}
}

// g. 20 clients connect at once (the README's PHP quick start is php -S
// with one worker): every one is upgraded and answered; no 502.
func caseConnectBurst(t *testing.T, r *confRun) {
	const n = 20
	type outcome struct {
		status int
		took   time.Duration
		err    string
	}
	out := make([]outcome, n)
	gate := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-gate
			t0 := time.Now()
			c, resp, err := testkit.TryDial(r.ws(fmt.Sprintf("g%d", i)), nil)
			out[i].took = time.Since(t0)
			if err != nil {
				if resp != nil {
					b, _ := io.ReadAll(resp.Body)
					out[i] = outcome{resp.StatusCode, out[i].took, strings.TrimSpace(string(b))}
				} else {
					out[i].err = err.Error()
				}
				return
			}
			defer c.Close()
			out[i].status = http.StatusSwitchingProtocols
			want := fmt.Sprintf("g%d", i)
			if err := c.WriteMessage(websocket.TextMessage, []byte("echo:"+want)); err != nil {
				out[i].err = err.Error()
				return
			}
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, m, err := c.ReadMessage(); err != nil || string(m) != want {
				out[i].err = fmt.Sprintf("reply %q %v", m, err)
			}
		})
	}
	close(gate)
	wg.Wait()
	ok, n502 := 0, 0
	var slowest time.Duration
	var bad []string
	for i, o := range out {
		slowest = max(slowest, o.took)
		switch {
		case o.status == http.StatusSwitchingProtocols && o.err == "":
			ok++
		case o.status == http.StatusBadGateway:
			n502++
			fallthrough
		default:
			bad = append(bad, fmt.Sprintf("g%d: %d %s", i, o.status, o.err))
		}
	}
	r.fig.set("%d/%d upgraded and answered, %d×502, slowest upgrade %v", ok, n, n502, slowest.Round(time.Millisecond))
	if ok != n {
		t.Fatalf("%d of %d clients failed: %v", n-ok, n, bad)
	}
}

// h. The API server is killed (SIGKILL) a third into a burst of 10 clients
// × 30 numbered messages, 20 ms apart, and started again on its port a
// second later: nothing is lost, each client's messages first reach the API
// in order, and every message carries a key of its own, the same on each
// re-send, so that the only duplicates are ones the API can drop.
func caseKillRestart(t *testing.T, r *confRun) {
	const clients, count, interval = 10, 30, 20 * time.Millisecond
	ch := chat(t, r.gw.public, clients)
	defer ch.close()
	sending := make(chan struct{})
	go func() { ch.send(count, interval); close(sending) }()
	time.Sleep(count * interval / 3)
	r.api.crash()
	before := len(r.api.deliveries(t))
	time.Sleep(time.Second)
	r.api.restart(t)
	<-sending
	replies := waitChatter(ch, count, 30*time.Second)
	sent := map[string][]string{}
	for i := range clients {
		sent[fmt.Sprintf("c%d", i)] = numbers(count)
	}
	lt := tallyLog(r.api.deliveries(t), sent)
	rt := tallyReplies(replies, sent, func(m string) []string { return []string{m} })
	r.fig.set("killed after %d requests; %v; %v", before, lt, rt)
	if !lt.ok() || !rt.ok() {
		t.Fatalf("across the restart: %v; %v; clients dropped: %v", lt, rt, ch.dropped)
	}
}

// waitChatter waits until every client of ch has count replies, or for
// timeout; it returns what they have.
func waitChatter(ch *chatter, count int, timeout time.Duration) map[string][]string {
	deadline := time.Now().Add(timeout)
	for {
		ch.mu.Lock()
		done := len(ch.dropped) > 0
		if !done {
			done = true
			for i := range ch.conns {
				if len(ch.replies[fmt.Sprintf("c%d", i)]) < count {
					done = false
				}
			}
		}
		if done || time.Now().After(deadline) {
			got := map[string][]string{}
			for id, rs := range ch.replies {
				got[id] = slices.Clone(rs)
			}
			ch.mu.Unlock()
			return got
		}
		ch.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
}

// apiServer is one instance of an API server, as one or more processes
// (nginx and php-fpm), on its own address and log.
type apiServer struct {
	name  string
	addr  string
	log   string
	dir   string
	parts []*apiPart
}

// apiPart is one process of a server.
type apiPart struct {
	name    string
	crashes bool // the crash case kills (and restarts) it
	dir     string
	env     []string
	args    []string
	out     lockedBuffer
	cmd     *exec.Cmd
	done    chan struct{}
}

func startAPIServer(t *testing.T, kind apiKind) *apiServer {
	t.Helper()
	s := &apiServer{name: kind.name, addr: freeAddr(t), dir: t.TempDir()}
	s.log = filepath.Join(s.dir, "api.log")
	kind.configure(t, s)
	t.Cleanup(func() {
		for _, p := range slices.Backward(s.parts) {
			p.kill()
		}
		if t.Failed() {
			for _, p := range s.parts {
				t.Logf("%s's output (its end):\n%s", p.name, tail(p.out.String(), 30))
			}
		}
	})
	for _, p := range s.parts {
		p.start(t)
	}
	s.waitReady(t)
	return s
}

func (s *apiServer) add(crashes bool, name, dir string, env []string, args ...string) {
	s.parts = append(s.parts, &apiPart{name: name, crashes: crashes, dir: dir, env: env, args: args})
}

func (s *apiServer) url() string { return "http://" + s.addr + "/" }

// crash kills the server's crashing processes, with their process groups
// (a master's workers die with it).
func (s *apiServer) crash() {
	for _, p := range s.parts {
		if p.crashes {
			p.kill()
		}
	}
}

func (s *apiServer) restart(t *testing.T) {
	t.Helper()
	for _, p := range s.parts {
		if p.crashes {
			p.start(t)
		}
	}
	s.waitReady(t)
}

// waitReady waits until the server answers GET /probe with ok.
func (s *apiServer) waitReady(t *testing.T) {
	t.Helper()
	probeClient := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := probeClient.Get(s.url() + "probe")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && string(b) == "ok" {
				return
			}
			err = fmt.Errorf("%s %q", resp.Status, b)
		}
		for _, p := range s.parts {
			select {
			case <-p.done:
				t.Fatalf("%s exited: %v\n%s", p.name, p.cmd.ProcessState, tail(p.out.String(), 30))
			default:
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not answer on %s: %v", s.name, s.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// direct sends one message straight to the server, not through the
// gateway (id "probe", which no case uses), to check the harness itself:
// it returns the answer, its framing, and whether the server closes after
// it.
func (s *apiServer) direct(t *testing.T, msg string) (body, framing string, closes bool) {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
	if err != nil {
		t.Fatalf("harness: %s: %v", s.name, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "POST /probe HTTP/1.1\r\nHost: %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n\r\n%s", s.addr, len(msg), msg)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("harness: %s answers no HTTP: %v", s.name, err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("harness: %s's answer: %v", s.name, err)
	}
	switch {
	case slices.Contains(resp.TransferEncoding, "chunked"):
		framing = "chunked"
	case resp.ContentLength >= 0:
		framing = "Content-Length"
	default:
		framing = "close-delimited " + resp.Proto
	}
	return string(b), framing, resp.Close
}

// waitLogged waits until a request matching f is in the server's log.
func (s *apiServer) waitLogged(t *testing.T, what string, timeout time.Duration, f func(delivery) bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !slices.ContainsFunc(s.deliveries(t), f) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s in the API's log within %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *apiServer) deliveries(t *testing.T) []delivery {
	t.Helper()
	b, err := os.ReadFile(s.log)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []delivery
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) != 5 {
			t.Fatalf("harness: malformed API log line %q", line)
		}
		d := delivery{method: f[0], id: f[1], key: f[2], body: f[4]}
		if d.key == "-" {
			d.key = ""
		} else if d.key, err = url.PathUnescape(d.key); err != nil {
			t.Fatalf("harness: API log line %q: %v", line, err)
		}
		if d.size, err = strconv.Atoi(f[3]); err != nil {
			t.Fatalf("harness: API log line %q: %v", line, err)
		}
		if d.body == "-" && d.size == 0 {
			d.body = ""
		} else if !strings.HasPrefix(d.body, "sha256:") {
			if d.body, err = url.PathUnescape(d.body); err != nil {
				t.Fatalf("harness: API log line %q: %v", line, err)
			}
		}
		out = append(out, d)
	}
	return out
}

func (p *apiPart) start(t *testing.T) {
	t.Helper()
	cmd := exec.Command(p.args[0], p.args[1:]...)
	cmd.Dir = p.dir
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = &p.out, &p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its workers die with it
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", p.name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	p.cmd, p.done = cmd, done
}

// kill ends the process and its group at once, as a crash (or the OOM
// killer, or systemd's KillMode=control-group) would.
func (p *apiPart) kill() {
	if p.cmd == nil {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
	p.cmd = nil
}

// phpS runs router.php under PHP's built-in server, with workers worker
// processes (PHP_CLI_SERVER_WORKERS) or, for 0, its default single one.
func phpS(t *testing.T, s *apiServer, workers int) {
	env := []string{"CONFORMANCE_LOG=" + s.log}
	if workers > 0 {
		env = append(env, fmt.Sprintf("PHP_CLI_SERVER_WORKERS=%d", workers))
	}
	s.add(true, "php -S", confFile(""), env, tool(t, "php"), "-S", s.addr, confFile("router.php"))
}

// nginxFPM runs router.php in a static pool of 16 php-fpm workers behind
// nginx. The crash kills php-fpm's master with its workers: killing the
// master alone leaves the workers serving the socket, and a new master
// then refuses to start ("Another FPM instance seems to already listen").
func nginxFPM(t *testing.T, s *apiServer) {
	fpm := globOne(t, "/usr/sbin/php-fpm*", "php-fpm")
	nginx := tool(t, "nginx")
	conf := confTemplate{Dir: s.dir, Addr: s.addr, Router: confFile("router.php"), Log: s.log, Root: os.Geteuid() == 0}
	fpmConf, nginxConf := conf.render(t, "php-fpm.conf"), conf.render(t, "nginx.conf")
	s.add(true, "php-fpm", s.dir, nil, fpm, "--nodaemonize", "--allow-to-run-as-root", "--fpm-config", fpmConf)
	s.add(false, "nginx", s.dir, nil, nginx, "-e", filepath.Join(s.dir, "nginx-error.log"), "-p", s.dir, "-c", nginxConf)
}

// apacheModPHP runs router.php under Apache's prefork MPM with mod_php,
// 16 workers. As root, Apache's workers run as nobody, who must be able to
// write the log.
func apacheModPHP(t *testing.T, s *apiServer) {
	apache := tool(t, "apache2")
	mod := globOne(t, "/usr/lib/apache2/modules/libphp*.so", "libapache2-mod-php")
	conf := confTemplate{Dir: s.dir, Addr: s.addr, Router: confFile("router.php"), Log: s.log,
		Modules: filepath.Dir(mod), PHPModule: mod, Root: os.Geteuid() == 0}
	if conf.Root {
		for _, d := range []string{s.dir, filepath.Dir(s.dir)} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(s.log, nil, 0o666); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(s.log, 0o666); err != nil {
			t.Fatal(err)
		}
	}
	s.add(true, "apache2", s.dir, nil, apache, "-DFOREGROUND", "-f", conf.render(t, "apache2.conf"))
}

// confTemplate fills the server configurations of testdata/conformance.
type confTemplate struct {
	Dir, Addr, Router, Log string
	Modules, PHPModule     string
	Root                   bool // running as root
}

// render writes testdata/conformance/name, filled in, to the server's
// directory and returns its path.
func (c confTemplate) render(t *testing.T, name string) string {
	t.Helper()
	tmpl, err := template.ParseFiles(confFile(name))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := tmpl.Execute(&b, c); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(c.Dir, name)
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// confFile is the absolute path of testdata/conformance/name.
func confFile(name string) string {
	p, err := filepath.Abs(filepath.Join("testdata", "conformance", name))
	if err != nil {
		panic(err)
	}
	return p
}

// globOne finds an installed file whose name is versioned.
func globOne(t *testing.T, pattern, pkg string) string {
	t.Helper()
	m, _ := filepath.Glob(pattern)
	if len(m) == 0 {
		t.Fatalf("%s is not installed (no %s): run scripts/deps, which installs it, or apt-get install %s", pkg, pattern, pkg)
	}
	return m[len(m)-1]
}

// delivery is one request in an API's log.
type delivery struct {
	method, id, key string
	size            int
	body            string // the body, or sha256:<hex> when over 64 bytes
}

// logTally is what an API's log says about the messages each client sent,
// in order.
type logTally struct {
	messages  int
	lost      int // never reached the API
	dups      int // re-sends of a message the API already had
	badDups   int // re-sends without the key the message first came with
	keyless   int // POSTs without an Idempotency-Key
	shared    int // keys that more than one message carried
	reordered int // messages that first reached the API before an earlier one of their client
	foreign   int // POSTs of a test client with a body it never sent
	example   string
}

func (l logTally) ok() bool {
	return l.lost+l.badDups+l.keyless+l.shared+l.reordered+l.foreign == 0
}

func (l logTally) String() string {
	s := fmt.Sprintf("API log: %d msgs, lost %d, dup %d (%d without the first key), keyless %d, shared keys %d, reordered %d, foreign %d",
		l.messages, l.lost, l.dups, l.badDups, l.keyless, l.shared, l.reordered, l.foreign)
	if l.example != "" {
		s += " (e.g. " + l.example + ")"
	}
	return s
}

// note keeps the first example of what went wrong.
func (l *logTally) note(format string, args ...any) {
	if l.example == "" {
		l.example = fmt.Sprintf(format, args...)
	}
}

func tallyLog(log []delivery, sent map[string][]string) logTally {
	var l logTally
	keyOwner := map[string]string{}
	for id, msgs := range sent {
		index := map[string]int{}
		for i, m := range msgs {
			index[m] = i
		}
		l.messages += len(msgs)
		firstKey := map[int]string{}
		last := -1
		for _, d := range log {
			if d.method != "POST" || d.id != id {
				continue
			}
			i, ok := index[d.body]
			if !ok {
				l.foreign++
				l.note("%s POSTed %d bytes %.40q, never sent", id, d.size, d.body)
				continue
			}
			if d.key == "" {
				l.keyless++
			} else if owner, ok := keyOwner[d.key]; ok && owner != id+"\x00"+d.body {
				l.shared++
			} else {
				keyOwner[d.key] = id + "\x00" + d.body
			}
			if k, seen := firstKey[i]; seen {
				l.dups++
				if d.key == "" || d.key != k {
					l.badDups++
					l.note("%s %q POSTed again with key %q, first with %q", id, d.body, d.key, k)
				}
				continue
			}
			firstKey[i] = d.key
			if i < last {
				l.reordered++
				l.note("%s %q first reached the API after %q", id, d.body, msgs[last])
			}
			last = max(last, i)
		}
		l.lost += len(msgs) - len(firstKey)
		for i, m := range msgs {
			if _, ok := firstKey[i]; !ok {
				l.note("%s %q never reached the API", id, m)
			}
		}
	}
	return l
}

// replyTally is what clients received against what they sent.
type replyTally struct {
	messages   int
	unanswered int // messages whose answer never came
	extra      int // answers that came more than once
	misordered int // answers that came before an earlier message's
	malformed  int // replies that answer nothing the client sent
	example    string
}

func (r replyTally) ok() bool { return r.unanswered+r.extra+r.misordered+r.malformed == 0 }

func (r replyTally) String() string {
	s := fmt.Sprintf("replies: unanswered %d/%d, extra %d, misordered %d, malformed %d",
		r.unanswered, r.messages, r.extra, r.misordered, r.malformed)
	if r.example != "" {
		s += " (e.g. " + r.example + ")"
	}
	return s
}

// tallyReplies matches each client's replies with its messages; answers
// lists the replies a message may rightly get.
func tallyReplies(got, sent map[string][]string, answers func(msg string) []string) replyTally {
	var r replyTally
	for id, msgs := range sent {
		of := map[string]int{}
		for i, m := range msgs {
			for _, a := range answers(m) {
				of[a] = i
			}
		}
		r.messages += len(msgs)
		seen := make([]int, len(msgs))
		last := -1
		for _, reply := range got[id] {
			i, ok := of[reply]
			if !ok {
				r.malformed++
				if r.example == "" {
					r.example = fmt.Sprintf("%s got %.40q", id, reply)
				}
				continue
			}
			if seen[i]++; seen[i] > 1 {
				r.extra++
				continue
			}
			if i < last {
				r.misordered++
			}
			last = max(last, i)
		}
		for _, n := range seen {
			if n == 0 {
				r.unanswered++
			}
		}
	}
	return r
}

// bigPattern is the API's big:<n> answer: blocks "%015d\n" of 0, 1, 2...,
// cut at n bytes.
func bigPattern(n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "%015d\n", i)
	}
	return b.Bytes()[:n]
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(l[max(0, len(l)-lines):], "\n")
}

// lockedBuffer is a process's output, written by exec's copying goroutine
// and read by the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// resultTable collects each case's outcome and key figure for the report.
type resultTable struct {
	mu   sync.Mutex
	rows []*figure
}

// figure is one row: a case's key figure, set as the case learns it, and
// whether it passed, known when it ends.
type figure struct {
	server, name string
	mu           sync.Mutex
	text         string
	failed       bool
}

func (f *figure) set(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.text = fmt.Sprintf(format, args...)
}

func (tb *resultTable) row(t *testing.T, server, name string) *figure {
	f := &figure{server: server, name: name}
	tb.mu.Lock()
	tb.rows = append(tb.rows, f)
	tb.mu.Unlock()
	t.Cleanup(func() {
		f.mu.Lock()
		f.failed = t.Failed()
		f.mu.Unlock()
	})
	return f
}

func (tb *resultTable) String() string {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	var b strings.Builder
	for _, f := range tb.rows {
		f.mu.Lock()
		verdict := "pass"
		if f.failed {
			verdict = "FAIL"
		}
		fmt.Fprintf(&b, "%-24s %-20s %s  %s\n", f.server, f.name, verdict, f.text)
		f.mu.Unlock()
	}
	return b.String()
}

// TestConformanceFaults drives the gateway (default flags; a 1 s -timeout
// for hang:) against faultAPI, which injects one fault on the first
// delivery of each message whose text names it and answers every other
// request, and every re-send, normally: re:<message>. Five clients each
// send 80 messages at once, fault and echo: messages alternating. Nothing
// may be lost or reordered, duplicates must carry the key of their first
// delivery, and no fault's bytes may ever reach a client.
func TestConformanceFaults(t *testing.T) {
	t.Parallel()
	table := &resultTable{}
	t.Cleanup(func() { t.Log("fault injection:\n" + table.String()) })
	for _, mode := range []string{"garbage", "shortlen", "longlen", "reset", "hang", "drop"} {
		t.Run(mode, func(t *testing.T) {
			fig := table.row(t, "fault API", mode)
			t.Parallel()
			clients, perClient, args := 5, 80, []string{}
			if mode == "hang" {
				// Each hang costs its client the whole -timeout.
				clients, perClient, args = 8, 10, []string{"-timeout", "1s"}
			}
			api := startFaultAPI(t)
			gw := start(t, nil, append([]string{"-api", "http://" + api.addr() + "/"}, args...)...)
			ch := chat(t, gw.public, clients)
			defer ch.close()
			sent := map[string][]string{}
			for k, c := range ch.conns {
				id := fmt.Sprintf("c%d", k)
				for i := range perClient {
					m := fmt.Sprintf("echo:%s-%d", id, i)
					if i%2 == 0 {
						m = fmt.Sprintf("%s:%s-%d", mode, id, i)
					}
					sent[id] = append(sent[id], m)
					send(t, c, m)
				}
			}
			replies := api.waitReplies(ch, perClient, 10*time.Second, 60*time.Second)
			lt := tallyLog(api.deliveries(), sent)
			rt := tallyReplies(replies, sent, faultAnswers)
			fig.set("%v; %v", lt, rt)
			if !lt.ok() || !rt.ok() {
				t.Fatalf("%s: %v; %v; clients dropped: %v", mode, lt, rt, ch.dropped)
			}
		})
	}
}

// faultAnswers: every message is rightly answered re:<message>; a longlen:
// message also by the 5 bytes its Content-Length frames.
func faultAnswers(msg string) []string {
	if strings.HasPrefix(msg, "longlen:") {
		return []string{"re:" + msg, longlenBody(msg)[:5]}
	}
	return []string{"re:" + msg}
}

// longlenBody is the 20 bytes sent after Content-Length: 5: five of the
// message's own, and an excess that must never reach anyone.
func longlenBody(msg string) string { return sha256Hex([]byte(msg))[:5] + "EXCESS-EXCESS-E" }

// faultAPI is an HTTP/1.1 server written by hand, so that it can lie.
type faultAPI struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	log   []delivery
	seen  map[string]int // deliveries of each POST body so far
	conns map[net.Conn]bool
}

func startFaultAPI(t *testing.T) *faultAPI {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &faultAPI{ln: ln, seen: map[string]int{}, conns: map[net.Conn]bool{}}
	f.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed
			}
			f.mu.Lock()
			f.conns[c] = true
			f.mu.Unlock()
			f.wg.Go(func() { f.serve(c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *faultAPI) addr() string { return f.ln.Addr().String() }

func (f *faultAPI) deliveries() []delivery {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.log)
}

// record logs a request and returns how many times its body has come.
func (f *faultAPI) record(r *http.Request, body []byte) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, delivery{method: r.Method, id: strings.TrimPrefix(r.URL.EscapedPath(), "/"),
		key: r.Header.Get("Idempotency-Key"), size: len(body), body: string(body)})
	f.seen[r.Method+" "+string(body)]++
	return f.seen[r.Method+" "+string(body)]
}

func (f *faultAPI) serve(c net.Conn) {
	defer func() {
		c.Close()
		f.mu.Lock()
		delete(f.conns, c)
		f.mu.Unlock()
	}()
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return
		}
		n := f.record(req, body)
		answer, mode := "", ""
		switch req.Method {
		case http.MethodGet:
			answer = "ok"
		case http.MethodPost:
			answer = "re:" + string(body)
			if n == 1 { // a re-send is answered
				mode, _, _ = strings.Cut(string(body), ":")
			}
		}
		switch mode {
		case "garbage":
			io.WriteString(c, "HTTX/9 what\r\n\r\n")
			return
		case "shortlen":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nSHORTSHORT")
			return
		case "longlen":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"+longlenBody(string(body)))
		case "reset":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Le")
			_ = c.(*net.TCPConn).SetLinger(0) // the close sends an RST
			return
		case "hang":
			_, _ = io.Copy(io.Discard, br)
			return
		case "drop":
			return
		default:
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n\r\n%s", len(answer), answer)
		}
	}
}

// waitReplies waits until each client of ch has want replies, or neither
// the clients nor the API have seen anything new for stall, or for at most
// timeout; it returns the replies.
func (f *faultAPI) waitReplies(ch *chatter, want int, stall, timeout time.Duration) map[string][]string {
	deadline := time.Now().Add(timeout)
	lastChange, lastSeen := time.Now(), -1
	for {
		got := waitChatter(ch, want, 0)
		seen := len(f.deliveries())
		for _, rs := range got {
			seen += len(rs)
		}
		done := true
		for i := range ch.conns {
			if len(got[fmt.Sprintf("c%d", i)]) < want {
				done = false
			}
		}
		if seen != lastSeen {
			lastChange, lastSeen = time.Now(), seen
		}
		if done || time.Since(lastChange) > stall || time.Now().After(deadline) {
			return got
		}
		time.Sleep(50 * time.Millisecond)
	}
}
