package gateway

import (
	"bytes"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/ws2api/ws2api/internal/upstream"
	"github.com/ws2api/ws2api/internal/ws"
)

// handshake is what ws2api keeps of a client's upgrade request while the
// API decides.
type handshake struct {
	id        string
	query     string
	key       string
	protocols []string          // offered by the client, in its order
	header    []upstream.Header // sent with the connect GET
}

// reject is an answer to a request that will not be upgraded.
type reject struct {
	status   int
	text     string // one line for the client
	header   string // extra header lines, each ending in \r\n
	verbatim bool   // text is the API's own answer: sent as it is
}

func badRequest(text string) *reject { return &reject{status: http.StatusBadRequest, text: text} }

// maxIDLen bounds a client id.
const maxIDLen = 255

// reservedIDs are the control listener's own paths: an id may not be one
// of them, so that every control path is unambiguous.
var reservedIDs = map[string]bool{"metrics": true, "healthz": true, "debug": true}

// Errors of [ValidID].
var (
	ErrIDEmpty    = errors.New("empty id")
	ErrIDTooLong  = errors.New("id longer than 255 bytes")
	ErrIDChar     = errors.New("id has a character outside A-Z a-z 0-9 . _ ~ - %")
	ErrIDEscape   = errors.New("id has a '%' not followed by two hex digits")
	ErrIDReserved = errors.New("id is reserved (metrics, healthz, debug)")
)

// ValidID checks a client id as it appears in a URL path: 1 to 255 bytes of
// A-Z a-z 0-9 . _ ~ - and %XX escapes, and not a reserved name.
func ValidID(id string) error {
	switch {
	case id == "":
		return ErrIDEmpty
	case len(id) > maxIDLen:
		return ErrIDTooLong
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '~', c == '-':
		case c == '%':
			if i+2 >= len(id) || !isHex(id[i+1]) || !isHex(id[i+2]) {
				return ErrIDEscape
			}
			i += 2
		default:
			return ErrIDChar
		}
	}
	if reservedIDs[id] {
		return ErrIDReserved
	}
	return nil
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// headEnd returns the length of the request head at the start of b,
// including the blank line that ends it, or -1 if it is not complete.
func headEnd(b []byte) int {
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

// requestHead is a parsed HTTP/1.1 request head.
type requestHead struct {
	method, target, proto string
	header                []upstream.Header // canonical names, in order
}

func (h *requestHead) get(name string) string {
	for _, f := range h.header {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

func (h *requestHead) values(name string) []string {
	var out []string
	for _, f := range h.header {
		if f.Name == name {
			out = append(out, f.Value)
		}
	}
	return out
}

// hasToken reports whether a comma-separated header has token, in any
// case.
func (h *requestHead) hasToken(name, token string) bool {
	for _, f := range h.header {
		if f.Name != name {
			continue
		}
		for t := range strings.SplitSeq(f.Value, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// parseHead parses a request head (as found by headEnd).
func parseHead(b []byte) (*requestHead, *reject) {
	lines := strings.Split(strings.TrimRight(string(b), "\r\n"), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSuffix(l, "\r")
	}
	parts := strings.Split(lines[0], " ")
	if len(parts) != 3 {
		return nil, badRequest("malformed request line")
	}
	h := &requestHead{method: parts[0], target: parts[1], proto: parts[2]}
	if !validFieldValue(h.target) || strings.ContainsAny(h.target, "\t#") {
		return nil, badRequest("malformed request target")
	}
	if !strings.HasPrefix(h.proto, "HTTP/1.") || len(h.proto) != len("HTTP/1.1") || h.proto == "HTTP/1.0" {
		return nil, badRequest("a WebSocket upgrade needs HTTP/1.1")
	}
	h.header = make([]upstream.Header, 0, len(lines)-1)
	for _, l := range lines[1:] {
		if l == "" || l[0] == ' ' || l[0] == '\t' {
			return nil, badRequest("malformed header line")
		}
		name, value, ok := strings.Cut(l, ":")
		if !ok || !validToken(name) {
			return nil, badRequest("malformed header line")
		}
		value = strings.Trim(value, " \t")
		if !validFieldValue(value) {
			return nil, badRequest("control character in header " + upstream.CanonicalName(name))
		}
		h.header = append(h.header, upstream.Header{Name: upstream.CanonicalName(name), Value: value})
	}
	return h, nil
}

// parseUpgrade checks that head is a WebSocket upgrade for a valid id and
// prepares the connect GET. connID and remoteIP are the connection's.
func (s *Server) parseUpgrade(b []byte, connID, remoteIP string) (*handshake, *reject) {
	h, rej := parseHead(b)
	if rej != nil {
		return nil, rej
	}
	if h.method != http.MethodGet {
		return nil, badRequest("not a WebSocket upgrade: method must be GET (pushes go to the control listener)")
	}
	if !h.hasToken("Upgrade", "websocket") || !h.hasToken("Connection", "upgrade") {
		return nil, badRequest("not a WebSocket upgrade: Upgrade: websocket and Connection: Upgrade are required")
	}
	if h.get("Host") == "" {
		return nil, badRequest("missing Host header")
	}
	if h.get("Sec-Websocket-Version") != "13" {
		return nil, &reject{status: http.StatusBadRequest, text: "unsupported WebSocket version: only 13 is spoken",
			header: "Sec-WebSocket-Version: 13\r\n"}
	}
	key := h.get("Sec-Websocket-Key")
	if !ws.ValidKey(key) {
		return nil, badRequest("missing or malformed Sec-WebSocket-Key")
	}
	path, query, _ := strings.Cut(h.target, "?")
	if !strings.HasPrefix(path, "/") {
		return nil, badRequest("the request target must be a path: /<id>")
	}
	id, _, _ := strings.Cut(path[1:], "/")
	if err := ValidID(id); err != nil {
		return nil, badRequest("bad client id: " + err.Error())
	}

	hs := &handshake{id: id, query: query, key: key}
	for _, v := range h.values("Sec-Websocket-Protocol") {
		for p := range strings.SplitSeq(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				hs.protocols = append(hs.protocols, p)
			}
		}
	}
	hs.header = s.identity(h, connID, remoteIP)
	return hs, nil
}

// identity builds the headers of the connect GET: the connection id, the
// X-Forwarded-* trio and the forwarded handshake headers.
func (s *Server) identity(h *requestHead, connID, remoteIP string) []upstream.Header {
	out := make([]upstream.Header, 0, 4+len(s.opts.ForwardHeaders))
	out = append(out, upstream.Header{Name: HeaderConnectionID, Value: connID})
	xff := strings.Join(h.values("X-Forwarded-For"), ", ")
	if xff != "" {
		xff += ", "
	}
	out = append(out, upstream.Header{Name: "X-Forwarded-For", Value: xff + remoteIP})
	proto := h.get("X-Forwarded-Proto")
	if proto == "" {
		proto = "http"
	}
	out = append(out, upstream.Header{Name: "X-Forwarded-Proto", Value: proto})
	host := h.get("X-Forwarded-Host")
	if host == "" {
		host = h.get("Host")
	}
	out = append(out, upstream.Header{Name: "X-Forwarded-Host", Value: host})
	for _, name := range s.opts.ForwardHeaders {
		for _, v := range h.values(name) {
			out = append(out, upstream.Header{Name: name, Value: v})
		}
	}
	return out
}

// Headers ws2api adds to requests to the API.
const (
	HeaderConnectionID = "X-Ws2api-Connection-Id"
	HeaderCloseCode    = "X-Ws2api-Close-Code"
	HeaderMetaPrefix   = "X-Ws2api-Meta-"
)

// appendReject encodes an error answer; the connection is closed after it.
func appendReject(b []byte, r *reject) []byte {
	text := r.text
	if !r.verbatim {
		text = "ws2api: " + text + "\n"
	}
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(r.status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(r.status)...)
	b = append(b, "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(text)), 10)
	b = append(b, "\r\nConnection: close\r\n"...)
	b = append(b, r.header...)
	b = append(b, "\r\n"...)
	return append(b, text...)
}

// appendSwitching encodes the 101 answer that completes an upgrade.
func appendSwitching(b []byte, key, protocol string) []byte {
	b = append(b, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "...)
	b = append(b, ws.AcceptKey(key)...)
	if protocol != "" {
		b = append(b, "\r\nSec-WebSocket-Protocol: "...)
		b = append(b, protocol...)
	}
	return append(b, "\r\n\r\n"...)
}

// validToken reports whether s is an HTTP token (a valid header name).
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x80 || !tokenChars[c] {
			return false
		}
	}
	return true
}

var tokenChars = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// validFieldValue reports whether s may be a header value: no control
// characters but tab.
func validFieldValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}
