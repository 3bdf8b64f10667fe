package gateway_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ws2api/ws2api/internal/control"
	"github.com/ws2api/ws2api/internal/gateway"
	"github.com/ws2api/ws2api/internal/loop"
	"github.com/ws2api/ws2api/internal/metrics"
	"github.com/ws2api/ws2api/internal/testkit"
	"github.com/ws2api/ws2api/internal/upstream"
)

// harness is one gateway on real listeners in front of a test API.
type harness struct {
	t       *testing.T
	api     *testkit.API
	srv     *gateway.Server
	m       *metrics.Metrics
	addr    string // public listener host:port
	scheme  string // ws, or wss when the gateway serves TLS
	control string // control listener base URL, no trailing slash
}

type harnessOpts struct {
	gw   gateway.Options
	http upstream.HostOptions
	// maxWriteBuffer is the loop's bound on what nbio holds for one
	// socket (main passes -max-outgoing). Default 1 MiB.
	maxWriteBuffer int
}

func newHarness(t *testing.T, api *testkit.API, o harnessOpts) *harness {
	t.Helper()
	log := o.gw.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	m := metrics.New()
	if o.maxWriteBuffer == 0 {
		o.maxWriteBuffer = 1 << 20
	}
	lp, err := loop.New("test", 2, o.maxWriteBuffer)
	if err != nil {
		t.Fatal(err)
	}
	o.http.BaseURL = api.URL()
	o.http.Observer = m
	o.http.Loop = lp
	client, err := upstream.NewHostClient(o.http)
	if err != nil {
		t.Fatal(err)
	}
	if o.gw.Retry.Backoff.First == 0 {
		o.gw.Retry.Backoff = upstream.Backoff{First: 10 * time.Millisecond, Max: 50 * time.Millisecond}
	}
	o.gw.API, o.gw.Logger, o.gw.Metrics, o.gw.Loop = client, log, m, lp
	srv, err := gateway.New(o.gw)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	ctlLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctl := control.NewServer(lp, control.New(control.Options{Hub: srv, Metrics: m, Logger: log}))
	go ctl.Serve(ctlLn)
	h := &harness{t: t, api: api, srv: srv, m: m, addr: ln.Addr().String(), scheme: "ws", control: "http://" + ctlLn.Addr().String()}
	if o.gw.TLS != nil {
		h.scheme = "wss"
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
		ctl.Close()
		client.Close()
		lp.Stop()
	})
	return h
}

func (h *harness) url(id string) string { return h.scheme + "://" + h.addr + "/" + id }

// ctl makes a control request and returns status and body.
func (h *harness) ctl(method, path, contentType, body string) (int, string) {
	h.t.Helper()
	req, err := http.NewRequest(method, h.control+path, strings.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitCount waits until the gateway holds n clients.
func (h *harness) waitCount(n int) {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for h.srv.Count() != n {
		if time.Now().After(deadline) {
			h.t.Fatalf("gateway holds %d clients, want %d", h.srv.Count(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

const wait = 5 * time.Second
