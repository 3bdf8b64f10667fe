package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/testkit"
)

// The control listener serves programs, not web pages (SECURITY.md, "The
// control listener"): a browser's request for a page of another origin
// (Sec-Fetch-Site, Origin) is refused with 403, and without a token a Host
// that is neither localhost, an IP address nor in -control-hosts (DNS
// rebinding) with 421, before any handler runs, on the event-loop
// fast path (POST /<id>) and through net/http (the rest) alike.

// controlRaw sends one request to p's control listener over a connection
// of its own, with the given header lines (each ending in \r\n, Host
// among them), and returns the answer.
func controlRaw(t *testing.T, p *proc, method, target, header, body string) (int, string) {
	t.Helper()
	head := method + " " + target + " HTTP/1.1\r\n" + header + "Connection: close\r\n"
	if body != "" {
		head += fmt.Sprintf("Content-Length: %d\r\n", len(body))
	}
	return testkit.RawRequest(t, strings.TrimPrefix(p.control, "http://"), head+"\r\n"+body)
}

// expectNext reads c's next message, which must be want: anything a
// refused request had delivered (or a kick) would have come first.
func expectNext(t *testing.T, c *websocket.Conn, want string) {
	t.Helper()
	if _, got := testkit.Read(t, c, 5*time.Second); got != want {
		t.Fatalf("the client received %q before %q: a refused request got through", got, want)
	}
}

// requestsAPage could send: pushes (the fast path), a broadcast and a
// multi-id push (net/http), a kick, and reads.
var requestsAPage = []struct{ method, target, body string }{
	{"POST", "/victim", "pwned"},
	{"POST", "/", "pwned-broadcast"},
	{"POST", "/?id=victim&id=other", "pwned-many"},
	{"DELETE", "/victim?code=4000&reason=pwned", ""},
	{"GET", "/victim", ""},
	{"GET", "/", ""},
	{"GET", "/metrics", ""},
	{"GET", "/debug/pprof/", ""},
}

func TestControlRefusesCrossOriginRequestsAndForeignHosts(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	p := start(t, nil, "-api", api.URL(), "-control-hosts", "gw.internal")
	addr := strings.TrimPrefix(p.control, "http://")
	_, port, _ := net.SplitHostPort(addr)
	c := testkit.Dial(t, "ws://"+p.public+"/victim", nil)

	host := "Host: " + addr + "\r\n"
	for _, bad := range []struct {
		name, header string
		status       int
		why          string
	}{
		{"Sec-Fetch-Site: cross-site", host + "Sec-Fetch-Site: cross-site\r\n", 403, "cross-origin request refused"},
		{"Sec-Fetch-Site: same-site (another port)", host + "Sec-Fetch-Site: same-site\r\n", 403, "cross-origin request refused"},
		{"Origin of another site", host + "Origin: http://evil.example\r\n", 403, "cross-origin request refused"},
		{"Origin of another port", host + "Origin: http://127.0.0.1:1\r\n", 403, "cross-origin request refused"},
		{"Origin: null", host + "Origin: null\r\n", 403, "cross-origin request refused"},
		{"Origin beside Sec-Fetch-Site: same-origin", host + "Sec-Fetch-Site: same-origin\r\nOrigin: http://evil.example\r\n", 403, "cross-origin request refused"},
		{"Host of another name", "Host: evil.example:" + port + "\r\n", 421, "refused"},
		{"Host of another name, no port", "Host: evil.example\r\n", 421, "refused"},
		{"Host that only starts as localhost", "Host: localhost.evil.example:" + port + "\r\n", 421, "refused"},
		{"Host of an unlisted name", "Host: gw.internal.evil.example:" + port + "\r\n", 421, "refused"},
	} {
		for _, r := range requestsAPage {
			status, body := controlRaw(t, p, r.method, r.target, bad.header, r.body)
			if status != bad.status || !strings.Contains(body, bad.why) || strings.Count(body, "\n") != 1 || !strings.HasSuffix(body, "\n") {
				t.Errorf("%s: %s %s: %d %.80q; want %d and one line saying %q", bad.name, r.method, r.target, status, body, bad.status, bad.why)
			}
		}
	}
	// A refused request ends its connection: one pipelined after it is
	// not served.
	pipelined := "POST /victim HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 5\r\n\r\npwned" +
		"POST /victim HTTP/1.1\r\n" + host + "Content-Length: 6\r\n\r\npwned2"
	if status, _ := testkit.RawRequest(t, addr, pipelined); status != 421 {
		t.Errorf("pipelined: %d", status)
	}
	expectNext(t, c, mustPush(t, p, host, "after the refusals"))

	// Programs send neither Origin nor Sec-Fetch-Site; a browser on a page
	// of the listener's own origin sends same-origin (or none, typed in
	// the address bar). Localhost, any address (a proxy's, a NAT's) and
	// the names of -control-hosts work.
	for i, ok := range []string{
		host,
		"Host: localhost:" + port + "\r\n",
		"Host: LocalHost\r\n",
		"Host: 127.0.0.2:" + port + "\r\n",
		"Host: [::1]:" + port + "\r\n",
		"Host: gw.internal:" + port + "\r\n",
		"Host: GW.Internal.\r\n",
		"Host: 10.9.8.7:" + port + "\r\n",
		"Host: [2001:db8::7]\r\n",
		host + "Sec-Fetch-Site: same-origin\r\nOrigin: http://" + addr + "\r\n",
		host + "Sec-Fetch-Site: none\r\n",
	} {
		expectNext(t, c, mustPush(t, p, ok, fmt.Sprint("push ", i)))
		if status, body := controlRaw(t, p, "POST", "/", ok, fmt.Sprint("broadcast ", i)); status != 200 || !strings.Contains(body, `"delivered":1`) {
			t.Errorf("broadcast with %q: %d %q", ok, status, body)
		}
		expectNext(t, c, fmt.Sprint("broadcast ", i))
		if status, _ := controlRaw(t, p, "GET", "/debug/pprof/", ok, ""); status != 200 {
			t.Errorf("pprof with %q: %d", ok, status)
		}
	}
	// Health probes need no known Host, as they need no token.
	if status, body := controlRaw(t, p, "GET", "/healthz", "Host: node-7.lb.example\r\n", ""); status != 200 {
		t.Errorf("GET /healthz with a foreign Host: %d %q", status, body)
	}
	if !strings.Contains(p.logs(), "control request refused") {
		t.Error("the refusals were not logged")
	}
}

// mustPush pushes msg to "victim" with the given header lines and returns
// it.
func mustPush(t *testing.T, p *proc, header, msg string) string {
	t.Helper()
	if status, body := controlRaw(t, p, "POST", "/victim", header, msg); status != 200 {
		t.Fatalf("push with %q: %d %q", header, status, body)
	}
	return msg
}

func TestControlWithATokenChecksTheTokenNotTheHost(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	p := start(t, []string{"WS2API_CONTROL_TOKEN=s3cret"}, "-api", api.URL())
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(p.control, "http://"))
	c := testkit.Dial(t, "ws://"+p.public+"/victim", nil)
	foreign := "Host: ws2api-7.internal.example:" + port + "\r\n"
	auth := "Authorization: Bearer s3cret\r\n"

	expectNext(t, c, mustPush(t, p, foreign+auth, "any Host with the token"))
	if status, _ := controlRaw(t, p, "POST", "/victim", foreign, "no token"); status != 401 {
		t.Errorf("without the token: %d, want 401", status)
	}
	// The token does not make a web page's request welcome.
	for _, h := range []string{"Sec-Fetch-Site: cross-site\r\n", "Origin: http://evil.example\r\n"} {
		if status, _ := controlRaw(t, p, "POST", "/victim", foreign+auth+h, "pwned"); status != 403 {
			t.Errorf("with the token and %q: %d, want 403", h, status)
		}
	}
	expectNext(t, c, mustPush(t, p, foreign+auth, "after"))
}

// On a node bound to an address other than loopback, operators reach the
// control listener by that address (curl http://10.0.0.5:7002/), or by
// the address of what forwards to it; a name needs -control-hosts.
func TestControlWithoutATokenAnswersToAnyAddress(t *testing.T) {
	t.Parallel()
	ip := nonLoopbackIPv4(t)
	api := testkit.NewAPI(t)
	p := start(t, nil, "-api", api.URL(), "-control", ip+":0")
	addr := strings.TrimPrefix(p.control, "http://")
	c := testkit.Dial(t, "ws://"+p.public+"/victim", nil)
	expectNext(t, c, mustPush(t, p, "Host: "+addr+"\r\n", "by its own address"))
	expectNext(t, c, mustPush(t, p, "Host: 10.0.0.10:7002\r\n", "by a proxy's address"))
	if status, _ := controlRaw(t, p, "POST", "/", "Host: ws2api-1.internal:7002\r\n", "pwned"); status != 421 {
		t.Errorf("a name not in -control-hosts: %d, want 421", status)
	}
	resp, err := http.Post(p.control+"/victim", "text/plain", strings.NewReader("from Go"))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("Go's client: %v %v", err, resp)
	}
	resp.Body.Close()
	expectNext(t, c, "from Go")
}

func nonLoopbackIPv4(t *testing.T) string {
	t.Helper()
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	t.Skip("this machine has no IPv4 address but loopback")
	return ""
}

// attackPage is a page of another site that, once a person opens it,
// tries to push to, broadcast to and kick the clients of a gateway on
// their machine (%s: the control listener's URL).
const attackPage = `<!doctype html><title>nothing to see</title><script>
const control = %q;
const attempt = (url, opts) => fetch(url, opts).then(r => r.type + " " + r.status, e => "error: " + e.message);
Promise.all([
  attempt(control + "/victim", {method: "POST", mode: "no-cors", body: "pwned"}),
  attempt(control + "/", {method: "POST", mode: "no-cors", body: "pwned-broadcast"}),
  attempt(control + "/?id=victim&id=other", {method: "POST", mode: "no-cors", body: "pwned-many"}),
  attempt(control + "/victim?code=4000&reason=pwned", {method: "DELETE"}),
]).then(r => { window.results = r; });
</script>`

// The proof that a web page cannot drive the control listener: real
// headless Chromium opens a page of another origin that pushes,
// broadcasts and kicks with fetch (no-cors), and a page whose name was
// made to resolve to 127.0.0.1 (as DNS rebinding does) that reads, pushes
// and kicks as if the listener were its own origin. A client connected
// all along receives nothing and stays connected.
func TestControlRefusesWebPagesInChromium(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	p := start(t, nil, "-api", api.URL())
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(p.control, "http://"))
	c := testkit.Dial(t, "ws://"+p.public+"/victim", nil)
	// evil.example is 127.0.0.1 to this browser: a page of another site,
	// and later, a page rebound to the control listener.
	b := startChromium(t, "--host-resolver-rules=MAP evil.example 127.0.0.1")

	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, attackPage, p.control)
	}))
	t.Cleanup(evil.Close)
	_, evilPort, _ := net.SplitHostPort(strings.TrimPrefix(evil.URL, "http://"))
	for _, page := range []string{
		"http://evil.example:" + evilPort + "/", // another site: Sec-Fetch-Site: cross-site
		evil.URL + "/",                          // another port of 127.0.0.1: same-site, another origin
	} {
		tab := b.open(t, page)
		tab.waitFor(t, `Array.isArray(window.results)`)
		t.Logf("%s: the page's requests ended as %v", page, tab.eval(t, `window.results`))
	}
	if !strings.Contains(p.logs(), "control request refused: sent by a web page of another origin") {
		t.Error("the control listener did not log the refusals: did the page's requests reach it?")
	}
	expectNext(t, c, mustPush(t, p, "Host: 127.0.0.1:"+port+"\r\n", "after the other sites' pages"))

	// DNS rebinding: the page's origin is http://evil.example:<control
	// port>, its requests same-origin, readable, any method; only Host
	// tells the listener that the browser does not mean it.
	rebound := "http://evil.example:" + port
	tab := b.open(t, rebound+"/")
	tab.waitFor(t, `location.origin === "`+rebound+`" && document.readyState === "complete"`)
	got := tab.eval(t, `(async () => {
		const out = [];
		for (const [method, path, body] of [["GET", "/"], ["GET", "/victim"], ["GET", "/debug/pprof/"],
			["POST", "/victim", "pwned"], ["POST", "/", "pwned-broadcast"], ["DELETE", "/victim?code=4000&reason=pwned"]]) {
			try {
				const r = await fetch(path, {method, body});
				out.push(method + " " + path + " " + r.status + " " + (await r.text()).slice(0, 40));
			} catch (e) {
				out.push(method + " " + path + " error: " + e.message);
			}
		}
		return out;
	})()`)
	answers, _ := got.([]any)
	if len(answers) != 6 {
		t.Fatalf("the rebound page's requests: %v", got)
	}
	for _, a := range answers {
		if s, _ := a.(string); !strings.Contains(s, " 421 ") {
			t.Errorf("rebound page: %s; want 421", s)
		}
	}
	expectNext(t, c, mustPush(t, p, "Host: 127.0.0.1:"+port+"\r\n", "after the rebound page"))
}
