package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ws2api/ws2api/internal/bench"
	"github.com/ws2api/ws2api/internal/testkit"
	"github.com/ws2api/ws2api/internal/testkit/race"
)

var (
	outgoingRe      = regexp.MustCompile(`(?m)^ws2api_outgoing_bytes (\S+)$`)
	outgoingTotalRe = regexp.MustCompile(`(?m)^ws2api_closes_total\{cause="outgoing_total"\} (\S+)$`)
)

// metric reads one figure from /metrics.
func metric(t *testing.T, p *proc, re *regexp.Regexp) int64 {
	t.Helper()
	_, body := get(t, p.control+"/metrics")
	m := re.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no %s in /metrics", re)
	}
	f, _ := strconv.ParseFloat(m[1], 64)
	return int64(f)
}

// 250 clients that never read and 15 broadcasts of 256 KiB took the
// gateway from 72 to 326 MiB, each broadcast answering "delivered: 250".
// With -max-outgoing-total, what waits to be written to all clients stays
// within it: the largest backlogs are closed as slow consumers, the
// broadcasts count only the clients written to, and a client that reads
// gets every broadcast.
func TestAbuseBroadcastsToClientsThatDoNotReadStayWithinTheOutgoingTotal(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	const total = 8 << 20
	p := start(t, nil, "-api", api.URL(), "-max-outgoing", "1MiB", "-max-outgoing-total", "8MiB")

	reader := testkit.Dial(t, "ws://"+p.public+"/reader", nil)
	got := make(chan string, 64)
	var readErr error
	go func() {
		for {
			_, b, err := reader.ReadMessage()
			if err != nil {
				readErr = err
				close(got)
				return
			}
			got <- string(b[:8])
		}
	}()
	const stalled = 300
	for i := range stalled {
		testkit.DialRawSmallWindow(t, p.public, fmt.Sprintf("stalled%d", i))
	}
	connections := regexp.MustCompile(`(?m)^ws2api_connections (\S+)$`)
	for deadline := time.Now().Add(10 * time.Second); metric(t, p, connections) != stalled+1; {
		if time.Now().After(deadline) {
			t.Fatalf("%d clients connected, want %d", metric(t, p, connections), stalled+1)
		}
		time.Sleep(10 * time.Millisecond)
	}
	base, err := bench.ReadProc(p.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}

	// Watch the gateway's own count, and its RSS, while it broadcasts.
	var peakOut, peakRSS atomic.Int64
	stop := make(chan struct{})
	var watch sync.WaitGroup
	watch.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			if out := metric(t, p, outgoingRe); out > peakOut.Load() {
				peakOut.Store(out)
			}
			if st, err := bench.ReadProc(p.cmd.Process.Pid); err == nil && st.RSSBytes > peakRSS.Load() {
				peakRSS.Store(st.RSSBytes)
			}
		}
	})
	var delivered []int
	for i := range 15 {
		body := fmt.Sprintf("bcast%03d", i) + strings.Repeat("x", 256<<10-8)
		status, answer := post(t, p.control+"/", body)
		var a struct{ Delivered int }
		if status != 200 || json.Unmarshal([]byte(answer), &a) != nil {
			t.Fatalf("broadcast %d: %d %s", i, status, answer)
		}
		delivered = append(delivered, a.Delivered)
		if out := metric(t, p, outgoingRe); out > peakOut.Load() {
			peakOut.Store(out)
		}
		select {
		case m, ok := <-got:
			if !ok {
				t.Fatalf("the reader was closed before broadcast %d: %v", i, readErr)
			}
			if want := fmt.Sprintf("bcast%03d", i); m != want {
				t.Fatalf("the reader got %q, want %q", m, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("the reader did not get broadcast %d", i)
		}
	}
	close(stop)
	watch.Wait()

	t.Logf("delivered %v; outgoing peak %.1f MiB; RSS %.0f -> peak %.0f MiB; closes{outgoing_total} %d", delivered,
		float64(peakOut.Load())/(1<<20), float64(base.RSSBytes)/(1<<20), float64(peakRSS.Load())/(1<<20), metric(t, p, outgoingTotalRe))
	// One broadcast may be in the writers' hands beyond the total.
	if peak := peakOut.Load(); peak > total+1<<20 {
		t.Errorf("%d bytes waited to be written to clients, over -max-outgoing-total %d", peak, total)
	}
	if metric(t, p, outgoingTotalRe) == 0 {
		t.Error("no client was closed for the outgoing total")
	}
	for i := 1; i < len(delivered); i++ {
		if delivered[i] > delivered[i-1] {
			t.Errorf("broadcast %d delivered to %d, more than the one before (%d): clients closed still counted", i, delivered[i], delivered[i-1])
		}
	}
	if last := delivered[len(delivered)-1]; last != 1 {
		t.Errorf("the last broadcast answered delivered %d; only the reader was still open", last)
	}
	// Loosely: without the total the backlogs alone were 300 MiB.
	if grew := peakRSS.Load() - base.RSSBytes; grew > 96<<20 && !race.Enabled {
		t.Errorf("RSS grew by %.0f MiB during the broadcasts", float64(grew)/(1<<20))
	}
	// Every backlog is accounted for until its socket goes.
	for deadline := time.Now().Add(10 * time.Second); metric(t, p, outgoingRe) != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("ws2api_outgoing_bytes %d with every stalled client closed and the reader idle", metric(t, p, outgoingRe))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
