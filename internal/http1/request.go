package http1

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
)

// HeadEnd returns the length of the head at the start of b, the blank line
// that ends it included, or -1 if b does not hold all of it. A bare LF
// ends a line as CRLF does.
func HeadEnd(b []byte) int {
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		i += j + 1
		switch {
		case i < len(b) && b[i] == '\n':
			return i + 1
		case i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n':
			return i + 2
		case i >= len(b)-1:
			return -1
		}
	}
}

// RequestHead is a parsed request head.
type RequestHead struct {
	Method, Target, Proto string
	Header                []Header // canonical names, in order
}

// Get returns the first value of the named header (canonical name), or "".
func (h *RequestHead) Get(name string) string {
	for _, f := range h.Header {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// Values returns every value of the named header (canonical name).
func (h *RequestHead) Values(name string) []string {
	var out []string
	for _, f := range h.Header {
		if f.Name == name {
			out = append(out, f.Value)
		}
	}
	return out
}

// HasToken reports whether any value of the named comma-separated header
// holds token, in any case.
func (h *RequestHead) HasToken(name, token string) bool {
	for _, f := range h.Header {
		if f.Name == name && HasToken(f.Value, token) {
			return true
		}
	}
	return false
}

// ParseRequestHead parses a request head as found by HeadEnd: HTTP/1.0 or
// 1.1, no folded lines, no control characters in the target or a value.
// An error's text is a one-line reason fit for a 400 answer.
func ParseRequestHead(b []byte) (*RequestHead, error) {
	lines := strings.Split(strings.TrimRight(string(b), "\r\n"), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSuffix(l, "\r")
	}
	parts := strings.Split(lines[0], " ")
	if len(parts) != 3 || !ValidToken(parts[0]) {
		return nil, errors.New("malformed request line")
	}
	h := &RequestHead{Method: parts[0], Target: parts[1], Proto: parts[2]}
	if h.Target == "" || !ValidFieldValue(h.Target) || strings.ContainsAny(h.Target, "\t#") {
		return nil, errors.New("malformed request target")
	}
	if h.Proto != "HTTP/1.1" && h.Proto != "HTTP/1.0" {
		return nil, errors.New("unsupported protocol " + strconv.Quote(h.Proto) + ": HTTP/1.1 only")
	}
	h.Header = make([]Header, 0, len(lines)-1)
	for _, l := range lines[1:] {
		if l == "" || l[0] == ' ' || l[0] == '\t' {
			return nil, errors.New("malformed header line")
		}
		name, value, ok := strings.Cut(l, ":")
		if !ok || !ValidToken(name) {
			return nil, errors.New("malformed header line")
		}
		value = strings.Trim(value, " \t")
		if !ValidFieldValue(value) {
			return nil, errors.New("control character in header " + CanonicalName(name))
		}
		h.Header = append(h.Header, Header{Name: CanonicalName(name), Value: value})
	}
	return h, nil
}

// BodyLength says how the request's body is framed: n bytes, or chunked.
func (h *RequestHead) BodyLength() (n int, chunked bool, err error) {
	tes := h.Values("Transfer-Encoding")
	cl := h.Values("Content-Length")
	te := ""
	if len(tes) > 0 {
		te = tes[0]
	}
	switch {
	case len(tes) > 1:
		return 0, false, errors.New("more than one Transfer-Encoding header")
	case len(tes) > 0 && len(cl) > 0:
		return 0, false, errors.New("both Content-Length and Transfer-Encoding")
	case len(tes) > 0:
		if !strings.EqualFold(strings.TrimSpace(te), "chunked") {
			return 0, false, errors.New("unsupported Transfer-Encoding " + strconv.Quote(te))
		}
		return 0, true, nil
	case len(cl) == 0:
		return 0, false, nil
	}
	for _, v := range cl[1:] {
		if v != cl[0] {
			return 0, false, errors.New("conflicting Content-Length values")
		}
	}
	n64, err := strconv.ParseInt(cl[0], 10, 64)
	if err != nil || n64 < 0 || n64 > 1<<40 || cl[0][0] < '0' || cl[0][0] > '9' {
		return 0, false, errors.New("malformed Content-Length")
	}
	return int(n64), false, nil
}
