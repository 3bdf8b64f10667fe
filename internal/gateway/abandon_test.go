package gateway_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ws2api/ws2api/internal/gateway"
	"github.com/ws2api/ws2api/internal/testkit"
	"github.com/ws2api/ws2api/internal/upstream"
)

// upgradeHead is an upgrade request for id with a large cookie, as a
// browser sends.
func upgradeHead(addr, id string) string {
	return "GET /" + id + " HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
		"Cookie: session=" + strings.Repeat("c", 7000) + "\r\n\r\n"
}

// Upgrades whose clients hang up while their connect GET waits for a
// connection to a slow API leave the line at once: the API never hears of
// them (no GET, no DELETE for a client that was never there), and they
// stop counting against -max-conns. (15,000 such upgrades held 209 MiB
// until -timeout, and 256 of them later got DELETEs.)
func TestAbandonedUpgradesLeaveTheLineAtOnce(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	release := make(chan struct{})
	var gets atomic.Int32
	api.Handle(func(c testkit.Call) testkit.Answer {
		if c.Method == "GET" && strings.HasPrefix(c.ID, "slow") {
			gets.Add(1)
			<-release
		}
		return testkit.Default(c)
	})
	h := newHarness(t, api, harnessOpts{gw: gateway.Options{MaxConns: 60}, http: upstream.HostOptions{MaxConns: 2}})
	var once sync.Once
	releaseAll := func() { once.Do(func() { close(release) }) }
	t.Cleanup(releaseAll)
	var socks []net.Conn
	for i := range 50 {
		nc, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(nc, upgradeHead(h.addr, "slow"+itoa(i)))
		socks = append(socks, nc)
	}
	// Two GETs reach the API (its two connections); 48 wait in line.
	waitFor(t, "50 upgrades waiting for the API", func() bool { return gets.Load() == 2 && h.srv.Connecting() == 50 })
	for _, nc := range socks {
		nc.Close()
	}
	// The 48 leave the line at once; the 2 in flight keep their places.
	waitFor(t, "the abandoned upgrades to leave", func() bool { return h.srv.Connecting() == 2 })
	// With MaxConns 60, 58 new clients fit beside the 2 GETs in flight.
	var kept []net.Conn
	for i := range 58 {
		nc, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		kept = append(kept, nc)
		io.WriteString(nc, upgradeHead(h.addr, "later"+itoa(i)))
	}
	waitFor(t, "the new upgrades to be admitted", func() bool { return h.srv.Connecting() == 60 })
	releaseAll()
	for i, nc := range kept {
		nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("client %d after the abandoned ones: %v %v", i, resp, err)
		}
	}
	// The two GETs in flight were answered ok for clients that are gone:
	// the API hears of their ends. The 48 others it never heard of.
	count := func() (gets, deletes int) {
		for _, c := range api.Calls() {
			if strings.HasPrefix(c.ID, "slow") {
				switch c.Method {
				case "GET":
					gets++
				case "DELETE":
					deletes++
				}
			}
		}
		return gets, deletes
	}
	waitFor(t, "the DELETEs of the two accepted", func() bool { _, d := count(); return d >= 2 })
	// Room for a wrong extra one to show: the kept clients leave and the
	// gateway drains, after which it owes the API nothing.
	for _, nc := range kept {
		nc.Close()
	}
	h.drain()
	n, deletes := count()
	if n != 2 || deletes != 2 {
		t.Fatalf("the API got %d GETs and %d DELETEs for the 50 abandoned upgrades; want only the 2 GETs in flight, each then told of its end", n, deletes)
	}
}

// Upgrades waiting for the API are bounded: past -max-connecting the next
// is answered 503 with Retry-After.
func TestUpgradesWaitingForTheAPIAreBounded(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	release := make(chan struct{})
	api.Handle(func(c testkit.Call) testkit.Answer {
		if c.Method == "GET" {
			<-release
		}
		return testkit.Default(c)
	})
	h := newHarness(t, api, harnessOpts{gw: gateway.Options{MaxConnecting: 5}, http: upstream.HostOptions{MaxConns: 1}})
	t.Cleanup(func() { close(release) })
	for i := range 5 {
		nc, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		io.WriteString(nc, upgradeHead(h.addr, "w"+itoa(i)))
	}
	waitFor(t, "5 upgrades waiting", func() bool { return h.srv.Connecting() == 5 })
	status, body := testkit.RawRequest(t, h.addr, upgradeHead(h.addr, "sixth"))
	if status != http.StatusServiceUnavailable || !strings.Contains(body, "waiting for the API") {
		t.Fatalf("sixth upgrade: %d %q, want 503", status, body)
	}
}

// waitFor polls cond until it holds, or fails the test after 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
