// Command ws2api is the gateway: see the README, or run ws2api -h.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ws2api/ws2api/internal/bench"
	"github.com/ws2api/ws2api/internal/cluster"
	"github.com/ws2api/ws2api/internal/control"
	"github.com/ws2api/ws2api/internal/gateway"
	"github.com/ws2api/ws2api/internal/loop"
	"github.com/ws2api/ws2api/internal/metrics"
	"github.com/ws2api/ws2api/internal/upstream"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// After the first signal, the default action returns: a second
		// SIGINT or SIGTERM ends the process at once.
		<-ctx.Done()
		stop()
	}()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	var usageErr errUsage
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
	case errors.Is(err, errUndelivered):
		os.Exit(1) // the counts are logged
	case errors.As(err, &usageErr):
		fmt.Fprintln(os.Stderr, "ws2api:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "ws2api:", err)
		os.Exit(1)
	}
}

// errUndelivered ends a run whose drain timed out with requests to the API
// undelivered: exit code 1, so that systemd shows it.
var errUndelivered = errors.New("drain timed out with requests to the API undelivered")

// run is the whole program: it returns when ctx ends and the drain is
// over, or at once on a bad flag.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "bench":
			return bench.Main(ctx, args[1:], os.Stdin, stdout, stderr)
		case "demo":
			return demo(ctx, args[1:], getenv, stdout, stderr)
		case "version", "-version", "--version":
			fmt.Fprintf(stdout, "ws2api %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		}
	}
	cfg, err := parseFlags(args, getenv, stdout)
	if err != nil {
		return err
	}
	return startGateway(ctx, cfg, stderr)
}

// startGateway runs the gateway configured by cfg, with its profiles.
func startGateway(ctx context.Context, cfg *config, stderr io.Writer) error {
	log := newLogger(cfg, stderr)
	slog.SetDefault(log)

	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err != nil {
			return fmt.Errorf("cpuprofile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpuprofile: %w", err)
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	if cfg.memProfile != "" {
		defer writeHeapProfile(cfg.memProfile, log)
	}
	return serve(ctx, cfg, log)
}

func serve(ctx context.Context, cfg *config, log *slog.Logger) error {
	m := metrics.New()
	// One event loop for every socket: a message stays on one poller from
	// the client to the API and back.
	lp, err := loop.New("ws2api", cfg.pollers, int(cfg.maxOutgoing))
	if err != nil {
		return err
	}
	defer lp.Stop()
	bases, err := cfg.backends()
	if err != nil {
		return err
	}
	probed := probeBackends(bases, log) // while the rest starts; "ws2api serving" waits for it

	var gwReady atomic.Pointer[gateway.Server] // for OnRecover, which may run before gw exists
	var backendGauges sync.Map                 // base URL -> func() removing its gauge
	pool, err := upstream.NewPool(bases, upstream.PoolOptions{
		Host: upstream.HostOptions{
			Loop:         lp,
			MaxConns:     cfg.maxConnsPerHost,
			MaxIdle:      cfg.maxIdleConnsPerHost,
			Timeout:      cfg.timeout,
			MaxBodyBytes: max(int64(cfg.maxMessage), 16<<20),
			Observer:     m,
			Log:          log,
		},
		HealthPath: cfg.apiHealthPath,
		OnChange: func(base string, e upstream.BackendEvent) {
			switch e {
			case upstream.BackendDown:
				log.Warn("API backend out: its requests fail", "backend", base)
			case upstream.BackendUp:
				log.Info("API backend back", "backend", base)
			case upstream.BackendAdded:
				log.Info("API backend added", "backend", base)
			case upstream.BackendRemoved:
				log.Info("API backend removed", "backend", base)
			}
		},
		OnRecover: func() {
			if g := gwReady.Load(); g != nil {
				g.RetryNow()
			}
		},
	})
	if err != nil {
		return err
	}
	defer pool.Close()
	trackBackends := func() {
		serving := pool.Backends()
		for base := range serving {
			if _, ok := backendGauges.Load(base); !ok {
				b := base
				backendGauges.Store(b, m.Backend(b, func() bool { return pool.Backends()[b] }))
			}
		}
		backendGauges.Range(func(k, v any) bool {
			if _, ok := serving[k.(string)]; !ok {
				v.(func())()
				backendGauges.Delete(k)
			}
			return true
		})
	}
	trackBackends()

	var cert *certificate
	var tlsConfig *tls.Config
	if cfg.tlsCert != "" {
		cert = &certificate{certFile: cfg.tlsCert, keyFile: cfg.tlsKey, caFile: cfg.tlsClientCA, clientAuth: tls.RequireAndVerifyClientCert}
		if cfg.tlsClientAuth == "optional" {
			cert.clientAuth = tls.VerifyClientCertIfGiven
		}
		leaf, err := cert.load()
		if err != nil {
			return err
		}
		tlsConfig = cert.serverConfig()
		log.Info("TLS on the public listener", "subject", leaf.Subject.String(), "expires", leaf.NotAfter.UTC().Format(time.RFC3339),
			"client_certificates", clientCertMode(cfg))
	}

	publicLn, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("public listener: %w", err)
	}
	controlLn, err := net.Listen("tcp", cfg.control)
	if err != nil {
		publicLn.Close()
		return fmt.Errorf("control listener: %w", err)
	}
	var demoPage, demoNote []byte
	if cfg.demoPages != nil {
		demoPage, demoNote = cfg.demoPages(publicLn.Addr(), controlLn.Addr())
	}
	gw, err := gateway.New(gateway.Options{
		Loop:             lp,
		API:              pool,
		Retry:            upstream.RetryPolicy{Backoff: upstream.Backoff{First: cfg.retryFirst, Max: cfg.retryMax}, GiveUpAfter: cfg.retryGiveUp},
		Logger:           log,
		Metrics:          m,
		MaxMessageBytes:  int64(cfg.maxMessage),
		Compression:      cfg.compression == "on",
		CompressMin:      max(int(cfg.compressMin), 1),
		MaxPendingBytes:  int64(cfg.maxPending),
		MaxPendingTotal:  int64(cfg.maxPendingTotal),
		MaxOutgoingBytes: int(cfg.maxOutgoing),
		MaxOutgoingTotal: int64(cfg.maxOutTotal),
		MaxHeaderBytes:   int(cfg.maxHeader),
		HandshakeTimeout: cfg.handshakeTimeout,
		ForwardHeaders:   strings.Split(cfg.forwardHeaders, ","),
		TrustedProxies:   cfg.trustedProxyList(),
		MaxConns:         cfg.maxConns,
		MaxConnecting:    cfg.maxConnecting,
		MaxMessageRate:   cfg.maxMsgRate,
		PingInterval:     cfg.pingInterval,
		PingTimeout:      cfg.pingTimeout,
		IdleTimeout:      cfg.idleTimeout,
		Origins:          cfg.originList(),
		TLS:              tlsConfig,
		Page:             demoNote,
	})
	if err != nil {
		publicLn.Close()
		controlLn.Close()
		return err
	}
	gwReady.Store(gw)

	var bus *cluster.Bus
	if cfg.redis != "" {
		bus, err = cluster.New(cluster.Options{
			URL: cfg.redis, Local: gw, Prefix: cfg.clusterPrefix, Timeout: cfg.relayTimeout, Logger: log, Metrics: m,
		})
		if err != nil {
			publicLn.Close()
			controlLn.Close()
			gw.Shutdown(context.Background())
			return err
		}
		defer bus.Close()
		gw.SetPresence(bus)
	}

	ctlOpts := control.Options{Hub: gw, Metrics: m, Logger: log, MaxBodyBytes: int64(cfg.maxMessage), Token: cfg.controlToken,
		Hosts: cfg.controlHostList(), Page: demoPage}
	if bus != nil {
		ctlOpts.Relay = bus
	}
	ctl := control.NewServer(lp, control.New(ctlOpts))
	ctlDone := make(chan error, 1)
	go func() { ctlDone <- ctl.Serve(controlLn) }()
	gwDone := make(chan error, 1)
	go func() { gwDone <- gw.Serve(publicLn) }()

	probed.Wait()
	if cfg.pipeline != 1 {
		log.Warn("-pipeline is ignored: requests to the API go one at a time on each connection", "pipeline", cfg.pipeline)
	}
	log.Info("ws2api serving", "public", publicLn.Addr().String(), "control", controlLn.Addr().String(),
		"api", strings.Join(bases, ","), "version", version, "tls", tlsConfig != nil,
		"control_token", cfg.controlToken != "", "max_conns", gw.MaxConns(), "node", gw.Node(), "cluster", bus != nil)
	if cfg.demoPages != nil {
		log.Info("demo: open the page in a browser (Ctrl-C stops it)", "url", demoURL(controlLn.Addr()))
	}
	if cfg.controlToken == "" && !loopback(controlLn.Addr()) {
		log.Warn("the control listener is not on a loopback address and has no -control-token: anyone who reaches it can push to, read and close every client",
			"control", controlLn.Addr().String())
	}

	// SIGHUP reloads what can change without dropping a connection: the
	// API backends listed in -api-file.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	var runErr error
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case <-hup:
			reload(cfg, pool, cert, log)
			trackBackends()
		case runErr = <-gwDone:
			runErr = fmt.Errorf("public listener: %w", runErr)
			break wait
		case runErr = <-ctlDone:
			runErr = fmt.Errorf("control listener: %w", runErr)
			break wait
		}
	}

	log.Info("shutting down: closing clients with 1001, delivering what is pending", "drain_timeout", cfg.drainTimeout.String())
	drainCtx, cancel := context.WithTimeout(context.Background(), cfg.drainTimeout)
	defer cancel()
	start := time.Now()
	var cut *gateway.DrainError
	switch err := gw.Shutdown(drainCtx); {
	case err == nil:
		log.Info("drained", "took", time.Since(start).Round(time.Millisecond).String())
	case errors.As(err, &cut) && cut.Lost():
		log.Error("drain timed out: undelivered messages and DELETEs dropped", "messages", cut.Messages, "bytes", cut.Bytes,
			"deletes", cut.Deletes, "clients", cut.Clients, "drain_timeout", cfg.drainTimeout.String())
		if runErr == nil {
			runErr = errUndelivered
		}
	default:
		log.Warn("drain incomplete", "error", err)
	}
	_ = ctl.Close()
	return runErr // then bus.Close: the shutdown's disconnects reach Redis
}

// probeTimeout bounds the start-up probe of each API backend.
const probeTimeout = 2 * time.Second

// probeBackends opens a TCP connection to each API base, all at once, and
// warns of each that does not resolve or does not answer: a mistyped -api
// shows at start-up, not at the first client. The gateway serves anyway,
// since the API may start later. The group it returns is done within
// probeTimeout.
func probeBackends(bases []string, log *slog.Logger) *sync.WaitGroup {
	var wg sync.WaitGroup
	for _, base := range bases {
		wg.Go(func() {
			u, err := upstream.ParseBaseURL(base)
			if err != nil {
				log.Warn("API backend unreachable at start-up; serving anyway", "backend", base, "error", err)
				return
			}
			c, err := net.DialTimeout("tcp", upstream.BackendAddr(u), probeTimeout)
			if err != nil {
				log.Warn("API backend unreachable at start-up; serving anyway", "backend", base, "error", err)
				return
			}
			c.Close()
		})
	}
	return &wg
}

// clientCertMode says how TLS clients are asked for a certificate.
func clientCertMode(cfg *config) string {
	if cfg.tlsClientCA == "" {
		return "not asked for"
	}
	return cfg.tlsClientAuth + ", verified against " + cfg.tlsClientCA
}

// reload re-reads -api-file and the TLS certificate on SIGHUP; what fails
// to load is logged and the old one stays.
func reload(cfg *config, pool *upstream.Pool, cert *certificate, log *slog.Logger) {
	if cfg.apiFile == "" && cert == nil {
		log.Info("SIGHUP: nothing to reload (no -api-file, no -tls-cert)")
		return
	}
	if cert != nil {
		if leaf, err := cert.load(); err != nil {
			log.Error("SIGHUP: TLS certificate not reloaded; the old one stays", "error", err)
		} else {
			log.Info("SIGHUP: TLS certificate reloaded", "subject", leaf.Subject.String(), "expires", leaf.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	if cfg.apiFile == "" {
		return
	}
	bases, err := cfg.backends()
	if err == nil {
		err = pool.SetBackends(bases)
	}
	if err != nil {
		log.Error("SIGHUP: API backends not reloaded; the old list stays", "file", cfg.apiFile, "error", err)
		return
	}
	log.Info("SIGHUP: API backends reloaded", "backends", strings.Join(bases, ","))
}

// loopback reports whether addr is a loopback address, reachable from this
// machine only.
func loopback(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

func writeHeapProfile(path string, log *slog.Logger) {
	f, err := os.Create(path)
	if err != nil {
		log.Error("memprofile", "error", err)
		return
	}
	defer f.Close()
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		log.Error("memprofile", "error", err)
	}
}
