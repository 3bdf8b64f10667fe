package main

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/testkit"
)

// The cases of TestConformance, a to h, each run by one confRun: one
// gateway in front of one server of the matrix (conformance_test.go says
// what every server answers).

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
//
// One exception, the README's ("One case no client can catch"): a server
// whose answers run to the close (php -S writes the head and the body
// with two sends) and is killed between them has sent what looks like a
// whole empty answer. A reply missing that way is allowed only for a
// message that reached the API once, as its client's last before the
// kill, and no more than one per client.
func caseKillRestart(t *testing.T, r *confRun) {
	const clients, count, interval = 10, 30, 20 * time.Millisecond
	_, framing, _ := r.api.direct(t, "echo:framing")
	closeDelimited := strings.HasPrefix(framing, "close-delimited")
	ch := chat(t, r.gw.public, clients)
	defer ch.close()
	sending := make(chan struct{})
	go func() { ch.send(count, interval); close(sending) }()
	time.Sleep(count * interval / 3)
	r.api.crash()
	atKill := r.api.deliveries(t)
	before := len(atKill)
	time.Sleep(time.Second)
	r.api.restart(t)
	<-sending
	replies := waitChatter(ch, count, 30*time.Second)
	sent := map[string][]string{}
	for i := range clients {
		sent[fmt.Sprintf("c%d", i)] = numbers(count)
	}
	log := r.api.deliveries(t)
	lt := tallyLog(log, sent)
	rt := tallyReplies(replies, sent, func(m string) []string { return []string{m} })
	cut := 0
	if closeDelimited {
		cut = cutByTheKill(rt, sent, atKill, log)
		rt.unanswered -= cut
	}
	r.fig.set("killed after %d requests; %v; %v; %d cut by the kill (answers run to the close)", before, lt, rt, cut)
	if !lt.ok() || !rt.ok() {
		t.Fatalf("across the restart: %v; %v; clients dropped: %v", lt, rt, ch.dropped)
	}
}

// cutByTheKill counts the unanswered messages that the kill of a server
// whose answers run to the close may have cut (see caseKillRestart): each
// its client's last POST in atKill, the log when the server was killed,
// and POSTed once in the whole log; at most one per client.
func cutByTheKill(rt replyTally, sent map[string][]string, atKill, log []delivery) int {
	cut := 0
	for id, missing := range rt.missing {
		if len(missing) != 1 {
			continue
		}
		msg := sent[id][missing[0]]
		last := ""
		for _, d := range atKill {
			if d.method == "POST" && d.id == id {
				last = d.body
			}
		}
		times := 0
		for _, d := range log {
			if d.method == "POST" && d.id == id && d.body == msg {
				times++
			}
		}
		if last == msg && times == 1 {
			cut++
		}
	}
	return cut
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
