package upstream

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// The HTTP/1.1 the pipelined client speaks: requests are encoded straight
// into a connection's output buffer, responses parsed from its input
// buffer without copying, so a message costs no allocation on its way.

// appendRequest encodes r for the API at host, whose base path is base
// (ending in '/').
func appendRequest(b []byte, r *Request, host, base string) []byte {
	b = append(b, r.Method...)
	b = append(b, ' ')
	b = append(b, base...)
	b = append(b, r.Path...)
	if r.Query != "" && r.Method == "GET" {
		b = append(b, '?')
		b = append(b, r.Query...)
	}
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, host...)
	b = append(b, "\r\n"...)
	for _, h := range r.Header {
		b = append(b, h.Name...)
		b = append(b, ": "...)
		b = append(b, h.Value...)
		b = append(b, "\r\n"...)
	}
	if r.ContentType != "" {
		b = append(b, "Content-Type: "...)
		b = append(b, r.ContentType...)
		b = append(b, "\r\n"...)
	}
	if len(r.Body) > 0 || r.Method == "POST" || r.Method == "DELETE" {
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, int64(len(r.Body)), 10)
		b = append(b, "\r\n"...)
	}
	b = append(b, "\r\n"...)
	return append(b, r.Body...)
}

// errMalformed is an API answer that is not HTTP/1.1 as ws2api reads it;
// the connection is dropped.
var errMalformed = errors.New("malformed response from the API")

// maxHeadBytes bounds a response head.
const maxHeadBytes = 64 << 10

// respHead is a parsed response head.
type respHead struct {
	status   int
	length   int  // body length, or -1
	chunked  bool // Transfer-Encoding: chunked
	close    bool // Connection: close, or HTTP/1.0 without keep-alive
	untilEOF bool // the body runs to the end of the connection
	headLen  int
	header   []Header // all headers (keepAll) or just Content-Type
	lastCT   string   // the last Content-Type seen, to reuse its string
}

// parseHead parses the response head at the start of b into h (its header
// slice is reused). It returns false and no error when b does not hold all
// of the head yet. keepAll keeps every header (connect answers); otherwise
// only Content-Type is kept.
func parseHead(b []byte, keepAll bool, h *respHead) (bool, error) {
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 {
		if len(b) > maxHeadBytes {
			return false, fmt.Errorf("%w: head over %d bytes", errMalformed, maxHeadBytes)
		}
		return false, nil
	}
	*h = respHead{length: -1, headLen: end + 4, header: h.header[:0], lastCT: h.lastCT}
	line, rest, _ := bytes.Cut(b[:end], []byte("\r\n"))
	// HTTP/1.x SSS reason
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return false, fmt.Errorf("%w: status line %q", errMalformed, truncateBytes(line, 40))
	}
	http10 := line[7] == '0'
	st, err := strconv.Atoi(string(line[9:12]))
	if err != nil || st < 100 || st > 999 || (len(line) > 12 && line[12] != ' ') {
		return false, fmt.Errorf("%w: status line %q", errMalformed, truncateBytes(line, 40))
	}
	h.status = st
	keepAlive := false
	for len(rest) > 0 {
		var field []byte
		field, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		name, value, ok := bytes.Cut(field, []byte(":"))
		if !ok || len(name) == 0 || name[0] == ' ' || name[0] == '\t' {
			return false, fmt.Errorf("%w: header line %q", errMalformed, truncateBytes(field, 40))
		}
		value = bytes.TrimSpace(value)
		switch {
		case equalFold(name, "Content-Length"):
			n, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || n < 0 || (h.length >= 0 && int64(h.length) != n) || n > 1<<40 {
				return false, fmt.Errorf("%w: Content-Length %q", errMalformed, value)
			}
			h.length = int(n)
		case equalFold(name, "Transfer-Encoding"):
			if hasToken(value, "chunked") {
				h.chunked = true
			} else if !hasToken(value, "identity") {
				return false, fmt.Errorf("%w: Transfer-Encoding %q", errMalformed, value)
			}
		case equalFold(name, "Connection"):
			if hasToken(value, "close") {
				h.close = true
			}
			if hasToken(value, "keep-alive") {
				keepAlive = true
			}
		}
		switch {
		case equalFold(name, "Content-Type"):
			// Answers of one API mostly carry the same type: keep its
			// string rather than make a new one each time.
			if string(value) != h.lastCT {
				h.lastCT = string(value)
			}
			h.header = append(h.header, Header{Name: "Content-Type", Value: h.lastCT})
		case keepAll:
			h.header = append(h.header, Header{Name: string(name), Value: string(value)})
		}
	}
	if http10 && !keepAlive {
		h.close = true
	}
	switch {
	case st < 200 || st == 204 || st == 304:
		h.length, h.chunked = 0, false
	case h.chunked:
		h.length = -1
	case h.length < 0:
		h.untilEOF, h.close = true, true
	}
	return true, nil
}

// chunkedEnd scans a chunked body at the start of b. It returns the body's
// decoded length and the bytes it takes on the wire (trailers included), or
// wire == 0 if b does not hold all of it.
func chunkedEnd(b []byte) (size, wire int, err error) {
	i := 0
	for {
		eol := bytes.Index(b[i:], []byte("\r\n"))
		if eol < 0 {
			if len(b)-i > 1024 {
				return 0, 0, fmt.Errorf("%w: chunk size line too long", errMalformed)
			}
			return 0, 0, nil
		}
		line := b[i : i+eol]
		if semi := bytes.IndexByte(line, ';'); semi >= 0 {
			line = line[:semi]
		}
		n, err := strconv.ParseInt(string(bytes.TrimSpace(line)), 16, 64)
		if err != nil || n < 0 || n > 1<<40 {
			return 0, 0, fmt.Errorf("%w: chunk size %q", errMalformed, truncateBytes(line, 20))
		}
		i += eol + 2
		if n == 0 {
			// Trailers, then a blank line.
			for {
				eol := bytes.Index(b[i:], []byte("\r\n"))
				if eol < 0 {
					return 0, 0, nil
				}
				i += eol + 2
				if eol == 0 {
					return size, i, nil
				}
			}
		}
		if len(b)-i < int(n)+2 {
			return 0, 0, nil
		}
		if b[i+int(n)] != '\r' || b[i+int(n)+1] != '\n' {
			return 0, 0, fmt.Errorf("%w: chunk not followed by CRLF", errMalformed)
		}
		size += int(n)
		i += int(n) + 2
	}
}

// dechunk decodes a complete chunked body (as measured by chunkedEnd) into
// dst.
func dechunk(dst, b []byte) []byte {
	for {
		eol := bytes.Index(b, []byte("\r\n"))
		line := b[:eol]
		if semi := bytes.IndexByte(line, ';'); semi >= 0 {
			line = line[:semi]
		}
		n, _ := strconv.ParseInt(string(bytes.TrimSpace(line)), 16, 64)
		b = b[eol+2:]
		if n == 0 {
			return dst
		}
		dst = append(dst, b[:n]...)
		b = b[n+2:]
	}
}

func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c, d := b[i], s[i]
		if c|0x20 != d|0x20 || (c|0x20 < 'a' || c|0x20 > 'z') && c != d {
			return false
		}
	}
	return true
}

func hasToken(v []byte, token string) bool {
	for len(v) > 0 {
		var t []byte
		t, v, _ = bytes.Cut(v, []byte(","))
		if equalFold(bytes.TrimSpace(t), token) {
			return true
		}
	}
	return false
}

func truncateBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
