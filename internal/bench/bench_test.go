package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ws2api/ws2api/internal/control"
	"github.com/ws2api/ws2api/internal/gateway"
	"github.com/ws2api/ws2api/internal/loop"
	"github.com/ws2api/ws2api/internal/metrics"
	"github.com/ws2api/ws2api/internal/upstream"
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

// In the OCPP mode the echo API is a central system: it accepts the
// charger's subprotocol, answers a CALL with a CALLRESULT to it, and a
// CALLRESULT (the answer to a call of its own) with nothing.
func TestEchoAPIAnswersOCPP(t *testing.T) {
	api, err := StartEchoAPI("127.0.0.1:0", 1, EchoOptions{OCPP: true})
	if err != nil {
		t.Fatal(err)
	}
	defer api.Stop()
	get, err := http.NewRequest("GET", "http://"+api.Addr+"/CP1", nil)
	if err != nil {
		t.Fatal(err)
	}
	get.Header.Set("Sec-WebSocket-Protocol", "ocpp1.6, ocpp2.0.1")
	resp, err := http.DefaultClient.Do(get)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" || resp.Header.Get("Sec-WebSocket-Protocol") != "ocpp1.6" {
		t.Fatalf("connect answered %q with subprotocol %q", b, resp.Header.Get("Sec-WebSocket-Protocol"))
	}
	for _, c := range []struct{ body, want string }{
		{`[2,"b1-0-1","BootNotification",{"chargePointVendor":"v","chargePointModel":"m"}]`, `[3,"b1-0-1",{"status":"Accepted","currentTime":"`},
		{` [2, "m9-3-2", "Heartbeat", {}]`, `[3,"m9-3-2",{"currentTime":"`},
		{`[2,"x","StatusNotification",{"connectorId":1}]`, `[3,"x",{}]`},
		{`[3,"c5-1",{"status":"Accepted"}]`, ""},
		{`[4,"c5-2","NotSupported","",{}]`, ""},
		{`m123 4 5 xxxx`, `m123 4 5 xxxx`}, // not OCPP-J: echoed
	} {
		resp, err := http.Post("http://"+api.Addr+"/CP1", "text/plain; charset=utf-8", strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(string(b), c.want) || c.want == "" && len(b) > 0 {
			t.Errorf("%s answered %d %q, want %q...", c.body, resp.StatusCode, b, c.want)
		}
	}
}

// The OCPP shape against a real gateway: 50 chargers boot and heartbeat,
// and every synchronous call through the control API comes back 200 with
// the charger's CALLRESULT to it.
func TestOCPPShapeCallsThroughAGateway(t *testing.T) {
	api, err := StartEchoAPI("127.0.0.1:0", 1, EchoOptions{OCPP: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(api.Stop) // after the gateway's drain: cleanups run last first
	gw, ctl := startGateway(t, "http://"+api.Addr+"/")
	sum, err := Run(context.Background(), Options{
		URL: "ws://" + gw + "/", Control: ctl, Conns: 50, Ramp: 200 * time.Millisecond, Interval: 500 * time.Millisecond,
		Duration: 2 * time.Second, Dialers: 16, Prefix: "cp-", Settle: 10 * time.Millisecond, Grace: 2 * time.Second,
		OCPP: true, CallRate: 50, CallConns: 8, CallAwait: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	c := sum.OCPP
	switch {
	case sum.ConnectOK != 50 || sum.ConnectFail != 0:
		t.Fatalf("connections: %d opened, %d failed (%s)", sum.ConnectOK, sum.ConnectFail, sum.LastError)
	case c == nil:
		t.Fatal("no OCPP figures in the summary")
	case c.Boots != 50 || c.BootsAnswered != 50:
		t.Fatalf("boots: %d sent, %d answered", c.Boots, c.BootsAnswered)
	case sum.Sent < 100 || sum.Lost != 0:
		t.Fatalf("heartbeats: %d sent, %d unanswered", sum.Sent, sum.Lost)
	case c.CallsSent < 80 || c.CallsOK != c.CallsSent || len(c.CallsFailed) > 0:
		t.Fatalf("calls: %d sent, %d answered 200, failed %v (%s)", c.CallsSent, c.CallsOK, c.CallsFailed, c.CallError)
	case c.CallsAnswered != c.CallsOK:
		t.Fatalf("the chargers answered %d CALLs, the driver got %d", c.CallsAnswered, c.CallsOK)
	case c.CallsPerSec < 40 || c.CallP50Ms <= 0 || c.CallP99Ms < c.CallP50Ms || c.CallDeliverP50Ms <= 0:
		t.Fatalf("calls: %.0f/s, p50 %.2fms, p99 %.2fms, delivered p50 %.2fms", c.CallsPerSec, c.CallP50Ms, c.CallP99Ms, c.CallDeliverP50Ms)
	case sum.Errors != 0 || sum.Closed != 0:
		t.Fatalf("errors %d, %d closed (%s)", sum.Errors, sum.Closed, sum.LastError)
	}
}

// startGateway runs a gateway in this process in front of api, as main
// does, and returns its public address and control URL.
func startGateway(t *testing.T, api string) (addr, ctlURL string) {
	t.Helper()
	m := metrics.New()
	lp, err := loop.New("test", 1, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	client, err := upstream.NewHostClient(upstream.HostOptions{BaseURL: api, Loop: lp, Observer: m})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	srv, err := gateway.New(gateway.Options{API: client, Loop: lp, Logger: log, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctlLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	ctl := control.NewServer(lp, control.New(control.Options{Hub: srv, Metrics: m, Logger: log}))
	go func() { _ = ctl.Serve(ctlLn) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err) // the chargers' DELETEs did not all reach the API
		}
		<-served
		ctl.Close()
		client.Close()
		lp.Stop()
	})
	return ln.Addr().String(), "http://" + ctlLn.Addr().String()
}
