package http1

import (
	"strings"
	"testing"
)

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
		var h ResponseHead
		ok, err := ParseResponseHead([]byte(c.in), c.keepAll, &h)
		if err != nil || ok != c.ok {
			t.Errorf("%s: ok=%v err=%v", c.name, ok, err)
			continue
		}
		if !ok {
			continue
		}
		if h.Status != c.status || h.Length != c.length || h.Chunked != c.chunked || h.Close != c.close || h.UntilEOF != c.untilEOF || len(h.Header) != c.headers {
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
		var h ResponseHead
		if _, err := ParseResponseHead([]byte(bad), false, &h); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func TestChunked(t *testing.T) {
	in := "5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: x\r\n\r\nNEXT"
	body, size, wire, err := ChunkedBody([]byte(in), 1<<20)
	if err != nil || size != 11 || wire != len(in)-4 || string(body) != "hello world" {
		t.Fatalf("ChunkedBody = %q %d %d %v", body, size, wire, err)
	}
	for i := range wire {
		if _, _, w, err := ChunkedBody([]byte(in[:i]), 1<<20); err != nil || w != 0 {
			t.Fatalf("prefix of %d bytes: wire %d err %v", i, w, err)
		}
	}
	if _, _, _, err := ChunkedBody([]byte("zz\r\n"), 1<<20); err == nil {
		t.Fatal("bad chunk size accepted")
	}
	if body, size, wire, _ := ChunkedBody([]byte(in), 5); body != nil || size != 11 || wire == 0 {
		t.Fatalf("over the limit: %q %d %d", body, size, wire)
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
		var h ResponseHead
		ok, err := ParseResponseHead(b, true, &h)
		if err != nil || !ok {
			return
		}
		if h.HeadLen > len(b) {
			t.Fatalf("head of %d bytes in %d", h.HeadLen, len(b))
		}
		rest := b[h.HeadLen:]
		if h.Chunked {
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
		for _, hd := range h.Header {
			if strings.ContainsAny(hd.Name, "\r\n") || strings.ContainsAny(hd.Value, "\r\n") {
				t.Fatalf("header with a line break: %q: %q", hd.Name, hd.Value)
			}
		}
	})
}

func BenchmarkResponseParse(b *testing.B) {
	answer := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 12\r\nDate: Sun, 22 Nov 2026 06:00:00 GMT\r\n\r\n[3,\"1\",{}]\r\n")
	var h ResponseHead
	b.ReportAllocs()
	for b.Loop() {
		if ok, err := ParseResponseHead(answer, false, &h); !ok || err != nil {
			b.Fatal(err)
		}
	}
}

// Parsing an answer allocates nothing once its Content-Type has been seen.
func TestResponseParsingAllocatesNothing(t *testing.T) {
	answer := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 12\r\nDate: Sun, 22 Nov 2026 06:00:00 GMT\r\n\r\n[3,\"1\",{}]\r\n")
	var h ResponseHead
	round := func() {
		ok, err := ParseResponseHead(answer, false, &h)
		if !ok || err != nil || h.Length != 12 || len(h.Header) != 1 {
			t.Fatalf("parse: %v %v %+v", ok, err, h)
		}
	}
	round()
	if allocs := testing.AllocsPerRun(1000, round); allocs > 0 {
		t.Fatalf("%.1f allocations per answer", allocs)
	}
}
