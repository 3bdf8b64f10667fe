package http1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http/httputil"
	"testing"
)

// feedIn decodes b in pieces of the given size.
func feedIn(b []byte, piece int) (body []byte, used int, done bool, err error) {
	var c Chunked
	for used < len(b) && !done && err == nil {
		end := min(used+piece, len(b))
		var n int
		body, n, done, err = c.Feed(body, b[used:end], true)
		used += n
		if !done && err == nil && n < end-used+n {
			break // cannot happen: an unfinished body takes every byte
		}
	}
	return body, used, done, err
}

func TestChunkedDecodesInAnyPieces(t *testing.T) {
	wire := []byte("5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\nNEXT")
	for _, piece := range []int{1, 2, 3, 7, len(wire)} {
		body, used, done, err := feedIn(wire, piece)
		if err != nil || !done || string(body) != "hello world" || string(wire[used:]) != "NEXT" {
			t.Fatalf("pieces of %d: body %q, used %d, done %v, err %v", piece, body, used, done, err)
		}
	}
	for _, bad := range []string{"x\r\n", "5\r\nhelloXY", "\r\n", "0;\r\r0000\r00\r\n\r\n", "5;a\rb\r\nhello\r\n0\r\n\r\n", "5\r\nhello\r\n" + string(bytes.Repeat([]byte("a"), 5000))} {
		if _, _, _, err := feedIn([]byte(bad), 1); !errors.Is(err, ErrMalformed) {
			t.Errorf("%.20q: err %v, want ErrMalformed", bad, err)
		}
	}
}

// FuzzChunked: the decoder gives the same result whatever the pieces the
// body arrives in, and agrees with net/http's chunked reader.
func FuzzChunked(f *testing.F) {
	f.Add([]byte("5\r\nhello\r\n0\r\n\r\n"))
	f.Add([]byte("3;a=b\r\nabc\r\n0\r\nT: v\r\n\r\nrest"))
	f.Add([]byte("10\r\n0123456789abcdef\r\n0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, wire []byte) {
		body, used, done, err := feedIn(wire, len(wire)+1)
		for _, piece := range []int{1, 7} {
			b2, u2, d2, e2 := feedIn(wire, piece)
			if (err == nil) != (e2 == nil) || done != d2 || (done && (u2 != used || !bytes.Equal(b2, body))) {
				t.Fatalf("pieces of %d: %q %d %v %v; whole: %q %d %v %v", piece, b2, u2, d2, e2, body, used, done, err)
			}
		}
		if !done {
			return
		}
		// net/http's reader stops after the last chunk's line; the
		// trailers are the caller's.
		br := bufio.NewReader(bytes.NewReader(wire[:used]))
		std, serr := io.ReadAll(httputil.NewChunkedReader(br))
		if serr != nil || !bytes.Equal(std, body) {
			t.Fatalf("net/http: %q %v; ours %q", std, serr, body)
		}
	})
}
