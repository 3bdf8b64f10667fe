package control

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/ws2api/ws2api/internal/metrics"
)

func TestAdmitRefusesWebPagesAndUnknownHosts(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	open := New(Options{Hub: &stubHub{}, Metrics: metrics.New(), Logger: log, Hosts: []string{"gw.internal", "192.0.2.9", "[2001:db8::1]"}})
	guarded := New(Options{Hub: &stubHub{}, Metrics: metrics.New(), Logger: log, Token: "T"})
	push := func(host string) admission {
		return admission{method: http.MethodPost, path: "/CP1", host: host}
	}
	with := func(a admission, f func(*admission)) admission { f(&a); return a }
	for _, c := range []struct {
		name   string
		h      *Handler
		a      admission
		status int // 0: admitted
	}{
		{"a program", open, push("127.0.0.1:7002"), 0},
		{"no Host (HTTP/1.0)", open, push(""), 0},
		{"localhost", open, push("localhost:7002"), 0},
		{"localhost, any case, final dot", open, push("LOCALHOST."), 0},
		{"loopback v4", open, push("127.1.2.3"), 0},
		{"loopback v6", open, push("[::1]:7002"), 0},
		{"any address (a node's, a proxy's)", open, push("10.0.0.5:7002"), 0},
		{"any v6 address", open, push("[2001:db8::7]"), 0},
		{"a listed name", open, push("GW.internal:7002"), 0},
		{"a same-origin page", open, with(push("127.0.0.1:7002"), func(a *admission) {
			a.fetchSite, a.origin = "same-origin", "http://127.0.0.1:7002"
		}), 0},
		{"typed in the address bar", open, with(push("localhost:7002"), func(a *admission) { a.fetchSite = "none" }), 0},

		{"cross-site", open, with(push("127.0.0.1:7002"), func(a *admission) { a.fetchSite = "cross-site" }), 403},
		{"same-site", open, with(push("127.0.0.1:7002"), func(a *admission) { a.fetchSite = "same-site" }), 403},
		{"another origin", open, with(push("127.0.0.1:7002"), func(a *admission) { a.origin = "http://evil.example" }), 403},
		{"another port", open, with(push("127.0.0.1:7002"), func(a *admission) { a.origin = "http://127.0.0.1:7001" }), 403},
		{"opaque origin", open, with(push("127.0.0.1:7002"), func(a *admission) { a.origin = "null" }), 403},
		{"origin with a path", open, with(push("127.0.0.1:7002"), func(a *admission) { a.origin = "http://127.0.0.1:7002/x" }), 403},
		{"a page and the token", guarded, with(push("x"), func(a *admission) {
			a.fetchSite, a.authorization = "cross-site", "Bearer T"
		}), 403},
		{"a page probing health", open, admission{method: http.MethodGet, path: "/healthz", host: "localhost", fetchSite: "cross-site"}, 403},

		{"a rebound name", open, push("evil.example:7002"), 421},
		{"a name ending in localhost", open, push("evil-localhost:7002"), 421},
		{"localhost as a subdomain", open, push("localhost.evil.example"), 421},
		{"an address in another form", open, push("2130706433"), 421},
		{"an unlisted name", open, push("gw.internal.evil.example"), 421},
		{"a bad port", open, push("localhost:x"), 421},
		{"an unclosed bracket", open, push("[::1"), 421},
		{"health probes need no known Host", open, admission{method: http.MethodGet, path: "/healthz", host: "lb.example"}, 0},

		{"token: any Host", guarded, with(push("evil.example"), func(a *admission) { a.authorization = "Bearer T" }), 0},
		{"token: missing", guarded, push("127.0.0.1"), 401},
	} {
		res, ok := c.h.admit(c.a)
		switch {
		case c.status == 0 && !ok:
			t.Errorf("%s: refused with %d %q", c.name, res.status, res.body)
		case c.status != 0 && ok:
			t.Errorf("%s: admitted, want %d", c.name, c.status)
		case c.status != 0 && (res.status != c.status || strings.Count(string(res.body), "\n") != 1):
			t.Errorf("%s: %d %q, want %d and one line", c.name, res.status, res.body, c.status)
		}
	}
}

// ServeHTTP, as any net/http server runs it, applies the same admission.
func TestHandlerAsNetHTTPHandlerAdmitsLikeTheServer(t *testing.T) {
	t.Parallel()
	hub := &stubHub{}
	srv := httptest.NewServer(New(Options{Hub: hub, Metrics: metrics.New(), Logger: slog.New(slog.NewTextHandler(t.Output(), nil))}))
	t.Cleanup(srv.Close)
	for _, c := range []struct {
		host, fetchSite string
		status          int
	}{
		{"", "", 200}, // the URL's 127.0.0.1:port
		{"evil.example", "", 421},
		{"", "cross-site", 403},
	} {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/CP1", strings.NewReader("hi"))
		if c.host != "" {
			req.Host = c.host
		}
		if c.fetchSite != "" {
			req.Header.Set("Sec-Fetch-Site", c.fetchSite)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.status {
			t.Errorf("Host %q, Sec-Fetch-Site %q: %d, want %d", c.host, c.fetchSite, resp.StatusCode, c.status)
		}
	}
	if hub.calls[len(hub.calls)-1] != "Push CP1" || len(hub.calls) != 1 {
		t.Errorf("the hub was asked %v; want one push", hub.calls)
	}
}

func TestCheckHosts(t *testing.T) {
	t.Parallel()
	for _, ok := range [][]string{nil, {""}, {"gw.internal", " ws2api-1 ", "10.0.0.5", "::1", "[2001:db8::1]", "node_7.example."}} {
		if err := CheckHosts(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"http://gw.internal", "gw.internal:7002", "gw internal", "a..b", "*.example.com", strings.Repeat("a", 64) + ".example"} {
		if err := CheckHosts([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// Whatever the headers, a request is admitted only if no browser sent it
// for another origin and, without a token, its Host is localhost, an IP
// address or listed.
func FuzzAdmit(f *testing.F) {
	for _, s := range [][3]string{
		{"127.0.0.1:7002", "", ""}, {"evil.example", "", ""}, {"[::1]:1", "cross-site", ""},
		{"localhost", "same-origin", "http://localhost"}, {"10.0.0.5:7002", "", "null"}, {"[", "", "http://["},
	} {
		f.Add(s[0], s[1], s[2])
	}
	h := New(Options{Hub: &stubHub{}, Metrics: metrics.New(), Logger: slog.New(slog.DiscardHandler), Hosts: []string{"gw.internal"}})
	f.Fuzz(func(t *testing.T, host, fetchSite, origin string) {
		res, ok := h.admit(admission{method: http.MethodPost, path: "/CP1", host: host, fetchSite: fetchSite, origin: origin})
		if !ok {
			if res.status != http.StatusForbidden && res.status != http.StatusMisdirectedRequest {
				t.Fatalf("refused with %d", res.status)
			}
			return
		}
		if fetchSite != "" && !strings.EqualFold(fetchSite, "same-origin") && !strings.EqualFold(fetchSite, "none") {
			t.Fatalf("admitted with Sec-Fetch-Site %q", fetchSite)
		}
		if _, hostport, _ := strings.Cut(origin, "://"); origin != "" && !strings.EqualFold(hostport, host) {
			t.Fatalf("admitted with Origin %q for Host %q", origin, host)
		}
		name := strings.ToLower(hostName(host))
		_, err := netip.ParseAddr(name)
		if host != "" && name != "localhost" && name != "gw.internal" && err != nil {
			t.Fatalf("admitted with Host %q", host)
		}
	})
}
