package upstream

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestAppendRequestIsReadableByNetHTTP(t *testing.T) {
	r := &Request{
		Method: "POST", Path: "CP%2F1", ContentType: "text/plain; charset=utf-8", Body: []byte("hello"),
		Header: []Header{{"X-Ws2api-Connection-Id", "abc-1"}, {"X-Ws2api-Meta-User", "42"}},
	}
	get := &Request{Method: "GET", Path: "CP1", Query: "a=1&b=2", Header: []Header{{"Origin", "https://x"}}}
	del := &Request{Method: "DELETE", Path: "CP1", ContentType: "text/plain; charset=utf-8"}
	var b []byte
	for _, req := range []*Request{r, get, del} {
		b = appendRequest(b, req, "api:8000", "/ws/")
	}
	br := bufio.NewReader(bytes.NewReader(b))
	want := []struct{ method, uri, body, ct string }{
		{"POST", "/ws/CP%2F1", "hello", "text/plain; charset=utf-8"},
		{"GET", "/ws/CP1?a=1&b=2", "", ""},
		{"DELETE", "/ws/CP1", "", "text/plain; charset=utf-8"},
	}
	for i, w := range want {
		req, err := http.ReadRequest(br)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, _ := io.ReadAll(req.Body)
		if req.Method != w.method || req.RequestURI != w.uri || string(body) != w.body || req.Header.Get("Content-Type") != w.ct || req.Host != "api:8000" {
			t.Errorf("request %d: %s %s body %q ct %q host %q", i, req.Method, req.RequestURI, body, req.Header.Get("Content-Type"), req.Host)
		}
	}
	if _, err := http.ReadRequest(br); err != io.EOF {
		t.Fatalf("trailing bytes: %v", err)
	}
}

func TestParseHead(t *testing.T) {
	cases := []struct {
		name, in string
		keepAll  bool
		ok       bool
		status   int
		length   int
		chunked  bool
		close    bool
		untilEOF bool
		headers  int
	}{
		{"content length", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello", false, true, 200, 5, false, false, false, 1},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, true, 200, -1, true, false, false, 0},
		{"close", "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", false, true, 503, 0, false, true, false, 0},
		{"until eof", "HTTP/1.1 200 OK\r\nX-A: b\r\n\r\nbody...", true, true, 200, -1, false, true, true, 1},
		{"no body 204", "HTTP/1.1 204 No Content\r\n\r\n", false, true, 204, 0, false, false, false, 0},
		{"http 1.0", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", false, true, 200, 2, false, true, false, 0},
		{"http 1.0 keep-alive", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", false, true, 200, 2, false, false, false, 0},
		{"no reason", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", false, true, 200, 0, false, false, false, 0},
		{"incomplete", "HTTP/1.1 200 OK\r\nContent-Le", false, false, 0, 0, false, false, false, 0},
	}
	for _, c := range cases {
		var h respHead
		ok, err := parseHead([]byte(c.in), c.keepAll, &h)
		if err != nil || ok != c.ok {
			t.Errorf("%s: ok=%v err=%v", c.name, ok, err)
			continue
		}
		if !ok {
			continue
		}
		if h.status != c.status || h.length != c.length || h.chunked != c.chunked || h.close != c.close || h.untilEOF != c.untilEOF || len(h.header) != c.headers {
			t.Errorf("%s: %+v", c.name, h)
		}
	}
	for _, bad := range []string{
		"HTTP/2 200 OK\r\n\r\n",
		"HTTP/1.1 2x0 OK\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
		"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n",
		"garbage\r\n\r\n",
	} {
		var h respHead
		if _, err := parseHead([]byte(bad), false, &h); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func TestChunked(t *testing.T) {
	in := "5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: x\r\n\r\nNEXT"
	size, wire, err := chunkedEnd([]byte(in))
	if err != nil || size != 11 || wire != len(in)-4 {
		t.Fatalf("chunkedEnd = %d %d %v", size, wire, err)
	}
	if got := string(dechunk(nil, []byte(in[:wire]))); got != "hello world" {
		t.Fatalf("dechunk = %q", got)
	}
	for i := range wire {
		if _, w, err := chunkedEnd([]byte(in[:i])); err != nil || w != 0 {
			t.Fatalf("prefix of %d bytes: wire %d err %v", i, w, err)
		}
	}
	if _, _, err := chunkedEnd([]byte("zz\r\n")); err == nil {
		t.Fatal("bad chunk size accepted")
	}
}

// Whatever the API sends, the parser neither panics nor claims more bytes
// than it was given, and a body it accepts has the length it announced.
func FuzzResponseParser(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"))
	f.Add([]byte("HTTP/1.0 200 OK\r\n\r\nuntil eof"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var h respHead
		ok, err := parseHead(b, true, &h)
		if err != nil || !ok {
			return
		}
		if h.headLen > len(b) {
			t.Fatalf("head of %d bytes in %d", h.headLen, len(b))
		}
		rest := b[h.headLen:]
		if h.chunked {
			size, wire, err := chunkedEnd(rest)
			if err != nil || wire == 0 {
				return
			}
			if wire > len(rest) {
				t.Fatalf("chunked body of %d wire bytes in %d", wire, len(rest))
			}
			if got := len(dechunk(nil, rest[:wire])); got != size {
				t.Fatalf("dechunked %d bytes, measured %d", got, size)
			}
		}
		for _, hd := range h.header {
			if strings.ContainsAny(hd.Name, "\r\n") || strings.ContainsAny(hd.Value, "\r\n") {
				t.Fatalf("header with a line break: %q: %q", hd.Name, hd.Value)
			}
		}
	})
}

// Encoding a message's POST and parsing its answer allocate nothing once
// the buffers are warm.
func TestWireAllocatesNothing(t *testing.T) {
	r := &Request{Method: "POST", Path: "CP1", ContentType: "text/plain; charset=utf-8", Body: []byte(`[2,"1","Heartbeat",{}]`),
		Header: []Header{{"X-Ws2api-Connection-Id", "a1b2c3d4-1"}}}
	answer := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 12\r\nDate: Sun, 22 Nov 2026 06:00:00 GMT\r\n\r\n[3,\"1\",{}]\r\n")
	var out []byte
	var h respHead
	round := func() {
		out = appendRequest(out[:0], r, "api:8000", "/")
		ok, err := parseHead(answer, false, &h)
		if !ok || err != nil || h.length != 12 || len(h.header) != 1 {
			t.Fatalf("parse: %v %v %+v", ok, err, h)
		}
	}
	round()
	if allocs := testing.AllocsPerRun(1000, round); allocs > 0 {
		t.Fatalf("%.1f allocations per request and answer", allocs)
	}
}

func BenchmarkRequestEncode(b *testing.B) {
	r := &Request{Method: "POST", Path: "CP1", ContentType: "text/plain; charset=utf-8", Body: []byte(`[2,"1","Heartbeat",{}]`),
		Header: []Header{{"X-Ws2api-Connection-Id", "a1b2c3d4-1"}}}
	var out []byte
	b.ReportAllocs()
	for b.Loop() {
		out = appendRequest(out[:0], r, "api:8000", "/")
	}
}

func BenchmarkResponseParse(b *testing.B) {
	answer := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 12\r\nDate: Sun, 22 Nov 2026 06:00:00 GMT\r\n\r\n[3,\"1\",{}]\r\n")
	var h respHead
	b.ReportAllocs()
	for b.Loop() {
		if ok, err := parseHead(answer, false, &h); !ok || err != nil {
			b.Fatal(err)
		}
	}
}
