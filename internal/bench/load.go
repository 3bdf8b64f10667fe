// Package bench is ws2api's load tool (`ws2api bench`) and the echo API the
// benchmarks run behind the gateway (`ws2api bench api`).
//
// A run reproduces the original gateway's benchmark shape: ramp N
// connections over T, each sending one message every I, for D; it reports
// connects/s, messages/s, latency percentiles, errors, lost replies, and the
// gateway's memory and CPU read from /proc. It can also drive pushes and
// broadcasts through the control API. Past what one process may open (20,000
// files here) it spreads the connections over worker processes, and over
// 127.0.1.x source addresses so that no address runs out of ports.
//
// In the OCPP shape (-ocpp, ocpp.go) the connections are chargers that boot,
// heartbeat and answer CALLs, and the tool makes synchronous calls to them
// through the control API (-call-rate), timing each.
package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lesismal/nbio/logging"

	"github.com/ws2api/ws2api/internal/upstream"
)

// Main is `ws2api bench [api|floor|abandon|worker] [flags]`.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	logging.SetLevel(logging.LevelError)
	if len(args) > 0 {
		switch args[0] {
		case "api":
			return runAPI(ctx, args[1:], stdout)
		case "floor":
			return runFloor(ctx, args[1:], stdout)
		case "abandon":
			return runAbandon(ctx, args[1:], stdout)
		case "worker":
			return runWorker(ctx, stdin, stdout)
		}
	}
	return runLoad(ctx, args, stdout, stderr)
}

// Options is one load run.
type Options struct {
	URL       string
	Conns     int
	Ramp      time.Duration
	Interval  time.Duration
	Duration  time.Duration
	Size      int
	Dialers   int
	Prefix    string
	Procs     int
	Sources   bool
	Insecure  bool
	Once      bool
	PID       int
	Control   string
	PushRate  int
	Broadcast int
	Settle    time.Duration
	Grace     time.Duration
	JSON      string
	// Progress receives the live line each second (nil: none).
	Progress io.Writer
	Compress bool
	// The OCPP shape: chargers (Interval is their heartbeat), and CallRate
	// synchronous calls a second through Control over CallConns
	// connections, each waiting up to CallAwait.
	OCPP      bool
	CallRate  int
	CallConns int
	CallAwait time.Duration
}

// Summary is a run's result.
type Summary struct {
	Conns          int     `json:"conns"`
	Procs          int     `json:"procs"`
	ConnectOK      int64   `json:"connect_ok"`
	ConnectFail    int64   `json:"connect_fail"`
	ConnectSeconds float64 `json:"connect_seconds"`
	ConnectsPerSec float64 `json:"connects_per_sec"`
	ConnectP50Ms   float64 `json:"connect_p50_ms"`
	ConnectP99Ms   float64 `json:"connect_p99_ms"`

	Sent       int64   `json:"sent"`
	Recv       int64   `json:"recv"`
	Lost       int64   `json:"lost"`
	MsgsPerSec float64 `json:"msgs_per_sec"`
	P50Ms      float64 `json:"p50_ms"`
	P99Ms      float64 `json:"p99_ms"`
	P999Ms     float64 `json:"p999_ms"`
	MaxMs      float64 `json:"max_ms"`

	PushesSent   int64   `json:"pushes_sent"`
	PushesFailed int64   `json:"pushes_failed"`
	PushesRecv   int64   `json:"pushes_recv"`
	PushP50Ms    float64 `json:"push_p50_ms"`
	PushP99Ms    float64 `json:"push_p99_ms"`

	OCPP *OCPPResult `json:"ocpp,omitempty"`

	Once       *OnceResult       `json:"once,omitempty"`
	Broadcasts []BroadcastResult `json:"broadcasts,omitempty"`

	// Pings the gateway sent (to clients silent for its -ping-interval),
	// a second over the measured window: they cost it CPU too.
	PingsPerSec float64 `json:"pings_per_sec"`

	Closed    int64  `json:"closed"`
	Errors    int64  `json:"errors"`
	LastError string `json:"last_error,omitempty"`

	Gateway *GatewayFigures `json:"gateway,omitempty"`
}

// OCPPResult is the OCPP shape's: the chargers' boots and the synchronous
// calls (the heartbeats are the summary's messages).
type OCPPResult struct {
	Boots         int64 `json:"boots"`
	BootsAnswered int64 `json:"boots_answered"`

	CallsSent   int64            `json:"calls_sent"`
	CallsOK     int64            `json:"calls_ok"`               // 200 with the charger's CALLRESULT
	CallsFailed map[string]int64 `json:"calls_failed,omitempty"` // by status, or timeout, transport, bad answer
	CallError   string           `json:"call_error,omitempty"`   // the last failure
	CallsPerSec float64          `json:"calls_per_sec"`          // answered 200, over the measured window
	CallP50Ms   float64          `json:"call_p50_ms"`            // POST to 200
	CallP90Ms   float64          `json:"call_p90_ms"`
	CallP99Ms   float64          `json:"call_p99_ms"`
	CallMaxMs   float64          `json:"call_max_ms"`
	// The chargers' side: CALLs received and answered, and the time from
	// a call's POST to its CALL reaching the charger.
	CallsAnswered    int64   `json:"calls_answered"`
	CallDeliverP50Ms float64 `json:"call_deliver_p50_ms"`
	CallDeliverP99Ms float64 `json:"call_deliver_p99_ms"`
}

// OnceResult is the burst of one message from every connection at once.
type OnceResult struct {
	Sent  int64   `json:"sent"`
	Recv  int64   `json:"recv"`
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
}

// BroadcastResult is one broadcast's reach.
type BroadcastResult struct {
	Delivered   int64   `json:"delivered"`     // the gateway's count
	Received    int64   `json:"received"`      // counted by the clients
	AllWithinMs float64 `json:"all_within_ms"` // the slowest client's latency
	P50Ms       float64 `json:"p50_ms"`
	CPUMs       float64 `json:"gateway_cpu_ms"`
}

// GatewayFigures are the gateway's own costs, read from /proc.
type GatewayFigures struct {
	RSSBaseMiB          float64 `json:"rss_base_mib"`
	RSSIdleMiB          float64 `json:"rss_idle_mib"`
	IdleKiBPerConn      float64 `json:"idle_kib_per_conn"`
	RSSAfterOneMiB      float64 `json:"rss_after_one_mib,omitempty"`
	AfterOneKiBPerConn  float64 `json:"after_one_kib_per_conn,omitempty"`
	RSSEndMiB           float64 `json:"rss_end_mib"`
	KernelTCPKiBPerConn float64 `json:"kernel_tcp_kib_per_conn"`
	// KernelSlabKiBPerConn is the kernel's own memory per gateway-side
	// socket: half the slab growth, the clients' sockets being on this
	// machine too.
	KernelSlabKiBPerConn float64 `json:"kernel_slab_kib_per_conn"`
	CPUPercent           float64 `json:"cpu_percent"`
	CPUPerMsgUs          float64 `json:"cpu_per_msg_us,omitempty"`
	CPUPerPushUs         float64 `json:"cpu_per_push_us,omitempty"`
	FDs                  int     `json:"fds"`
	Threads              int     `json:"threads"`
	// CPUPerCallUs is all the gateway's CPU in the window over the calls
	// answered: the heartbeats' share included (subtract a run without
	// calls for the calls' own).
	CPUPerCallUs float64 `json:"cpu_per_call_us,omitempty"`
}

func runLoad(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ws2api bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `ws2api bench: the load tool. It opens -conns WebSocket connections to a
gateway over -ramp, has each send one message every -interval for -duration,
and reports connects/s, messages/s, latency percentiles, errors, lost replies
and, given -pid, the gateway's memory and CPU. It can also push through the
control API (-push-rate) and broadcast (-broadcasts). With -ocpp the
connections are OCPP 1.6 chargers: each boots, sends a Heartbeat every
-interval and answers every CALL; -call-rate makes synchronous calls to them
through the control API (POST /<id>?await=) and times each. Put the echo API
in the same mode (ws2api bench api -ocpp; scripts/bench does it).

  ws2api bench [flags]                  a load run
  ws2api bench api [-listen addr]       the echo API to put behind the gateway
                                        (-ocpp: it answers CALLs with CALLRESULTs)
  ws2api bench floor [-listen addr]     a WebSocket echo with no API: the
                                        machine's floor for one read and one
                                        write per message
  ws2api bench abandon [-addr a -n N]   a storm of upgrades with large cookies
                                        that hang up before any answer

scripts/bench starts the echo API and a gateway and runs the tool against
them; scripts/bench-targets runs every scenario of BENCHMARKS.md.

Flags:
`)
		fs.PrintDefaults()
	}
	var o Options
	fs.StringVar(&o.URL, "url", "ws://127.0.0.1:7001/", "gateway base URL, ws:// or wss://; each client's id is appended. Several, comma-separated (a cluster's nodes), take turns")
	fs.BoolVar(&o.Insecure, "insecure", false, "wss: accept any certificate (a self-signed one on a test gateway)")
	fs.IntVar(&o.Conns, "conns", 1000, "connections to open")
	fs.DurationVar(&o.Ramp, "ramp", 0, "time over which to open them (0: as fast as possible)")
	fs.DurationVar(&o.Interval, "interval", 0, "each connection sends one message this often (0: never)")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "how long to measure once all are connected")
	fs.IntVar(&o.Size, "size", 64, "message size in bytes")
	fs.BoolVar(&o.Compress, "compression", false, "offer permessage-deflate (no context takeover), send messages compressed, and pad them with OCPP-like JSON instead of x's")
	fs.IntVar(&o.Dialers, "dialers", 64, "handshakes in progress at once, per process")
	fs.StringVar(&o.Prefix, "prefix", "bench-", "client id prefix")
	fs.IntVar(&o.Procs, "procs", 0, "worker processes (0: one per 18,000 connections)")
	sources := fs.String("sources", "auto", "spread connections over 127.0.1.x source addresses: on, off, or auto (on past 20,000 connections, where one address runs short of ports)")
	fs.BoolVar(&o.Once, "once", false, "once all are connected, every connection sends one message, and the run waits (up to a minute) until each is echoed back")
	fs.IntVar(&o.PID, "pid", 0, "the gateway's process id, to report its memory and CPU")
	fs.StringVar(&o.Control, "control", "http://127.0.0.1:7002", "the gateway's control listener, for pushes and broadcasts")
	fs.IntVar(&o.PushRate, "push-rate", 0, "pushes a second through the control API, to random clients")
	fs.IntVar(&o.Broadcast, "broadcasts", 0, "broadcasts to send during the run, one at a time")
	fs.DurationVar(&o.Settle, "settle", 2*time.Second, "wait before reading the gateway's idle memory")
	fs.DurationVar(&o.Grace, "grace", 5*time.Second, "after sending stops, time for the last replies to arrive")
	fs.StringVar(&o.JSON, "json", "", "also write the summary as JSON to this file (- for stdout)")
	fs.BoolVar(&o.OCPP, "ocpp", false, "the OCPP shape: each connection is a charger (subprotocol ocpp1.6) that sends a BootNotification, then a Heartbeat every -interval, and answers every CALL it receives with Accepted; needs the echo API's -ocpp")
	fs.IntVar(&o.CallRate, "call-rate", 0, "with -ocpp: synchronous calls a second through the control API (POST /<id>?await=, a Reset CALL) to random chargers, each timed from its POST to its 200")
	fs.IntVar(&o.CallConns, "call-conns", 64, "keep-alive connections the calls are made over (one call waits on each at a time)")
	fs.DurationVar(&o.CallAwait, "call-await", 10*time.Second, "each call's ?await=")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.CallRate > 0 && !o.OCPP {
		return errors.New("-call-rate calls chargers: use it with -ocpp")
	}
	if o.Conns < 1 {
		return errors.New("-conns must be at least 1")
	}
	if o.Once && o.Interval > 0 {
		return errors.New("-once measures one message from each connection: use it without -interval")
	}
	switch *sources {
	case "on":
		o.Sources = true
	case "off":
		o.Sources = false
	case "auto":
		o.Sources = o.Conns > 20000
	default:
		return errors.New("-sources must be on, off or auto")
	}
	o.Progress = stderr
	sum, err := Run(ctx, o)
	if sum != nil {
		printSummary(stdout, sum)
		if o.JSON != "" {
			b, _ := json.MarshalIndent(sum, "", "  ")
			b = append(b, '\n')
			if o.JSON == "-" {
				_, _ = stdout.Write(b)
			} else if werr := os.WriteFile(o.JSON, b, 0o644); werr != nil {
				return werr
			}
		}
	}
	return err
}

// reportLag is the longest a worker's report can be out of date.
const reportLag = time.Second

// handle is a worker, in this process or another.
type handle struct {
	mu      sync.Mutex
	last    report
	stop    func() // stop sending
	once    func() // send one message on every connection
	finish  func() // close the connections and wait for the last report
	done    chan struct{}
	failure error
}

func (h *handle) latest() report {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last
}

func (h *handle) set(r report) {
	h.mu.Lock()
	h.last = r
	h.mu.Unlock()
}

// Run performs one load run.
func Run(ctx context.Context, o Options) (*Summary, error) {
	procs := o.Procs
	if procs <= 0 {
		procs = (o.Conns + 17999) / 18000
	}
	if o.Dialers <= 0 {
		o.Dialers = 64
	}
	if o.CallAwait <= 0 {
		o.CallAwait = 10 * time.Second
	}
	var gw *gatewayWatch
	if o.PID > 0 {
		var err error
		if gw, err = watchGateway(o.PID); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	handles := make([]*handle, procs)
	for i := range procs {
		first := o.Conns * i / procs
		cfg := workerConfig{
			URL: o.URL, First: first, Count: o.Conns*(i+1)/procs - first, Total: o.Conns, Ramp: o.Ramp,
			Dialers: o.Dialers, Interval: o.Interval, Size: o.Size, Prefix: o.Prefix, Sources: o.Sources, Insecure: o.Insecure, Compress: o.Compress,
			OCPP: o.OCPP,
		}
		var err error
		if procs == 1 {
			handles[i], err = startLocal(ctx, cfg, i)
		} else {
			handles[i], err = startProcess(ctx, cfg, i)
		}
		if err != nil {
			for _, h := range handles[:i] {
				h.finish()
			}
			return nil, err
		}
	}
	r := &runner{o: o, handles: handles, gw: gw, start: start, sum: &Summary{Conns: o.Conns, Procs: procs}}
	err := r.phases(ctx)
	for _, h := range handles {
		h.finish()
	}
	r.finalCounts()
	return r.sum, err
}

type runner struct {
	o       Options
	handles []*handle
	gw      *gatewayWatch
	start   time.Time
	sum     *Summary

	prev     total
	prevTime time.Time
	pushes   pushCounter
	calls    callDriver
}

// total is every worker's report added up, and the driver's calls.
type total struct {
	report
	pushesSent int64
	callsOK    int64
	callLat    Counts // POST to 200
}

func (r *runner) total() total {
	var t total
	t.Lat, t.PushLat, t.ConnLat = make(Counts, histBuckets), make(Counts, histBuckets), make(Counts, histBuckets)
	if r.o.OCPP {
		t.CallLat = make(Counts, histBuckets)
		t.callsOK, t.callLat = r.calls.ok.Load(), r.calls.lat.Snapshot()
	}
	for _, h := range r.handles {
		l := h.latest()
		t.Connected += l.Connected
		t.ConnectOK += l.ConnectOK
		t.ConnectFail += l.ConnectFail
		t.Sent += l.Sent
		t.Recv += l.Recv
		t.Pushes += l.Pushes
		t.Closed += l.Closed
		t.Errors += l.Errors
		t.Pings += l.Pings
		if l.LastError != "" {
			t.LastError = l.LastError
		}
		t.Lat.Add(l.Lat)
		t.PushLat.Add(l.PushLat)
		t.ConnLat.Add(l.ConnLat)
		t.Boots += l.Boots
		t.BootsOK += l.BootsOK
		t.Calls += l.Calls
		t.CallLat.Add(l.CallLat)
	}
	t.pushesSent = r.pushes.sent.Load()
	return t
}

// phases runs ramp, settle, once, the measured window and the grace period,
// printing a progress line each second.
func (r *runner) phases(ctx context.Context) error {
	o, sum := r.o, r.sum
	stopProgress := r.progress(ctx)
	defer stopProgress()

	// Ramp: until every connection is open or failed.
	deadline := r.start.Add(o.Ramp + 2*time.Minute)
	for {
		t := r.total()
		if t.ConnectOK+t.ConnectFail >= int64(o.Conns) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ramp: only %d of %d connections opened after %v", t.ConnectOK, o.Conns, time.Since(r.start).Round(time.Second))
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	rampEnd := time.Now()
	t := r.total()
	sum.ConnectOK, sum.ConnectFail = t.ConnectOK, t.ConnectFail
	sum.ConnectSeconds = rampEnd.Sub(r.start).Seconds()
	sum.ConnectsPerSec = float64(t.ConnectOK) / sum.ConnectSeconds
	sum.ConnectP50Ms, sum.ConnectP99Ms = ms(t.ConnLat.Quantile(.5)), ms(t.ConnLat.Quantile(.99))

	if err := sleep(ctx, o.Settle); err != nil {
		return err
	}
	if r.gw != nil {
		r.gw.idle = r.gw.read()
	}

	if o.Once {
		if o.Interval > 0 {
			return errors.New("once with an interval: the one-each replies could not be told apart")
		}
		onceStart := r.total()
		for _, h := range r.handles {
			h.once()
		}
		deadline := time.Now().Add(time.Minute)
		for {
			t := r.total()
			if t.Recv-onceStart.Recv >= onceStart.Connected || time.Now().After(deadline) {
				break
			}
			if err := sleep(ctx, 50*time.Millisecond); err != nil {
				return err
			}
		}
		t := r.total()
		lat := t.Lat.Sub(onceStart.Lat)
		sum.Once = &OnceResult{Sent: t.Sent - onceStart.Sent, Recv: t.Recv - onceStart.Recv,
			P50Ms: ms(lat.Quantile(.5)), P99Ms: ms(lat.Quantile(.99)), MaxMs: ms(lat.Max())}
		if err := sleep(ctx, o.Settle); err != nil {
			return err
		}
		if r.gw != nil {
			st := r.gw.read()
			r.gw.afterOne = &st
		}
	}

	// The measured window.
	before, beforeTime := r.total(), time.Now()
	var gwBefore procSample
	if r.gw != nil {
		gwBefore = r.gw.read()
	}
	windowCtx, cancel := context.WithTimeout(ctx, o.Duration)
	var side sync.WaitGroup
	if o.PushRate > 0 {
		side.Go(func() { r.pushes.run(windowCtx, o, func() int { return int(r.total().ConnectOK) }) })
	}
	if o.Broadcast > 0 {
		side.Go(func() { r.broadcasts(windowCtx) })
	}
	if o.CallRate > 0 {
		side.Go(func() { r.calls.run(windowCtx, o) })
	}
	<-windowCtx.Done()
	cancel()
	side.Wait()
	after, afterTime := r.total(), time.Now()
	window := afterTime.Sub(beforeTime).Seconds()
	lat := after.Lat.Sub(before.Lat)
	sum.MsgsPerSec = float64(after.Recv-before.Recv) / window
	sum.PingsPerSec = float64(after.Pings-before.Pings) / window
	sum.P50Ms, sum.P99Ms, sum.P999Ms, sum.MaxMs = ms(lat.Quantile(.5)), ms(lat.Quantile(.99)), ms(lat.Quantile(.999)), ms(lat.Max())
	pushLat := after.PushLat.Sub(before.PushLat)
	sum.PushP50Ms, sum.PushP99Ms = ms(pushLat.Quantile(.5)), ms(pushLat.Quantile(.99))
	if r.gw != nil {
		gwAfter := r.gw.read()
		cpu := float64(gwAfter.cpuTicks-gwBefore.cpuTicks) / clockTicks // seconds
		g := r.gw.figures(after.Connected)
		g.CPUPercent = 100 * cpu / window
		if n := after.Recv - before.Recv; n > 0 {
			g.CPUPerMsgUs = cpu * 1e6 / float64(n)
		}
		if n := after.pushesSent - before.pushesSent; n > 0 && o.Interval == 0 {
			g.CPUPerPushUs = cpu * 1e6 / float64(n)
		}
		if n := after.callsOK - before.callsOK; n > 0 {
			g.CPUPerCallUs = cpu * 1e6 / float64(n)
			g.CPUPerMsgUs = 0 // the calls' CPU is in it
		}
		sum.Gateway = g
	}
	if o.OCPP {
		callLat, deliver := after.callLat.Sub(before.callLat), after.CallLat.Sub(before.CallLat)
		sum.OCPP = &OCPPResult{
			CallsPerSec: float64(after.callsOK-before.callsOK) / window,
			CallP50Ms:   ms(callLat.Quantile(.5)), CallP90Ms: ms(callLat.Quantile(.9)), CallP99Ms: ms(callLat.Quantile(.99)), CallMaxMs: ms(callLat.Max()),
			CallDeliverP50Ms: ms(deliver.Quantile(.5)), CallDeliverP99Ms: ms(deliver.Quantile(.99)),
		}
	}

	// Stop sending and let the last replies arrive. Reports lag by up to
	// one interval: wait that long before trusting their counts.
	for _, h := range r.handles {
		h.stop()
	}
	if err := sleep(ctx, reportLag+100*time.Millisecond); err != nil {
		return err
	}
	graceEnd := time.Now().Add(o.Grace)
	for time.Now().Before(graceEnd) {
		t := r.total()
		if t.Recv >= t.Sent && t.Pushes >= t.pushesSent {
			break
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

func (r *runner) finalCounts() {
	t := r.total()
	s := r.sum
	s.Sent, s.Recv, s.Lost = t.Sent, t.Recv, t.Sent-t.Recv
	s.PushesSent, s.PushesFailed, s.PushesRecv = t.pushesSent, r.pushes.failed.Load(), t.Pushes
	s.Closed, s.Errors, s.LastError = t.Closed, t.Errors, t.LastError
	if c := s.OCPP; c != nil {
		c.Boots, c.BootsAnswered, c.CallsAnswered = t.Boots, t.BootsOK, t.Calls
		c.CallsSent, c.CallsOK = r.calls.sent.Load(), r.calls.ok.Load()
		var failed int64
		c.CallsFailed, failed, c.CallError = r.calls.failures()
		if failed == 0 {
			c.CallsFailed = nil
		}
	}
	for _, h := range r.handles {
		if h.failure != nil {
			s.LastError = h.failure.Error()
		}
	}
	if r.gw != nil && s.Gateway != nil {
		end := r.gw.read()
		s.Gateway.RSSEndMiB = mib(end.rss)
	}
}

// progress prints a line a second until stopped.
func (r *runner) progress(ctx context.Context) func() {
	if r.o.Progress == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	r.prev, r.prevTime = r.total(), time.Now()
	var prevGW procSample
	if r.gw != nil {
		prevGW = r.gw.read()
	}
	go func() {
		defer close(done)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			now, cur := time.Now(), r.total()
			dt := now.Sub(r.prevTime).Seconds()
			lat := cur.Lat.Sub(r.prev.Lat)
			line := fmt.Sprintf("%4.0fs conns %d (+%.0f/s, %d failed, %d closed)  sent %.0f/s  replies %.0f/s  p50 %s p99 %s",
				now.Sub(r.start).Seconds(), cur.Connected, float64(cur.ConnectOK-r.prev.ConnectOK)/dt, cur.ConnectFail, cur.Closed,
				float64(cur.Sent-r.prev.Sent)/dt, float64(cur.Recv-r.prev.Recv)/dt, fmtDur(lat.Quantile(.5)), fmtDur(lat.Quantile(.99)))
			if cur.pushesSent > 0 || cur.Pushes > 0 {
				line += fmt.Sprintf("  pushes %.0f/s recv %.0f/s", float64(cur.pushesSent-r.prev.pushesSent)/dt, float64(cur.Pushes-r.prev.Pushes)/dt)
			}
			if r.o.OCPP && cur.Boots > r.prev.Boots {
				line += fmt.Sprintf("  boots %.0f/s", float64(cur.Boots-r.prev.Boots)/dt)
			}
			if cur.callsOK > r.prev.callsOK {
				callLat := cur.callLat.Sub(r.prev.callLat)
				line += fmt.Sprintf("  calls %.0f/s p50 %s p99 %s", float64(cur.callsOK-r.prev.callsOK)/dt, fmtDur(callLat.Quantile(.5)), fmtDur(callLat.Quantile(.99)))
			}
			if r.gw != nil {
				g := r.gw.read()
				cpu := float64(g.cpuTicks-prevGW.cpuTicks) / clockTicks
				line += fmt.Sprintf("  | gateway rss %.1fMiB cpu %.0f%%", mib(g.rss), 100*cpu/dt)
				if n := cur.callsOK - r.prev.callsOK; n > 0 {
					line += fmt.Sprintf(" %.1fµs/call", cpu*1e6/float64(n))
				} else if n := cur.Recv - r.prev.Recv; n > 0 {
					line += fmt.Sprintf(" %.1fµs/msg", cpu*1e6/float64(n))
				}
				prevGW = g
			}
			if cur.Errors > r.prev.Errors && cur.LastError != "" {
				line += "  last error: " + cur.LastError
			}
			fmt.Fprintln(r.o.Progress, line)
			r.prev, r.prevTime = cur, now
		}
	}()
	return func() { cancel(); <-done }
}

// broadcasts sends the run's broadcasts one at a time, each after the last
// has reached every client (or two seconds).
func (r *runner) broadcasts(ctx context.Context) {
	gap := r.o.Duration / time.Duration(r.o.Broadcast+1)
	for range r.o.Broadcast {
		if sleep(ctx, gap/2) != nil {
			return
		}
		before := r.total()
		var cpuBefore procSample
		if r.gw != nil {
			cpuBefore = r.gw.read()
		}
		body := "b" + strconv.FormatInt(time.Now().UnixNano(), 10) + " broadcast"
		resp, err := http.Post(r.o.Control+"/", "text/plain", strings.NewReader(body))
		res := BroadcastResult{}
		if err == nil {
			var out struct {
				Delivered int64 `json:"delivered"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&out)
			resp.Body.Close()
			res.Delivered = out.Delivered
		}
		deadline := time.Now().Add(gap / 2)
		for time.Now().Before(deadline) && r.total().Pushes-before.Pushes < res.Delivered {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(1100 * time.Millisecond) // one report interval: the workers' counts catch up
		after := r.total()
		lat := after.PushLat.Sub(before.PushLat)
		res.Received = after.Pushes - before.Pushes
		res.AllWithinMs, res.P50Ms = ms(lat.Max()), ms(lat.Quantile(.5))
		if r.gw != nil {
			res.CPUMs = float64(r.gw.read().cpuTicks-cpuBefore.cpuTicks) * 1000 / clockTicks
		}
		r.sum.Broadcasts = append(r.sum.Broadcasts, res)
	}
}

// pushCounter drives pushes through the control API.
type pushCounter struct {
	sent, failed atomicInt
}

func (p *pushCounter) run(ctx context.Context, o Options, conns func() int) {
	// Pushes go the way an efficient API sends them: keep-alive
	// connections, one request in flight on each.
	client, err := upstream.NewHostClient(upstream.HostOptions{BaseURL: o.Control + "/", MaxConns: 64, Timeout: 10 * time.Second})
	if err != nil {
		p.failed.Add(1)
		return
	}
	defer client.Close()
	var inflight sync.WaitGroup
	every := time.Second / time.Duration(o.PushRate)
	next := time.Now()
	for ctx.Err() == nil {
		next = next.Add(every)
		if d := time.Until(next); d > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
		}
		g := rand.IntN(max(1, conns()))
		req := &upstream.Request{Method: "POST", Path: o.Prefix + strconv.Itoa(g), ContentType: "text/plain",
			Body: []byte("p" + strconv.FormatInt(time.Now().UnixNano(), 10) + " push")}
		inflight.Add(1)
		client.Do(req, func(resp *upstream.Response, err error) {
			defer inflight.Done()
			if err != nil || resp.Status != 200 {
				p.failed.Add(1)
				return
			}
			p.sent.Add(1)
		})
	}
	inflight.Wait()
}

func startLocal(ctx context.Context, cfg workerConfig, index int) (*handle, error) {
	w, err := newWorker(cfg, index)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	sending, stopSending := context.WithCancel(ctx)
	h := &handle{done: make(chan struct{}), stop: stopSending, once: w.sendOnce}
	go func() {
		w.run(ctx, sending)
		close(h.done)
	}()
	reportDone := make(chan struct{})
	go func() {
		defer close(reportDone)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-h.done:
				h.set(w.snapshot(true))
				return
			case <-t.C:
				h.set(w.snapshot(false))
			}
		}
	}()
	h.finish = func() {
		stopSending()
		cancel()
		<-reportDone
	}
	return h, nil
}

func startProcess(ctx context.Context, cfg workerConfig, index int) (*handle, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, exe, "bench", "worker")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("worker %d: %w", index, err)
	}
	enc := json.NewEncoder(stdin)
	if err := enc.Encode(map[string]any{"index": index, "config": cfg}); err != nil {
		_ = cmd.Process.Kill()
		return nil, err
	}
	h := &handle{done: make(chan struct{})}
	go func() {
		defer close(h.done)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			var rep report
			if json.Unmarshal(sc.Bytes(), &rep) == nil {
				h.set(rep)
			}
		}
		if err := cmd.Wait(); err != nil && ctx.Err() == nil {
			h.failure = fmt.Errorf("worker %d: %w", index, err)
		}
	}()
	var mu sync.Mutex
	stopped := false
	h.stop = func() {
		mu.Lock()
		defer mu.Unlock()
		if !stopped {
			stopped = true
			_ = enc.Encode(map[string]string{"cmd": "stop-sending"})
		}
	}
	h.once = func() {
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(map[string]string{"cmd": "once"})
	}
	h.finish = func() {
		h.stop()
		stdin.Close()
		select {
		case <-h.done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-h.done
		}
	}
	return h, nil
}

func printSummary(w io.Writer, s *Summary) {
	fmt.Fprintf(w, "\nconnections  %d opened, %d failed in %.2fs: %.0f/s (handshake p50 %.1fms p99 %.1fms), %d processes\n",
		s.ConnectOK, s.ConnectFail, s.ConnectSeconds, s.ConnectsPerSec, s.ConnectP50Ms, s.ConnectP99Ms, s.Procs)
	if o := s.Once; o != nil {
		fmt.Fprintf(w, "one each     %d sent at once, %d replies; latency p50 %.2fms p99 %.2fms max %.2fms\n",
			o.Sent, o.Recv, o.P50Ms, o.P99Ms, o.MaxMs)
	}
	if s.MsgsPerSec > 0 {
		what := "messages     %d sent, %d replies, %d lost"
		if s.OCPP != nil {
			what = "heartbeats   %d sent, %d answered, %d unanswered"
		}
		fmt.Fprintf(w, what+"; %.0f/s measured; latency p50 %.2fms p99 %.2fms p99.9 %.2fms max %.2fms\n",
			s.Sent, s.Recv, s.Lost, s.MsgsPerSec, s.P50Ms, s.P99Ms, s.P999Ms, s.MaxMs)
	}
	if c := s.OCPP; c != nil {
		fmt.Fprintf(w, "boots        %d sent, %d answered\n", c.Boots, c.BootsAnswered)
		if c.CallsSent > 0 {
			fmt.Fprintf(w, "calls        %d sent, %d answered 200 (%.0f/s measured); latency p50 %.2fms p90 %.2fms p99 %.2fms max %.2fms\n",
				c.CallsSent, c.CallsOK, c.CallsPerSec, c.CallP50Ms, c.CallP90Ms, c.CallP99Ms, c.CallMaxMs)
			fmt.Fprintf(w, "             %d CALLs answered by the chargers, reached them in p50 %.2fms p99 %.2fms", c.CallsAnswered, c.CallDeliverP50Ms, c.CallDeliverP99Ms)
			if len(c.CallsFailed) > 0 {
				keys := make([]string, 0, len(c.CallsFailed))
				for k := range c.CallsFailed {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				fmt.Fprint(w, "; failed:")
				for _, k := range keys {
					fmt.Fprintf(w, " %s x%d", k, c.CallsFailed[k])
				}
				fmt.Fprintf(w, " (last: %s)", c.CallError)
			} else {
				fmt.Fprint(w, "; none failed")
			}
			fmt.Fprintln(w)
		}
	}
	if s.PushesSent > 0 || s.PushesFailed > 0 {
		fmt.Fprintf(w, "pushes       %d sent (%d failed), %d received; latency p50 %.2fms p99 %.2fms\n",
			s.PushesSent, s.PushesFailed, s.PushesRecv, s.PushP50Ms, s.PushP99Ms)
	}
	for i, b := range s.Broadcasts {
		fmt.Fprintf(w, "broadcast %d  delivered to %d, received by %d; all within %.1fms (p50 %.1fms); gateway CPU %.0fms\n",
			i+1, b.Delivered, b.Received, b.AllWithinMs, b.P50Ms, b.CPUMs)
	}
	if s.PingsPerSec > 0 {
		fmt.Fprintf(w, "pings        %.0f/s from the gateway in the window, answered\n", s.PingsPerSec)
	}
	fmt.Fprintf(w, "errors       %d (%d connections closed)", s.Errors, s.Closed)
	if s.LastError != "" {
		fmt.Fprintf(w, "; last: %s", s.LastError)
	}
	fmt.Fprintln(w)
	if g := s.Gateway; g != nil {
		fmt.Fprintf(w, "gateway      rss %.1f MiB before, %.1f MiB idle: %.2f KiB per connection", g.RSSBaseMiB, g.RSSIdleMiB, g.IdleKiBPerConn)
		if g.RSSAfterOneMiB > 0 {
			fmt.Fprintf(w, "; %.1f MiB after one message each: %.2f KiB per connection", g.RSSAfterOneMiB, g.AfterOneKiBPerConn)
		}
		fmt.Fprintf(w, "; %.1f MiB at the end\n", g.RSSEndMiB)
		fmt.Fprintf(w, "             cpu %.0f%% in the window", g.CPUPercent)
		if g.CPUPerMsgUs > 0 {
			fmt.Fprintf(w, ", %.1f µs per message", g.CPUPerMsgUs)
		}
		if g.CPUPerPushUs > 0 {
			fmt.Fprintf(w, ", %.1f µs per push", g.CPUPerPushUs)
		}
		if g.CPUPerCallUs > 0 {
			fmt.Fprintf(w, ", %.1f µs per call (the heartbeats' share included)", g.CPUPerCallUs)
		} else if g.CPUPerMsgUs > 0 && s.OCPP != nil {
			fmt.Fprint(w, " (per heartbeat)")
		}
		fmt.Fprintf(w, "; %d open files, %d threads\n", g.FDs, g.Threads)
		fmt.Fprintf(w, "kernel       %.2f KiB of slab per gateway-side socket (half the growth: both ends are here), %.2f KiB of TCP buffers\n",
			g.KernelSlabKiBPerConn, g.KernelTCPKiBPerConn)
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func mib(b int64) float64        { return float64(b) / (1 << 20) }

func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.1fms", ms(d))
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}
