package control

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
)

// Admission: every control request, on the event-loop fast path and
// through net/http alike, passes [Handler.admit] before any handler runs.
// In order:
//
//  1. No browser sent it for a page of another origin: Sec-Fetch-Site, when
//     present, is same-origin or none, and Origin, when present, names this
//     listener's own Host. Else 403. This stops cross-site request forgery:
//     any web page a person opens could otherwise POST to
//     http://127.0.0.1:7002/ with fetch(..., {mode: "no-cors"}). Programs
//     (curl, the API's HTTP client) send neither header.
//  2. Without a token, the Host names the listener without DNS: localhost,
//     an IP address, or one of Options.Hosts (with any port). Else 421.
//     This stops DNS rebinding: a page whose own name is made to resolve
//     to 127.0.0.1 talks to the listener as its own origin, but its
//     requests still carry its name. An IP address is always accepted: no
//     DNS answer puts one in Host, and a page whose origin is that address
//     and port came from this listener (or what forwards to it), one from
//     another port being another origin, refused by 1. So operators reach
//     a node by address however it is bound: directly, behind a proxy or
//     NAT, through a container's published port. With a token, the token
//     is the defence and Host is not checked.
//  3. It carries the token, if one is set. Else 401.
//
// GET /healthz needs neither the token nor a known Host, so that load
// balancers and orchestrators can probe it however they name the node; it
// tells only whether the node is serving or draining.

// admission is what admit looks at in a request.
type admission struct {
	method, path  string
	host          string // the Host header (or an absolute target's host)
	origin        string // the Origin header
	fetchSite     string // the Sec-Fetch-Site header
	authorization string // the Authorization header
}

// admissionOf reads a net/http request.
func admissionOf(r *http.Request) admission {
	return admission{
		method: r.Method, path: r.URL.Path, host: r.Host,
		origin: r.Header.Get("Origin"), fetchSite: r.Header.Get("Sec-Fetch-Site"),
		authorization: r.Header.Get("Authorization"),
	}
}

// admit says whether a request may be served; if not, the answer to send
// instead (the body is not read).
func (h *Handler) admit(a admission) (result, bool) {
	if why := crossOrigin(a); why != "" {
		h.warn.Warn(h.opts.Logger, "control request refused: sent by a web page of another origin",
			"method", a.method, "path", a.path, "why", why)
		return text(http.StatusForbidden, "cross-origin request refused: "+why+"; the control listener serves programs, not web pages\n"), false
	}
	probe := a.path == "/healthz" && a.method == http.MethodGet
	if h.token == nil {
		if probe || h.knownHost(a.host) {
			return result{}, true
		}
		h.warn.Warn(h.opts.Logger, "control request refused: unknown Host (DNS rebinding?); list it in -control-hosts or set -control-token",
			"method", a.method, "path", a.path, "host", a.host)
		return text(http.StatusMisdirectedRequest, "host "+quoteShort(a.host)+" refused: without -control-token the control listener answers only to "+
			"localhost, IP addresses and the names in -control-hosts\n"), false
	}
	if probe || h.tokenMatches(a.authorization) {
		return result{}, true
	}
	return resultUnauthorized, false
}

// crossOrigin says why a browser sent the request for another origin's
// page, or "" if none did.
func crossOrigin(a admission) string {
	if a.fetchSite != "" && !strings.EqualFold(a.fetchSite, "same-origin") && !strings.EqualFold(a.fetchSite, "none") {
		return "Sec-Fetch-Site: " + quoteShort(a.fetchSite)
	}
	if a.origin == "" {
		return ""
	}
	// An origin is scheme://host[:port], nothing after; browsers without
	// Fetch Metadata send it with every POST, and "null" from an opaque
	// origin (a sandboxed frame, a file: page) matches no Host.
	_, hostport, ok := strings.Cut(a.origin, "://")
	if !ok || hostport == "" || strings.ContainsAny(hostport, "/?#@") || !strings.EqualFold(hostport, a.host) {
		return "Origin " + quoteShort(a.origin) + " is not this listener (Host " + quoteShort(a.host) + ")"
	}
	return ""
}

// knownHost reports whether a Host header names this listener without
// DNS: no Host at all (HTTP/1.0; browsers always send one), localhost, an
// IP address, or a name of Options.Hosts.
func (h *Handler) knownHost(host string) bool {
	name := hostName(host)
	switch {
	case host == "":
		return true
	case name == "":
		return false
	case strings.EqualFold(name, "localhost"):
		return true
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return true
	}
	return h.hosts[strings.ToLower(name)]
}

// hostName is the host of a Host header, without its port or the
// brackets of an IPv6 address, and without a final dot.
func hostName(host string) string {
	switch {
	case strings.HasPrefix(host, "["):
		end := strings.IndexByte(host, ']')
		if end < 0 {
			return ""
		}
		if rest := host[end+1:]; rest != "" && !validPort(rest) {
			return ""
		}
		return host[1:end]
	case strings.Count(host, ":") == 1:
		name, port, _ := strings.Cut(host, ":")
		if !validPort(":" + port) {
			return ""
		}
		host = name
	}
	return strings.TrimSuffix(host, ".")
}

// validPort reports whether s is ":" followed by digits (or nothing).
func validPort(s string) bool {
	if !strings.HasPrefix(s, ":") {
		return false
	}
	for _, c := range []byte(s[1:]) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// CheckHosts checks the entries of Options.Hosts (the -control-hosts
// flag): each a DNS name or an IP address, without a port.
func CheckHosts(hosts []string) error {
	_, err := parseHosts(hosts)
	return err
}

// parseHosts reads Options.Hosts into a set of lower-case names without a
// final dot. Addresses are accepted anyway, so left out; an entry that is
// neither is left out too, and the first such is the error.
func parseHosts(hosts []string) (map[string]bool, error) {
	names := map[string]bool{}
	var bad error
	for _, raw := range hosts {
		e := strings.TrimSpace(raw)
		if e == "" {
			continue
		}
		if _, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(e, "["), "]")); err == nil {
			continue
		}
		name := strings.ToLower(strings.TrimSuffix(e, "."))
		if !validName(name) {
			if bad == nil {
				bad = errors.New(strconv.Quote(e) + " is neither a host name nor an IP address (no scheme, no port)")
			}
			continue
		}
		names[name] = true
	}
	return names, bad
}

// validName reports whether s is a DNS name: dot-separated labels of
// letters, digits, - and _.
func validName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// tokenMatches reports whether an Authorization header carries the token.
// The comparison takes the same time whatever the token sent: both sides
// are hashed, then compared in constant time.
func (h *Handler) tokenMatches(authorization string) bool {
	scheme, token, _ := strings.Cut(authorization, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		token = ""
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
	return subtle.ConstantTimeCompare(sum[:], h.token[:]) == 1
}

// quoteShort quotes a header value for an answer or a log line, cut to
// 100 bytes.
func quoteShort(s string) string {
	if len(s) > 100 {
		s = s[:100] + "..."
	}
	return strconv.Quote(s)
}
