package gateway

import (
	"crypto/x509"
	"net/http"
	"strings"

	"github.com/ws2api/ws2api/internal/http1"
	"github.com/ws2api/ws2api/internal/upstream"
	"github.com/ws2api/ws2api/internal/ws"
)

// handshake is what ws2api keeps of a client's upgrade request while the
// API decides.
type handshake struct {
	id        string // canonical: decoded once (id.go)
	path      string // id escaped for the API's URLs (EscapeID)
	query     string
	key       string
	protocols []string          // offered by the client, in its order
	deflate   bool              // permessage-deflate offered and accepted
	header    []upstream.Header // sent with the connect GET
	userAgent string
}

// reject is an answer to a request that will not be upgraded.
type reject struct {
	status   int
	text     string       // one line for the client
	header   http1.Header // one more header field, if Name is set
	verbatim bool         // text is the API's own answer: sent as it is
	html     bool         // text is Options.Page
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
		header: http1.Header{Name: "Cache-Control", Value: "no-store"}}
}

func badRequest(text string) *reject { return &reject{status: http.StatusBadRequest, text: text} }

// parseUpgrade checks that head is a WebSocket upgrade for a valid id and
// prepares the connect GET. connID and remoteIP are the connection's.
func (s *Server) parseUpgrade(b []byte, connID, remoteIP string, certs []*x509.Certificate) (*handshake, *reject) {
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
	if rej := checkHeadFields(h); rej != nil {
		return nil, rej
	}
	if h.Get("Sec-Websocket-Version") != "13" {
		return nil, &reject{status: http.StatusBadRequest, text: "unsupported WebSocket version: only 13 is spoken",
			header: http1.Header{Name: "Sec-WebSocket-Version", Value: "13"}}
	}
	key := h.Get("Sec-Websocket-Key")
	if !ws.ValidKey(key) {
		return nil, badRequest("missing or malformed Sec-WebSocket-Key")
	}
	path, query, _ := strings.Cut(h.Target, "?")
	if !strings.HasPrefix(path, "/") {
		return nil, badRequest("the request target must be a path: /<id>")
	}
	seg, _, _ := strings.Cut(path[1:], "/")
	id, err := ParseID(seg)
	if err != nil {
		return nil, badRequest("bad client id: " + err.Error())
	}
	if origins := h.Values("Origin"); len(origins) > 0 && (len(origins) > 1 || !s.origins.allows(origins[0])) {
		return nil, &reject{status: http.StatusForbidden, text: "origin not allowed"}
	}

	hs := &handshake{id: id, path: EscapeID(id), query: query, key: key, userAgent: h.Get("User-Agent")}
	for _, v := range h.Values("Sec-Websocket-Protocol") {
		for p := range strings.SplitSeq(v, ",") {
			if p = strings.TrimSpace(p); p == "" {
				continue // an empty list element is ignored (RFC 9110 section 5.6.1)
			}
			if !http1.ValidToken(p) {
				return nil, badRequest("malformed Sec-WebSocket-Protocol: a subprotocol name must be a token")
			}
			hs.protocols = append(hs.protocols, p)
		}
	}
	hs.deflate = s.opts.Compression && ws.AcceptDeflate(h.Values("Sec-Websocket-Extensions"))
	hs.header = s.identity(h, connID, remoteIP, certs)
	return hs, nil
}

// checkHeadFields refuses an upgrade whose head is ambiguous: no Host or
// more than one, more than one Sec-WebSocket-Key or Sec-WebSocket-Version
// (RFC 6455 section 11.3), or a body, which an upgrade never has and
// which would otherwise be read as the client's first frames.
func checkHeadFields(h *http1.RequestHead) *reject {
	switch hosts := h.Values("Host"); {
	case len(hosts) == 0 || hosts[0] == "":
		return badRequest("missing Host header")
	case len(hosts) > 1:
		return badRequest("more than one Host header")
	}
	for _, name := range [...]string{"Sec-Websocket-Key", "Sec-Websocket-Version"} {
		if len(h.Values(name)) > 1 {
			return badRequest("more than one " + strings.ReplaceAll(name, "Websocket", "WebSocket") + " header")
		}
	}
	if len(h.Values("Transfer-Encoding")) > 0 {
		return badRequest("an upgrade request has no body: Transfer-Encoding is not allowed")
	}
	for _, v := range h.Values("Content-Length") {
		if v != "0" {
			return badRequest("an upgrade request has no body: Content-Length must be 0")
		}
	}
	return nil
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
	resp := http1.Response{Status: r.status, ContentType: "text/plain; charset=utf-8", Close: true, Body: []byte(text)}
	if r.html {
		resp.ContentType = "text/html; charset=utf-8"
	}
	if r.header.Name != "" {
		resp.Header = []http1.Header{r.header}
	}
	return http1.AppendResponse(b, &resp)
}

// appendSwitching encodes the 101 answer that completes an upgrade.
func appendSwitching(b []byte, key, protocol string, deflate bool) []byte {
	b = append(b, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "...)
	b = append(b, ws.AcceptKey(key)...)
	if protocol != "" {
		b = append(b, "\r\nSec-WebSocket-Protocol: "...)
		b = append(b, protocol...)
	}
	if deflate {
		b = append(b, "\r\nSec-WebSocket-Extensions: "+ws.DeflateExtension...)
	}
	return append(b, "\r\n\r\n"...)
}
