package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/testkit"
	"github.com/ws2api/ws2api/internal/testkit/race"
)

// binary is the ws2api built once for the tests that run it as a process.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ws2api-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "ws2api")
	build := exec.Command("go", "build", "-race", "-o", binary, ".")
	if !race.Enabled {
		build = exec.Command("go", "build", "-o", binary, ".")
	}
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building ws2api:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running ws2api process.
type proc struct {
	t       *testing.T
	cmd     *exec.Cmd
	public  string // host:port
	control string // http://host:port
	node    string // its name on the cluster bus
	mu      sync.Mutex
	log     bytes.Buffer
	exited  chan struct{}
	exitErr error
}

// start runs ws2api with args (and env added to the test's environment)
// and waits for it to report its listeners.
func start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	return startBinary(t, binary, env, args...)
}

// startBinary is start with another build of ws2api (the upgrade tests').
func startBinary(t *testing.T, binary string, env []string, args ...string) *proc {
	t.Helper()
	var sub []string // a subcommand comes first
	if len(args) > 0 && args[0] == "demo" {
		sub, args = args[:1], args[1:]
	}
	args = append(append(sub[:len(sub):len(sub)], "-log-format", "json", "-listen", "127.0.0.1:0", "-control", "127.0.0.1:0"), args...)
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	// The log is a pipe of our own, not StderrPipe: the processes an
	// upgrade starts inherit its write end, so it ends when the last of
	// them exits, while p.exited tells of this process alone.
	stderr, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = w
	err = cmd.Start()
	w.Close()
	if err != nil {
		stderr.Close()
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, exited: make(chan struct{})}
	ready := make(chan map[string]any, 1)
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		defer stderr.Close()
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.log.WriteString(line + "\n")
			p.mu.Unlock()
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "ws2api serving" {
				select {
				case ready <- rec:
				default: // a process an upgrade started, on the same output
				}
			}
		}
	}()
	go func() {
		p.exitErr = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
		select { // the rest of its log (an upgrade's processes are killed before this)
		case <-logged:
		case <-time.After(5 * time.Second):
		}
		if t.Failed() {
			t.Logf("ws2api log:\n%s", p.logs())
		}
	})
	select {
	case rec := <-ready:
		p.public, p.control = rec["public"].(string), "http://"+rec["control"].(string)
		p.node, _ = rec["node"].(string)
	case <-p.exited:
		select {
		case <-logged:
		case <-time.After(5 * time.Second):
		}
		t.Fatalf("ws2api exited before serving: %v\n%s", p.exitErr, p.logs())
	case <-time.After(10 * time.Second):
		t.Fatalf("ws2api did not start\n%s", p.logs())
	}
	return p
}

func (p *proc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// stop sends sig (unless nil) and waits for the exit; it returns the exit
// code, -1 if a signal ended the process.
func (p *proc) stop(sig os.Signal, timeout time.Duration) int {
	p.t.Helper()
	if sig != nil {
		_ = p.cmd.Process.Signal(sig)
	}
	select {
	case <-p.exited:
	case <-time.After(timeout):
		p.t.Fatalf("ws2api still running %v after %v", timeout, sig)
	}
	return p.cmd.ProcessState.ExitCode()
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestBinaryServesEveryFlowAndExitsCleanlyOnSIGTERM(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	p := start(t, nil, "-api", api.URL())

	c := testkit.Dial(t, "ws://"+p.public+"/CP-9?site=7", nil)
	_ = c.WriteMessage(websocket.TextMessage, []byte(`[2,"a","Heartbeat",{}]`))
	if _, got := testkit.Read(t, c, 5*time.Second); got != `echo:[2,"a","Heartbeat",{}]` {
		t.Fatalf("reply %q", got)
	}
	resp, err := http.Post(p.control+"/CP-9", "text/plain", strings.NewReader("pushed"))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("push: %v %v", err, resp)
	}
	if _, got := testkit.Read(t, c, 5*time.Second); got != "pushed" {
		t.Fatalf("push received as %q", got)
	}
	if status, body := get(t, p.control+"/metrics"); status != 200 || !strings.Contains(body, "connections_opened 1") ||
		!strings.Contains(body, `ws2api_build_info{version="dev",go="`+runtime.Version()+`"} 1`) {
		t.Fatalf("metrics: %d\n%s", status, body)
	}
	if status, _ := get(t, p.control+"/healthz"); status != 200 {
		t.Fatalf("healthz %d", status)
	}
	if status, _ := get(t, p.control+"/debug/pprof/"); status != 200 {
		t.Fatalf("pprof %d", status)
	}

	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	testkit.ExpectClose(t, c, 1001, "going away", 5*time.Second)
	del := api.WaitDelete("CP-9", 5*time.Second)
	if del.Header.Get("X-Ws2api-Close-Code") != "1001" {
		t.Errorf("DELETE code %q", del.Header.Get("X-Ws2api-Close-Code"))
	}
	if code := p.stop(nil, 10*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
	if !strings.Contains(p.logs(), `"msg":"drained"`) {
		t.Error("no drained line in the log")
	}
}

func TestBadFlagValuesStopStartupWithOneLineAndExit2(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"-timeout", "soon"}, nil, "-timeout"},
		{[]string{"-max-pending", "lots"}, nil, "-max-pending"},
		{[]string{"-api", "ftp://x/"}, nil, "-api"},
		{[]string{"-max-conns-per-host", "0"}, nil, "-max-conns-per-host"},
		{[]string{"-forward-headers", "X-Ws2api-Meta-User"}, nil, "-forward-headers"},
		// Framing and hop-by-hop headers would desynchronise the connect GET.
		{[]string{"-forward-headers", "Origin,Content-Length"}, nil, "-forward-headers: Content-Length"},
		{[]string{"-forward-headers", "transfer-encoding"}, nil, "-forward-headers: transfer-encoding"},
		{[]string{"-forward-headers", "Cookie, Host"}, nil, "-forward-headers: Host"},
		{[]string{"-forward-headers", "Connection"}, nil, "-forward-headers: Connection"},
		{[]string{"-forward-headers", "TE"}, nil, "-forward-headers: TE"},
		{[]string{"-forward-headers", "Cookie,client-cert"}, nil, "-forward-headers: client-cert"},
		{[]string{"-forward-headers", "Proxy-Authorization"}, nil, "-forward-headers: Proxy-Authorization"},
		{nil, []string{"WS2API_FORWARD_HEADERS=Keep-Alive"}, "-forward-headers: Keep-Alive"},
		{[]string{"-forward-headers", "Bad Name"}, nil, "-forward-headers: \"Bad Name\""},
		{[]string{"-trusted-proxies", "10.0.0.0/33"}, nil, "-trusted-proxies"},
		{[]string{"-trusted-proxies", "127.0.0.1,haproxy"}, nil, "-trusted-proxies"},
		{[]string{"-max-outgoing-total", "0"}, nil, "-max-outgoing-total"},
		{[]string{"-no-such-flag"}, nil, "no-such-flag"},
		{nil, []string{"WS2API_DRAIN_TIMEOUT=later"}, "WS2API_DRAIN_TIMEOUT"},
		{[]string{"-tls-cert", "cert.pem"}, nil, "-tls-cert"},
		{[]string{"-tls-client-ca", "ca.pem"}, nil, "-tls-client-ca: needs -tls-cert"},
		{[]string{"-tls-client-auth", "maybe"}, nil, "-tls-client-auth"},
		{[]string{"-origins", "example.com"}, nil, "-origins"},
		{[]string{"-max-msg-rate", "-1"}, nil, "-max-msg-rate"},
		{[]string{"-ping-timeout", "0s"}, nil, "-ping-timeout"},
		{[]string{"-max-conns", "-5"}, nil, "-max-conns"},
		{[]string{"-control-token", "two words"}, nil, "-control-token"},
		{[]string{"-control-hosts", "gw.internal:7002"}, nil, "-control-hosts"},
		{nil, []string{"WS2API_CONTROL_HOSTS=http://gw.internal"}, "-control-hosts"},
	}
	for _, c := range cases {
		cmd := exec.Command(binary, c.args...)
		cmd.Env = append(os.Environ(), c.env...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		code := -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		out := strings.TrimRight(stderr.String(), "\n")
		if code != 2 || strings.Count(out, "\n") != 0 || !strings.Contains(out, c.want) {
			t.Errorf("%v %v: exit %d, stderr %q; want exit 2 and one line naming %s", c.args, c.env, code, out, c.want)
		}
	}
}

func TestEnvironmentSetsFlagsAndAFlagWins(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	// The environment names a dead API; the flag names the live one.
	p := start(t, []string{"WS2API_API=http://127.0.0.1:1/", "WS2API_MAX_MESSAGE_SIZE=10"}, "-api", api.URL())
	c := testkit.Dial(t, "ws://"+p.public+"/envtest", nil)
	// WS2API_MAX_MESSAGE_SIZE=10 took effect: 11 bytes close with 1009.
	_ = c.WriteMessage(websocket.TextMessage, []byte("0123456789a"))
	testkit.ExpectClose(t, c, 1009, "message too big", 5*time.Second)
}

func TestHelpListsEveryFlagWithItsDefaultAndVariable(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	err := run(context.Background(), []string{"-h"}, func(string) string { return "" }, &out, io.Discard)
	if err != flag.ErrHelp {
		t.Fatalf("run -h: %v", err)
	}
	help := out.String()
	fs := newFlagSet(&config{})
	fs.VisitAll(func(f *flag.Flag) {
		if !strings.Contains(help, "-"+f.Name+" ") {
			t.Errorf("-h does not list -%s", f.Name)
		}
		if !strings.Contains(help, envName(f.Name)) {
			t.Errorf("-h does not name %s", envName(f.Name))
		}
	})
	for _, want := range []string{`(default ":7001"`, `(default "127.0.0.1:7002"`, `(default "http://localhost:8000/"`, `(default "1m0s"`, `(default "5MiB"`} {
		if !strings.Contains(help, want) {
			t.Errorf("-h lacks %s", want)
		}
	}
	// Every flag belongs to a group, so -h shows it.
	grouped := map[string]bool{}
	for _, g := range flagGroups {
		for _, n := range g.names {
			grouped[n] = true
		}
	}
	fs.VisitAll(func(f *flag.Flag) {
		if !grouped[f.Name] {
			t.Errorf("flag -%s is in no -h group", f.Name)
		}
	})
}

func TestProfilesAreWrittenAtExit(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	dir := t.TempDir()
	cpu, mem := filepath.Join(dir, "cpu.prof"), filepath.Join(dir, "mem.prof")
	p := start(t, nil, "-api", api.URL(), "-cpuprofile", cpu, "-memprofile", mem)
	c := testkit.Dial(t, "ws://"+p.public+"/prof", nil)
	_ = c.WriteMessage(websocket.TextMessage, []byte("x"))
	testkit.Read(t, c, 5*time.Second)
	if code := p.stop(syscall.SIGINT, 10*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, f := range []string{cpu, mem} {
		b, err := os.ReadFile(f)
		if err != nil || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
			t.Errorf("%s: %v, %d bytes; want a gzipped pprof profile", f, err, len(b))
		}
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	out, err := exec.Command(binary, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "ws2api ") {
		t.Fatalf("version: %q %v", out, err)
	}
}

// The load tool as a person runs it: the echo API and the gateway as
// processes, the tool spreading its connections over two worker processes,
// reading the gateway's figures from its pid, and printing JSON.
func TestBenchDrivesTheGatewayFromWorkerProcesses(t *testing.T) {
	t.Parallel()
	api := exec.Command(binary, "bench", "api", "-listen", "127.0.0.1:0")
	apiOut, _ := api.StderrPipe()
	if err := api.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = api.Process.Kill(); _ = api.Wait() })
	var apiAddr string
	sc := bufio.NewScanner(apiOut)
	for sc.Scan() {
		if _, after, ok := strings.Cut(sc.Text(), "addr="); ok {
			apiAddr = strings.Fields(after)[0]
			break
		}
	}
	if apiAddr == "" {
		t.Fatal("echo API did not report its address")
	}
	go func() { _, _ = io.Copy(io.Discard, apiOut) }()

	gw := start(t, nil, "-api", "http://"+apiAddr+"/")
	out, err := exec.Command(binary, "bench", "-url", "ws://"+gw.public+"/", "-control", gw.control,
		"-conns", "300", "-procs", "2", "-interval", "200ms", "-duration", "2s", "-settle", "100ms",
		"-pid", fmt.Sprint(gw.cmd.Process.Pid), "-json", "-").Output()
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	i := bytes.IndexByte(out, '{')
	if i < 0 {
		t.Fatalf("no JSON summary:\n%s", out)
	}
	var sum struct {
		Procs     int     `json:"procs"`
		ConnectOK int     `json:"connect_ok"`
		Sent      int64   `json:"sent"`
		Lost      int64   `json:"lost"`
		Rate      float64 `json:"msgs_per_sec"`
		Gateway   *struct {
			CPUPerMsgUs float64 `json:"cpu_per_msg_us"`
			RSSIdleMiB  float64 `json:"rss_idle_mib"`
		} `json:"gateway"`
	}
	if err := json.Unmarshal(out[i:], &sum); err != nil {
		t.Fatalf("summary: %v\n%s", err, out[i:])
	}
	if sum.Procs != 2 || sum.ConnectOK != 300 || sum.Sent < 1000 || sum.Lost != 0 || sum.Rate < 1000 {
		t.Fatalf("summary %+v\n%s", sum, out)
	}
	if sum.Gateway == nil || sum.Gateway.CPUPerMsgUs <= 0 || sum.Gateway.RSSIdleMiB <= 0 {
		t.Fatalf("no gateway figures: %+v", sum.Gateway)
	}
}

// alive reports whether the process is still running.
func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}
