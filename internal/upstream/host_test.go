package upstream

import (
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

	"github.com/ws2api/ws2api/internal/loop"
)

type result struct {
	status    int
	body      string
	header    []Header
	truncated bool
	err       error
}

// do sends r and waits for its result.
func do(c Client, r *Request) result {
	ch := make(chan result, 1)
	c.Do(r, func(resp *Response, err error) {
		if err != nil {
			ch <- result{err: err}
			return
		}
		// The response is only valid during the callback: copy it.
		ch <- result{status: resp.Status, body: string(resp.Body), header: append([]Header(nil), resp.Header...), truncated: resp.Truncated}
	})
	select {
	case r := <-ch:
		return r
	case <-time.After(20 * time.Second):
		return result{err: errors.New("test: no callback within 20s")}
	}
}

// echoServer answers "<method> <path> <body>" and counts connections.
func echoServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int32) {
	var conns atomic.Int32
	if h == nil {
		h = func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.EscapedPath(), b)
		}
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &conns
}

func newTestClient(t *testing.T, o HostOptions) *HostClient {
	t.Helper()
	p, err := NewHostClient(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// No request waits behind another: 50 requests to a handler that answers
// none until all 50 are with it are answered together, on 50 connections,
// not one after another (pipelined 16 deep on a few connections, the last
// took 4.8 s).
func TestHostClientNeverQueuesARequestBehindAnother(t *testing.T) {
	t.Parallel()
	var arrived atomic.Int32
	all := make(chan struct{})
	srv, conns := echoServer(t, func(w http.ResponseWriter, r *http.Request) {
		if arrived.Add(1) == 50 {
			close(all)
		}
		select {
		case <-all:
		case <-time.After(5 * time.Second):
			fmt.Fprint(w, "answered alone: the 50 were never with the API together")
			return
		}
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	})
	p := newTestClient(t, HostOptions{BaseURL: srv.URL + "/ws/"})
	start := time.Now()
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			want := fmt.Sprint(i)
			if r := do(p, &Request{Method: "POST", Path: "x", Body: []byte(want)}); r.err != nil || r.body != want {
				t.Errorf("request %d: %+v", i, r)
			}
		})
	}
	wg.Wait()
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Fatalf("50 requests answered together took %v: they waited behind each other", d)
	}
	if conns.Load() != 50 {
		t.Fatalf("%d connections for 50 requests at once", conns.Load())
	}
}

func TestHostClientGETKeepsEveryHeaderAndTheQuery(t *testing.T) {
	t.Parallel()
	srv, _ := echoServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Sec-WebSocket-Protocol", "ocpp1.6")
		w.Header().Set("X-Ws2api-Meta-User", "42")
		fmt.Fprint(w, r.URL.RawQuery+" "+r.Header.Get("Origin"))
	})
	p := newTestClient(t, HostOptions{BaseURL: srv.URL})
	r := do(p, &Request{Method: "GET", Path: "CP1", Query: "x=1", Header: []Header{{Name: "Origin", Value: "https://o"}}})
	if r.err != nil || r.body != "x=1 https://o" {
		t.Fatalf("%+v", r)
	}
	resp := Response{Header: r.header}
	if resp.Get("sec-websocket-protocol") != "ocpp1.6" || resp.Get("X-Ws2api-Meta-User") != "42" {
		t.Fatalf("headers %v", r.header)
	}
}

func TestHostClientReadsChunkedAndOversizedAnswers(t *testing.T) {
	t.Parallel()
	srv, _ := echoServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/chunked":
			for _, part := range []string{"hel", "lo ", "world"} {
				fmt.Fprint(w, part)
				w.(http.Flusher).Flush()
			}
		case "/big":
			fmt.Fprint(w, strings.Repeat("x", 5000))
		case "/bigchunked":
			for range 5 {
				fmt.Fprint(w, strings.Repeat("y", 1000))
				w.(http.Flusher).Flush()
			}
		default:
			fmt.Fprint(w, "small")
		}
	})
	p := newTestClient(t, HostOptions{BaseURL: srv.URL, MaxConns: 1, MaxBodyBytes: 4096})
	if r := do(p, &Request{Method: "POST", Path: "chunked"}); r.err != nil || r.body != "hello world" {
		t.Fatalf("chunked: %+v", r)
	}
	if r := do(p, &Request{Method: "POST", Path: "big"}); r.err != nil || !r.truncated || r.body != "" {
		t.Fatalf("big: %+v", r)
	}
	if r := do(p, &Request{Method: "POST", Path: "bigchunked"}); r.err != nil || !r.truncated {
		t.Fatalf("big chunked: %+v", r)
	}
	// The connection is still in step after skipping large bodies.
	if r := do(p, &Request{Method: "POST", Path: "after"}); r.err != nil || r.body != "small" {
		t.Fatalf("after: %+v", r)
	}
}

func TestHostClientSurvivesTheServerClosingConnections(t *testing.T) {
	t.Parallel()
	var n atomic.Int32
	srv, conns := echoServer(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%3 == 0 {
			w.Header().Set("Connection", "close")
		}
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	})
	p := newTestClient(t, HostOptions{BaseURL: srv.URL, MaxConns: 2})
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			want := fmt.Sprint(i)
			if r := do(p, &Request{Method: "POST", Path: "x", Body: []byte(want)}); r.err != nil || r.body != want {
				t.Errorf("request %d: %+v (%v)", i, r, r.err)
			}
		})
	}
	wg.Wait()
	if conns.Load() < 2 {
		t.Fatalf("only %d connections: the server's closes were not seen", conns.Load())
	}
}

func TestHostClientTimesOutASlowRequestAndKeepsServingOthers(t *testing.T) {
	t.Parallel()
	slowIn := newSignal()
	srv, _ := echoServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			slowIn.raise()
			select {
			case <-time.After(time.Second):
			case <-r.Context().Done():
			}
		}
		fmt.Fprint(w, "done")
	})
	p := newTestClient(t, HostOptions{BaseURL: srv.URL, MaxConns: 2, Timeout: 300 * time.Millisecond})
	slow := make(chan result, 1)
	go func() { slow <- do(p, &Request{Method: "POST", Path: "slow"}) }()
	slowIn.wait(t, "the slow request to reach the API") // it holds a connection
	// Not pipelined behind the slow request: it goes on another
	// connection and is answered long before the slow one times out.
	start := time.Now()
	fast := do(p, &Request{Method: "POST", Path: "fast"})
	if fast.err != nil || fast.body != "done" {
		t.Fatalf("request after the slow one: %+v", fast)
	}
	if d := time.Since(start); d > 150*time.Millisecond {
		t.Fatalf("request after the slow one took %v: it waited behind it", d)
	}
	if r := <-slow; r.err == nil || !IsTimeout(r.err) {
		t.Fatalf("slow request: %+v, want a timeout", r)
	}
}

func TestHostClientFailsFastWhenTheAPIIsDown(t *testing.T) {
	t.Parallel()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	p := newTestClient(t, HostOptions{BaseURL: "http://" + addr})
	start := time.Now()
	r := do(p, &Request{Method: "GET", Path: "x"})
	if r.err == nil || IsTimeout(r.err) || Classify(nil, r.err) != Failed {
		t.Fatalf("%+v, want a connection error", r)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("took %v", d)
	}
}

func TestHostClientQueuesBeyondItsConnections(t *testing.T) {
	t.Parallel()
	var inFlight, peak atomic.Int32
	srv, conns := echoServer(t, func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(time.Millisecond)
		fmt.Fprint(w, "ok")
	})
	p := newTestClient(t, HostOptions{BaseURL: srv.URL, MaxConns: 3})
	var wg sync.WaitGroup
	for range 300 {
		wg.Go(func() {
			if r := do(p, &Request{Method: "POST", Path: "q"}); r.err != nil {
				t.Error(r.err)
			}
		})
	}
	wg.Wait()
	if conns.Load() > 3 || peak.Load() > 3 {
		t.Fatalf("%d connections, %d requests at once; limit 3", conns.Load(), peak.Load())
	}
}

func TestHostClientCloseFailsWhatIsLeft(t *testing.T) {
	t.Parallel()
	in := newSignal()
	srv, _ := echoServer(t, func(w http.ResponseWriter, r *http.Request) {
		in.raise()
		<-r.Context().Done()
	})
	p, err := NewHostClient(HostOptions{BaseURL: srv.URL, MaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close) // a failed test's handler let go (Close is idempotent)
	done, next := callback(make(chan result, 3))
	for range 3 {
		p.Do(&Request{Method: "POST", Path: "x"}, done)
	}
	// One in flight (the API has it), two waiting for its connection.
	in.wait(t, "a request to reach the API")
	p.mu.Lock()
	waiting := p.line.len()
	p.mu.Unlock()
	if waiting != 2 {
		t.Fatalf("%d requests waiting, want 2 behind the one in flight", waiting)
	}
	p.Close()
	for range 3 {
		if r := next(); !errors.Is(r.err, ErrClosed) {
			t.Fatalf("%+v, want ErrClosed", r)
		}
	}
	if r := do(p, &Request{Method: "POST", Path: "x"}); !errors.Is(r.err, ErrClosed) {
		t.Fatalf("after Close: %+v", r)
	}
}

// Regression: with requests sent from many goroutines (two pollers and
// the retry timers do this), a request written at once and one flushed at
// the next poller turn could leave in the wrong order, so that an answer
// went to another request: a connect got a message's echo and became a
// 403.
func TestHostClientAnswersMatchWhenSentFromManyGoroutines(t *testing.T) {
	t.Parallel()
	srv, _ := echoServer(t, nil)
	lp, err := loop.New("order", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lp.Stop)
	p := newTestClient(t, HostOptions{BaseURL: srv.URL + "/", MaxConns: 1, Loop: lp})
	var bad atomic.Int32
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 400 {
				body := fmt.Sprintf("g%d-%d", g, i)
				r := do(p, &Request{Method: "POST", Path: "x", Body: []byte(body)})
				if r.err != nil || r.body != "POST /x "+body {
					if bad.Add(1) < 5 {
						t.Errorf("sent %q, got %+v", body, r)
					}
				}
			}
		})
	}
	wg.Wait()
}

// A request canceled while it waits for a connection never reaches the
// API and its callback never runs; one already sent is not canceled.
func TestHostClientCancelTakesAWaitingRequestOutOfLine(t *testing.T) {
	t.Parallel()
	release := newSignal()
	var seen sync.Map
	firstIn := newSignal()
	srv, _ := echoServer(t, func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.URL.Path, true)
		if r.URL.Path == "/first" {
			firstIn.raise()
		}
		<-release.ch
		fmt.Fprint(w, "done")
	})
	t.Cleanup(release.raise) // a failed test's server closes, its handler let go
	p := newTestClient(t, HostOptions{BaseURL: srv.URL, MaxConns: 1})
	first := &Request{Method: "GET", Path: "first"}
	answered := make(chan result, 1)
	p.Do(first, func(resp *Response, err error) { answered <- result{err: err} })
	firstIn.wait(t, "the first request to reach the API")
	second := &Request{Method: "GET", Path: "second"}
	p.Do(second, func(*Response, error) { t.Error("the canceled request's callback ran") })
	if p.Cancel(first) {
		t.Fatal("canceled a request already sent")
	}
	if !p.Cancel(second) || p.Cancel(second) {
		t.Fatal("Cancel of the waiting request: want true once")
	}
	release.raise()
	if r := <-answered; r.err != nil {
		t.Fatal(r.err)
	}
	if r := do(p, &Request{Method: "GET", Path: "third"}); r.err != nil || r.body != "done" {
		t.Fatalf("after the cancel: %+v", r)
	}
	if _, ok := seen.Load("/second"); ok {
		t.Fatal("the canceled request reached the API")
	}
	if !p.Idle() {
		t.Fatal("not idle after the cancel")
	}
}
