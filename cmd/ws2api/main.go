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
	"syscall"
	"time"

	"github.com/ws2api/ws2api/internal/bench"
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
	case errors.As(err, &usageErr):
		fmt.Fprintln(os.Stderr, "ws2api:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "ws2api:", err)
		os.Exit(1)
	}
}

// run is the whole program: it returns when ctx ends and the drain is
// over, or at once on a bad flag.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "bench":
			return bench.Main(ctx, args[1:], os.Stdin, stdout, stderr)
		case "version", "-version", "--version":
			fmt.Fprintf(stdout, "ws2api %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		}
	}
	cfg, err := parseFlags(args, getenv, stdout)
	if err != nil {
		return err
	}
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
	client, err := upstream.NewPipeline(upstream.PipelineOptions{
		Loop:         lp,
		BaseURL:      cfg.api,
		MaxConns:     cfg.maxConnsPerHost,
		MaxIdle:      cfg.maxIdleConnsPerHost,
		Depth:        cfg.pipeline,
		Timeout:      cfg.timeout,
		MaxBodyBytes: max(int64(cfg.maxMessage), 16<<20),
		Observer:     m,
	})
	if err != nil {
		return err
	}
	defer client.Close()

	gw, err := gateway.New(gateway.Options{
		Loop:             lp,
		API:              client,
		Retry:            upstream.RetryPolicy{Backoff: upstream.Backoff{First: cfg.retryFirst, Max: cfg.retryMax}, GiveUpAfter: cfg.retryGiveUp},
		Logger:           log,
		Metrics:          m,
		MaxMessageBytes:  int64(cfg.maxMessage),
		MaxPendingBytes:  int64(cfg.maxPending),
		MaxOutgoingBytes: int(cfg.maxOutgoing),
		MaxHeaderBytes:   int(cfg.maxHeader),
		HandshakeTimeout: cfg.handshakeTimeout,
		ForwardHeaders:   strings.Split(cfg.forwardHeaders, ","),
	})
	if err != nil {
		return err
	}

	publicLn, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		gw.Shutdown(context.Background())
		return fmt.Errorf("public listener: %w", err)
	}
	controlLn, err := net.Listen("tcp", cfg.control)
	if err != nil {
		publicLn.Close()
		gw.Shutdown(context.Background())
		return fmt.Errorf("control listener: %w", err)
	}
	ctl := control.NewServer(lp, control.New(control.Options{
		Hub: gw, Metrics: m, Logger: log, MaxBodyBytes: int64(cfg.maxMessage),
	}))
	ctlDone := make(chan error, 1)
	go func() { ctlDone <- ctl.Serve(controlLn) }()
	gwDone := make(chan error, 1)
	go func() { gwDone <- gw.Serve(publicLn) }()

	log.Info("ws2api serving", "public", publicLn.Addr().String(), "control", controlLn.Addr().String(),
		"api", cfg.api, "version", version)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-gwDone:
		runErr = fmt.Errorf("public listener: %w", runErr)
	case runErr = <-ctlDone:
		runErr = fmt.Errorf("control listener: %w", runErr)
	}

	log.Info("shutting down: closing clients with 1001, delivering what is pending", "drain_timeout", cfg.drainTimeout.String())
	drainCtx, cancel := context.WithTimeout(context.Background(), cfg.drainTimeout)
	defer cancel()
	start := time.Now()
	if err := gw.Shutdown(drainCtx); err != nil {
		log.Warn("drain incomplete", "error", err)
	} else {
		log.Info("drained", "took", time.Since(start).Round(time.Millisecond).String())
	}
	_ = ctl.Close()
	return runErr
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
