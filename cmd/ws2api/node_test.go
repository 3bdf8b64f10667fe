package main

import (
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/ws2api/ws2api/internal/cluster"
	"github.com/ws2api/ws2api/internal/gateway"
	"github.com/ws2api/ws2api/internal/metrics"
	"github.com/ws2api/ws2api/internal/upstream"
)

// TestFlagsConfigurePieces: each piece serve builds gets its options from
// the flags through a function of its own, checked here without starting
// anything; with no flags, each gets its package's defaults.
func TestFlagsConfigurePieces(t *testing.T) {
	getenv := func(string) string { return "" }
	cfg, err := parseFlags([]string{"-compression", "on", "-compression-min", "0", "-max-message-size", "64KiB", "-retry-first", "1s",
		"-redis", "redis://127.0.0.1:1/0", "-relay-timeout", "3s", "-control-token", "t0k", "-control-hosts", "gw.internal",
		"-timeout", "7s", "-max-conns-per-host", "9", "-trusted-proxies", "127.0.0.1"}, getenv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	log, m := slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.New()
	gw := gatewayOptions(cfg, nil, nil, log, m, nil, nil)
	if !gw.Compression || gw.CompressMin != 1 || gw.MaxMessageBytes != 64<<10 || gw.Retry.Backoff.First != time.Second ||
		!slices.Equal(gw.TrustedProxies, []string{"127.0.0.1"}) {
		t.Errorf("gateway options %+v", gw)
	}
	if bus := busOptions(cfg, nil, log, m); bus.URL != "redis://127.0.0.1:1/0" || bus.Timeout != 3*time.Second || bus.Prefix != cluster.Defaults.Prefix {
		t.Errorf("bus options %+v", bus)
	}
	if ctl := controlOptions(cfg, nil, nil, log, m, nil); ctl.Token != "t0k" || !slices.Equal(ctl.Hosts, []string{"gw.internal"}) || ctl.MaxBodyBytes != 64<<10 || ctl.Relay != nil {
		t.Errorf("control options %+v", ctl)
	}
	n := &node{cfg: cfg, log: log, m: m}
	if p := n.poolOptions(); p.Host.Timeout != 7*time.Second || p.Host.MaxConns != 9 || p.Host.MaxBodyBytes != upstream.HostDefaults.MaxBodyBytes {
		t.Errorf("pool options %+v", p.Host)
	}

	cfg, err = parseFlags(nil, getenv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	d := gateway.Defaults
	gw = gatewayOptions(cfg, nil, nil, log, m, nil, nil)
	if gw.MaxMessageBytes != d.MaxMessageBytes || gw.MaxPendingBytes != d.MaxPendingBytes || gw.MaxOutgoingTotal != d.MaxOutgoingTotal ||
		gw.HandshakeTimeout != d.HandshakeTimeout || gw.CompressMin != d.CompressMin || gw.PingTimeout != d.PingTimeout ||
		gw.Retry != upstream.RetryDefaults || !slices.Equal(gw.ForwardHeaders, d.ForwardHeaders) {
		t.Errorf("with no flags, gateway options %+v, want gateway.Defaults %+v", gw, d)
	}
	n.cfg = cfg
	if p := n.poolOptions(); p.Host.Timeout != upstream.HostDefaults.Timeout || p.Host.MaxConns != upstream.HostDefaults.MaxConns {
		t.Errorf("with no flags, pool options %+v", p.Host)
	}
}
