package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// A binary upgrade passes every connection over with its state: 2,000
// clients keep sending numbered messages to a real API server (Node's
// http, the conformance API) while the binary is replaced and upgraded,
// twice, and pushes go to random clients all along, some through control
// connections the old process holds. No client sees a close; the API sees
// each client's GET once and no DELETE, every message once and in order
// (a re-send of the one in flight at a hand-over would carry its first
// key; it is counted); every reply and every push answered 200 reaches its
// client once; the new version serves and counts the clients it took over.
func TestUpgradeHandsEveryConnectionOver(t *testing.T) {
	t.Parallel()
	const clients, count, interval = 2000, 24, 500 * time.Millisecond
	kinds := apiKinds("")
	api := startAPIServer(t, kinds[slices.IndexFunc(kinds, func(k apiKind) bool { return k.name == "node-http" })])
	dir := t.TempDir()
	v2 := buildVersion(t, dir, "v2")
	v1 := filepath.Join(dir, "ws2api-dev")
	install(t, binary, v1)
	exe := filepath.Join(dir, "ws2api")
	install(t, v1, exe)
	p := startBinary(t, exe, nil, "-api", api.url(), "-drain-timeout", "10s")
	t.Cleanup(func() {
		for _, pid := range servingPids(p)[1:] {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})

	ch := chat(t, p.public, clients)
	defer ch.close()
	sending := make(chan struct{})
	go func() { ch.send(count, interval); close(sending) }()

	// Pushes, one every few milliseconds, over keep-alive connections of
	// their own: a push answered 200 must arrive. (A connection error is
	// not a failure here: the old process closed a keep-alive connection
	// as it exited, and the POST may not have been read.)
	stopPush := make(chan struct{})
	var pushers sync.WaitGroup
	pu := pushRandomly(p.control, clients, false, stopPush, &pushers)
	pushed, pushFailed, pushErr := &pu.pushed, &pu.failed, &pu.failure
	// And a broadcast every 100 ms: one answered 200 must say it reached
	// every client, and reach each once.
	var broadcasts []string
	var bcastMu sync.Mutex
	pushers.Go(func() {
		hc := &http.Client{Timeout: 90 * time.Second}
		for k := 0; ; k++ {
			select {
			case <-stopPush:
				return
			case <-time.After(100 * time.Millisecond):
			}
			body := fmt.Sprintf("bcast-%d", k)
			resp, err := hc.Post(p.control+"/", "text/plain", strings.NewReader(body))
			if err != nil {
				continue // (as for pushes)
			}
			var a struct{ Delivered int }
			err = json.NewDecoder(resp.Body).Decode(&a)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || err != nil || a.Delivered != clients {
				pushFailed.Add(1)
				pushErr.Store(fmt.Sprintf("broadcast %d: %d, delivered %d (%v)", k, resp.StatusCode, a.Delivered, err))
				continue
			}
			bcastMu.Lock()
			broadcasts = append(broadcasts, body)
			bcastMu.Unlock()
		}
	})

	takenOver := regexp.MustCompile(`(?m)^ws2api_upgrade_connections_total\{outcome="taken_over"\} (\S+)$`)
	upgrade := func(to, want string) {
		t.Helper()
		upgradeOnce(t, p, exe, to)
		cur := &proc{t: t, control: p.control}
		_, body := get(t, p.control+"/metrics")
		if !strings.Contains(body, `ws2api_build_info{version="`+want+`"`) {
			t.Fatalf("after the upgrade to %s, /metrics says:\n%s", want, grepLines(body, "build_info"))
		}
		if n := metric(t, cur, takenOver); n != clients {
			t.Errorf("the %s process took over %d connections, want %d", want, n, clients)
		}
	}
	time.Sleep(2 * interval)
	upgrade(v2, "v2")
	time.Sleep(2 * interval)
	upgrade(v1, "dev")
	<-sending
	close(stopPush)
	pushers.Wait()

	// Every message answered, every push that was answered 200 arrived.
	deadline := time.Now().Add(60 * time.Second)
	var replies map[string][]string
	missingPushes, missingBroadcasts := 0, 0
	for {
		replies = waitChatter(ch, 0, 0)
		got := map[string]int{}
		for _, rs := range replies {
			for _, r := range rs {
				if strings.HasPrefix(r, "push-") {
					got[r]++
				}
			}
		}
		missingPushes = 0
		extraPushes := 0
		pushed.Range(func(k, _ any) bool {
			switch got[k.(string)] {
			case 0:
				missingPushes++
			case 1:
			default:
				extraPushes++
			}
			return true
		})
		if extraPushes > 0 {
			t.Fatalf("%d pushes reached their client more than once", extraPushes)
		}
		bcastMu.Lock()
		missingBroadcasts = 0
		for _, b := range broadcasts {
			for id, rs := range replies {
				switch n := countOf(rs, b); {
				case n > 1:
					t.Fatalf("%s got %s %d times", id, b, n)
				case n == 0:
					missingBroadcasts++
				}
			}
		}
		bcastMu.Unlock()
		answered := 0
		for _, rs := range replies {
			for _, r := range rs {
				if !strings.HasPrefix(r, "push-") && !strings.HasPrefix(r, "bcast-") {
					answered++
				}
			}
		}
		if missingPushes == 0 && missingBroadcasts == 0 && answered >= clients*count {
			break
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	log, lt, rt := tallyNumbered(t, api, replies, clients, count, "push-", "bcast-")
	gets, deletes := 0, 0
	for _, d := range log {
		switch {
		case d.method == "GET" && d.id != "probe":
			gets++
		case d.method == "DELETE":
			deletes++
		}
	}
	npushed := 0
	pushed.Range(func(_, _ any) bool { npushed++; return true })
	bcastMu.Lock()
	nbcast := len(broadcasts)
	bcastMu.Unlock()
	t.Logf("%d clients x %d messages across two upgrades: %v; %v; GETs %d, DELETEs %d; pushes answered 200: %d, missing %d; broadcasts answered 200: %d, deliveries missing %d; failed %d",
		clients, count, lt, rt, gets, deletes, npushed, missingPushes, nbcast, missingBroadcasts, pushFailed.Load())
	ch.mu.Lock()
	dropped := slices.Clone(ch.dropped)
	ch.mu.Unlock()
	if len(dropped) > 0 {
		t.Errorf("%d clients saw their connection end: %v", len(dropped), dropped[:min(len(dropped), 5)])
	}
	if !lt.ok() || !rt.ok() {
		t.Errorf("across the upgrades: %v; %v", lt, rt)
	}
	if gets != clients || deletes != 0 {
		t.Errorf("the API saw %d connect GETs and %d DELETEs, want %d and 0", gets, deletes, clients)
	}
	if missingPushes > 0 || missingBroadcasts > 0 || pushFailed.Load() > 0 {
		t.Errorf("pushes: %d answered 200 never arrived; broadcasts: %d deliveries missing; %d failed (%v)", missingPushes, missingBroadcasts, pushFailed.Load(), pushErr.Load())
	}
	if npushed == 0 || nbcast == 0 {
		t.Errorf("pushes answered 200: %d, broadcasts: %d", npushed, nbcast)
	}
}

// tallyNumbered holds what the API logged and what clients c0... got
// against what chat's send sent (count numbered messages each), leaving
// out the replies that begin with one of skip (pushes, broadcasts).
func tallyNumbered(t *testing.T, api *apiServer, replies map[string][]string, clients, count int, skip ...string) ([]delivery, logTally, replyTally) {
	t.Helper()
	only := map[string][]string{}
	for id, rs := range replies {
		for _, r := range rs {
			if !slices.ContainsFunc(skip, func(p string) bool { return strings.HasPrefix(r, p) }) {
				only[id] = append(only[id], r)
			}
		}
	}
	sent := map[string][]string{}
	for i := range clients {
		sent[fmt.Sprintf("c%d", i)] = numbers(count)
	}
	log := api.deliveries(t)
	return log, tallyLog(log, sent), tallyReplies(only, sent, func(m string) []string { return []string{m} })
}

// pushes is what pushRandomly did: the bodies answered 200 (each to its
// client id), and the failures.
type pushes struct {
	pushed  sync.Map // "push-<n>" -> client id
	failed  atomic.Int64
	failure atomic.Value // the last, as text
}

// pushRandomly has four goroutines push "push-<n>" to client c<n mod
// clients> through control, one every 5 ms each, until stop; a connection
// error counts as a failure if errorsFail.
func pushRandomly(control string, clients int, errorsFail bool, stop <-chan struct{}, wg *sync.WaitGroup) *pushes {
	pu := &pushes{}
	var seq atomic.Int64
	for range 4 {
		wg.Go(func() {
			hc := &http.Client{Timeout: 15 * time.Second}
			for {
				select {
				case <-stop:
					return
				case <-time.After(5 * time.Millisecond):
				}
				n := seq.Add(1)
				id := fmt.Sprintf("c%d", n%int64(clients))
				body := fmt.Sprintf("push-%d", n)
				resp, err := hc.Post(control+"/"+id, "text/plain", strings.NewReader(body))
				if err != nil {
					if errorsFail {
						pu.failed.Add(1)
						pu.failure.Store(err.Error())
					}
					continue
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					pu.failed.Add(1)
					pu.failure.Store(fmt.Sprintf("push to %s: %d", id, resp.StatusCode))
					continue
				}
				pu.pushed.Store(body, id)
			}
		})
	}
	return pu
}

// countOf returns how many of list are s.
func countOf(list []string, s string) int {
	n := 0
	for _, v := range list {
		if v == s {
			n++
		}
	}
	return n
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for line := range strings.SplitSeq(s, "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// The same in a cluster: two nodes over Redis, the clients on the first,
// which is upgraded three times while the second relays pushes to its
// clients all along. Every push answered 200 arrives once, no client is closed, and
// after the upgrade the node has kept its name, so the presence records
// written before it still lead to the clients.
func TestUpgradeHandsOverInACluster(t *testing.T) {
	t.Parallel()
	const clients, count, interval = 200, 50, 100 * time.Millisecond
	kinds := apiKinds("")
	api := startAPIServer(t, kinds[slices.IndexFunc(kinds, func(k apiKind) bool { return k.name == "node-http" })])
	redis := startRedis(t, freeAddr(t))
	redisURL := "redis://" + redis.addr + "/0"
	dir := t.TempDir()
	v2 := buildVersion(t, dir, "v2")
	exe := filepath.Join(dir, "ws2api")
	install(t, binary, exe)
	a := startBinary(t, exe, nil, "-api", api.url(), "-redis", redisURL, "-listen", freeAddr(t), "-control", freeAddr(t))
	t.Cleanup(func() {
		for _, pid := range servingPids(a)[1:] {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	b := start(t, nil, "-api", api.url(), "-redis", redisURL, "-listen", freeAddr(t), "-control", freeAddr(t))
	waitBusUp(t, a, true)
	waitBusUp(t, b, true)

	ch := chat(t, a.public, clients)
	defer ch.close()
	// Every client reachable from b before the upgrade (presence is
	// written in batches).
	for i := range clients {
		id := fmt.Sprintf("c%d", i)
		for deadline := time.Now().Add(10 * time.Second); ; {
			if status, _ := post(t, b.control+"/"+id, "hello-"+id); status == http.StatusOK {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s is not reachable through the other node", id)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	sending := make(chan struct{})
	go func() { ch.send(count, interval); close(sending) }()

	stop := make(chan struct{})
	var pushers sync.WaitGroup
	pu := pushRandomly(b.control, clients, true, stop, &pushers)
	pushed, failed, failure := &pu.pushed, &pu.failed, &pu.failure
	time.Sleep(5 * interval)
	node := a.node
	v1 := filepath.Join(dir, "ws2api-dev")
	install(t, binary, v1)
	for _, to := range []string{v2, v1, v2} { // a node's fourth process: three hand-offs of its name
		upgradeOnce(t, a, exe, to)
		time.Sleep(3 * interval)
	}
	<-sending
	close(stop)
	pushers.Wait()

	// The node kept its name: b still relays to it.
	_, body := get(t, a.control+"/metrics")
	if !strings.Contains(body, `ws2api_build_info{version="v2"`) {
		t.Fatalf("not upgraded: %s", grepLines(body, "build_info"))
	}
	if status, info := get(t, b.control+"/c0"); status != http.StatusOK || !strings.Contains(info, `"node":"`+node+`"`) {
		t.Fatalf("after the upgrade, the other node finds c0 at: %d %s (want node %s)", status, info, node)
	}
	deadline := time.Now().Add(30 * time.Second)
	var missing int
	var replies map[string][]string
	for {
		replies = waitChatter(ch, 0, 0)
		got := map[string]int{}
		answered := 0
		for _, rs := range replies {
			for _, r := range rs {
				switch {
				case strings.HasPrefix(r, "push-"):
					got[r]++
				case !strings.HasPrefix(r, "hello-"):
					answered++
				}
			}
		}
		missing = 0
		pushed.Range(func(k, _ any) bool {
			if got[k.(string)] != 1 {
				missing++
			}
			return true
		})
		if (missing == 0 && answered >= clients*count) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	log, lt, rt := tallyNumbered(t, api, replies, clients, count, "push-", "hello-")
	deletes := 0
	for _, d := range log {
		if d.method == "DELETE" {
			deletes++
		}
	}
	npushed := 0
	pushed.Range(func(_, _ any) bool { npushed++; return true })
	t.Logf("cluster upgrade: %v; %v; DELETEs %d; relayed pushes answered 200: %d, not arrived once: %d, failed: %d (%v)",
		lt, rt, deletes, npushed, missing, failed.Load(), failure.Load())
	ch.mu.Lock()
	dropped := slices.Clone(ch.dropped)
	ch.mu.Unlock()
	switch {
	case len(dropped) > 0:
		t.Errorf("clients saw their connection end: %v", dropped[:min(len(dropped), 5)])
	case !lt.ok() || !rt.ok():
		t.Errorf("across the upgrade: %v; %v", lt, rt)
	case deletes != 0:
		t.Errorf("the API saw %d DELETEs", deletes)
	case missing > 0 || failed.Load() > 0 || npushed == 0:
		t.Errorf("relayed pushes: %d answered 200, %d of them not arrived exactly once, %d failed (%v)", npushed, missing, failed.Load(), failure.Load())
	}
}
