package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/testkit"
)

func TestControlTokenGuardsEveryControlRequestButHealthz(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	const token = "s3cret-Token_42"
	p := start(t, []string{"WS2API_CONTROL_TOKEN=" + token}, "-api", api.URL())
	c := testkit.Dial(t, "ws://"+p.public+"/guarded", nil)

	do := func(method, path, auth, body string) (int, http.Header, string) {
		t.Helper()
		req, _ := http.NewRequest(method, p.control+path, strings.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b := make([]byte, 512)
		n, _ := resp.Body.Read(b)
		return resp.StatusCode, resp.Header, string(b[:n])
	}
	for _, r := range []struct{ method, path string }{
		{"POST", "/guarded"}, {"GET", "/guarded"}, {"DELETE", "/guarded"}, {"POST", "/"}, {"GET", "/"},
		{"GET", "/metrics"}, {"GET", "/debug/pprof/"}, {"PUT", "/guarded/groups/g"}, {"PUT", "/guarded/meta/x"},
	} {
		for _, auth := range []string{"", "Bearer wrong", "Bearer " + token + "x", "Basic " + token, token, "Bearer"} {
			status, hdr, body := do(r.method, r.path, auth, "sneaky")
			if status != 401 || hdr.Get("WWW-Authenticate") == "" || strings.Contains(body, token) {
				t.Errorf("%s %s with %q: %d %q %q, want 401 with WWW-Authenticate", r.method, r.path, auth, status, hdr, body)
			}
		}
	}
	// Nothing reached the client, and it is still connected.
	if status, _, _ := do("GET", "/guarded", "Bearer "+token, ""); status != 200 {
		t.Fatalf("info with the token: %d", status)
	}
	if status, _, _ := do("GET", "/healthz", "", ""); status != 200 {
		t.Fatalf("healthz without the token: %d", status)
	}
	for _, auth := range []string{"Bearer " + token, "bearer " + token} {
		if status, _, body := do("POST", "/guarded", auth, "with token"); status != 200 {
			t.Fatalf("push with %q: %d %s", auth, status, body)
		}
	}
	for range 2 {
		if _, got := testkit.Read(t, c, 5*time.Second); got != "with token" {
			t.Fatalf("client received %q; the unauthorized pushes must not arrive", got)
		}
	}
	if status, _, body := do("GET", "/metrics", "Bearer "+token, ""); status != 200 || !strings.Contains(body, "connections_opened") {
		t.Fatalf("metrics with the token: %d", status)
	}
	if strings.Contains(p.logs(), token) {
		t.Fatalf("the token appears in the log:\n%s", p.logs())
	}
}

func TestTLSServesWSSAndReloadsTheCertificateOnSIGHUP(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	install := func(c *testkit.Cert) {
		t.Helper()
		// Written aside and renamed into place, as certificate tools do.
		for _, f := range []struct {
			path string
			b    []byte
		}{{certFile, c.CertPEM}, {keyFile, c.KeyPEM}} {
			if err := os.WriteFile(f.path+".new", f.b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(f.path+".new", f.path); err != nil {
				t.Fatal(err)
			}
		}
	}
	first, second := testkit.NewCert(t, "first"), testkit.NewCert(t, "second")
	install(first)
	p := start(t, nil, "-api", api.URL(), "-tls-cert", certFile, "-tls-key", keyFile)

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(first.CertPEM)
	roots.AppendCertsFromPEM(second.CertPEM)
	dial := func(id string) (*websocket.Conn, string) {
		t.Helper()
		d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: roots}, HandshakeTimeout: 5 * time.Second}
		c, _, err := d.Dial("wss://"+p.public+"/"+id, nil)
		if err != nil {
			t.Fatalf("dial wss: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		state := c.UnderlyingConn().(*tls.Conn).ConnectionState()
		return c, state.PeerCertificates[0].Subject.CommonName
	}
	roundTrip := func(c *websocket.Conn, msg string) {
		t.Helper()
		_ = c.WriteMessage(websocket.TextMessage, []byte(msg))
		if _, got := testkit.Read(t, c, 5*time.Second); got != "echo:"+msg {
			t.Fatalf("reply %q", got)
		}
	}
	old, name := dial("before")
	if name != "first" {
		t.Fatalf("served certificate %q, want first", name)
	}
	roundTrip(old, "one")

	// Plain ws on the TLS port gets no upgrade.
	if _, _, err := websocket.DefaultDialer.Dial("ws://"+p.public+"/plain", nil); err == nil {
		t.Fatal("plain ws upgraded on the TLS listener")
	}

	install(second)
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, p, "SIGHUP: TLS certificate reloaded")
	roundTrip(old, "two") // not dropped
	if _, name := dial("after"); name != "second" {
		t.Fatalf("after SIGHUP served %q, want second", name)
	}

	// A broken file on the next SIGHUP keeps the certificate in use.
	if err := os.WriteFile(keyFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, p, "TLS certificate not reloaded")
	if _, name := dial("broken"); name != "second" {
		t.Fatalf("after a failed reload served %q, want second", name)
	}
	roundTrip(old, "three")
	if got := api.CallsFor("before")[0].Header.Get("X-Forwarded-Proto"); got != "https" {
		t.Fatalf("X-Forwarded-Proto %q", got)
	}
}

func TestDeadPeerIsClosedWithinThePingTimes(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	p := start(t, nil, "-api", api.URL(), "-ping-interval", "300ms", "-ping-timeout", "300ms")
	// A client library answers pings while it reads.
	live := testkit.Dial(t, "ws://"+p.public+"/live", nil)
	go func() {
		for {
			if _, _, err := live.ReadMessage(); err != nil {
				return
			}
		}
	}()
	start := time.Now()
	testkit.DialRaw(t, p.public, "silent") // answers nothing
	del := api.WaitDelete("silent", 5*time.Second)
	took := time.Since(start)
	if del.Header.Get("X-Ws2api-Close-Code") != "1006" || del.Body != "ping timeout" {
		t.Fatalf("DELETE %q %q", del.Header.Get("X-Ws2api-Close-Code"), del.Body)
	}
	if took > 600*time.Millisecond+time.Second {
		t.Fatalf("dead peer found after %v, configured 300ms + 300ms", took)
	}
	time.Sleep(time.Second)
	_ = live.WriteMessage(websocket.TextMessage, []byte("still here"))
	api.WaitFor(5*time.Second, "live's POST", func(c testkit.Call) bool { return c.Body == "still here" })
	for _, c := range api.CallsFor("live") {
		if c.Method == "DELETE" {
			t.Fatal("the client answering pings was closed")
		}
	}
}

// waitLog waits for a line containing s in the gateway's log.
func waitLog(t *testing.T, p *proc, s string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(p.logs(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log:\n%s", s, p.logs())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The load tool speaks wss, to measure the gateway serving TLS itself.
func TestBenchOverWSS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	api := startAPIProc(t, freeAddr(t), filepath.Join(dir, "api.log"))
	cert := testkit.NewCert(t, "bench")
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if os.WriteFile(certFile, cert.CertPEM, 0o600) != nil || os.WriteFile(keyFile, cert.KeyPEM, 0o600) != nil {
		t.Fatal("writing the certificate")
	}
	p := start(t, nil, "-api", api.url(), "-tls-cert", certFile, "-tls-key", keyFile)
	out, err := exec.Command(binary, "bench", "-url", "wss://"+p.public+"/", "-insecure", "-control", p.control,
		"-conns", "100", "-once", "-duration", "100ms", "-settle", "10ms", "-json", "-").Output()
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	var sum struct {
		ConnectOK int `json:"connect_ok"`
		Once      *struct {
			Sent int64 `json:"sent"`
			Recv int64 `json:"recv"`
		} `json:"once"`
	}
	i := bytes.IndexByte(out, '{')
	if i < 0 || json.Unmarshal(out[i:], &sum) != nil {
		t.Fatalf("no JSON summary:\n%s", out)
	}
	if sum.ConnectOK != 100 || sum.Once == nil || sum.Once.Sent != 100 || sum.Once.Recv != 100 {
		t.Fatalf("summary %+v %+v\n%s", sum, sum.Once, out)
	}
	// And without -insecure, the self-signed certificate is refused.
	out, _ = exec.Command(binary, "bench", "-url", "wss://"+p.public+"/", "-conns", "1", "-once", "-duration", "100ms", "-settle", "10ms").CombinedOutput()
	if !strings.Contains(string(out), "certificate") {
		t.Fatalf("a self-signed certificate was accepted without -insecure:\n%s", out)
	}
}
