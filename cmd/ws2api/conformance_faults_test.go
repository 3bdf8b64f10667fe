package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Fault injection: faultAPI, an HTTP/1.1 server written by hand so that it
// can lie (garbage, a short or long Content-Length, a reset, a hang, a
// drop), and TestConformanceFaults, which holds the gateway to the
// conformance checker against it.

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
