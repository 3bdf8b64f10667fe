package gateway

import (
	"strings"
	"testing"

	"github.com/ws2api/ws2api/internal/http1"
)

const fuzzHead = "GET /CP1?x=1 HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n" +
	"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: https://a\r\n" +
	"X-Forwarded-For: 10.0.0.1\r\nX-Ws2api-Meta-User: spoof\r\nCookie: a=b\r\n\r\n"

// Whatever the head, what reaches the API is well formed: a valid id, no
// header a client could use to pass as ws2api, no control characters, and
// the client's address last in X-Forwarded-For.
func FuzzParseUpgrade(f *testing.F) {
	f.Add([]byte(fuzzHead))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte("GET /a HTTP/1.1\nHost: x\nUpgrade: websocket\nConnection: upgrade\nSec-WebSocket-Version: 13\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\n"))
	f.Add([]byte("GET /a HTTP/1.1\r\nHost: x\r\n X-Folded: y\r\n\r\n"))
	// Heads RFC 9112 allows, and ambiguous ones it does not.
	f.Add([]byte("\r\n\r\nGET http://gw:7001/CP1?x=1 HTTP/1.1\r\nHost: gw:7001\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: ocpp1.6, ocpp2.0.1\r\n\r\n"))
	f.Add([]byte(strings.Replace(fuzzHead, "Host: gw\r\n", "Host: gw\r\nHost: evil\r\n", 1)))
	f.Add([]byte(strings.Replace(fuzzHead, "Cookie: a=b\r\n", "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", 1)))
	f.Add([]byte(strings.Replace(fuzzHead, "Cookie: a=b\r\n", "Sec-WebSocket-Protocol: a b, c/d\r\nSec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n", 1)))
	f.Add([]byte(strings.Replace(fuzzHead, "Cookie: a=b\r\n", "X-Forwarded-Proto: gopher\r\nX-Forwarded-Host: evil\r\n", 1)))
	f.Add([]byte(strings.Replace(fuzzHead, "Cookie: a=b\r\n", "Client-Cert: :AQID:\r\nClient-Cert-Chain: :BAU=:, :x:\r\n", 1)))
	s := &Server{}
	s.opts.ForwardHeaders = append(DefaultForwardHeaders, "X-Custom")
	var err error
	if s.origins, err = parseOrigins([]string{"https://a", "https://*.b.example", "null"}); err != nil {
		f.Fatal(err)
	}
	// The same server behind a proxy it trusts: the client's address is
	// the proxy's.
	behind := &Server{opts: s.opts, origins: s.origins}
	if behind.trusted, err = ParseTrustedProxies([]string{"192.0.2.0/24"}); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n := http1.HeadEnd(b)
		if n < 0 {
			return
		}
		if n > len(b) {
			t.Fatalf("head end %d beyond %d bytes", n, len(b))
		}
		hs, rej := s.parseUpgrade(b[:n], "conn-1", "192.0.2.1", nil)
		if rej != nil {
			if rej.status != 400 && rej.status != 403 || rej.text == "" {
				t.Fatalf("reject %+v", rej)
			}
			return
		}
		if err := CheckID(hs.id); err != nil {
			t.Fatalf("accepted bad id %q: %v", hs.id, err)
		}
		if hs.path != EscapeID(hs.id) {
			t.Fatalf("id %q goes to the API as %q, want %q", hs.id, hs.path, EscapeID(hs.id))
		}
		var xff string
		for _, h := range hs.header {
			if h.Name == "Origin" && !s.origins.allows(h.Value) {
				t.Fatalf("origin %q let through", h.Value)
			}
			if !http1.ValidToken(h.Name) || !http1.ValidFieldValue(h.Value) {
				t.Fatalf("malformed header forwarded: %q: %q", h.Name, h.Value)
			}
			if strings.HasPrefix(h.Name, "X-Ws2api-") && h.Name != HeaderConnectionID {
				t.Fatalf("client header %s forwarded", h.Name)
			}
			if h.Name == HeaderConnectionID && h.Value != "conn-1" {
				t.Fatalf("connection id %q forwarded", h.Value)
			}
			if h.Name == "X-Forwarded-For" {
				xff = h.Value
			}
		}
		if !strings.HasSuffix(xff, "192.0.2.1") {
			t.Fatalf("X-Forwarded-For %q does not end with the client address", xff)
		}
		if !http1.ValidFieldValue(hs.query) || strings.ContainsAny(hs.query, "# \t") {
			t.Fatalf("query %q", hs.query)
		}
		for _, p := range hs.protocols {
			if !http1.ValidToken(p) {
				t.Fatalf("subprotocol %q is not a token", p)
			}
		}
		// Untrusted, the client's X-Forwarded-* never reach the API; no
		// header that frames the GET is ever copied onto it.
		checkForwarded(t, hs, func(name, v string) bool {
			return name == "X-Forwarded-For" && v == "192.0.2.1" || name == "X-Forwarded-Proto" && v == "http" || name == "X-Forwarded-Host"
		})
		for _, h := range hs.header {
			if h.Name == HeaderClientCert || h.Name == HeaderClientCertChain {
				t.Fatalf("a client's own %s reached the API: %q", h.Name, h.Value)
			}
		}
		if hs, rej = behind.parseUpgrade(b[:n], "conn-1", "192.0.2.1", nil); rej != nil {
			t.Fatalf("refused behind a proxy, accepted before: %+v", rej)
		}
		for _, h := range hs.header {
			if h.Name == HeaderClientCert && !isSFBinary(h.Value) || h.Name == HeaderClientCertChain && !isSFBinaryList(h.Value) {
				t.Fatalf("a proxy's malformed %s reached the API: %q", h.Name, h.Value)
			}
		}
		checkForwarded(t, hs, func(name, v string) bool {
			return name == "X-Forwarded-For" && strings.HasSuffix(v, "192.0.2.1") ||
				name == "X-Forwarded-Proto" && (v == "http" || v == "https") || name == "X-Forwarded-Host"
		})
	})
}

// checkForwarded checks the connect GET's headers: each X-Forwarded-* once,
// as ok says, and no framing or hop-by-hop header.
func checkForwarded(t *testing.T, hs *handshake, ok func(name, value string) bool) {
	t.Helper()
	seen := map[string]int{}
	for _, h := range hs.header {
		switch h.Name {
		case "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host":
			seen[h.Name]++
			if !ok(h.Name, h.Value) {
				t.Fatalf("%s: %q", h.Name, h.Value)
			}
		case HeaderConnectionID:
		case HeaderClientCert, HeaderClientCertChain: // checked by the caller
		default:
			if err := CheckForwardHeader(h.Name); err != nil {
				t.Fatalf("header %s copied onto the connect GET: %v", h.Name, err)
			}
		}
	}
	if len(seen) != 3 || seen["X-Forwarded-For"] != 1 || seen["X-Forwarded-Proto"] != 1 || seen["X-Forwarded-Host"] != 1 {
		t.Fatalf("X-Forwarded-* headers %v, want one of each", seen)
	}
}
