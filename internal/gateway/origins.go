package gateway

import (
	"errors"
	"fmt"
	"strings"
)

// originList is the -origins allow-list: the browser origins whose pages
// may open a WebSocket to the gateway. It stops another site's page from
// using a visitor's cookies to connect (cross-site WebSocket hijacking);
// it does nothing against a client that is not a browser, which can send
// any Origin it likes.
type originList struct {
	on    bool            // a list is set: Origin headers are checked
	exact map[string]bool // "https://app.example.com", "http://localhost:3000", "null"
	wild  []originPattern // "https://*.example.com"
}

// originPattern is an entry with a wildcard host: any subdomain of suffix.
type originPattern struct {
	scheme string
	suffix string // ".example.com"
	port   string // "" for the scheme's default
}

// parseOrigins checks and compiles the allow-list; an empty list, or one
// with "*", allows every origin.
func parseOrigins(entries []string) (originList, error) {
	var l originList
	for _, e := range entries {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if e == "*" {
			return originList{}, nil
		}
		if strings.EqualFold(e, "null") {
			l.addExact("null")
			continue
		}
		scheme, host, port, err := splitOrigin(e)
		if err != nil {
			return originList{}, fmt.Errorf("origin %q: %w", e, err)
		}
		if rest, ok := strings.CutPrefix(host, "*."); ok {
			if rest == "" || strings.Contains(rest, "*") {
				return originList{}, fmt.Errorf("origin %q: a wildcard is only allowed as the first label, as in https://*.example.com", e)
			}
			l.wild = append(l.wild, originPattern{scheme: scheme, suffix: "." + rest, port: port})
			continue
		}
		if strings.Contains(host, "*") {
			return originList{}, fmt.Errorf("origin %q: a wildcard is only allowed as the first label, as in https://*.example.com", e)
		}
		l.addExact(joinOrigin(scheme, host, port))
	}
	l.on = len(l.exact) > 0 || len(l.wild) > 0
	return l, nil
}

func (l *originList) addExact(o string) {
	if l.exact == nil {
		l.exact = map[string]bool{}
	}
	l.exact[o] = true
}

// allows reports whether a browser page from origin may connect. An
// origin that is not a well-formed scheme://host[:port] is refused.
func (l *originList) allows(origin string) bool {
	if !l.on {
		return true
	}
	if strings.EqualFold(origin, "null") {
		return l.exact["null"]
	}
	scheme, host, port, err := splitOrigin(origin)
	if err != nil || strings.Contains(host, "*") {
		return false
	}
	if l.exact[joinOrigin(scheme, host, port)] {
		return true
	}
	for _, p := range l.wild {
		if p.scheme == scheme && p.port == port && len(host) > len(p.suffix) && strings.HasSuffix(host, p.suffix) {
			return true
		}
	}
	return false
}

// splitOrigin splits a serialized origin (RFC 6454): scheme://host[:port],
// nothing else. The scheme and host come back in lower case and a default
// port as "".
func splitOrigin(o string) (scheme, host, port string, err error) {
	scheme, rest, ok := strings.Cut(o, "://")
	if !ok || scheme == "" {
		return "", "", "", errors.New("want scheme://host[:port], as in https://app.example.com")
	}
	scheme = strings.ToLower(scheme)
	for i := 0; i < len(scheme); i++ {
		if c := scheme[i]; !('a' <= c && c <= 'z' || i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.')) {
			return "", "", "", errors.New("bad scheme")
		}
	}
	if rest == "" || strings.ContainsAny(rest, "/?#@ \t") {
		return "", "", "", errors.New("want scheme://host[:port] with no path, query or user")
	}
	host = rest
	if strings.HasPrefix(rest, "[") { // IPv6 literal
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return "", "", "", errors.New("unclosed [ in host")
		}
		host, rest = rest[:end+1], rest[end+1:]
		if rest != "" && rest[0] != ':' {
			return "", "", "", errors.New("junk after ]")
		}
		port = strings.TrimPrefix(rest, ":")
		if rest == ":" {
			return "", "", "", errors.New("empty port")
		}
	} else if i := strings.LastIndexByte(rest, ':'); i >= 0 {
		host, port = rest[:i], rest[i+1:]
		if port == "" {
			return "", "", "", errors.New("empty port")
		}
	}
	if host == "" {
		return "", "", "", errors.New("no host")
	}
	if strings.Contains(host, ":") && !strings.HasPrefix(host, "[") {
		return "", "", "", errors.New("bad host")
	}
	if port != "" {
		if len(port) > 5 {
			return "", "", "", errors.New("bad port")
		}
		for i := 0; i < len(port); i++ {
			if port[i] < '0' || port[i] > '9' {
				return "", "", "", errors.New("bad port")
			}
		}
	}
	if port == defaultPort(scheme) {
		port = ""
	}
	return scheme, strings.ToLower(host), port, nil
}

func defaultPort(scheme string) string {
	switch scheme {
	case "http", "ws":
		return "80"
	case "https", "wss":
		return "443"
	}
	return ""
}

func joinOrigin(scheme, host, port string) string {
	if port == "" {
		return scheme + "://" + host
	}
	return scheme + "://" + host + ":" + port
}

// CheckOrigins reports the first bad entry of an Options.Origins list.
func CheckOrigins(entries []string) error {
	_, err := parseOrigins(entries)
	return err
}
