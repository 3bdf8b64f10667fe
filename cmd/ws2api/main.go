// Command ws2api is the gateway: see the README, or run ws2api -h.
package main

import (
	"context"
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
	"syscall"
	"time"

	"github.com/ws2api/ws2api/internal/bench"
	"github.com/ws2api/ws2api/internal/metrics"
	"github.com/ws2api/ws2api/internal/upstream"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if supervising() {
		os.Exit(supervise()) // a container's PID 1 (supervise.go)
	}
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

// serve builds a node from cfg, runs it until ctx ends (or a listener
// fails), and drains it (node.go).
func serve(ctx context.Context, cfg *config, log *slog.Logger) error {
	n := &node{cfg: cfg, log: log, m: metrics.New()}
	defer n.close()
	if err := n.build(); err != nil {
		return err
	}
	return n.run(ctx)
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
