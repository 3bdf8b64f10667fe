package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ws2api/ws2api/internal/cluster"
	"github.com/ws2api/ws2api/internal/control"
	"github.com/ws2api/ws2api/internal/gateway"
	"github.com/ws2api/ws2api/internal/loop"
	"github.com/ws2api/ws2api/internal/metrics"
	"github.com/ws2api/ws2api/internal/upstream"
)

// node is one running gateway and the pieces serve builds it of, in that
// order: the event loop, the API pool, TLS, the listeners, the gateway,
// the cluster bus, the control server. Each piece's options come from the
// config through a function of their own (poolOptions, gatewayOptions,
// busOptions, controlOptions), which the tests call without starting
// anything; close takes down what was built, in reverse.
type node struct {
	cfg *config
	log *slog.Logger
	m   *metrics.Metrics

	lp        *loop.Loop
	bases     []string
	probed    *sync.WaitGroup // the start-up probe of the API backends
	pool      *upstream.Pool
	gwReady   atomic.Pointer[gateway.Server] // for the pool's OnRecover, which may run before gw exists
	gauges    sync.Map                       // API base URL -> func() removing its gauge
	cert      *certificate
	tlsConfig *tls.Config
	publicLn  net.Listener
	controlLn net.Listener
	demoPage  []byte // the demo's page, on the control listener
	demoNote  []byte // and its note, on the public one
	gw        *gateway.Server
	bus       *cluster.Bus
	ctl       *control.Server
	served    bool       // run began: the gateway is shut down by its drain
	inherited *inherited // started by an upgrade: the old process's listeners
	upgraded  bool       // a new process took over: drain with 1012
}

// build makes the pieces. On an error, close takes down those made.
func (n *node) build() error {
	var err error
	n.m.BuildInfo(version, runtime.Version())
	// One event loop for every socket: a message stays on one poller from
	// the client to the API and back.
	if n.lp, err = loop.New("ws2api", n.cfg.pollers, int(n.cfg.maxOutgoing)); err != nil {
		return err
	}
	if n.bases, err = n.cfg.backends(); err != nil {
		return err
	}
	n.probed = probeBackends(n.bases, n.log) // while the rest starts; "ws2api serving" waits for it
	if n.pool, err = upstream.NewPool(n.bases, n.poolOptions()); err != nil {
		return err
	}
	n.trackBackends()
	if err = n.loadTLS(); err != nil {
		return err
	}
	if n.inherited, err = inheritListeners(os.Getenv); err != nil {
		return err
	}
	if n.inherited != nil {
		// Started by an upgrade: the old process's sockets (upgrade.go),
		// and its connections to come.
		n.publicLn, n.controlLn = n.inherited.public, n.inherited.control
	} else {
		if n.publicLn, err = net.Listen("tcp", n.cfg.listen); err != nil {
			return fmt.Errorf("public listener: %w", err)
		}
		if n.controlLn, err = net.Listen("tcp", n.cfg.control); err != nil {
			return fmt.Errorf("control listener: %w", err)
		}
	}
	if n.cfg.demoPages != nil {
		n.demoPage, n.demoNote = n.cfg.demoPages(n.publicLn.Addr(), n.controlLn.Addr())
	}
	gwOpts := gatewayOptions(n.cfg, n.lp, n.pool, n.log, n.m, n.tlsConfig, n.demoNote)
	if n.inherited != nil {
		gwOpts.Node, gwOpts.After = n.inherited.node, n.inherited.after
	}
	if n.gw, err = gateway.New(gwOpts); err != nil {
		return err
	}
	n.gwReady.Store(n.gw)
	if n.inherited != nil {
		n.gw.AwaitHandover()
	}
	if n.cfg.redis != "" {
		busOpts := busOptions(n.cfg, n.gw, n.log, n.m)
		busOpts.Successor = n.inherited != nil
		if n.bus, err = cluster.New(busOpts); err != nil {
			return err
		}
		n.gw.SetPresence(n.bus)
	}
	n.ctl = control.NewServer(n.lp, control.New(controlOptions(n.cfg, n.gw, n.bus, n.log, n.m, n.demoPage)))
	return nil
}

// close takes down what build made, last first. The gateway is shut down
// here only if run never began (run drains it).
func (n *node) close() {
	if n.ctl != nil {
		if n.upgraded {
			n.ctl.Quiesce(n.cfg.relayTimeout)
		}
		_ = n.ctl.Close()
	}
	if n.bus != nil {
		n.bus.Close() // after the drain: the shutdown's disconnects reach Redis
	}
	if n.gw != nil && !n.served {
		_ = n.gw.Shutdown(context.Background())
	}
	for _, ln := range []net.Listener{n.publicLn, n.controlLn} {
		if ln != nil && !n.served {
			ln.Close()
		}
	}
	if n.pool != nil {
		n.pool.Close()
	}
	if n.lp != nil {
		n.lp.Stop()
	}
}

// poolOptions configures the API side: its connections, and what its
// backends' comings and goings are told to.
func (n *node) poolOptions() upstream.PoolOptions {
	cfg, log := n.cfg, n.log
	return upstream.PoolOptions{
		Host: upstream.HostOptions{
			Loop:         n.lp,
			MaxConns:     cfg.maxConnsPerHost,
			MaxIdle:      cfg.maxIdleConnsPerHost,
			Timeout:      cfg.timeout,
			MaxBodyBytes: max(int64(cfg.maxMessage), upstream.HostDefaults.MaxBodyBytes),
			Observer:     n.m,
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
			if g := n.gwReady.Load(); g != nil {
				g.RetryNow()
			}
		},
	}
}

// trackBackends keeps one ws2api_api_backend_up gauge per API backend in
// use: at start, and after a SIGHUP changed the list.
func (n *node) trackBackends() {
	serving := n.pool.Backends()
	for base := range serving {
		if _, ok := n.gauges.Load(base); !ok {
			b := base
			n.gauges.Store(b, n.m.Backend(b, func() bool { return n.pool.Backends()[b] }))
		}
	}
	n.gauges.Range(func(k, v any) bool {
		if _, ok := serving[k.(string)]; !ok {
			v.(func())()
			n.gauges.Delete(k)
		}
		return true
	})
}

// loadTLS reads -tls-cert and its companions, if given.
func (n *node) loadTLS() error {
	cfg := n.cfg
	if cfg.tlsCert == "" {
		return nil
	}
	n.cert = &certificate{certFile: cfg.tlsCert, keyFile: cfg.tlsKey, caFile: cfg.tlsClientCA, clientAuth: tls.RequireAndVerifyClientCert}
	if cfg.tlsClientAuth == "optional" {
		n.cert.clientAuth = tls.VerifyClientCertIfGiven
	}
	leaf, err := n.cert.load()
	if err != nil {
		return err
	}
	n.tlsConfig = n.cert.serverConfig()
	n.log.Info("TLS on the public listener", "subject", leaf.Subject.String(), "expires", leaf.NotAfter.UTC().Format(time.RFC3339),
		"client_certificates", clientCertMode(cfg))
	return nil
}

// gatewayOptions is the public side as the flags configure it.
func gatewayOptions(cfg *config, lp *loop.Loop, api upstream.Client, log *slog.Logger, m *metrics.Metrics, tlsConfig *tls.Config, page []byte) gateway.Options {
	return gateway.Options{
		Loop:             lp,
		API:              api,
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
		Page:             page,
	}
}

// busOptions is the cluster bus as the flags configure it.
func busOptions(cfg *config, local cluster.Local, log *slog.Logger, m *metrics.Metrics) cluster.Options {
	return cluster.Options{URL: cfg.redis, Local: local, Prefix: cfg.clusterPrefix, Timeout: cfg.relayTimeout, Logger: log, Metrics: m}
}

// controlOptions is the control API as the flags configure it; bus may
// be nil (no cluster).
func controlOptions(cfg *config, hub control.Hub, bus *cluster.Bus, log *slog.Logger, m *metrics.Metrics, page []byte) control.Options {
	o := control.Options{Hub: hub, Metrics: m, Logger: log, MaxBodyBytes: int64(cfg.maxMessage), Token: cfg.controlToken,
		Hosts: cfg.controlHostList(), Page: page}
	if bus != nil {
		o.Relay = bus
	}
	return o
}

// run serves until ctx ends or a listener fails, reloading on SIGHUP,
// then drains: it returns errUndelivered if the drain timed out with
// requests to the API undelivered.
func (n *node) run(ctx context.Context) error {
	cfg, log := n.cfg, n.log
	n.served = true
	// SIGHUP reloads what can change without dropping a connection: the
	// API backends listed in -api-file, the TLS certificate. SIGUSR2
	// upgrades to the binary on disk (upgrade.go). Both are caught before
	// "ws2api serving" is logged: uncaught, either ends the process, and a
	// signal sent as soon as that line appears once did.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	defer signal.Stop(usr2)
	ctlDone := make(chan error, 1)
	go func() { ctlDone <- n.ctl.Serve(n.controlLn) }()
	gwDone := make(chan error, 1)
	go func() { gwDone <- n.gw.Serve(n.publicLn) }()

	n.probed.Wait()
	if cfg.pipeline != 1 {
		log.Warn("-pipeline is ignored: requests to the API go one at a time on each connection", "pipeline", cfg.pipeline)
	}
	log.Info("ws2api serving", "public", n.publicLn.Addr().String(), "control", n.controlLn.Addr().String(),
		"api", strings.Join(n.bases, ","), "version", version, "tls", n.tlsConfig != nil,
		"control_token", cfg.controlToken != "", "max_conns", n.gw.MaxConns(), "node", n.gw.Node(), "cluster", n.bus != nil,
		"pid", os.Getpid(), "upgrade", n.inherited != nil)
	if n.inherited != nil {
		// This process is the unit's main one now; the old one hands its
		// connections over.
		sdNotify("MAINPID=" + strconv.Itoa(os.Getpid()) + "\nREADY=1")
		if l, err := n.inherited.ready(); err != nil {
			log.Warn("upgrade: could not tell the old process this one serves; it keeps serving too until it gives up", "error", err)
			n.gw.Arrived(0, 0)
		} else {
			go l.serveNew(n.gw, n.bus, log.Warn)
		}
	} else {
		sdNotify("READY=1")
	}
	if cfg.demoPages != nil {
		log.Info("demo: open the page in a browser (Ctrl-C stops it)", "url", demoURL(n.controlLn.Addr()))
	}
	if cfg.controlToken == "" && !loopback(n.controlLn.Addr()) {
		log.Warn("the control listener is not on a loopback address and has no -control-token: anyone who reaches it can push to, read and close every client",
			"control", n.controlLn.Addr().String())
	}

	var runErr error
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case <-hup:
			reload(cfg, n.pool, n.cert, log)
			n.trackBackends()
		case <-usr2:
			log.Info("upgrade: starting the new binary", "path", exePath)
			l, err := n.upgrade(cfg.upgradeTimeout)
			if err != nil {
				log.Error("upgrade failed: this process serves on", "error", err)
				continue
			}
			// The new process accepts on the listeners from here on;
			// control connections already open are served (their ops
			// forwarded to the new process) until the drain is over.
			// Copies of the listeners stay, should the hand-over fail.
			spare, err := listenerFiles(n.publicLn, n.controlLn)
			if err != nil {
				log.Error("upgrade failed: this process serves on", "error", err)
				continue
			}
			n.ctl.StopAccepting()
			if err := n.handOver(l); err != nil {
				log.Error("upgrade failed during the hand-over (the connections already passed went with the new process): this process serves on the rest", "error", err)
				<-gwDone // the listeners' loops ended with their close
				<-ctlDone
				if n.publicLn, n.controlLn, err = spare.listeners(); err != nil {
					return fmt.Errorf("upgrade rollback: %w", err)
				}
				n.ctl.Resume()
				go func() { gwDone <- n.gw.Resume(n.publicLn) }()
				go func() { ctlDone <- n.ctl.Serve(n.controlLn) }()
				sdNotify("MAINPID=" + strconv.Itoa(os.Getpid()) + "\nREADY=1")
				continue
			}
			spare.close()
			sdNotify("STOPPING=1")
			n.upgraded = true
			break wait
		case runErr = <-gwDone:
			runErr = fmt.Errorf("public listener: %w", runErr)
			break wait
		case runErr = <-ctlDone:
			runErr = fmt.Errorf("control listener: %w", runErr)
			break wait
		}
	}
	if err := n.drain(); runErr == nil {
		runErr = err
	}
	return runErr
}

// drain shuts the gateway down within -drain-timeout: clients closed with
// 1001, what is pending delivered to the API.
func (n *node) drain() error {
	cfg, log := n.cfg, n.log
	ctx, cancel := context.WithTimeout(context.Background(), cfg.drainTimeout)
	defer cancel()
	start := time.Now()
	shutdown := n.gw.Shutdown
	if n.upgraded {
		log.Info("upgraded: closing with 1012 the clients not handed over, delivering what is pending", "drain_timeout", cfg.drainTimeout.String())
		shutdown = n.gw.Restart
	} else {
		log.Info("shutting down: closing clients with 1001, delivering what is pending", "drain_timeout", cfg.drainTimeout.String())
	}
	var cut *gateway.DrainError
	switch err := shutdown(ctx); {
	case err == nil:
		log.Info("drained", "took", time.Since(start).Round(time.Millisecond).String())
	case errors.As(err, &cut) && cut.Lost():
		log.Error("drain timed out: undelivered messages and DELETEs dropped", "messages", cut.Messages, "bytes", cut.Bytes,
			"deletes", cut.Deletes, "clients", cut.Clients, "drain_timeout", cfg.drainTimeout.String())
		return errUndelivered
	default:
		log.Warn("drain incomplete", "error", err)
	}
	return nil
}
