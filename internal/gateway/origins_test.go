package gateway

import (
	"strings"
	"testing"
)

func TestOriginMatching(t *testing.T) {
	l, err := parseOrigins([]string{" https://App.Example.com ", "http://localhost:3000", "https://*.example.org", "wss://[::1]:8443", "null"})
	if err != nil {
		t.Fatal(err)
	}
	for o, want := range map[string]bool{
		"https://app.example.com":         true,
		"https://APP.EXAMPLE.COM:443":     true,
		"https://app.example.com:444":     false,
		"http://app.example.com":          false,
		"https://app.example.com/":        false,
		"https://app.example.com.evil":    false,
		"https://evil-app.example.com":    false,
		"http://localhost:3000":           true,
		"http://localhost":                false,
		"https://a.example.org":           true,
		"https://a.b.example.org":         true,
		"https://example.org":             false,
		"https://aexample.org":            false,
		"https://*.example.org":           false,
		"wss://[::1]:8443":                true,
		"null":                            true,
		"NULL":                            true,
		"":                                false,
		"https://user@app.example.com":    false,
		"https://app.example.com\r\nX: y": false,
	} {
		if got := l.allows(o); got != want {
			t.Errorf("allows(%q) = %v, want %v", o, got, want)
		}
	}
	for _, entries := range [][]string{nil, {}, {""}, {"*"}, {"https://a.example", "*"}} {
		l, err := parseOrigins(entries)
		if err != nil || !l.allows("https://anything.example") || !l.allows("garbage") {
			t.Errorf("%q should allow every origin: %v", entries, err)
		}
	}
}

// Whatever the list and the Origin header, matching never panics, an
// entry allows itself, and nothing but a well-formed origin (or null)
// passes a list.
func FuzzOrigins(f *testing.F) {
	f.Add("https://app.example.com", "https://app.example.com")
	f.Add("https://*.example.com", "https://a.example.com:443")
	f.Add("http://[::1]:80", "http://[::1]")
	f.Add("null", "null")
	f.Add("https://a", "https://a/../b")
	f.Fuzz(func(t *testing.T, entry, origin string) {
		l, err := parseOrigins([]string{entry})
		if err != nil || !l.on {
			return
		}
		if e := strings.TrimSpace(entry); !strings.Contains(e, "*") && !l.allows(e) {
			t.Fatalf("entry %q does not allow itself", e)
		}
		if !l.allows(origin) || strings.EqualFold(origin, "null") {
			return
		}
		scheme, rest, ok := strings.Cut(origin, "://")
		if !ok || scheme == "" || rest == "" || strings.ContainsAny(rest, "/?#@ \t\r\n*") {
			t.Fatalf("entry %q allowed malformed origin %q", entry, origin)
		}
	})
}

// Whatever the API names in X-Ws2api-Groups, only valid names come out,
// each once.
func FuzzParseGroups(f *testing.F) {
	f.Add("site-7, tenant:acme ,site-7")
	f.Add("a,,b")
	f.Add("bad group")
	f.Add(strings.Repeat("x", 300))
	f.Fuzz(func(t *testing.T, list string) {
		groups, err := parseGroups(list)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, g := range groups {
			if ValidGroup(g) != nil || seen[g] {
				t.Fatalf("%q gave group %q (seen before: %v)", list, g, seen[g])
			}
			if !strings.Contains(list, g) {
				t.Fatalf("%q gave group %q, not in it", list, g)
			}
			seen[g] = true
		}
	})
}
