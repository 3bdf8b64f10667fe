package upstream

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// restartable is an HTTP server on a fixed address that can be stopped and
// started again, as an API being redeployed.
type restartable struct {
	t    *testing.T
	addr string
	name string
	mu   sync.Mutex
	srv  *http.Server
	hits atomic.Int32
}

func newRestartable(t *testing.T, name string) *restartable {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &restartable{t: t, addr: ln.Addr().String(), name: name}
	r.serve(ln)
	t.Cleanup(r.stop)
	return r
}

func (r *restartable) serve(ln net.Listener) {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		r.hits.Add(1)
		fmt.Fprint(w, r.name)
	})}
	r.mu.Lock()
	r.srv = srv
	r.mu.Unlock()
	go srv.Serve(ln)
}

func (r *restartable) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.srv != nil {
		r.srv.Close()
		r.srv = nil
	}
}

func (r *restartable) start() {
	ln, err := net.Listen("tcp", r.addr)
	if err != nil {
		r.t.Fatal(err)
	}
	r.serve(ln)
}

func (r *restartable) url() string { return "http://" + r.addr + "/" }

func TestPoolSpreadsRequestsOverHealthyBackends(t *testing.T) {
	t.Parallel()
	a, b := newRestartable(t, "a"), newRestartable(t, "b")
	pl, err := NewPool([]string{a.url(), b.url()}, PoolOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	for range 100 {
		if r := do(pl, &Request{Method: "POST", Path: "x"}); r.err != nil {
			t.Fatal(r.err)
		}
	}
	if a.hits.Load() < 30 || b.hits.Load() < 30 {
		t.Fatalf("hits a=%d b=%d: not spread", a.hits.Load(), b.hits.Load())
	}
}

func TestPoolTakesAFailingBackendOutAndBackIn(t *testing.T) {
	t.Parallel()
	a, b := newRestartable(t, "a"), newRestartable(t, "b")
	var mu sync.Mutex
	var events []string
	recovered := make(chan struct{}, 1)
	pl, err := NewPool([]string{a.url(), b.url()}, PoolOptions{
		HealthInterval: 20 * time.Millisecond,
		OnChange: func(base string, e BackendEvent) {
			mu.Lock()
			events = append(events, fmt.Sprintf("%s %s", strings.TrimSuffix(strings.TrimPrefix(base, "http://"), "/"), e))
			mu.Unlock()
		},
		OnRecover: func() { recovered <- struct{}{} },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()

	a.stop()
	failed := 0
	for range 40 {
		if r := do(pl, &Request{Method: "POST", Path: "x"}); r.err != nil {
			failed++
		}
	}
	if failed > 3 {
		t.Fatalf("%d of 40 requests failed: the dead backend was not taken out after 3", failed)
	}
	if pl.Backends()[a.url()] {
		t.Fatal("the dead backend is still marked healthy")
	}

	b.stop()
	for range 10 {
		do(pl, &Request{Method: "POST", Path: "x"})
	}
	a.start()
	select {
	case <-recovered:
	case <-time.After(5 * time.Second):
		t.Fatal("no recovery reported after a backend came back")
	}
	if r := do(pl, &Request{Method: "POST", Path: "x"}); r.err != nil || r.body != "a" {
		t.Fatalf("after recovery: %+v", r)
	}
	mu.Lock()
	defer mu.Unlock()
	joined := strings.Join(events, "; ")
	for _, want := range []string{a.addr + " down", b.addr + " down", a.addr + " up"} {
		if !strings.Contains(joined, want) {
			t.Errorf("events %q lack %q", joined, want)
		}
	}
}

func TestPoolBackendsChangeWithoutLosingRequests(t *testing.T) {
	t.Parallel()
	var slow atomic.Int32
	allIn, release := newSignal(), newSignal()
	mux := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if slow.Add(1) == 5 {
			allIn.raise()
		}
		<-release.ch // answered once the backend is removed
		fmt.Fprint(w, "old")
	})
	oldSrv, _ := echoServer(t, mux)
	t.Cleanup(release.raise) // a failed test's server closes, its handlers let go
	newSrv := newRestartable(t, "new")
	pl, err := NewPool([]string{oldSrv.URL + "/"}, PoolOptions{HealthInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	inFlight := make(chan result, 5)
	for range 5 {
		go func() { inFlight <- do(pl, &Request{Method: "POST", Path: "x"}) }()
	}
	allIn.wait(t, "the 5 requests to be in flight on the old backend")
	if err := pl.SetBackends([]string{newSrv.url()}); err != nil {
		t.Fatal(err)
	}
	release.raise()
	for range 5 {
		if r := <-inFlight; r.err != nil || r.body != "old" {
			t.Fatalf("request in flight on the removed backend: %+v", r)
		}
	}
	if r := do(pl, &Request{Method: "POST", Path: "x"}); r.err != nil || r.body != "new" {
		t.Fatalf("after the change: %+v", r)
	}
	if _, ok := pl.Backends()[oldSrv.URL+"/"]; ok {
		t.Fatal("the removed backend is still serving")
	}
}

func TestParseBackends(t *testing.T) {
	got, err := ParseBackends("http://a:8000/, http://b:8000/ws\n# comment\n\nhttp://a:8000/")
	if err != nil || strings.Join(got, " ") != "http://a:8000/ http://b:8000/ws/" {
		t.Fatalf("%q %v", got, err)
	}
	for _, bad := range []string{"", " , ", "ftp://x/", "http://a/?q=1"} {
		if _, err := ParseBackends(bad); err == nil {
			t.Errorf("ParseBackends(%q) accepted", bad)
		}
	}
}

// A connect's GET that finds its backend gone goes to the other one at
// once, before the dead one is known to be out.
func TestPoolSendsAGETOnWhenItsBackendIsUnreachable(t *testing.T) {
	t.Parallel()
	a, b := newRestartable(t, "a"), newRestartable(t, "b")
	pl, err := NewPool([]string{a.url(), b.url()}, PoolOptions{FailAfter: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	a.stop()
	for i := range 20 {
		if r := do(pl, &Request{Method: "GET", Path: "x"}); r.err != nil || r.body != "b" {
			t.Fatalf("GET %d: %+v", i, r)
		}
	}
}

// When a backend dies, the requests waiting for one of its connections go
// to the healthy backend at once (one once sat in the dead backend's queue
// for the whole timeout while its client's later messages waited behind
// it). The request the dead backend had in flight fails: it may have been
// processed, and the caller's retry decides.
func TestPoolMovesWaitingRequestsOffADeadBackend(t *testing.T) {
	t.Parallel()
	held := make(chan net.Conn, 16)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := dead.Accept()
			if err != nil {
				return
			}
			held <- c // read nothing, answer nothing
		}
	}()
	alive := newRestartable(t, "alive")
	pl, err := NewPool([]string{"http://" + dead.Addr().String() + "/", alive.url()},
		PoolOptions{Host: HostOptions{MaxConns: 1, Timeout: 30 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pl.Close)
	done, next := callback(make(chan result, 20))
	for range 20 {
		pl.Do(&Request{Method: "POST", Path: "x"}, done)
	}
	// The dead backend's one connection holds a request; others wait.
	var first net.Conn
	select {
	case first = <-held:
	case <-time.After(5 * time.Second):
		t.Fatal("no request reached the first backend")
	}
	deadClient := (*pl.serving.Load())[0].client // in the order given
	deadClient.mu.Lock()
	waiting := deadClient.line.len()
	deadClient.mu.Unlock()
	if waiting == 0 {
		t.Fatal("no request waits for the dead backend's connection")
	}
	dead.Close()
	first.Close()
	start := time.Now()
	answered, failed := 0, 0
	for range 20 {
		r := next()
		switch {
		case r.err == nil && r.body == "alive":
			answered++
		case r.err != nil:
			failed++
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the waiting requests took %v to move", d)
	}
	if failed > 1 || answered+failed != 20 {
		t.Fatalf("%d answered by the live backend, %d failed; only the one in flight on the dead backend may fail", answered, failed)
	}
}

// A lone backend that answers 5xx a few times in a row is taken out, but
// the requests waiting for its connection stay with it (no other backend
// could serve them): they were once all failed as unreachable.
func TestPoolKeepsWaitingRequestsWhenItsOnlyBackendGoesOut(t *testing.T) {
	t.Parallel()
	var n atomic.Int32
	firstIn, submitted := newSignal(), newSignal()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		firstIn.raise()
		<-submitted.ch // the first is held until all seven wait behind it
		if n.Add(1) <= 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, "ok")
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	pl, err := NewPool([]string{"http://" + ln.Addr().String() + "/"}, PoolOptions{Host: HostOptions{MaxConns: 1}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pl.Close)
	t.Cleanup(submitted.raise) // a failed test's handler let go
	done, next := callback(make(chan result, 7))
	for range 7 {
		pl.Do(&Request{Method: "POST", Path: "x"}, done)
	}
	firstIn.wait(t, "the first request to reach the backend")
	lone := (*pl.serving.Load())[0].client
	lone.mu.Lock()
	waiting := lone.line.len()
	lone.mu.Unlock()
	if waiting != 6 {
		t.Fatalf("%d requests wait behind the first, want 6", waiting)
	}
	submitted.raise()
	statuses := map[int]int{}
	for range 7 {
		r := next()
		if r.err != nil {
			t.Fatalf("a request failed: %v", r.err)
		}
		statuses[r.status]++
	}
	if statuses[503] != 3 || statuses[200] != 4 {
		t.Fatalf("answers %v, want three 503s and four 200s", statuses)
	}
}
