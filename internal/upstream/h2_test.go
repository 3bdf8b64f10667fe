package upstream

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// h2Server is Go's net/http serving HTTP/1.1 and HTTP/2 with prior
// knowledge on one port, as an API does with
// Protocols.SetUnencryptedHTTP2. It counts connections, and the requests
// in flight at once.
type h2Server struct {
	*httptest.Server
	conns    atomic.Int32
	inFlight atomic.Int32
	maxSeen  atomic.Int32
	protos   sync.Map // proto -> true
}

func startH2Server(t *testing.T, h http.HandlerFunc, configure func(*http.Server)) *h2Server {
	t.Helper()
	s := &h2Server{}
	if h == nil {
		h = func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.EscapedPath(), b)
		}
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.protos.Store(r.Proto, true)
		n := s.inFlight.Add(1)
		defer s.inFlight.Add(-1)
		for m := s.maxSeen.Load(); n > m && !s.maxSeen.CompareAndSwap(m, n); m = s.maxSeen.Load() {
		}
		h(w, r)
	}))
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &p
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}
	if configure != nil {
		configure(srv.Config)
	}
	srv.Start()
	t.Cleanup(srv.Close)
	s.Server = srv
	return s
}

func (s *h2Server) h2cURL() string { return "h2c" + strings.TrimPrefix(s.URL, "http") + "/api/" }

func newH2TestClient(t *testing.T, o HostOptions) *H2Client {
	t.Helper()
	c, err := NewH2Client(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// The three requests of a connection's life reach net/http as HTTP/2,
// with their headers, key and body, and their answers come back whole.
func TestH2ClientSpeaksHTTP2ToNetHTTP(t *testing.T) {
	t.Parallel()
	var got sync.Map
	srv := startH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got.Store(r.Method, fmt.Sprintf("%s %s %s key=%s ct=%s q=%s meta=%s", r.Proto, r.URL.Path, b,
			r.Header.Get("Idempotency-Key"), r.Header.Get("Content-Type"), r.URL.RawQuery, r.Header.Get("X-Ws2api-Meta-A")))
		switch r.Method {
		case "GET":
			w.Header().Set("X-Ws2api-Meta-User", "7")
			w.Header().Set("Sec-WebSocket-Protocol", "ocpp1.6")
			io.WriteString(w, "ok")
		case "POST":
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("X-Other", "dropped on a POST")
			w.Write(b)
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	}, nil)
	c := newH2TestClient(t, HostOptions{BaseURL: srv.h2cURL()})
	hdr := []Header{{Name: "X-Ws2api-Meta-A", Value: "b"}, {Name: "Connection", Value: "dropped"}}
	r := do(c, &Request{Method: "GET", Path: "CP1", Query: "a=1", Header: hdr})
	if r.err != nil || r.status != 200 || r.body != "ok" {
		t.Fatalf("GET: %+v", r)
	}
	var meta, proto string
	for _, h := range r.header {
		switch strings.ToLower(h.Name) {
		case "x-ws2api-meta-user":
			meta = h.Value
		case "sec-websocket-protocol":
			proto = h.Value
		}
	}
	if meta != "7" || proto != "ocpp1.6" {
		t.Errorf("GET's headers not all kept: %v", r.header)
	}
	r = do(c, &Request{Method: "POST", Path: "CP1", ContentType: "application/json", Body: []byte(`[2,"1","Heartbeat",{}]`), Key: Key{Prefix: "c9", Seq: 4}})
	if r.err != nil || r.status != 200 || r.body != `[2,"1","Heartbeat",{}]` {
		t.Fatalf("POST: %+v", r)
	}
	if len(r.header) != 1 || !strings.EqualFold(r.header[0].Name, "Content-Type") {
		t.Errorf("POST kept %v, want only Content-Type", r.header)
	}
	if r = do(c, &Request{Method: "DELETE", Path: "CP1", Key: Key{Prefix: "c9", Seq: 5}}); r.err != nil || r.status != 204 {
		t.Fatalf("DELETE: %+v", r)
	}
	for m, want := range map[string]string{
		"GET":    "HTTP/2.0 /api/CP1  key= ct= q=a=1 meta=b",
		"POST":   `HTTP/2.0 /api/CP1 [2,"1","Heartbeat",{}] key=c9.4 ct=application/json q= meta=`,
		"DELETE": "HTTP/2.0 /api/CP1  key=c9.5 ct= q= meta=",
	} {
		if v, _ := got.Load(m); v != want {
			t.Errorf("%s reached the API as %q, want %q", m, v, want)
		}
	}
	if n := srv.conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

// Many requests share one connection and none waits behind another: each
// of 50 handlers holds its answer until all 50 are in the API at once,
// which they can be only if no request waits for another's answer.
func TestH2ClientMultiplexesWithoutHeadOfLineBlocking(t *testing.T) {
	t.Parallel()
	var arrived atomic.Int32
	all := make(chan struct{})
	srv := startH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/warm" {
			return
		}
		if arrived.Add(1) == 50 {
			close(all)
		}
		select {
		case <-all:
			io.WriteString(w, "together")
		case <-time.After(10 * time.Second):
			io.WriteString(w, "alone")
		}
	}, nil)
	c := newH2TestClient(t, HostOptions{BaseURL: srv.h2cURL()})
	// One request first, so that the connection is up and its settings
	// known: the 50 then go on it.
	if r := do(c, &Request{Method: "POST", Path: "warm"}); r.err != nil {
		t.Fatal(r.err)
	}
	var wg sync.WaitGroup
	var bad atomic.Int32
	for i := range 50 {
		wg.Go(func() {
			if r := do(c, &Request{Method: "POST", Path: fmt.Sprint("c", i)}); r.err != nil || r.body != "together" {
				bad.Add(1)
			}
		})
	}
	wg.Wait()
	if bad.Load() > 0 {
		t.Fatalf("%d of 50 requests were not in the API together with the others", bad.Load())
	}
	if n := srv.conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

// The API's stream limit is kept: with MaxConcurrentStreams 4 and one
// connection allowed to grow to no more, 20 slow requests are all answered,
// never more than 4 at once per connection, the rest waiting their turn in
// the client's queue or on a second connection.
func TestH2ClientKeepsTheAPIsStreamLimit(t *testing.T) {
	t.Parallel()
	srv := startH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(50 * time.Millisecond)
		io.WriteString(w, "ok")
	}, func(s *http.Server) { s.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: 4} })
	c := newH2TestClient(t, HostOptions{BaseURL: srv.h2cURL(), MaxConns: 8})
	if r := do(c, &Request{Method: "POST", Path: "warm"}); r.err != nil {
		t.Fatal(r.err)
	}
	var wg sync.WaitGroup
	var bad atomic.Int32
	for i := range 20 {
		wg.Go(func() {
			if r := do(c, &Request{Method: "POST", Path: fmt.Sprint("c", i)}); r.err != nil || r.status != 200 {
				bad.Add(1)
			}
		})
	}
	wg.Wait()
	if bad.Load() > 0 {
		t.Fatalf("%d requests failed (refused streams must be sent again, not failed)", bad.Load())
	}
	conns := srv.conns.Load()
	if max := srv.maxSeen.Load(); max > 4*conns || max > 8 {
		t.Errorf("%d requests in flight at once over %d connections: over the API's limit of 4 or MaxConns 8", max, conns)
	}
}

// Bodies larger than every flow-control window (65,535 bytes at first)
// go both ways whole: 100 in a row of 1 MiB each.
func TestH2ClientCarriesLargeBodiesBothWays(t *testing.T) {
	t.Parallel()
	srv := startH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	}, nil)
	c := newH2TestClient(t, HostOptions{BaseURL: srv.h2cURL()})
	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	var wg sync.WaitGroup
	var bad atomic.Int32
	for i := range 100 {
		wg.Go(func() {
			b := append([]byte(fmt.Sprint(i, ":")), body...)
			if r := do(c, &Request{Method: "POST", Path: "big", Body: b}); r.err != nil || r.body != string(b) {
				bad.Add(1)
			}
		})
	}
	wg.Wait()
	if bad.Load() > 0 {
		t.Fatalf("%d of 100 large bodies came back wrong", bad.Load())
	}
}

// A body over MaxBodyBytes is read and dropped, the answer marked
// Truncated, and the connection carries on.
func TestH2ClientTruncatesAnOversizedAnswer(t *testing.T) {
	t.Parallel()
	srv := startH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/big" {
			w.Write(make([]byte, 300<<10))
			return
		}
		io.WriteString(w, "small")
	}, nil)
	c := newH2TestClient(t, HostOptions{BaseURL: srv.h2cURL(), MaxBodyBytes: 100 << 10})
	if r := do(c, &Request{Method: "POST", Path: "big"}); r.err != nil || !r.truncated || r.body != "" {
		t.Fatalf("oversized: %+v", r)
	}
	if r := do(c, &Request{Method: "POST", Path: "small"}); r.err != nil || r.body != "small" {
		t.Fatalf("after it: %+v", r)
	}
	if n := srv.conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

// A request that gets no answer in time fails alone: its stream is reset,
// and the connection goes on serving the others.
func TestH2ClientTimesOutOneStreamNotTheConnection(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := startH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/hang" {
			select {
			case <-r.Context().Done(): // the stream's reset reaches the handler
			case <-release:
			}
			return
		}
		io.WriteString(w, "ok")
	}, nil)
	defer close(release)
	c := newH2TestClient(t, HostOptions{BaseURL: srv.h2cURL(), Timeout: 2 * time.Second})
	hung := make(chan result, 1)
	go func() { hung <- do(c, &Request{Method: "POST", Path: "hang"}) }()
	for range 5 {
		if r := do(c, &Request{Method: "POST", Path: "fast"}); r.err != nil || r.body != "ok" {
			t.Fatalf("beside a hanging stream: %+v %v", r, r.err)
		}
	}
	r := <-hung
	if !IsTimeout(r.err) || Cause(nil, r.err) != CauseTimeout {
		t.Fatalf("hanging stream: %+v, want a timeout", r)
	}
	if r := do(c, &Request{Method: "POST", Path: "fast"}); r.err != nil {
		t.Fatalf("after the timeout: %v", r.err)
	}
	if n := srv.conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1 (a timeout resets the stream only)", n)
	}
}

// A graceful shutdown of the API (GOAWAY) finishes the streams in flight,
// and the requests after it go on a new connection to the API's next
// process: none fails.
func TestH2ClientRidesThroughAGracefulRestart(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	started := make(chan struct{}, 100)
	serve := func(ln net.Listener, tag string) *http.Server {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		srv := &http.Server{Protocols: &p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			started <- struct{}{}
			time.Sleep(100 * time.Millisecond)
			io.WriteString(w, tag)
		})}
		go srv.Serve(ln)
		return srv
	}
	first := serve(ln, "first")
	c := newH2TestClient(t, HostOptions{BaseURL: "h2c://" + addr + "/"})
	if r := do(c, &Request{Method: "POST", Path: "warm"}); r.err != nil {
		t.Fatal(r.err)
	}
	<-started
	results := make(chan result, 20)
	for range 10 {
		go func() { results <- do(c, &Request{Method: "POST", Path: "a"}) }()
	}
	for range 10 {
		<-started // the ten are in flight
	}
	done := make(chan struct{})
	go func() { first.Shutdown(t.Context()); close(done) }() // sends GOAWAY, waits for the ten
	<-done
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	second := serve(ln2, "second")
	defer second.Close()
	for range 10 {
		go func() { results <- do(c, &Request{Method: "POST", Path: "b"}) }()
	}
	count := map[string]int{}
	for range 20 {
		r := <-results
		if r.err != nil {
			t.Fatalf("a request failed through the restart: %v", r.err)
		}
		count[r.body]++
	}
	if count["first"] != 10 || count["second"] != 10 {
		t.Errorf("answers %v, want 10 from each process", count)
	}
}

// An h2c URL naming an HTTP/1.1-only server fails its requests as
// malformed answers, with an error that says what is wrong; the start-up
// probe says the same.
func TestH2ClientSaysWhenTheAPIDoesNotSpeakHTTP2(t *testing.T) {
	t.Parallel()
	srv, _ := echoServer(t, nil) // HTTP/1.1 only
	u := "h2c" + strings.TrimPrefix(srv.URL, "http") + "/"
	c := newH2TestClient(t, HostOptions{BaseURL: u})
	r := do(c, &Request{Method: "POST", Path: "x"})
	if r.err == nil || Cause(nil, r.err) != CauseMalformed || !strings.Contains(r.err.Error(), "does not speak HTTP/2") {
		t.Fatalf("got %+v, want a malformed answer that names the problem", r)
	}
	nc, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := ProbeH2C(nc, time.Now().Add(2*time.Second)); err == nil || !strings.Contains(err.Error(), "HTTP/1") {
		t.Errorf("probe of an HTTP/1.1 server: %v", err)
	}
	h2 := startH2Server(t, nil, nil)
	nc2, err := net.Dial("tcp", strings.TrimPrefix(h2.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	if err := ProbeH2C(nc2, time.Now().Add(2*time.Second)); err != nil {
		t.Errorf("probe of an h2c server: %v", err)
	}
}

// An API that dies with streams in flight fails them as lost (they may
// have been processed): the caller's retry decides. An API that is not
// listening makes requests fail unsent.
func TestH2ClientFailsStreamsOfADeadConnection(t *testing.T) {
	t.Parallel()
	started := make(chan struct{}, 4)
	srv := startH2Server(t, func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		time.Sleep(10 * time.Second)
	}, nil)
	c := newH2TestClient(t, HostOptions{BaseURL: srv.h2cURL()})
	results := make(chan result, 2)
	for range 2 {
		go func() { results <- do(c, &Request{Method: "POST", Path: "x"}) }()
	}
	<-started
	<-started
	srv.CloseClientConnections()
	for range 2 {
		if r := <-results; r.err == nil || Cause(nil, r.err) != CauseLost {
			t.Errorf("got %+v, want a lost request", r)
		}
	}
	srv.Close()
	if r := do(c, &Request{Method: "POST", Path: "x"}); !errors.Is(r.err, ErrUnreachable) {
		t.Errorf("API gone: %+v, want unreachable", r)
	}
}

// A Pool over an h2c and an http backend sends to both.
func TestPoolMixesHTTP2AndHTTP1Backends(t *testing.T) {
	t.Parallel()
	h2 := startH2Server(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Proto) }, nil)
	h1, _ := echoServer(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Proto) })
	pl, err := NewPool([]string{h2.h2cURL(), h1.URL + "/"}, PoolOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	seen := map[string]int{}
	for range 10 {
		r := do(pl, &Request{Method: "POST", Path: "x"})
		if r.err != nil {
			t.Fatal(r.err)
		}
		seen[r.body]++
	}
	if seen["HTTP/2.0"] == 0 || seen["HTTP/1.1"] == 0 {
		t.Errorf("answers by protocol %v, want both", seen)
	}
}

// A connection idle longer than IdleTimeout is closed, and the next
// request opens another.
func TestH2ClientClosesAnIdleConnection(t *testing.T) {
	t.Parallel()
	srv := startH2Server(t, nil, nil)
	c := newH2TestClient(t, HostOptions{BaseURL: srv.h2cURL(), IdleTimeout: 50 * time.Millisecond, Timeout: time.Second})
	if r := do(c, &Request{Method: "POST", Path: "a"}); r.err != nil {
		t.Fatal(r.err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		n := len(c.all)
		c.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the idle connection is still open after 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if r := do(c, &Request{Method: "POST", Path: "b"}); r.err != nil || r.body != "POST /api/b " {
		t.Fatalf("after the idle close: %+v", r)
	}
	if n := srv.conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
	if !c.Idle() {
		t.Error("not Idle with nothing in flight")
	}
}
