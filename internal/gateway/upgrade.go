package gateway

import (
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/ws2api/ws2api/internal/http1"
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
	userAgent string
}

// reject is an answer to a request that will not be upgraded.
type reject struct {
	status   int
	text     string // one line for the client
	header   string // extra header lines, each ending in \r\n
	verbatim bool   // text is the API's own answer: sent as it is
	html     bool   // text is Options.Page
}

// page answers a plain GET / with Options.Page, if there is one; nil for
// every other request.
func (s *Server) page(head []byte) *reject {
	if s.opts.Page == nil {
		return nil
	}
	h, err := http1.ParseRequestHead(head)
	if err != nil || h.Method != http.MethodGet || h.Get("Upgrade") != "" {
		return nil
	}
	if path, _, _ := strings.Cut(h.Target, "?"); path != "/" {
		return nil
	}
	return &reject{status: http.StatusOK, text: string(s.opts.Page), verbatim: true, html: true,
		header: "Cache-Control: no-store\r\n"}
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

// parseUpgrade checks that head is a WebSocket upgrade for a valid id and
// prepares the connect GET. connID and remoteIP are the connection's.
func (s *Server) parseUpgrade(b []byte, connID, remoteIP string) (*handshake, *reject) {
	h, err := http1.ParseRequestHead(b)
	if err != nil {
		return nil, badRequest(err.Error())
	}
	if h.Proto != "HTTP/1.1" {
		return nil, badRequest("a WebSocket upgrade needs HTTP/1.1")
	}
	if h.Method != http.MethodGet {
		return nil, badRequest("not a WebSocket upgrade: method must be GET (pushes go to the control listener)")
	}
	if !h.HasToken("Upgrade", "websocket") || !h.HasToken("Connection", "upgrade") {
		return nil, badRequest("not a WebSocket upgrade: Upgrade: websocket and Connection: Upgrade are required")
	}
	if h.Get("Host") == "" {
		return nil, badRequest("missing Host header")
	}
	if h.Get("Sec-Websocket-Version") != "13" {
		return nil, &reject{status: http.StatusBadRequest, text: "unsupported WebSocket version: only 13 is spoken",
			header: "Sec-WebSocket-Version: 13\r\n"}
	}
	key := h.Get("Sec-Websocket-Key")
	if !ws.ValidKey(key) {
		return nil, badRequest("missing or malformed Sec-WebSocket-Key")
	}
	path, query, _ := strings.Cut(h.Target, "?")
	if !strings.HasPrefix(path, "/") {
		return nil, badRequest("the request target must be a path: /<id>")
	}
	id, _, _ := strings.Cut(path[1:], "/")
	if err := ValidID(id); err != nil {
		return nil, badRequest("bad client id: " + err.Error())
	}
	if origins := h.Values("Origin"); len(origins) > 0 && (len(origins) > 1 || !s.origins.allows(origins[0])) {
		return nil, &reject{status: http.StatusForbidden, text: "origin not allowed"}
	}

	hs := &handshake{id: id, query: query, key: key, userAgent: h.Get("User-Agent")}
	for _, v := range h.Values("Sec-Websocket-Protocol") {
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
func (s *Server) identity(h *http1.RequestHead, connID, remoteIP string) []upstream.Header {
	out := make([]upstream.Header, 0, 4+len(s.opts.ForwardHeaders))
	out = append(out, upstream.Header{Name: HeaderConnectionID, Value: connID})
	xff := strings.Join(h.Values("X-Forwarded-For"), ", ")
	if xff != "" {
		xff += ", "
	}
	out = append(out, upstream.Header{Name: "X-Forwarded-For", Value: xff + remoteIP})
	// Behind a proxy, the proxy says; when ws2api terminates TLS itself,
	// it knows.
	proto := h.Get("X-Forwarded-Proto")
	switch {
	case s.opts.TLS != nil:
		proto = "https"
	case proto == "":
		proto = "http"
	}
	out = append(out, upstream.Header{Name: "X-Forwarded-Proto", Value: proto})
	host := h.Get("X-Forwarded-Host")
	if host == "" {
		host = h.Get("Host")
	}
	out = append(out, upstream.Header{Name: "X-Forwarded-Host", Value: host})
	for _, name := range s.opts.ForwardHeaders {
		for _, v := range h.Values(name) {
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
	if r.html {
		b = append(b, "\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: "...)
	} else {
		b = append(b, "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: "...)
	}
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
