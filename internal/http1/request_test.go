package http1

import (
	"strings"
	"testing"
)

func TestBodyLength(t *testing.T) {
	for _, c := range []struct {
		head    string
		n       int
		chunked bool
		bad     bool
	}{
		{"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n", 12, false, false},
		{"POST / HTTP/1.1\r\nContent-Length: 12\r\nContent-Length: 12\r\n\r\n", 12, false, false},
		{"POST / HTTP/1.1\r\nContent-Length: 12\r\nContent-Length: 13\r\n\r\n", 0, false, true},
		{"POST / HTTP/1.1\r\nContent-Length: +12\r\n\r\n", 0, false, true},
		{"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 0, false, true},
		{"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n", 0, true, false},
		{"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n", 0, false, true},
		{"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 0, false, true},
		{"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 0, false, true},
		{"GET / HTTP/1.1\r\n\r\n", 0, false, false},
	} {
		h, err := ParseRequestHead([]byte(c.head))
		if err != nil {
			t.Fatalf("%q: %v", c.head, err)
		}
		n, chunked, err := h.BodyLength()
		if (err != nil) != c.bad || n != c.n || chunked != c.chunked {
			t.Errorf("%q: %d %v %v, want %d %v bad=%v", c.head, n, chunked, err, c.n, c.chunked, c.bad)
		}
	}
}

// Whatever a client sends as a request head, the parser neither panics
// nor lets through a name, value or target that could break the request
// ws2api builds from it, and the body framing it reports is unambiguous.
func FuzzRequestHead(f *testing.F) {
	f.Add([]byte("GET /CP1?a=1 HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"))
	f.Add([]byte("POST /x HTTP/1.0\nContent-Length: 3\n\nabc"))
	f.Add([]byte("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\n Folded: x\r\n\r\n"))
	f.Add([]byte("\r\n\nGET http://gw:7001/CP1?a=1 HTTP/1.1\r\nHost: gw:7001\r\n\r\n"))
	f.Add([]byte("GET HTTPS://gw?x HTTP/1.1\r\nHost: gw\r\nHost: gw\r\n\r\n"))
	f.Add([]byte("GET http://user@gw/x HTTP/1.1\r\n\r\n"))
	f.Add([]byte("OPTIONS * HTTP/1.1\r\n\r\n"))
	f.Add([]byte("\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		end := HeadEnd(b)
		if end < 0 {
			return
		}
		if end > len(b) {
			t.Fatalf("head end %d beyond %d bytes", end, len(b))
		}
		h, err := ParseRequestHead(b[:end])
		if err != nil {
			if strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("error text with a line break: %q", err)
			}
			return
		}
		if !ValidToken(h.Method) || h.Target == "" || strings.ContainsAny(h.Target, " \t\r\n\x00#") {
			t.Fatalf("request line %q %q", h.Method, h.Target)
		}
		if h.Target[0] != '/' && h.Target != "*" {
			t.Fatalf("target %q is not in origin form", h.Target)
		}
		if strings.ContainsAny(h.Authority, "/?@ \t") {
			t.Fatalf("authority %q", h.Authority)
		}
		for _, hd := range h.Header {
			if !ValidToken(hd.Name) || !ValidFieldValue(hd.Value) || hd.Name != CanonicalName(hd.Name) {
				t.Fatalf("header %q: %q", hd.Name, hd.Value)
			}
		}
		n, chunked, err := h.BodyLength()
		if err != nil {
			return
		}
		if n < 0 || chunked && n != 0 {
			t.Fatalf("body length %d chunked %v", n, chunked)
		}
		if chunked && len(h.Values("Content-Length")) > 0 {
			t.Fatal("chunked with a Content-Length")
		}
		rest := b[end:]
		if chunked {
			body, size, wire, err := ChunkedBody(rest, 1<<20)
			if err != nil || wire == 0 {
				return
			}
			if wire > len(rest) {
				t.Fatalf("chunked body of %d wire bytes in %d", wire, len(rest))
			}
			if size <= 1<<20 && int64(len(body)) != size {
				t.Fatalf("dechunked %d bytes, measured %d", len(body), size)
			}
		}
	})
}
