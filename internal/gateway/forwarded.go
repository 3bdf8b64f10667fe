package gateway

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/ws2api/ws2api/internal/http1"
	"github.com/ws2api/ws2api/internal/upstream"
)

// What the connect GET says of the client: the headers the client sent that
// Options.ForwardHeaders names, and the X-Forwarded-* trio, which ws2api
// writes itself unless the client's peer is a proxy it trusts
// (Options.TrustedProxies).

// CheckForwardHeader reports why a header may not be one of
// Options.ForwardHeaders (-forward-headers), or nil. A forwarded header is
// copied from the client's handshake onto the connect GET as it came, so it
// must not be one that frames or routes that request (Content-Length,
// Transfer-Encoding, Host, the hop-by-hop headers, Proxy-*): a client's
// Content-Length would make the API read the next request on the same
// connection, another client's GET with its cookies, as a body. Nor may it
// be one of ws2api's own X-Ws2api-* headers.
func CheckForwardHeader(name string) error {
	if !http1.ValidToken(name) {
		return fmt.Errorf("%q is not a valid header name", name)
	}
	lower := strings.ToLower(name)
	switch {
	case strings.HasPrefix(lower, "x-ws2api-"):
		return fmt.Errorf("%s: clients may never set X-Ws2api-* headers", name)
	case strings.HasPrefix(lower, "proxy-"):
		return fmt.Errorf("%s: a hop-by-hop header cannot be forwarded", name)
	}
	switch lower {
	case "content-length", "transfer-encoding", "host", "expect":
		return fmt.Errorf("%s: it frames or routes the request to the API, and cannot be forwarded", name)
	case "connection", "upgrade", "keep-alive", "te", "trailer":
		return fmt.Errorf("%s: a hop-by-hop header cannot be forwarded", name)
	}
	return nil
}

// forwardHeaders checks and canonicalises Options.ForwardHeaders. The
// X-Forwarded-* trio is left out: ws2api always sends it, see identity.
func forwardHeaders(names []string) ([]string, error) {
	out := make([]string, 0, len(names))
	for _, h := range names {
		if h = strings.TrimSpace(h); h == "" {
			continue
		}
		if err := CheckForwardHeader(h); err != nil {
			return nil, fmt.Errorf("gateway: forwarded header %w", err)
		}
		switch h = http1.CanonicalName(h); h {
		case "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host":
			continue
		}
		out = append(out, h)
	}
	return out, nil
}

// ParseTrustedProxies parses Options.TrustedProxies (-trusted-proxies):
// CIDRs (10.0.0.0/8, fd00::/8) or single addresses (127.0.0.1).
func ParseTrustedProxies(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, e := range list {
		if e = strings.TrimSpace(e); e == "" {
			continue
		}
		if strings.Contains(e, "/") {
			p, err := netip.ParsePrefix(e)
			if err != nil {
				return nil, fmt.Errorf("%q is not a CIDR such as 10.0.0.0/8", e)
			}
			if p.Addr().Is4In6() {
				p = netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0))
			}
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(e)
		if err != nil || a.Zone() != "" {
			return nil, fmt.Errorf("%q is not an IP address or a CIDR", e)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// trusts reports whether the client's peer, remoteIP, is a trusted proxy.
func (s *Server) trusts(remoteIP string) bool {
	if len(s.trusted) == 0 {
		return false
	}
	a, err := netip.ParseAddr(remoteIP)
	if err != nil {
		return false
	}
	a = a.Unmap().WithZone("")
	for _, p := range s.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// identity builds the headers of the connect GET: the connection id, the
// X-Forwarded-* trio and the forwarded handshake headers.
//
// From a trusted proxy the trio is the proxy's: its X-Forwarded-For with
// the proxy's own address appended, its X-Forwarded-Host, and its
// X-Forwarded-Proto if that is http or https. From anyone else a client
// could claim any address, host or scheme: ws2api drops what it sent and
// says what it knows itself, the peer's address, the Host header, and
// https when it terminates TLS (always, even behind a trusted proxy).
func (s *Server) identity(h *http1.RequestHead, connID, remoteIP string) []upstream.Header {
	out := make([]upstream.Header, 0, 4+len(s.opts.ForwardHeaders))
	out = append(out, upstream.Header{Name: HeaderConnectionID, Value: connID})
	xff, proto, host := remoteIP, "http", h.Get("Host")
	if h.Authority != "" {
		host = h.Authority // an absolute-form target stands for Host (RFC 9112)
	}
	if s.opts.TLS != nil {
		proto = "https"
	}
	if s.trusts(remoteIP) {
		if prior := strings.Join(h.Values("X-Forwarded-For"), ", "); prior != "" {
			xff = prior + ", " + remoteIP
		}
		if p := strings.ToLower(h.Get("X-Forwarded-Proto")); s.opts.TLS == nil && (p == "http" || p == "https") {
			proto = p
		}
		if fh := h.Get("X-Forwarded-Host"); fh != "" {
			host = fh
		}
	}
	out = append(out,
		upstream.Header{Name: "X-Forwarded-For", Value: xff},
		upstream.Header{Name: "X-Forwarded-Proto", Value: proto},
		upstream.Header{Name: "X-Forwarded-Host", Value: host})
	for _, name := range s.opts.ForwardHeaders {
		for _, v := range h.Values(name) {
			out = append(out, upstream.Header{Name: name, Value: v})
		}
	}
	return out
}
