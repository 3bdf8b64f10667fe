package gateway

import (
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net/netip"
	"strings"

	"github.com/ws2api/ws2api/internal/http1"
	"github.com/ws2api/ws2api/internal/upstream"
)

// What the connect GET says of the client: the headers the client sent that
// Options.ForwardHeaders names, the X-Forwarded-* trio, which ws2api
// writes itself unless the client's peer is a proxy it trusts
// (Options.TrustedProxies), and the client's certificate (RFC 9440's
// Client-Cert and Client-Cert-Chain), which ws2api sets when it verified
// one itself, passes on from a trusted proxy, and drops from anyone else.

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
	case "client-cert", "client-cert-chain":
		return fmt.Errorf("%s: ws2api sets it from the certificate it verified, or a trusted proxy's (-tls-client-ca, -trusted-proxies)", name)
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
//
// certs are the certificates of a TLS client that ws2api verified itself,
// the leaf first; nil for any other client.
func (s *Server) identity(h *http1.RequestHead, connID, remoteIP string, certs []*x509.Certificate) []upstream.Header {
	out := make([]upstream.Header, 0, 6+len(s.opts.ForwardHeaders))
	out = append(out, upstream.Header{Name: HeaderConnectionID, Value: connID})
	xff, proto, host := remoteIP, "http", h.Get("Host")
	if h.Authority != "" {
		host = h.Authority // an absolute-form target stands for Host (RFC 9112)
	}
	if s.opts.TLS != nil {
		proto = "https"
	}
	trusted := s.trusts(remoteIP)
	if trusted {
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
	return appendClientCert(out, h, certs, trusted)
}

// RFC 9440's headers: the client's certificate, and the chain it sent
// after it, as structured-field byte sequences (":<base64 DER>:").
const (
	HeaderClientCert      = "Client-Cert"
	HeaderClientCertChain = "Client-Cert-Chain"
)

// appendClientCert adds the client's certificate headers: those of the
// certificate ws2api verified, else a trusted proxy's (one value each,
// well formed), else none: anyone else could claim any certificate.
func appendClientCert(out []upstream.Header, h *http1.RequestHead, certs []*x509.Certificate, trusted bool) []upstream.Header {
	switch {
	case len(certs) > 0:
		out = append(out, upstream.Header{Name: HeaderClientCert, Value: sfBinary(certs[0].Raw)})
		if len(certs) > 1 {
			chain := make([]string, len(certs)-1)
			for i, c := range certs[1:] {
				chain[i] = sfBinary(c.Raw)
			}
			out = append(out, upstream.Header{Name: HeaderClientCertChain, Value: strings.Join(chain, ", ")})
		}
	case trusted:
		if v := h.Values(HeaderClientCert); len(v) == 1 && isSFBinary(v[0]) {
			out = append(out, upstream.Header{Name: HeaderClientCert, Value: v[0]})
			if v := h.Values(HeaderClientCertChain); len(v) == 1 && isSFBinaryList(v[0]) {
				out = append(out, upstream.Header{Name: HeaderClientCertChain, Value: v[0]})
			}
		}
	}
	return out
}

func sfBinary(der []byte) string { return ":" + base64.StdEncoding.EncodeToString(der) + ":" }

// isSFBinary reports whether v is one structured-field byte sequence.
func isSFBinary(v string) bool {
	v = strings.TrimSpace(v)
	if len(v) < 2 || v[0] != ':' || v[len(v)-1] != ':' {
		return false
	}
	_, err := base64.StdEncoding.DecodeString(v[1 : len(v)-1])
	return err == nil
}

func isSFBinaryList(v string) bool {
	for item := range strings.SplitSeq(v, ",") {
		if !isSFBinary(item) {
			return false
		}
	}
	return true
}
