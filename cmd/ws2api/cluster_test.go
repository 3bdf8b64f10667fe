package main

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/testkit"
)

// The cluster as the README deploys it: three ws2api nodes on one Redis,
// behind the real HAProxy and the real nginx of deploy/, wss terminated at
// each. scripts/deps installs redis-server, haproxy and nginx.
func TestCluster(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	api := testkit.NewAPI(t)
	// Redis as a production bus should be: TLS and a password. The nodes
	// trust its certificate through SSL_CERT_FILE, as Go reads it.
	redisCert := testkit.NewCert(t, "redis")
	certFile, keyFile := filepath.Join(dir, "redis.crt"), filepath.Join(dir, "redis.key")
	writeFile(t, certFile, redisCert.CertPEM)
	writeFile(t, keyFile, redisCert.KeyPEM)
	const redisPassword = "bus-s3cret"
	redis := startRedis(t, freeAddr(t), "--tls-port", "{port}", "--port", "0",
		"--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-auth-clients", "no",
		"--requirepass", redisPassword)
	redisURL := "rediss://:" + redisPassword + "@" + redis.addr + "/0"
	var nodes []*proc
	for range 3 {
		// The load balancers run on this machine: their X-Forwarded-*
		// are trusted, as deploy/systemd/ws2api.env does.
		nodes = append(nodes, start(t, []string{"SSL_CERT_FILE=" + certFile}, "-api", api.URL(), "-redis", redisURL,
			"-listen", freeAddr(t), "-control", freeAddr(t), "-trusted-proxies", "127.0.0.1"))
	}
	for _, n := range nodes {
		waitBusUp(t, n, true)
	}
	cert := testkit.NewCert(t, "lb")
	lbs := []*balancer{startHAProxy(t, dir, cert, nodes), startNginx(t, dir, cert, nodes)}
	tlsConf := &tls.Config{RootCAs: cert.Pool}
	byName := map[string]*proc{}
	for _, n := range nodes {
		byName[n.node] = n
	}

	// Thirty clients through each load balancer.
	const perLB = 30
	clients := map[string]*clusterClient{}
	for _, lb := range lbs {
		for i := range perLB {
			id := fmt.Sprintf("%s-%d", lb.name, i)
			clients[id] = dialCluster(t, lb, id, tlsConf)
		}
	}
	// holder asks every live node which node holds id: the holder answers
	// from its own clients, the others over the bus, and all must agree.
	// A connection's presence reaches Redis a moment after its upgrade (it
	// is written in batches); until then the other nodes answer 404.
	holder := func(id string) string {
		t.Helper()
		found := ""
		for _, n := range nodes {
			if !n.alive() {
				continue
			}
			status, body := get(t, n.control+"/"+id)
			for deadline := time.Now().Add(3 * time.Second); status == 404 && time.Now().Before(deadline); {
				time.Sleep(20 * time.Millisecond)
				status, body = get(t, n.control+"/"+id)
			}
			if status != 200 {
				t.Fatalf("info %s through node %s: %d %s", id, n.node, status, body)
			}
			var info struct {
				Node string `json:"node"`
			}
			if err := json.Unmarshal([]byte(body), &info); err != nil {
				t.Fatal(err)
			}
			if found != "" && info.Node != found {
				t.Fatalf("%s is held by %s says one node, by %s says another", id, found, info.Node)
			}
			found = info.Node
		}
		return found
	}

	t.Run("the same id always lands on the same node", func(t *testing.T) {
		spread := map[string]map[string]bool{}
		for id, c := range clients {
			first := holder(id)
			if spread[c.lb.name] == nil {
				spread[c.lb.name] = map[string]bool{}
			}
			spread[c.lb.name][first] = true
			if strings.HasSuffix(id, "-1") || strings.HasSuffix(id, "-2") {
				for range 3 {
					c.reconnect(t)
					if again := holder(id); again != first {
						t.Fatalf("%s landed on %s, then on %s", id, first, again)
					}
				}
			}
		}
		for lb, used := range spread {
			if len(used) < 2 {
				t.Errorf("%s put its %d clients on %d node(s)", lb, perLB, len(used))
			}
		}
	})

	t.Run("the API gets the client's address and scheme from the load balancer, not from the client", func(t *testing.T) {
		for _, lb := range lbs {
			id := "forged-" + lb.name
			hdr := http.Header{}
			hdr.Set("X-Forwarded-For", "203.0.113.9")
			hdr.Set("X-Forwarded-Proto", "gopher")
			d := websocket.Dialer{TLSClientConfig: tlsConf, HandshakeTimeout: 5 * time.Second}
			conn, _, err := d.Dial("wss://"+lb.public+"/"+id, hdr)
			if err != nil {
				t.Fatalf("%s through %s: %v", id, lb.name, err)
			}
			conn.Close()
			get := api.WaitFor(5*time.Second, "GET /"+id, func(c testkit.Call) bool { return c.Method == "GET" && c.ID == id })
			// The client's address as the balancer saw it, then the
			// balancer's as the node saw it; the balancer's scheme.
			if xff, xfp := get.Header.Get("X-Forwarded-For"), get.Header.Get("X-Forwarded-Proto"); xff != "127.0.0.1, 127.0.0.1" || xfp != "https" {
				t.Errorf("through %s the API got X-Forwarded-For %q and X-Forwarded-Proto %q, want \"127.0.0.1, 127.0.0.1\" and https", lb.name, xff, xfp)
			}
			if xfh := get.Header.Get("X-Forwarded-Host"); !strings.HasPrefix(lb.public, xfh) || xfh == "" {
				t.Errorf("through %s the API got X-Forwarded-Host %q, want the host of %s", lb.name, xfh, lb.public)
			}
		}
	})

	t.Run("pushes through the load balancer land on the holding node", func(t *testing.T) {
		before := relays(t, nodes, "delivered")
		for id, c := range clients {
			if status, body := post(t, c.lb.control+"/"+id, "via "+c.lb.name); status != 200 {
				t.Fatalf("push to %s through %s: %d %s", id, c.lb.name, status, body)
			}
			c.expect(t, "via "+c.lb.name)
		}
		if after := relays(t, nodes, "delivered"); after != before {
			t.Errorf("%d pushes were relayed over the bus; the load balancers should send each to its node", after-before)
		}
	})

	t.Run("a push sent to another node is relayed", func(t *testing.T) {
		// Looking a holder up may itself be relayed: all of them first.
		held := map[string]string{}
		for id := range clients {
			held[id] = holder(id)
		}
		before := relays(t, nodes, "delivered")
		pushed := 0
		for id, c := range clients {
			for _, n := range nodes {
				if n.node == held[id] {
					continue
				}
				if status, body := post(t, n.control+"/"+id, "relayed by "+n.node); status != 200 {
					t.Fatalf("push to %s through node %s: %d %s", id, n.node, status, body)
				}
				c.expect(t, "relayed by "+n.node)
				pushed++
				break
			}
		}
		if after := relays(t, nodes, "delivered"); after-before != pushed {
			t.Errorf("%d relays counted for %d pushes to other nodes", after-before, pushed)
		}
		// A many-id push sent to one node reaches ids on every node, and
		// names the one connected nowhere.
		var ids []string
		for id := range clients {
			ids = append(ids, id)
		}
		status, body := post(t, nodes[0].control+"/?id="+strings.Join(ids, "&id=")+"&id=nobody-here", "to many")
		var many struct {
			Delivered    int      `json:"delivered"`
			NotConnected []string `json:"not_connected"`
		}
		_ = json.Unmarshal([]byte(body), &many)
		if status != 200 || many.Delivered != len(ids) || len(many.NotConnected) != 1 || many.NotConnected[0] != "nobody-here" {
			t.Fatalf("many-id push: %d %s", status, body)
		}
		for _, c := range clients {
			c.expect(t, "to many")
		}
		// Info is relayed too (holder asks every node); an id connected
		// nowhere is 404.
		if status, _ := get(t, nodes[0].control+"/nobody-here"); status != 404 {
			t.Errorf("info for an id connected nowhere: %d", status)
		}
		if status, _ := post(t, nodes[1].control+"/nobody-here", "x"); status != 404 {
			t.Errorf("push to an id connected nowhere: %d", status)
		}
	})

	t.Run("a call to a client on another node returns its answer", func(t *testing.T) {
		id := "haproxy-0"
		c, at := clients[id], byName[holder(id)]
		// One call through each of the other nodes at once, answered in
		// reverse order.
		type reply struct {
			via          string
			status       int
			body, wanted string
		}
		replies := make(chan reply, len(nodes))
		calls := 0
		for _, n := range nodes {
			if n == at {
				continue
			}
			calls++
			go func() {
				uid := "call-via-" + n.node
				status, body := post(t, n.control+"/"+id+"?await=5s", `[2,"`+uid+`","Reset",{"type":"Soft"}]`)
				replies <- reply{n.node, status, body, `[3,"` + uid + `",{"status":"Accepted"}]`}
			}()
		}
		var got []string
		for range calls {
			c.mu.Lock()
			msgs := c.msgs
			c.mu.Unlock()
			select {
			case m := <-msgs:
				got = append(got, m)
			case <-time.After(5 * time.Second):
				t.Fatalf("%s received %d of %d calls", id, len(got), calls)
			}
		}
		for i := len(got) - 1; i >= 0; i-- {
			uid := strings.Split(got[i], `"`)[1]
			c.mu.Lock()
			err := c.conn.WriteMessage(websocket.TextMessage, []byte(`[3,"`+uid+`",{"status":"Accepted"}]`))
			c.mu.Unlock()
			if err != nil {
				t.Fatal(err)
			}
		}
		for range calls {
			r := <-replies
			if r.status != 200 || r.body != r.wanted {
				t.Errorf("call to %s (held by %s) through %s: %d %q, want 200 %q", id, at.node, r.via, r.status, r.body, r.wanted)
			}
		}
		for _, call := range api.CallsFor(id) {
			if strings.Contains(call.Body, "call-via-") {
				t.Errorf("a call's answer reached the API too: %q", call.Body)
			}
		}
		if status, body := post(t, nodes[0].control+"/nobody-here?await=1s", `[2,"x","Reset",{}]`); status != 404 {
			t.Errorf("a call to an id connected nowhere: %d %s", status, body)
		}
	})

	t.Run("a broadcast reaches every client once", func(t *testing.T) {
		// A person watching the broadcast channel with redis-cli is one
		// more subscriber, and no node: it must not be waited for.
		host, port, _ := net.SplitHostPort(redis.addr)
		watcher := startLines(t, "redis-cli", tool(t, "redis-cli"), "--tls", "--cacert", certFile, "-h", host, "-p", port,
			"--no-auth-warning", "-a", redisPassword, "SUBSCRIBE", "ws2api:all")
		watcher.waitLine(t, "ws2api:all")
		status, body := post(t, nodes[1].control+"/", "to everyone")
		if status != 200 {
			t.Fatalf("broadcast: %d %s", status, body)
		}
		var answer struct{ Delivered, Nodes int }
		_ = json.Unmarshal([]byte(body), &answer)
		if answer.Delivered != len(clients) || answer.Nodes != 3 {
			t.Errorf("broadcast answered %s; want %d delivered on 3 nodes", body, len(clients))
		}
		for _, c := range clients {
			c.expect(t, "to everyone")
		}
		time.Sleep(300 * time.Millisecond)
		for id, c := range clients {
			if extra := c.pending(); len(extra) > 0 {
				t.Errorf("%s got more after the broadcast: %q", id, extra)
			}
		}
	})

	t.Run("a node dies: its clients reconnect to the others and are reached again", func(t *testing.T) {
		victim := byName[holder("haproxy-0")]
		var orphans []*clusterClient
		for id, c := range clients {
			if holder(id) == victim.node {
				orphans = append(orphans, c)
			}
		}
		_ = victim.cmd.Process.Kill()
		<-victim.exited
		for _, c := range orphans {
			c.waitDropped(t)
			c.reconnect(t) // retries until a live node takes it
			if h := holder(c.id); h == victim.node {
				t.Fatalf("%s is still held by the dead node", c.id)
			}
			if status, body := post(t, c.lb.control+"/"+c.id, "after the death"); status != 200 {
				t.Fatalf("push to %s after its node died: %d %s", c.id, status, body)
			}
			c.expect(t, "after the death")
		}
		t.Logf("%d clients moved off the dead node %s", len(orphans), victim.node)
		if len(orphans) == 0 {
			t.Fatal("the dead node held no client")
		}
	})

	live := []*proc{}
	for _, n := range nodes {
		if n.alive() {
			live = append(live, n)
		}
	}

	// liveOtherThan is a live node that is not n.
	liveOtherThan := func(n *proc) *proc {
		for _, o := range live {
			if o != n {
				return o
			}
		}
		t.Fatal("no other live node")
		return nil
	}

	t.Run("Redis goes away and comes back", func(t *testing.T) {
		id, c := "", (*clusterClient)(nil)
		for cid, cc := range clients {
			id, c = cid, cc
			break
		}
		home := byName[holder(id)]
		other := liveOtherThan(home)
		redis.stop(t)
		for _, n := range live {
			waitBusUp(t, n, false)
		}
		// This node's own clients are served; another's are a clear 503.
		if status, body := post(t, home.control+"/"+id, "local while Redis is away"); status != 200 {
			t.Fatalf("local push without Redis: %d %s", status, body)
		}
		c.expect(t, "local while Redis is away")
		status, body := post(t, other.control+"/"+id, "x")
		if status != 503 || !strings.Contains(body, "cluster bus") {
			t.Fatalf("push needing a relay without Redis: %d %q, want 503 naming the bus", status, body)
		}
		// Redis comes back empty; the nodes subscribe again and write
		// their presence anew.
		redis.start(t)
		for _, n := range live {
			waitBusUp(t, n, true)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			status, body = post(t, other.control+"/"+id, "relayed again")
			if status == 200 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after Redis came back: %d %s", status, body)
			}
			time.Sleep(100 * time.Millisecond)
		}
		c.expect(t, "relayed again")
	})

	t.Run("an id that connects to another node replaces its connection there", func(t *testing.T) {
		var id string
		var c *clusterClient
		for cid, cc := range clients {
			if byName[holder(cid)].alive() {
				id, c = cid, cc
				break
			}
		}
		home := byName[holder(id)]
		other := liveOtherThan(home)
		c.mu.Lock()
		gone := c.gone
		c.mu.Unlock()
		fresh := testkit.Dial(t, "ws://"+other.public+"/"+id, nil)
		select {
		case <-gone:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s's connection on node %s is still open after it connected to %s", id, home.node, other.node)
		}
		if h := holder(id); h != other.node {
			t.Fatalf("%s is held by %s, want %s", id, h, other.node)
		}
		// A push through the old node reaches the new connection.
		if status, body := post(t, home.control+"/"+id, "to the new connection"); status != 200 {
			t.Fatalf("push: %d %s", status, body)
		}
		if _, got := testkit.Read(t, fresh, 5*time.Second); got != "to the new connection" {
			t.Fatalf("the new connection received %q", got)
		}
		// A kick sent to the old node closes the new connection, with
		// the code and reason asked for.
		if status, body := del(t, home.control+"/"+id+"?code=4001&reason=moved%20on"); status != 200 {
			t.Fatalf("kick: %d %s", status, body)
		}
		testkit.ExpectClose(t, fresh, 4001, "moved on", 5*time.Second)
	})

	// The bus went down and came back: its errors were logged, and not
	// one line holds Redis's password.
	for _, n := range nodes {
		if strings.Contains(n.logs(), redisPassword) {
			t.Errorf("node %s logged the Redis password:\n%s", n.node, n.logs())
		}
	}
}

// clusterClient is a test client that reconnects through its load
// balancer, as a device would.
type clusterClient struct {
	id   string
	lb   *balancer
	tls  *tls.Config
	mu   sync.Mutex
	conn *websocket.Conn
	msgs chan string
	gone chan struct{}
}

func dialCluster(t *testing.T, lb *balancer, id string, tlsConf *tls.Config) *clusterClient {
	c := &clusterClient{id: id, lb: lb, tls: tlsConf}
	c.reconnect(t)
	t.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.conn.Close()
	})
	return c
}

// reconnect opens a new connection, retrying for up to 15 s.
func (c *clusterClient) reconnect(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	if c.conn != nil {
		c.conn.Close()
		<-c.gone
	}
	c.mu.Unlock()
	d := websocket.Dialer{TLSClientConfig: c.tls, HandshakeTimeout: 5 * time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for {
		conn, _, err := d.Dial("wss://"+c.lb.public+"/"+c.id, nil)
		if err == nil {
			c.mu.Lock()
			c.conn, c.msgs, c.gone = conn, make(chan string, 16), make(chan struct{})
			msgs, gone := c.msgs, c.gone
			c.mu.Unlock()
			go func() {
				defer close(gone)
				for {
					_, b, err := conn.ReadMessage()
					if err != nil {
						return
					}
					msgs <- string(b)
				}
			}()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s through %s: %v", c.id, c.lb.name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *clusterClient) expect(t *testing.T, want string) {
	t.Helper()
	c.mu.Lock()
	msgs := c.msgs
	c.mu.Unlock()
	select {
	case got := <-msgs:
		if got != want {
			t.Fatalf("%s received %q, want %q", c.id, got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s did not receive %q", c.id, want)
	}
}

// pending returns what arrived and was not expected.
func (c *clusterClient) pending() []string {
	c.mu.Lock()
	msgs := c.msgs
	c.mu.Unlock()
	var out []string
	for {
		select {
		case m := <-msgs:
			out = append(out, m)
		default:
			return out
		}
	}
}

func (c *clusterClient) waitDropped(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	gone := c.gone
	c.mu.Unlock()
	select {
	case <-gone:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s was not dropped when its node died", c.id)
	}
}

func post(t *testing.T, url, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(url, "text/plain; charset=utf-8", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func del(t *testing.T, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodDelete, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var relaysRe = regexp.MustCompile(`(?m)^ws2api_cluster_relays_total\{outcome="(\w+)"\} (\d+)$`)

// relays sums a relay outcome over the live nodes.
func relays(t *testing.T, nodes []*proc, outcome string) int {
	t.Helper()
	sum := 0
	for _, n := range nodes {
		if !n.alive() {
			continue
		}
		_, body := get(t, n.control+"/metrics")
		for _, m := range relaysRe.FindAllStringSubmatch(body, -1) {
			if m[1] == outcome {
				v, _ := strconv.Atoi(m[2])
				sum += v
			}
		}
	}
	return sum
}

// waitBusUp waits for a node's ws2api_cluster_bus_up to be up (1) or down
// (0).
func waitBusUp(t *testing.T, n *proc, up bool) {
	t.Helper()
	want := "ws2api_cluster_bus_up 0"
	if up {
		want = "ws2api_cluster_bus_up 1"
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, body := get(t, n.control+"/metrics"); strings.Contains(body, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s: no %q within 10s", n.node, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tool finds a program the cluster tests run, which scripts/deps installs.
func tool(t *testing.T, name string) string {
	t.Helper()
	for _, p := range []string{name, "/usr/sbin/" + name, "/usr/bin/" + name} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	t.Fatalf("%s is not installed: run ./scripts/test, which installs it (scripts/deps), or apt-get install %s", name, name)
	return ""
}

// daemon is a program the test runs: Redis, HAProxy or nginx.
type daemon struct {
	name string
	args []string
	addr string // where it listens, to wait for it
	mu   sync.Mutex
	cmd  *exec.Cmd
	out  strings.Builder
	done chan struct{}
}

func (d *daemon) start(t *testing.T) {
	t.Helper()
	cmd := exec.Command(d.args[0], d.args[1:]...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	// nginx's and haproxy's workers hold the output pipe too: once the
	// master is gone, stop waiting for them to close it.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", d.name, err)
	}
	done := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			d.mu.Lock()
			d.out.WriteString(sc.Text() + "\n")
			d.mu.Unlock()
		}
	}()
	go func() { _ = cmd.Wait(); pw.Close(); close(done) }()
	d.cmd, d.done = cmd, done
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("tcp", d.addr); err == nil {
			c.Close()
			return
		}
		select {
		case <-done:
			t.Fatalf("%s exited at start:\n%s", d.name, d.log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not listen on %s:\n%s", d.name, d.addr, d.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *daemon) stop(t *testing.T) {
	t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
}

func (d *daemon) log() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.out.String()
}

func (d *daemon) cleanup(t *testing.T) {
	t.Cleanup(func() {
		if d.cmd != nil {
			d.stop(t) // a SIGTERM, so that a master stops its workers
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", d.name, d.log())
		}
	})
}

// startRedis starts redis-server on addr; extra arguments may name the
// port as {port} (for --tls-port).
func startRedis(t *testing.T, addr string, extra ...string) *daemon {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	args := []string{tool(t, "redis-server"),
		"--bind", host, "--port", port, "--save", "", "--appendonly", "no", "--protected-mode", "no"}
	for _, a := range extra {
		args = append(args, strings.ReplaceAll(a, "{port}", port))
	}
	d := &daemon{name: "redis", addr: addr, args: args}
	d.cleanup(t)
	d.start(t)
	return d
}

// balancer is a load balancer of deploy/, rendered for this test.
type balancer struct {
	name    string
	public  string // host:port, wss
	control string // http://host:port
	// HAProxy's frontend for clients with certificates (wss, mutual TLS),
	// and the CA it verifies them against.
	mtls     string
	clientCA *testkit.CA
}

// render reads a deploy/ config and makes the given replacements, each of
// which must apply: the test runs the config as shipped, but for
// addresses, paths and sizes.
func render(t *testing.T, file string, replace [][2]string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", file))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, r := range replace {
		if !strings.Contains(s, r[0]) {
			t.Fatalf("deploy/%s no longer has %q; update the test's rendering", file, r[0])
		}
		s = strings.ReplaceAll(s, r[0], r[1])
	}
	return s
}

func hostPort(_ *testing.T, control string) string {
	return strings.TrimPrefix(control, "http://")
}

func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}

func startHAProxy(t *testing.T, dir string, cert *testkit.Cert, nodes []*proc) *balancer {
	t.Helper()
	pem := filepath.Join(dir, "haproxy.pem")
	if err := os.WriteFile(pem, append(append([]byte{}, cert.CertPEM...), cert.KeyPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	// Its mutual-TLS frontend verifies client certificates from a CA of
	// the balancer's own.
	ca := testkit.NewCA(t, "chargers")
	caFile := filepath.Join(dir, "clients-ca.pem")
	writeFile(t, caFile, ca.CertPEM)
	public, control, mtls := freeAddr(t), freeAddr(t), freeAddr(t)
	replace := [][2]string{
		{"bind :443 ssl crt /etc/haproxy/certs/ws2api.pem", "bind " + public + " ssl crt " + pem},
		{"bind :8443 ssl crt /etc/haproxy/certs/ws2api.pem ca-file /etc/haproxy/certs/clients-ca.pem", "bind " + mtls + " ssl crt " + pem + " ca-file " + caFile},
		{"bind 10.0.0.10:7002", "bind " + control},
		// The test process may hold 20,000 files at most.
		{"maxconn 500000", "maxconn 4000"},
		{"maxconn 200000", "maxconn 2000"},
	}
	for i, n := range nodes {
		ip := fmt.Sprintf("10.0.0.1%d", i+1)
		replace = append(replace,
			[2]string{fmt.Sprintf("%s:7001 id %d check port 7002", ip, i+1), fmt.Sprintf("%s id %d check port %s", n.public, i+1, portOf(hostPort(t, n.control)))},
			[2]string{fmt.Sprintf("%s:7002 id %d", ip, i+1), fmt.Sprintf("%s id %d", hostPort(t, n.control), i+1)})
	}
	if os.Getuid() != 0 {
		replace = append(replace, [2]string{"    user haproxy\n    group haproxy\n", ""})
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(render(t, "haproxy.cfg", replace)), 0o600); err != nil {
		t.Fatal(err)
	}
	d := &daemon{name: "haproxy", addr: public, args: []string{tool(t, "haproxy"), "-db", "-f", cfg}}
	d.cleanup(t)
	d.start(t)
	waitUp(t, "http://"+control+"/healthz")
	return &balancer{name: "haproxy", public: public, control: "http://" + control, mtls: mtls, clientCA: ca}
}

func startNginx(t *testing.T, dir string, cert *testkit.Cert, nodes []*proc) *balancer {
	t.Helper()
	crt, key := filepath.Join(dir, "nginx.crt"), filepath.Join(dir, "nginx.key")
	if os.WriteFile(crt, cert.CertPEM, 0o600) != nil || os.WriteFile(key, cert.KeyPEM, 0o600) != nil {
		t.Fatal("writing the certificate")
	}
	public, control := freeAddr(t), freeAddr(t)
	replace := [][2]string{
		{"listen 443 ssl;", "listen " + public + " ssl;"},
		{"listen 10.0.0.10:7002;", "listen " + control + ";"},
		{"ssl_certificate /etc/nginx/certs/ws2api.crt;", "ssl_certificate " + crt + ";"},
		{"ssl_certificate_key /etc/nginx/certs/ws2api.key;", "ssl_certificate_key " + key + ";"},
		{"pid /run/nginx.pid;", "pid " + filepath.Join(dir, "nginx.pid") + ";"},
		{"error_log /var/log/nginx/error.log warn;", "error_log stderr warn;"},
		{"worker_processes auto;", "worker_processes 1;"},
		// The test process may hold 20,000 files at most.
		{"worker_rlimit_nofile 1000000;", "worker_rlimit_nofile 8000;"},
		{"worker_connections 500000;", "worker_connections 4000;"},
		// Temporary files where this test may write.
		{"http {\n", "http {\n    client_body_temp_path " + dir + "/body;\n    proxy_temp_path " + dir + "/proxy;\n"},
	}
	for i, n := range nodes {
		ip := fmt.Sprintf("10.0.0.1%d", i+1)
		replace = append(replace,
			[2]string{ip + ":7001", n.public},
			[2]string{ip + ":7002", hostPort(t, n.control)})
	}
	if os.Getuid() != 0 {
		replace = append(replace, [2]string{"user www-data;\n", ""})
	}
	cfg := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cfg, []byte(render(t, "nginx.conf", replace)), 0o600); err != nil {
		t.Fatal(err)
	}
	d := &daemon{name: "nginx", addr: public, args: []string{tool(t, "nginx"), "-e", "stderr", "-c", cfg, "-g", "daemon off;"}}
	d.cleanup(t)
	d.start(t)
	waitUp(t, "http://"+control+"/healthz")
	return &balancer{name: "nginx", public: public, control: "http://" + control}
}

// waitUp waits for url to answer 200.
func waitUp(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
