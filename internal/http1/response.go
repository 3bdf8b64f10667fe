package http1

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// ErrMalformed is an answer that is not HTTP/1.1 as ws2api reads it.
var ErrMalformed = errors.New("malformed response from the API")

// MaxHeadBytes bounds a response head.
const MaxHeadBytes = 64 << 10

// ResponseHead is a parsed response head. Reuse one for a connection's
// answers: its header slice and the last Content-Type string are kept.
type ResponseHead struct {
	Status   int
	Length   int  // body length, or -1
	Chunked  bool // Transfer-Encoding: chunked
	Close    bool // Connection: close, or HTTP/1.0 without keep-alive
	UntilEOF bool // the body runs to the end of the connection
	HeadLen  int
	Header   []Header // all headers (keepAll) or just Content-Type
	lastCT   string   // the last Content-Type seen, to reuse its string
}

// ParseResponseHead parses the response head at the start of b into h. It
// returns false and no error when b does not hold all of the head yet.
// keepAll keeps every header; otherwise only Content-Type is kept.
func ParseResponseHead(b []byte, keepAll bool, h *ResponseHead) (bool, error) {
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 {
		if len(b) > MaxHeadBytes {
			return false, fmt.Errorf("%w: head over %d bytes", ErrMalformed, MaxHeadBytes)
		}
		return false, nil
	}
	*h = ResponseHead{Length: -1, HeadLen: end + 4, Header: h.Header[:0], lastCT: h.lastCT}
	line, rest, _ := bytes.Cut(b[:end], []byte("\r\n"))
	// HTTP/1.x SSS reason
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return false, fmt.Errorf("%w: status line %q", ErrMalformed, truncateBytes(line, 40))
	}
	http10 := line[7] == '0'
	st, err := strconv.Atoi(string(line[9:12]))
	if err != nil || st < 100 || st > 999 || (len(line) > 12 && line[12] != ' ') {
		return false, fmt.Errorf("%w: status line %q", ErrMalformed, truncateBytes(line, 40))
	}
	h.Status = st
	keepAlive := false
	for len(rest) > 0 {
		var field []byte
		field, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		name, value, ok := bytes.Cut(field, []byte(":"))
		if !ok || len(name) == 0 || name[0] == ' ' || name[0] == '\t' {
			return false, fmt.Errorf("%w: header line %q", ErrMalformed, truncateBytes(field, 40))
		}
		value = bytes.TrimSpace(value)
		switch {
		case equalFold(name, "Content-Length"):
			n, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || n < 0 || (h.Length >= 0 && int64(h.Length) != n) || n > 1<<40 {
				return false, fmt.Errorf("%w: Content-Length %q", ErrMalformed, value)
			}
			h.Length = int(n)
		case equalFold(name, "Transfer-Encoding"):
			if hasToken(value, "chunked") {
				h.Chunked = true
			} else if !hasToken(value, "identity") {
				return false, fmt.Errorf("%w: Transfer-Encoding %q", ErrMalformed, value)
			}
		case equalFold(name, "Connection"):
			if hasToken(value, "close") {
				h.Close = true
			}
			if hasToken(value, "keep-alive") {
				keepAlive = true
			}
		}
		kept := keepAll || equalFold(name, "Content-Type")
		if kept && (!ValidToken(string(name)) || !ValidFieldValue(string(value))) {
			// A kept header travels on (meta headers go into later
			// requests): no odd name, no line break or control byte.
			return false, fmt.Errorf("%w: header line %q", ErrMalformed, truncateBytes(field, 40))
		}
		switch {
		case equalFold(name, "Content-Type"):
			// Answers of one API mostly carry the same type: keep its
			// string rather than make a new one each time.
			if string(value) != h.lastCT {
				h.lastCT = string(value)
			}
			h.Header = append(h.Header, Header{Name: "Content-Type", Value: h.lastCT})
		case keepAll:
			h.Header = append(h.Header, Header{Name: string(name), Value: string(value)})
		}
	}
	if http10 && !keepAlive {
		h.Close = true
	}
	switch {
	case st < 200 || st == 204 || st == 304:
		h.Length, h.Chunked = 0, false
	case h.Chunked:
		h.Length = -1
	case h.Length < 0:
		h.UntilEOF, h.Close = true, true
	}
	return true, nil
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
