package upstream

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ws2api/ws2api/internal/http1"
)

// rawServer accepts connections and gives each, with a reader of its
// requests, to serve: it can answer in ways net/http never would.
func rawServer(t *testing.T, serve func(c net.Conn, br *bufio.Reader)) (url string, accepted *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted = new(atomic.Int32)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			wg.Go(func() {
				defer c.Close()
				serve(c, bufio.NewReader(c))
			})
		}
	})
	return "http://" + ln.Addr().String() + "/", accepted
}

// pattern returns n bytes that differ from one offset to the next.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26 + i/26%7)
	}
	return b
}

// Every framing a real server uses is read whole: a body that runs to the
// close (700 KB, more than three read buffers: php -S cut these short), an
// HTTP/1.0 answer, chunks with extensions and trailers arriving a few bytes
// at a time, and 1xx answers before the final one.
func TestHostClientReadsEveryFraming(t *testing.T) {
	t.Parallel()
	big := pattern(700_000)
	answers := map[string]func(c net.Conn){
		"until-close": func(c net.Conn) {
			c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"))
			c.Write(big)
		},
		"http10": func(c net.Conn) {
			c.Write(append([]byte("HTTP/1.0 200 OK\r\n\r\n"), big...))
		},
		"chunked": func(c net.Conn) {
			wire := fmt.Sprintf("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x;x=y\r\n%s\r\n%x\r\n%s\r\n0\r\nX-Sum: 1\r\n\r\n",
				300_000, big[:300_000], len(big)-300_000, big[300_000:])
			for b := []byte(wire); len(b) > 0; {
				n := min(len(b), 1+len(b)%9000)
				c.Write(b[:n])
				b = b[n:]
			}
		},
		"interim": func(c net.Conn) {
			c.Write([]byte("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"))
			c.Write([]byte(fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(big))))
			c.Write(big)
		},
	}
	url, _ := rawServer(t, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			answer := answers[strings.TrimPrefix(req.URL.Path, "/")]
			answer(c)
			if req.URL.Path == "/until-close" || req.URL.Path == "/http10" {
				return
			}
		}
	})
	p := newTestClient(t, HostOptions{BaseURL: url})
	for range 3 {
		for name := range answers {
			r := do(p, &Request{Method: "POST", Path: name})
			if r.err != nil || r.status != 200 || r.body != string(big) {
				t.Fatalf("%s: status %d, %d of %d bytes, err %v", name, r.status, len(r.body), len(big), r.err)
			}
		}
	}
}

// An answer that cannot be framed is an error, never a reply: a garbage
// status line, more bytes than Content-Length says, fewer before the
// close, bad chunking. None of them is sent again by the client itself
// (the API may have processed it: the caller's retry policy decides).
func TestHostClientNeverDeliversAMisframedAnswer(t *testing.T) {
	t.Parallel()
	answers := map[string]string{
		"garbage":  "HTTX/9 what\r\n\r\n",
		"longlen":  "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello, and then some",
		"shortlen": "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",
		"badchunk": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
		"cut":      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
	}
	var requests atomic.Int32
	url, _ := rawServer(t, func(c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		requests.Add(1)
		c.Write([]byte(answers[strings.TrimPrefix(req.URL.Path, "/")]))
	})
	p := newTestClient(t, HostOptions{BaseURL: url})
	for name := range answers {
		r := do(p, &Request{Method: "POST", Path: name})
		if r.err == nil {
			t.Errorf("%s: delivered as status %d body %q", name, r.status, r.body)
			continue
		}
		if c := Cause(nil, r.err); c != CauseMalformed && c != CauseLost {
			t.Errorf("%s: cause %s (%v)", name, c, r.err)
		}
	}
	if n := requests.Load(); n != int32(len(answers)) {
		t.Fatalf("%d requests for %d sends: the client sent some again itself", n, len(answers))
	}
	if r := do(p, &Request{Method: "POST", Path: "garbage"}); !errors.Is(r.err, http1.ErrMalformed) {
		t.Fatalf("garbage: %v, want ErrMalformed", r.err)
	}
}

// A server that answers Connection: close every time gets exactly one
// request per message (10 messages once became 34 POSTs).
func TestHostClientSendsEachRequestOnceToAServerThatClosesAfterEachAnswer(t *testing.T) {
	t.Parallel()
	var requests atomic.Int32
	url, accepted := rawServer(t, func(c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		requests.Add(1)
		var body bytes.Buffer
		body.ReadFrom(req.Body)
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", body.Len(), body.Bytes())
	})
	p := newTestClient(t, HostOptions{BaseURL: url})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 25 {
				want := fmt.Sprintf("%d-%d", g, i)
				if r := do(p, &Request{Method: "POST", Path: "x", Body: []byte(want)}); r.err != nil || r.body != want {
					t.Errorf("%s: %+v", want, r)
				}
			}
		})
	}
	wg.Wait()
	if requests.Load() != 100 || accepted.Load() != 100 {
		t.Fatalf("%d requests on %d connections for 100 messages", requests.Load(), accepted.Load())
	}
}

// recorder is an Observer that counts re-sends.
type recorder struct{ resent atomic.Int32 }

func (o *recorder) Started(string)                       {}
func (o *recorder) Finished(string, time.Duration, bool) {}
func (o *recorder) Resent(_, cause string)               { o.resent.Add(1) }

// A keep-alive connection that the server closes as the next request
// arrives (before any of its answer) is routine: the request goes again at
// once, counted. One that a server drops on a new connection may have been
// processed: it fails, for the caller to retry.
func TestHostClientResendsOnlyWhatCannotHaveBeenProcessed(t *testing.T) {
	t.Parallel()
	url, _ := rawServer(t, func(c net.Conn, br *bufio.Reader) {
		for i := 0; ; i++ {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.URL.Path == "/drop" || i == 1 {
				return // read, then closed without a word
			}
			fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	obs := &recorder{}
	p := newTestClient(t, HostOptions{BaseURL: url, MaxConns: 1, Observer: obs})
	for i := range 4 {
		if r := do(p, &Request{Method: "POST", Path: "x"}); r.err != nil || r.body != "ok" {
			t.Fatalf("request %d: %+v", i, r)
		}
	}
	if n := obs.resent.Load(); n != 3 {
		t.Fatalf("%d re-sends, want 3 (the second request on each connection)", n)
	}
	r := do(p, &Request{Method: "POST", Path: "drop"})
	if r.err == nil || Cause(nil, r.err) != CauseLost {
		t.Fatalf("dropped on a new connection: %+v, want a lost request", r)
	}
}

// A server that resets connections as it accepts them leaves no
// connection counted as open: every request fails at once as unsent, and
// once the server behaves the client opens connections again (a dead one
// counted as live once blocked every dial).
func TestHostClientCountsNoResetConnectionAsOpen(t *testing.T) {
	t.Parallel()
	var healthy atomic.Bool
	url, _ := rawServer(t, func(c net.Conn, br *bufio.Reader) {
		if !healthy.Load() {
			c.(*net.TCPConn).SetLinger(0)
			return
		}
		for {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	p := newTestClient(t, HostOptions{BaseURL: url, MaxConns: 2})
	for i := range 20 {
		if r := do(p, &Request{Method: "POST", Path: "x"}); r.err == nil {
			t.Fatalf("request %d answered by a server that resets", i)
		}
	}
	p.mu.Lock()
	open := len(p.conns)
	p.mu.Unlock()
	if open != 0 {
		t.Fatalf("%d connections counted as open after resets", open)
	}
	healthy.Store(true)
	if r := do(p, &Request{Method: "POST", Path: "x"}); r.err != nil || r.body != "ok" {
		t.Fatalf("after the server recovered: %+v", r)
	}
}

// A request waiting for a connection is not stranded when the one busy
// connection dies without an answer: another is opened for it at once.
func TestHostClientOpensAConnectionForWaitingRequestsWhenOneDies(t *testing.T) {
	t.Parallel()
	dieIn, drop := newSignal(), make(chan struct{})
	url, _ := rawServer(t, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.URL.Path == "/die" {
				dieIn.raise()
				<-drop // the other request queues meanwhile
				return
			}
			fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	p := newTestClient(t, HostOptions{BaseURL: url, MaxConns: 1, Timeout: 30 * time.Second})
	died := make(chan result, 1)
	go func() { died <- do(p, &Request{Method: "POST", Path: "die"}) }()
	dieIn.wait(t, "/die to reach the API") // its one connection is busy with it
	p.mu.Lock()
	busy := len(p.conns) == 1 && len(p.idle) == 0
	p.mu.Unlock()
	if !busy {
		t.Fatal("the connection the API holds /die on is not the one busy connection")
	}
	start := time.Now()
	done, next := callback(make(chan result, 1))
	p.Do(&Request{Method: "POST", Path: "wait"}, done)
	p.mu.Lock()
	queued := p.line.len()
	p.mu.Unlock()
	if queued != 1 {
		t.Fatalf("%d requests waiting for the busy connection, want 1", queued)
	}
	close(drop) // the connection dies without an answer
	if r := next(); r.err != nil || r.body != "ok" {
		t.Fatalf("waiting request: %+v", r)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the waiting request took %v", d)
	}
	if r := <-died; r.err == nil {
		t.Fatalf("the dropped request was answered: %+v", r)
	}
}

// A stray CRLF after an answer (some servers send one) is skipped, even
// when the next request is already on the connection: it once became the
// start of the next answer's head, which was then refused as malformed.
func TestHostClientSkipsAStrayCRLFBetweenAnswers(t *testing.T) {
	t.Parallel()
	url, accepted := rawServer(t, func(c net.Conn, br *bufio.Reader) {
		for {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\r\n"))
		}
	})
	p := newTestClient(t, HostOptions{BaseURL: url, MaxConns: 1})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			if r := do(p, &Request{Method: "POST", Path: "x"}); r.err != nil || r.body != "ok" {
				t.Errorf("request %d: %+v", i, r)
			}
		})
	}
	wg.Wait()
	if n := accepted.Load(); n != 1 {
		t.Fatalf("%d connections: the stray CRLF broke one", n)
	}
}
