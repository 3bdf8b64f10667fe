package main

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
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
