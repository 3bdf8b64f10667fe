package gateway

import (
	"context"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ws2api/ws2api/internal/loop"
	"github.com/ws2api/ws2api/internal/metrics"
	"github.com/ws2api/ws2api/internal/upstream"
	"github.com/ws2api/ws2api/internal/ws"
)

// The time-driven behaviours, exactly: retries and their backoff, pacing
// under MaxMessageRate, pings, ping timeouts and the idle timeout. Each
// test runs in a testing/synctest bubble, where time is fake: it moves only
// when every goroutine of the bubble is blocked, and then straight to the
// next timer. A connection is driven in memory as in apistate_test.go,
// with a socket that records what was written to it and when, and an API
// client that records what was sent and when: so the tests state the
// instant each thing happens, and take no real time.
//
// The Server is made inside the bubble, so that its keeper's ticker and
// the connections' timers are the bubble's. Its event loop is not: nbio's
// pollers block in epoll, which synctest does not count as blocked, so
// one loop, made outside, serves all of a test's servers (nothing is put
// on it: the sockets are fakes).

// bubbleLoop returns an event loop for servers made in synctest bubbles.
func bubbleLoop(t *testing.T) *loop.Loop {
	t.Helper()
	lp, err := loop.New("synctest", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lp.Stop)
	return lp
}

// sentRequest is what a request carried when the connection sent it (a
// connection reuses one Request for all of them), and when.
type sentRequest struct {
	method, body string
	closeCode    string // X-Ws2api-Close-Code, on a DELETE
	key          upstream.Key
	at           time.Time
	done         func(*upstream.Response, error)
}

// clockAPI is the fake API of these tests. Without answer set the test
// answers each request (take); with it, every request is answered at
// once, on a goroutine of its own, as a real client does.
type clockAPI struct {
	mu      sync.Mutex
	waiting []*sentRequest // not answered yet
	log     []sentRequest  // every request, in the order sent
	answer  func(method string) *upstream.Response
}

func (a *clockAPI) Do(r *upstream.Request, done func(*upstream.Response, error)) {
	sr := &sentRequest{method: r.Method, body: string(r.Body), key: r.Key, at: time.Now(), done: done}
	for _, h := range r.Header {
		if h.Name == HeaderCloseCode {
			sr.closeCode = h.Value
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.log = append(a.log, *sr)
	if a.answer != nil {
		resp := a.answer(r.Method)
		go done(resp, nil)
		return
	}
	a.waiting = append(a.waiting, sr)
}

func (a *clockAPI) Cancel(*upstream.Request) bool { return false }
func (a *clockAPI) Close()                        {}

// answerAll makes the API answer every request at once from now on, the
// ones waiting included.
func (a *clockAPI) answerAll(answer func(string) *upstream.Response) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.answer = answer
	for _, r := range a.waiting {
		go r.done(answer(r.method), nil)
	}
	a.waiting = nil
}

// take returns the oldest request not answered yet, which must be method.
func (a *clockAPI) take(t *testing.T, method string) *sentRequest {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.waiting) == 0 {
		t.Fatalf("no request in flight, want a %s", method)
	}
	r := a.waiting[0]
	a.waiting = a.waiting[1:]
	if r.method != method {
		t.Fatalf("request %s %q in flight, want a %s", r.method, r.body, method)
	}
	return r
}

func (a *clockAPI) none(t *testing.T) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.waiting) > 0 {
		t.Fatalf("%d requests in flight, want none (first: %s %q)", len(a.waiting), a.waiting[0].method, a.waiting[0].body)
	}
}

// sent returns every request of method sent so far, in order.
func (a *clockAPI) sent(method string) []sentRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []sentRequest
	for _, r := range a.log {
		if r.method == method {
			out = append(out, r)
		}
	}
	return out
}

// okAnswer is an API that accepts every client and answers every message
// with nothing to send back.
func okAnswer(method string) *upstream.Response {
	if method == "GET" {
		return &upstream.Response{Status: 200, Body: []byte("ok")}
	}
	return &upstream.Response{Status: 200}
}

// recSocket is fakeSocket that records what is written to it, and when.
// Closed, it has the connection's OnClose called on a goroutine of its
// own, as a poller does once a socket it serves is shut down (the closer
// holds the connection's lock).
type recSocket struct {
	mu       sync.Mutex
	writes   []written
	closedAt time.Time // zero while open
	c        *conn
	// pongAfter, when set, is a client that answers each ping that long
	// after it was written.
	pongAfter time.Duration
}

type written struct {
	at time.Time
	b  []byte
}

func (f *recSocket) Write(b []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.closedAt.IsZero() {
		return 0, net.ErrClosed
	}
	f.writes = append(f.writes, written{time.Now(), append([]byte(nil), b...)})
	if f.pongAfter > 0 && len(b) >= 2 && ws.Opcode(b[0]&0x0f) == ws.OpPing {
		c := f.c
		time.AfterFunc(f.pongAfter, func() { c.OnData(nil, clientFrame(ws.OpPong, "")) })
	}
	return len(b), nil
}

func (f *recSocket) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closedAt.IsZero() {
		f.closedAt = time.Now()
		go f.c.OnClose(nil, net.ErrClosed)
	}
	return nil
}

func (f *recSocket) CloseWithError(error) error      { return f.Close() }
func (f *recSocket) SetReadDeadline(time.Time) error { return nil }

func (f *recSocket) closed() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closedAt
}

// sentFrame is a frame the gateway wrote to the client.
type sentFrame struct {
	at      time.Time
	op      ws.Opcode
	payload []byte
}

// frames parses what was written after the 101: one frame a write.
func (f *recSocket) frames(t *testing.T) []sentFrame {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []sentFrame
	for _, w := range f.writes {
		if strings.HasPrefix(string(w.b), "HTTP/1.1 ") {
			continue
		}
		fr, n, err := ws.ParseFrame(w.b, ws.Client, 1<<20)
		if err != nil || n != len(w.b) {
			t.Fatalf("write at %v is not one frame (%d of %d bytes, %v): %x", w.at, n, len(w.b), err, w.b)
		}
		out = append(out, sentFrame{w.at, fr.Op, fr.Payload})
	}
	return out
}

// clientFrame is a frame from the client: masked.
func clientFrame(op ws.Opcode, payload string) []byte {
	mask := [4]byte{1, 2, 3, 4}
	return ws.AppendFrame(nil, op, []byte(payload), &mask)
}

// timedTest is one connection of a server made in the running bubble.
type timedTest struct {
	t     *testing.T
	start time.Time // the bubble's clock when the server was made
	s     *Server
	api   *clockAPI
	sock  *recSocket
	c     *conn
}

// newTimedTest makes a server with o in the running bubble and one
// connection on a recSocket, not yet upgraded. answer is the API's, or nil
// for a test that answers each request.
func newTimedTest(t *testing.T, lp *loop.Loop, o Options, answer func(string) *upstream.Response) *timedTest {
	t.Helper()
	api := &clockAPI{answer: answer}
	o.API, o.Loop, o.Metrics = api, lp, metrics.New()
	o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	start := time.Now()
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	tt := &timedTest{t: t, start: start, s: s, api: api, sock: &recSocket{}}
	tt.c = s.newConn(tt.sock, "192.0.2.1:5000")
	tt.sock.c = tt.c
	t.Cleanup(func() {
		// A test that failed before finish: stop the keeper, or the
		// bubble ends in a deadlock panic that hides the failure. (One
		// that passed has shut the server down, which must stop it.)
		if t.Failed() && s.keeperStop != nil {
			s.keeperOnce.Do(func() { close(s.keeperStop) })
		}
	})
	return tt
}

// since is the bubble's time from the server's start to at.
func (tt *timedTest) since(at time.Time) time.Duration { return at.Sub(tt.start) }

// now is the bubble's time since the server's start.
func (tt *timedTest) now() time.Duration { return tt.since(time.Now()) }

// sleepUntil advances the bubble's clock to d after the server's start,
// and waits until every goroutine of the bubble is blocked: what was due
// by then has happened.
func (tt *timedTest) sleepUntil(d time.Duration) {
	tt.t.Helper()
	if wait := d - tt.now(); wait < 0 {
		tt.t.Fatalf("sleepUntil(%v) at %v", d, tt.now())
	} else {
		time.Sleep(wait)
	}
	synctest.Wait()
}

// open upgrades the connection: the API accepts it (the test's answer, or
// the API's own).
func (tt *timedTest) open() {
	tt.t.Helper()
	tt.upgrade(tt.c, "CP1")
}

// dial is another client of the same server, upgraded as id.
func (tt *timedTest) dial(id string) {
	tt.t.Helper()
	sock := &recSocket{}
	c := tt.s.newConn(sock, "192.0.2.2:5000")
	sock.c = c
	tt.upgrade(c, id)
}

func (tt *timedTest) upgrade(c *conn, id string) {
	tt.t.Helper()
	c.OnData(nil, []byte(strings.Replace(upgradeHead, "/CP1 ", "/"+id+" ", 1)))
	if tt.api.answer == nil {
		tt.api.take(tt.t, "GET").done(okAnswer("GET"), nil)
	}
	synctest.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stOpen || c.id != id {
		tt.t.Fatalf("connection %q in state %d after the upgrade, want %q open", c.id, c.state, id)
	}
}

func (tt *timedTest) state() connState {
	tt.c.mu.Lock()
	defer tt.c.mu.Unlock()
	return tt.c.state
}

// send is the client sending text messages, in one read.
func (tt *timedTest) send(texts ...string) {
	var b []byte
	for _, m := range texts {
		b = append(b, clientFrame(ws.OpText, m)...)
	}
	tt.c.OnData(nil, b)
}

// finish answers what is left, shuts the server down (which stops its
// keeper: nothing started in the bubble outlives it) and checks that the
// drain completed with the API told of everything.
func (tt *timedTest) finish() {
	tt.t.Helper()
	tt.api.answerAll(okAnswer)
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	if err := tt.s.Shutdown(ctx); err != nil {
		tt.t.Fatalf("shutdown: %v", err)
	}
	synctest.Wait()
	tt.c.mu.Lock()
	api := tt.c.api
	tt.c.mu.Unlock()
	if api != apiDone || tt.s.apiWork.Load() != 0 || tt.s.deletesDue.Load() != 0 || tt.s.pending.held.Load() != 0 {
		tt.t.Fatalf("after the drain: api %s, drain waits for %d, DELETEs owed %d, %d bytes pending",
			api, tt.s.apiWork.Load(), tt.s.deletesDue.Load(), tt.s.pending.held.Load())
	}
}

// A failed POST goes again after its backoff, not before: with a first
// backoff of 100ms doubling to 400ms, the nth re-send comes between half
// and all of min(100ms*2^(n-1), 400ms) after the failure (Backoff.Delay's
// jitter), with the same Idempotency-Key. The messages after it, sent
// with it or during its backoff, wait behind it, and go in order, each at
// once, once it is delivered.
func TestRetryBackoffTimeline(t *testing.T) {
	lp := bubbleLoop(t)
	synctest.Test(t, func(t *testing.T) {
		tt := newTimedTest(t, lp, Options{Retry: upstream.RetryPolicy{
			Backoff: upstream.Backoff{First: 100 * time.Millisecond, Max: 400 * time.Millisecond}, GiveUpAfter: time.Hour}}, nil)
		tt.open()
		tt.send("m0", "m1", "m2")
		first := tt.api.take(t, "POST")
		tt.api.none(t) // m1 and m2 wait behind m0
		if first.body != "m0" {
			t.Fatalf("first POST carries %q", first.body)
		}
		for _, w := range []struct {
			attempt int
			lo, hi  time.Duration // after the failure
		}{
			{1, 50 * time.Millisecond, 100 * time.Millisecond},
			{2, 100 * time.Millisecond, 200 * time.Millisecond},
			{3, 200 * time.Millisecond, 400 * time.Millisecond},
			{4, 200 * time.Millisecond, 400 * time.Millisecond}, // Max
			{5, 200 * time.Millisecond, 400 * time.Millisecond},
		} {
			failed := tt.now()
			first.done(&upstream.Response{Status: 503}, nil)
			synctest.Wait()
			tt.api.none(t) // not at once
			if w.attempt == 1 {
				// A message that arrives during the backoff waits too.
				tt.sleepUntil(failed + 20*time.Millisecond)
				tt.send("m3")
				tt.api.none(t)
			}
			tt.sleepUntil(failed + w.hi)
			again := tt.api.take(t, "POST")
			tt.api.none(t) // once, and m1 still waits
			if d := tt.since(again.at) - failed; d < w.lo || d > w.hi {
				t.Fatalf("re-send %d came %v after the failure, want %v to %v", w.attempt, d, w.lo, w.hi)
			}
			if again.body != "m0" || again.key != first.key {
				t.Fatalf("re-send %d: %q key %v, want m0's request (key %v)", w.attempt, again.body, again.key, first.key)
			}
			first = again
		}
		delivered := tt.now()
		first.done(&upstream.Response{Status: 200}, nil)
		for _, want := range []string{"m1", "m2", "m3"} {
			p := tt.api.take(t, "POST")
			if p.body != want || p.at.Sub(tt.start) != delivered {
				t.Fatalf("POST %q at %v, want %q at once (%v)", p.body, tt.since(p.at), want, delivered)
			}
			p.done(&upstream.Response{Status: 200}, nil)
		}
		tt.api.none(t)
		if n := tt.s.m.APIRetries["status"].Get(); n != 5 {
			t.Errorf("ws2api_api_retries_total{cause=status} = %d, want 5", n)
		}
		tt.finish()
	})
}

// closeFrame returns the code and reason of the only close frame written
// to sock, and when; ok is false if there is none.
func closeFrame(t *testing.T, sock *recSocket) (at time.Time, code int, reason string, ok bool) {
	t.Helper()
	var found []sentFrame
	for _, f := range sock.frames(t) {
		if f.op == ws.OpClose {
			found = append(found, f)
		}
	}
	switch len(found) {
	case 0:
		return time.Time{}, 0, "", false
	case 1:
	default:
		t.Fatalf("%d close frames written", len(found))
	}
	code, reason, err := ws.ParseClose(found[0].payload)
	if err != nil {
		t.Fatalf("close frame %x: %v", found[0].payload, err)
	}
	return found[0].at, code, reason, true
}

// A message the API keeps failing is given up once its next attempt would
// come after GiveUpAfter: its client is closed with 1013 "try again later:
// the API is unavailable" at once, and told nothing more; when it does not
// answer the close, its socket is closed CloseTimeout later and the API
// gets the DELETE with 1013. The DELETE is retried in its turn, and given
// up the same way.
func TestRetryGivesUpAfterGiveUpAfter(t *testing.T) {
	lp := bubbleLoop(t)
	synctest.Test(t, func(t *testing.T) {
		const giveUp = time.Second
		tt := newTimedTest(t, lp, Options{Retry: upstream.RetryPolicy{
			Backoff: upstream.Backoff{First: 100 * time.Millisecond, Max: 400 * time.Millisecond}, GiveUpAfter: giveUp}}, nil)
		tt.open()
		tt.send("m0")
		tt.api.take(t, "POST").done(&upstream.Response{Status: 503}, nil) // at 0: the re-send is due 50 to 100ms later, within GiveUpAfter
		tt.sleepUntil(100 * time.Millisecond)
		p := tt.api.take(t, "POST")
		if at := tt.since(p.at); at < 50*time.Millisecond || p.body != "m0" {
			t.Fatalf("re-sent %q at %v", p.body, at)
		}
		// Failed again at 950ms: the next try, 100 to 200ms later, would
		// pass the second since the first.
		tt.sleepUntil(950 * time.Millisecond)
		p.done(nil, upstream.ErrUnreachable)
		synctest.Wait()
		tt.api.none(t)
		at, code, reason, ok := closeFrame(t, tt.sock)
		if !ok {
			t.Fatal("no close frame written after the give-up")
		}
		if tt.since(at) != 950*time.Millisecond || code != ws.CloseTryAgainLater || reason != "try again later: the API is unavailable" {
			t.Fatalf("close frame at %v: %d %q; want 1013 \"try again later: the API is unavailable\" at 950ms", tt.since(at), code, reason)
		}
		if tt.state() != stClosing || tt.s.pending.held.Load() != 0 {
			t.Fatalf("after the give-up: state %d, %d bytes still pending", tt.state(), tt.s.pending.held.Load())
		}

		// The client does not answer the close: CloseTimeout (3s) later
		// its socket is closed, and the DELETE goes.
		closeAt := 950*time.Millisecond + Defaults.CloseTimeout
		tt.sleepUntil(closeAt - 1)
		if !tt.sock.closed().IsZero() {
			t.Fatalf("socket closed at %v, before the close timeout", tt.since(tt.sock.closed()))
		}
		tt.api.none(t)
		tt.sleepUntil(closeAt)
		if at := tt.sock.closed(); at.IsZero() || tt.since(at) != closeAt {
			t.Fatalf("socket closed at %v (zero: open), want %v", at, closeAt)
		}
		del := tt.api.take(t, "DELETE")
		if tt.since(del.at) != closeAt || del.closeCode != "1013" || del.body != "try again later: the API is unavailable" {
			t.Fatalf("DELETE at %v: code %s %q; want 1013 at %v", tt.since(del.at), del.closeCode, del.body, closeAt)
		}
		if n := tt.s.m.Closes[metrics.CauseAPIGaveUp].Get(); n != 1 {
			t.Errorf("closes{cause=api_gave_up} = %d, want 1", n)
		}

		// The DELETE fails too: re-sent after its backoff, then given up
		// a second after it was first sent.
		del.done(&upstream.Response{Status: 502}, nil)
		tt.sleepUntil(closeAt + 100*time.Millisecond)
		del = tt.api.take(t, "DELETE")
		if d := tt.since(del.at) - closeAt; d < 50*time.Millisecond || del.closeCode != "1013" {
			t.Fatalf("DELETE re-sent %v after the failure, code %s", d, del.closeCode)
		}
		tt.sleepUntil(closeAt + 950*time.Millisecond)
		del.done(&upstream.Response{Status: 502}, nil)
		synctest.Wait()
		tt.api.none(t)
		tt.c.mu.Lock()
		api := tt.c.api
		tt.c.mu.Unlock()
		if api != apiDone || tt.s.deletesDue.Load() != 0 || tt.s.apiWork.Load() != 0 {
			t.Fatalf("after the DELETE was given up: api %s, DELETEs owed %d, drain waits for %d", api, tt.s.deletesDue.Load(), tt.s.apiWork.Load())
		}
		if n := tt.s.m.APIRetries["status"].Get(); n != 2 {
			t.Errorf("ws2api_api_retries_total{cause=status} = %d, want 2 (one of the POST, one of the DELETE; the give-ups are not retries)", n)
		}
		tt.finish()
	})
}

// RetryNow (the API is back) sends every request waiting out a backoff
// again within a quarter second, however long its backoff.
func TestRetryNowResendsWithinAQuarterSecond(t *testing.T) {
	lp := bubbleLoop(t)
	synctest.Test(t, func(t *testing.T) {
		tt := newTimedTest(t, lp, Options{Retry: upstream.RetryPolicy{
			Backoff: upstream.Backoff{First: time.Minute, Max: time.Minute}, GiveUpAfter: time.Hour}}, nil)
		tt.open()
		for _, id := range []string{"CP2", "CP3", "CP4"} {
			tt.dial(id)
		}
		tt.s.RetryNow() // nothing waits: nothing happens
		for i, c := range tt.s.reg.all() {
			c.OnData(nil, clientFrame(ws.OpText, "m"+itoa(i)))
		}
		for range 4 {
			tt.api.take(t, "POST").done(&upstream.Response{Status: 503}, nil)
		}
		for round := range 3 {
			tt.sleepUntil(tt.now() + 10*time.Second) // within every backoff (30 to 60s)
			tt.api.none(t)
			if n := len(tt.s.retrying); n != 4 {
				t.Fatalf("%d connections waiting to retry, want 4", n)
			}
			now := tt.now()
			tt.s.RetryNow()
			tt.sleepUntil(now + 250*time.Millisecond)
			for range 4 {
				p := tt.api.take(t, "POST")
				if d := tt.since(p.at) - now; d < 0 || d >= 250*time.Millisecond {
					t.Fatalf("round %d: re-sent %v after RetryNow, want within 250ms", round, d)
				}
				if round < 2 {
					p.done(&upstream.Response{Status: 503}, nil)
				} else {
					p.done(&upstream.Response{Status: 200}, nil)
				}
			}
			tt.api.none(t)
		}
		if n := len(tt.s.retrying); n != 0 {
			t.Fatalf("%d connections still waiting to retry after delivery", n)
		}
		tt.finish()
	})
}

// Under MaxMessageRate a client's messages are paced, not dropped: a
// second's worth goes at once, the rest at exactly one per interval, in
// order; a rate below one a second lets one through at once. After a
// quiet spell the allowance is whole again. (GCRA: keepalive.go
// rateWaitLocked.)
func TestPacingUnderMaxMessageRate(t *testing.T) {
	lp := bubbleLoop(t)
	type burst struct {
		at time.Duration
		n  int
	}
	for _, tc := range []struct {
		name   string
		rate   float64
		bursts []burst
		want   func(i int) time.Duration // when the ith message's POST goes
	}{
		{"10/s: 10 at once, then one per 100ms; a second burst after a quiet spell: 10 at once again", 10,
			[]burst{{0, 25}, {3 * time.Second, 12}},
			func(i int) time.Duration {
				switch {
				case i < 10:
					return 0
				case i < 25:
					return time.Duration(i-9) * 100 * time.Millisecond
				case i < 35:
					return 3 * time.Second
				}
				return 3*time.Second + time.Duration(i-34)*100*time.Millisecond
			}},
		{"0.5/s: one at once, then one per 2s", 0.5, []burst{{0, 3}},
			func(i int) time.Duration { return time.Duration(i) * 2 * time.Second }},
		{"100/s: 100 at once, then one per 10ms", 100, []burst{{0, 130}},
			func(i int) time.Duration { return time.Duration(max(i-99, 0)) * 10 * time.Millisecond }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tt := newTimedTest(t, lp, Options{MaxMessageRate: tc.rate}, okAnswer)
				tt.open()
				n := 0
				for _, b := range tc.bursts {
					tt.sleepUntil(b.at)
					var msgs []string
					for range b.n {
						msgs = append(msgs, itoa(n))
						n++
					}
					tt.send(msgs...)
				}
				tt.sleepUntil(tt.now() + time.Minute)
				posts := tt.api.sent("POST")
				if len(posts) != n {
					t.Fatalf("%d POSTs, want %d", len(posts), n)
				}
				for i, p := range posts {
					if p.body != itoa(i) || tt.since(p.at) != tc.want(i) {
						t.Fatalf("POST %d carries %q at %v, want %q at %v", i, p.body, tt.since(p.at), itoa(i), tc.want(i))
					}
				}
				if tt.state() != stOpen || tt.s.m.Closes[metrics.CauseBacklog].Get() != 0 {
					t.Fatalf("the paced client was closed")
				}
				tt.finish()
			})
		})
	}
}

// The keeper, by the clock: a client silent for PingInterval is pinged;
// one that then sends nothing for PingTimeout is dead: its socket closed
// (no close frame: it would not read one), the DELETE sent with 1006
// "ping timeout". A client that sends anything, data or control, is not
// pinged; one that answers its pings stays. IdleTimeout closes a client
// with no message either way for that long, pings not counting, with 1001
// "idle timeout" (then its socket CloseTimeout later, since it does not
// answer the close).
//
// The keeper sweeps every tick, a quarter of the shortest of its
// timeouts: 125ms with a 1s ping interval and a 500ms ping timeout, 500ms
// with only a 2s idle timeout; the server and its client start at 0, so
// every deadline falls on a tick. A read is stamped with the keeper's
// clock (its last tick), not the time of the read.
func TestKeepaliveTimeline(t *testing.T) {
	lp := bubbleLoop(t)
	const ms = time.Millisecond
	ping := Options{PingInterval: time.Second, PingTimeout: 500 * ms}
	idle := Options{IdleTimeout: 2 * time.Second}
	type step struct {
		at time.Duration
		do string // "message", "pong" (unasked), "push" (a message to the client), "kick"
	}
	type end struct {
		at     time.Duration
		code   int
		reason string
	}
	chatty := []step{}
	for at := 310 * ms; at < 5*time.Second; at += 400 * ms {
		chatty = append(chatty, step{at, "message"})
	}
	for _, tc := range []struct {
		name       string
		opts       Options
		apiPing    string        // the API's X-Ws2api-Ping-Interval for the client
		pongAfter  time.Duration // the client answers each ping that long after
		steps      []step
		until      time.Duration
		pings      []time.Duration
		closeFrame *end          // the close frame written to the client
		closed     time.Duration // its socket closed; 0: still open at until
		del        *end          // the DELETE the API got
		cause      string
	}{
		{name: "silent: pinged after 1s, dead 500ms later", opts: ping, until: 3 * time.Second,
			pings: []time.Duration{time.Second}, closed: 1500 * ms,
			del: &end{1500 * ms, ws.CloseAbnormal, "ping timeout"}, cause: metrics.CausePingTimeout},
		{name: "a message at 600ms (stamped 500ms): pinged at 1.5s, not 1s", opts: ping, until: 3 * time.Second,
			steps: []step{{600 * ms, "message"}},
			pings: []time.Duration{1500 * ms}, closed: 2 * time.Second,
			del: &end{2 * time.Second, ws.CloseAbnormal, "ping timeout"}, cause: metrics.CausePingTimeout},
		{name: "a pong at 600ms counts as much", opts: ping, until: 3 * time.Second,
			steps: []step{{600 * ms, "pong"}},
			pings: []time.Duration{1500 * ms}, closed: 2 * time.Second,
			del: &end{2 * time.Second, ws.CloseAbnormal, "ping timeout"}, cause: metrics.CausePingTimeout},
		{name: "chatty: a message every 400ms, never pinged", opts: ping, until: 5 * time.Second, steps: chatty},
		{name: "answers each ping 200ms later: stays, pinged a second after each answer's tick", opts: ping,
			pongAfter: 200 * ms, until: 5 * time.Second,
			pings: []time.Duration{1000 * ms, 2125 * ms, 3250 * ms, 4375 * ms}},
		{name: "answers 600ms later, after the timeout: dead", opts: ping, pongAfter: 600 * ms, until: 3 * time.Second,
			pings: []time.Duration{time.Second}, closed: 1500 * ms,
			del: &end{1500 * ms, ws.CloseAbnormal, "ping timeout"}, cause: metrics.CausePingTimeout},
		{name: "kicked at 600ms: not pinged while it closes, its socket closed CloseTimeout later", opts: ping,
			until: 5 * time.Second, steps: []step{{600 * ms, "kick"}},
			closeFrame: &end{600 * ms, 4321, "maintenance"}, closed: 3600 * ms,
			del: &end{3600 * ms, 4321, "maintenance"}, cause: metrics.CauseKick},
		{name: "the API said never (0): silent for 10s, never pinged", opts: ping, apiPing: "0", until: 10 * time.Second},
		{name: "the API said 3s: pinged after 3s, not 1s", opts: ping, apiPing: "3", until: 5 * time.Second,
			pings: []time.Duration{3 * time.Second}, closed: 3500 * ms,
			del: &end{3500 * ms, ws.CloseAbnormal, "ping timeout"}, cause: metrics.CausePingTimeout},
		{name: "idle: closed at 2s with 1001, its socket 3s later", opts: idle, until: 6 * time.Second,
			closeFrame: &end{2 * time.Second, ws.CloseGoingAway, "idle timeout"}, closed: 5 * time.Second,
			del: &end{5 * time.Second, ws.CloseGoingAway, "idle timeout"}, cause: metrics.CauseIdle},
		{name: "idle: a message at 700ms: closed at the first tick 2s after it", opts: idle, until: 7 * time.Second,
			steps:      []step{{700 * ms, "message"}},
			closeFrame: &end{3 * time.Second, ws.CloseGoingAway, "idle timeout"}, closed: 6 * time.Second,
			del: &end{6 * time.Second, ws.CloseGoingAway, "idle timeout"}, cause: metrics.CauseIdle},
		{name: "idle: a message to the client at 1.6s counts too", opts: idle, until: 8 * time.Second,
			steps:      []step{{1600 * ms, "push"}},
			closeFrame: &end{4 * time.Second, ws.CloseGoingAway, "idle timeout"}, closed: 7 * time.Second,
			del: &end{7 * time.Second, ws.CloseGoingAway, "idle timeout"}, cause: metrics.CauseIdle},
		{name: "idle: answering pings is not activity", until: 6 * time.Second, pongAfter: 100 * ms,
			opts:       Options{PingInterval: time.Second, PingTimeout: 500 * ms, IdleTimeout: 2 * time.Second},
			pings:      []time.Duration{time.Second},
			closeFrame: &end{2 * time.Second, ws.CloseGoingAway, "idle timeout"}, closed: 5 * time.Second,
			del: &end{5 * time.Second, ws.CloseGoingAway, "idle timeout"}, cause: metrics.CauseIdle},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				answer := okAnswer
				if tc.apiPing != "" {
					answer = func(method string) *upstream.Response {
						r := okAnswer(method)
						if method == "GET" {
							r.Header = []upstream.Header{{Name: HeaderPingInterval, Value: tc.apiPing}}
						}
						return r
					}
				}
				tt := newTimedTest(t, lp, tc.opts, answer)
				tt.sock.pongAfter = tc.pongAfter
				tt.open()
				for _, st := range tc.steps {
					tt.sleepUntil(st.at)
					switch st.do {
					case "message":
						tt.send("hi")
					case "pong":
						tt.c.OnData(nil, clientFrame(ws.OpPong, ""))
					case "kick":
						if err := tt.s.Kick("CP1", 4321, "maintenance"); err != nil {
							t.Fatal(err)
						}
					case "push":
						if err := tt.c.send(ws.OpText, []byte("pushed"), metrics.SourcePush); err != nil {
							t.Fatal(err)
						}
					default:
						t.Fatalf("unknown step %q", st.do)
					}
				}
				tt.sleepUntil(tc.until)

				var pings []time.Duration
				for _, f := range tt.sock.frames(t) {
					if f.op == ws.OpPing {
						pings = append(pings, tt.since(f.at))
					}
				}
				if !slices.Equal(pings, tc.pings) {
					t.Errorf("pinged at %v, want %v", pings, tc.pings)
				}
				at, code, reason, ok := closeFrame(t, tt.sock)
				switch {
				case tc.closeFrame == nil && ok:
					t.Errorf("close frame %d %q at %v, want none", code, reason, tt.since(at))
				case tc.closeFrame != nil && !ok:
					t.Errorf("no close frame, want %+v", *tc.closeFrame)
				case tc.closeFrame != nil && *tc.closeFrame != end{tt.since(at), code, reason}:
					t.Errorf("close frame %d %q at %v, want %+v", code, reason, tt.since(at), *tc.closeFrame)
				}
				var closed time.Duration
				if at := tt.sock.closed(); !at.IsZero() {
					closed = tt.since(at)
				}
				if closed != tc.closed {
					t.Errorf("socket closed at %v, want %v (0: open)", closed, tc.closed)
				}
				var del *end
				if dels := tt.api.sent("DELETE"); len(dels) > 0 {
					code, _ := strconv.Atoi(dels[0].closeCode)
					del = &end{tt.since(dels[0].at), code, dels[0].body}
				}
				if (del == nil) != (tc.del == nil) || del != nil && *del != *tc.del {
					t.Errorf("DELETE %+v, want %+v", del, tc.del)
				}
				if tc.cause != "" {
					if n := tt.s.m.Closes[tc.cause].Get(); n != 1 {
						t.Errorf("closes{cause=%s} = %d, want 1", tc.cause, n)
					}
				}
				tt.finish()
			})
		})
	}
}
