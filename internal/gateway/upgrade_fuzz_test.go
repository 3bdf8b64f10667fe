package gateway

import (
	"net/url"
	"strings"
	"testing"

	"github.com/ws2api/ws2api/internal/http1"
)

func FuzzValidID(f *testing.F) {
	for _, s := range []string{"CP-001", "a.b_c~d", "%41%42", "%zz", "", "metrics", "a/b", "é", strings.Repeat("x", 256)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if ValidID(id) != nil {
			return
		}
		if len(id) == 0 || len(id) > maxIDLen {
			t.Fatalf("accepted id of %d bytes", len(id))
		}
		if strings.ContainsAny(id, "/?#\r\n ") {
			t.Fatalf("accepted %q", id)
		}
		// Every accepted id makes a valid URL path for the API.
		if _, err := url.PathUnescape(id); err != nil {
			t.Fatalf("accepted %q, which is not a valid escaped path: %v", id, err)
		}
		if reservedIDs[id] {
			t.Fatalf("accepted reserved id %q", id)
		}
	})
}

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
	s := &Server{}
	s.opts.ForwardHeaders = append(DefaultForwardHeaders, "X-Custom")
	var err error
	if s.origins, err = parseOrigins([]string{"https://a", "https://*.b.example", "null"}); err != nil {
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
		hs, rej := s.parseUpgrade(b[:n], "conn-1", "192.0.2.1")
		if rej != nil {
			if rej.status != 400 && rej.status != 403 || rej.text == "" {
				t.Fatalf("reject %+v", rej)
			}
			return
		}
		if err := ValidID(hs.id); err != nil {
			t.Fatalf("accepted bad id %q: %v", hs.id, err)
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
	})
}
