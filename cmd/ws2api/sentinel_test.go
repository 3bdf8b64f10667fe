package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/testkit"
)

// TestClusterSentinelFailover: three nodes on a Redis primary with one
// replica under three sentinels (Debian's redis-server, in sentinel mode
// too). Relayed pushes flow at 200/s while the primary is killed; they
// fail fast (503) only until Sentinel has promoted the replica and the
// nodes have followed it, then every client is reachable from every node
// again, without restarting any. Then back: the old primary, restarted,
// has become a replica; killing the new primary fails over to it. Last, a
// node frozen as by a power loss (SIGSTOP: Redis keeps its connection)
// stops being a relay target once its heartbeat ages out.
func TestClusterSentinelFailover(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	api := testkit.NewAPI(t)
	const password = "bus-s3cret"
	primaryAddr, replicaAddr := freeAddr(t), freeAddr(t)
	// (A replica's full sync goes through a file: in the test's own
	// directory.)
	servers := map[string]*daemon{
		primaryAddr: startRedis(t, primaryAddr, "--requirepass", password, "--masterauth", password, "--dir", t.TempDir()),
		replicaAddr: startRedis(t, replicaAddr, "--requirepass", password, "--masterauth", password, "--dir", t.TempDir(),
			"--replicaof", strings.Replace(primaryAddr, ":", " ", 1)),
	}
	var sentinels []string
	for i := range 3 {
		addr := freeAddr(t)
		_, port, _ := net.SplitHostPort(addr)
		_, pport, _ := net.SplitHostPort(primaryAddr)
		// deploy/'s example, on this machine's ports, with a shorter
		// down-after for a quicker test.
		conf := filepath.Join(dir, fmt.Sprintf("sentinel%d.conf", i))
		writeFile(t, conf, []byte(render(t, "redis-sentinel.conf", [][2]string{
			{"port 26379", "port " + port},
			{"bind 10.0.0.21", "bind 127.0.0.1"},
			{"dir /var/lib/redis", "dir " + dir},
			{"sentinel monitor bus 10.0.0.31 6379 2", "sentinel monitor bus 127.0.0.1 " + pport + " 2"},
			{"<password>", password},
			{"sentinel down-after-milliseconds bus 5000", "sentinel down-after-milliseconds bus 1000"},
			{"sentinel failover-timeout bus 60000", "sentinel failover-timeout bus 5000"},
		})))
		d := &daemon{name: fmt.Sprintf("sentinel %d", i), addr: addr, args: []string{tool(t, "redis-server"), conf, "--sentinel"}}
		d.cleanup(t)
		d.start(t)
		sentinels = append(sentinels, addr)
	}
	url := "redis-sentinel://:" + password + "@" + strings.Join(sentinels, ",") + "/bus"
	var nodes []*proc
	for range 3 {
		nodes = append(nodes, start(t, nil, "-api", api.URL(), "-redis", url))
	}
	for _, n := range nodes {
		waitBusUp(t, n, true)
	}
	master := func() string {
		t.Helper()
		_, port, _ := net.SplitHostPort(sentinels[0])
		out, err := exec.Command(tool(t, "redis-cli"), "-p", port, "SENTINEL", "get-master-addr-by-name", "bus").Output()
		if err != nil {
			t.Fatalf("asking a sentinel for the master: %v", err)
		}
		f := strings.Fields(string(out))
		if len(f) != 2 {
			t.Fatalf("sentinel says %q", out)
		}
		return net.JoinHostPort(f[0], f[1])
	}
	if m := master(); m != primaryAddr {
		t.Fatalf("the sentinels' master is %s, want %s", m, primaryAddr)
	}

	// Five clients on each node.
	type client struct {
		id   string
		at   *proc
		conn *websocket.Conn
		got  chan string
	}
	connect := func(n *proc, id string) *client {
		c := &client{id: id, at: n, got: make(chan string, 1024)}
		c.conn = testkit.Dial(t, "ws://"+n.public+"/"+c.id, nil)
		go func() {
			for {
				_, b, err := c.conn.ReadMessage()
				if err != nil {
					return
				}
				c.got <- string(b)
			}
		}()
		return c
	}
	var clients []*client
	for i, n := range nodes {
		for j := range 5 {
			clients = append(clients, connect(n, fmt.Sprintf("s%d-%d", i, j)))
		}
	}
	// everyoneReachable pushes to every client through every other node
	// (relayed), retrying for a while: presence is written in batches and
	// after a failover rewritten by its holders.
	everyoneReachable := func(round string) {
		t.Helper()
		for _, c := range clients {
			for _, n := range nodes {
				if n == c.at {
					continue
				}
				msg := round + " via " + n.node
				deadline := time.Now().Add(10 * time.Second)
				for {
					status, body := post(t, n.control+"/"+c.id, msg)
					if status == 200 {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("%s: push to %s through %s: %d %s", round, c.id, n.node, status, body)
					}
					time.Sleep(50 * time.Millisecond)
				}
				select {
				case got := <-c.got:
					if got != msg {
						t.Fatalf("%s received %q, want %q", c.id, got, msg)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("%s did not receive %q", c.id, msg)
				}
			}
		}
	}
	everyoneReachable("before")

	// failover kills the master, with relayed pushes flowing at 200/s,
	// and reports the failed ones and the time from the kill to the first
	// relay that worked after it.
	failover := func(round string) (failed, sent int, recovery time.Duration) {
		t.Helper()
		victim := master()
		stop := make(chan struct{})
		var mu sync.Mutex
		var killedAt, firstAfter time.Time
		var wg sync.WaitGroup
		wg.Go(func() {
			tick := time.NewTicker(5 * time.Millisecond)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				c := clients[i%len(clients)]
				via := nodes[(i+1)%len(nodes)]
				if via == c.at {
					via = nodes[(i+2)%len(nodes)]
				}
				status, _ := post(t, via.control+"/"+c.id, "flow")
				now := time.Now()
				mu.Lock()
				sent++
				switch {
				case status != 200:
					failed++
				case !killedAt.IsZero() && firstAfter.IsZero():
					firstAfter = now
				}
				mu.Unlock()
			}
		})
		time.Sleep(500 * time.Millisecond)
		mu.Lock()
		killedAt = time.Now()
		mu.Unlock()
		_ = servers[victim].cmd.Process.Kill()
		<-servers[victim].done
		// A client connecting while no primary is reachable: its
		// presence is written once the bus is back.
		during := connect(nodes[0], "during-"+strings.ReplaceAll(round, " ", "-"))
		deadline := time.Now().Add(20 * time.Second)
		for {
			mu.Lock()
			done := !firstAfter.IsZero() && time.Since(firstAfter) > time.Second
			mu.Unlock()
			if done {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no relay worked within 20s of killing the master", round)
			}
			time.Sleep(50 * time.Millisecond)
		}
		close(stop)
		wg.Wait()
		clients = append(clients, during) // reachable from every node, like the others
		// (The sentinel asked may learn of the promotion a moment after
		// the one that made it, and the nodes, heard.)
		for deadline := time.Now().Add(10 * time.Second); master() == victim; time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the sentinels still name %s", round, victim)
			}
		}
		// What the flow delivered is read off the clients.
		for _, c := range clients {
			for len(c.got) > 0 {
				<-c.got
			}
		}
		t.Logf("%s: %d of %d relayed pushes failed (503 while no master was reachable); first relay after the kill worked %v after it",
			round, failed, sent, firstAfter.Sub(killedAt).Round(time.Millisecond))
		return failed, sent, firstAfter.Sub(killedAt)
	}
	if _, _, d := failover("first failover"); d > 15*time.Second {
		t.Errorf("first failover: relays worked again only %v after the kill", d)
	}
	everyoneReachable("after the first failover")

	// Back: the old primary returns (empty, as after a crash), Sentinel
	// makes it a replica of the new one; it fails over to it in turn.
	old := servers[primaryAddr]
	old.start(t)
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, port, _ := net.SplitHostPort(primaryAddr)
		out, _ := exec.Command(tool(t, "redis-cli"), "-p", port, "-a", password, "--no-auth-warning", "INFO", "replication").Output()
		if strings.Contains(string(out), "role:slave") && strings.Contains(string(out), "master_link_status:up") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the old primary did not become a replica in sync:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, _, d := failover("second failover"); d > 15*time.Second {
		t.Errorf("second failover: relays worked again only %v after the kill", d)
	}
	if m := master(); m != primaryAddr {
		t.Fatalf("after the second failover the master is %s, want the first server %s", m, primaryAddr)
	}
	everyoneReachable("after the second failover")

	// Power loss: node 2 stops without closing anything. Within
	// liveWindow (15 s) of its last heartbeat, a relay to its clients is
	// 404 (its record is dropped), not a 504 for as long as Redis keeps
	// its connection.
	frozen := nodes[2]
	if err := frozen.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = frozen.cmd.Process.Signal(syscall.SIGCONT) })
	// (The stop is delivered asynchronously: wait until every thread of
	// the node is stopped, state T, before timing anything.)
	for deadline := time.Now().Add(5 * time.Second); !stopped(frozen.cmd.Process.Pid); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the node is not stopped 5s after SIGSTOP")
		}
	}
	stoppedAt := time.Now()
	id := "s2-0"
	for {
		status, body := post(t, nodes[0].control+"/"+id, "to a frozen node")
		if status == 404 {
			break
		}
		if status != 504 {
			t.Fatalf("push to a client of a frozen node: %d %s, want 504 then 404", status, body)
		}
		if time.Since(stoppedAt) > 25*time.Second {
			t.Fatalf("relays to a frozen node's clients still time out %v after it stopped", time.Since(stoppedAt))
		}
	}
	t.Logf("a frozen node stopped being a relay target %v after it stopped", time.Since(stoppedAt).Round(time.Millisecond))
}

// stopped reports whether every thread of pid is stopped (state T).
func stopped(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			return false
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) == 0 || f[0] != "T" {
			return false
		}
	}
	return true
}
