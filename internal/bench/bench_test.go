package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The echo API answers pipelined requests in order, each with its own body.
func TestEchoAPIAnswersPipelinedRequests(t *testing.T) {
	api, err := StartEchoAPI("127.0.0.1:0", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer api.Stop()
	c, err := net.Dial("tcp", api.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var reqs strings.Builder
	reqs.WriteString("GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
	for i := range 20 {
		body := fmt.Sprint("message ", i)
		fmt.Fprintf(&reqs, "POST /a HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	}
	reqs.WriteString("DELETE /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nbye")
	// Written in pieces that split heads and bodies.
	wire := reqs.String()
	for i := 0; i < len(wire); i += 37 {
		if _, err := io.WriteString(c, wire[i:min(i+37, len(wire))]); err != nil {
			t.Fatal(err)
		}
	}
	r := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	read := func() (*http.Response, string) {
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	if _, body := read(); body != "ok" {
		t.Fatalf("GET answered %q", body)
	}
	for i := range 20 {
		resp, body := read()
		if want := fmt.Sprint("message ", i); body != want || resp.Header.Get("Content-Type") != "application/octet-stream" {
			t.Fatalf("POST %d answered %q (%s), want %q", i, body, resp.Header.Get("Content-Type"), want)
		}
	}
	if resp, body := read(); resp.StatusCode != 200 || body != "" {
		t.Fatalf("DELETE answered %d %q", resp.StatusCode, body)
	}
}

// A small run against the floor server: every connection opens, every
// message is answered, and the summary says so.
func TestRunCountsEveryMessage(t *testing.T) {
	f, err := StartFloor("127.0.0.1:0", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	once, err := Run(context.Background(), Options{
		URL: "ws://" + f.Addr() + "/", Conns: 200, Duration: 100 * time.Millisecond,
		Dialers: 16, Prefix: "o-", Once: true, Settle: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if once.Once == nil || once.Once.Sent != 200 || once.Once.Recv != 200 {
		t.Fatalf("one each: %+v", once.Once)
	}
	sum, err := Run(context.Background(), Options{
		URL: "ws://" + f.Addr() + "/", Conns: 200, Interval: 100 * time.Millisecond, Duration: time.Second,
		Size: 100, Dialers: 16, Prefix: "t-", Settle: 10 * time.Millisecond, Grace: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if sum.ConnectOK != 200 || sum.ConnectFail != 0 {
		t.Fatalf("connections: %d opened, %d failed (%s)", sum.ConnectOK, sum.ConnectFail, sum.LastError)
	}
	if sum.Sent < 1000 || sum.Lost != 0 || sum.Errors != 0 {
		t.Fatalf("sent %d, lost %d, errors %d (%s)", sum.Sent, sum.Lost, sum.Errors, sum.LastError)
	}
	if sum.MsgsPerSec < 1000 || sum.P50Ms <= 0 || sum.P99Ms < sum.P50Ms {
		t.Fatalf("rate %.0f/s, p50 %.2fms, p99 %.2fms", sum.MsgsPerSec, sum.P50Ms, sum.P99Ms)
	}
}

// Connections that cannot open are counted as failures, with the reason.
func TestRunReportsConnectFailures(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	sum, err := Run(context.Background(), Options{URL: "ws://" + addr + "/", Conns: 5, Duration: 100 * time.Millisecond, Dialers: 2})
	if err != nil {
		t.Fatal(err)
	}
	if sum.ConnectOK != 0 || sum.ConnectFail != 5 || !strings.Contains(sum.LastError, "connect") {
		t.Fatalf("%d opened, %d failed, last error %q", sum.ConnectOK, sum.ConnectFail, sum.LastError)
	}
}

func TestHistogramQuantiles(t *testing.T) {
	var h Histogram
	for i := 1; i <= 1000; i++ {
		h.Record(time.Duration(i) * time.Millisecond)
	}
	c := Counts(h.Snapshot())
	for _, q := range []struct {
		q    float64
		want time.Duration
	}{{.5, 500 * time.Millisecond}, {.99, 990 * time.Millisecond}, {1, time.Second}} {
		got := c.Quantile(q.q)
		if got < q.want || float64(got) > float64(q.want)*1.03 {
			t.Errorf("q%.2f = %v, want %v within 3%%", q.q, got, q.want)
		}
	}
	if c.Total() != 1000 {
		t.Fatalf("total %d", c.Total())
	}
}

// The abandon storm sends whole upgrade heads with the cookie asked for,
// and hangs up on each.
func TestAbandonSendsHeadsAndHangsUp(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var heads, hangups atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c) // to the client's hang-up
				if bytes.HasPrefix(b, []byte("GET /abandon")) && bytes.Contains(b, []byte("Cookie: s="+strings.Repeat("c", 100)+"\r\n")) && bytes.HasSuffix(b, []byte("\r\n\r\n")) {
					heads.Add(1)
				}
				hangups.Add(1)
			}()
		}
	}()
	var out bytes.Buffer
	if err := runAbandon(context.Background(), []string{"-addr", ln.Addr().String(), "-n", "20", "-cookie", "100", "-hold", "1ms", "-settle", "0"}, &out); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); hangups.Load() < 20 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if heads.Load() != 20 || !strings.Contains(out.String(), "20 upgrades") {
		t.Fatalf("%d whole heads of 20, %d hang-ups; output:\n%s", heads.Load(), hangups.Load(), out.String())
	}
}
