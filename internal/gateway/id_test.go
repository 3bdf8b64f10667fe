package gateway

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

// The ids of the finding: before id.go, each of the refused ones below was
// accepted and appended to the API base as it was sent, so that behind
// nginx (which decodes, then removes dot segments) ..%2Fadmin%2F under
// /ws/ reached /admin/, and CP%31 was a client apart from CP1.
func TestIDsAreDecodedOnceCheckedAndEscapedCanonically(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 255)
	accepted := []struct{ seg, id, escaped string }{
		{"CP1", "CP1", "CP1"},
		{"CP%31", "CP1", "CP1"}, // the same client as CP1
		{"cp%2d001", "cp-001", "cp-001"},
		{"a.b_c~d-e", "a.b_c~d-e", "a.b_c~d-e"},
		{"...", "...", "..."},
		{".a", ".a", ".a"},
		{"Z%C3%A4hler-7", "Zähler-7", "Z%C3%A4hler-7"},
		{"Zähler-7", "Zähler-7", "Z%C3%A4hler-7"}, // raw UTF-8 in the target: the same id
		{"CP%201", "CP 1", "CP%201"},
		{"a+b", "a+b", "a%2Bb"}, // a path: '+' is not a space
		{"a%2Bb", "a+b", "a%2Bb"},
		{"%25", "%", "%25"},
		{"%2541", "%41", "%2541"},              // decoded once only
		{"%252e%252e", "%2e%2e", "%252e%252e"}, // ditto: a literal, not a dot segment
		{"a%3Fb%23c", "a?b#c", "a%3Fb%23c"},
		{"x;y", "x;y", "x%3By"},
		{"AA:BB@c", "AA:BB@c", "AA%3ABB%40c"},
		{"!$&'()*,=", "!$&'()*,=", "!$&'()*,="},
		{"%22%3C%3E%60%7B%7D%5B%5D%5E%7C", `"<>` + "`{}[]^|", "%22%3C%3E%60%7B%7D%5B%5D%5E%7C"},
		{"Metrics", "Metrics", "Metrics"}, // the control paths are case-sensitive
		{"%E2%82%AC", "€", "%E2%82%AC"},
		{"%C2%A0", "\u00a0", "%C2%A0"}, // just past C1
		{long, long, long},
		{strings.Repeat("%41", 255), strings.Repeat("A", 255), strings.Repeat("A", 255)}, // the length is the decoded one
		{strings.Repeat("é", 127) + "x", strings.Repeat("é", 127) + "x", strings.Repeat("%C3%A9", 127) + "x"},
	}
	for _, c := range accepted {
		id, err := ParseID(c.seg)
		if err != nil || id != c.id {
			t.Errorf("ParseID(%q) = %q, %v; want %q", c.seg, id, err, c.id)
			continue
		}
		if got := EscapeID(id); got != c.escaped {
			t.Errorf("EscapeID(%q) = %q, want %q", id, got, c.escaped)
		}
	}
	refused := []struct {
		seg  string
		want error
	}{
		{"", ErrIDEmpty},
		{strings.Repeat("x", 256), ErrIDTooLong},
		{strings.Repeat("%C3%A9", 128), ErrIDTooLong},
		{".", ErrIDDots},
		{"..", ErrIDDots},
		{"%2e", ErrIDDots},
		{"%2e%2e", ErrIDDots},
		{".%2E", ErrIDDots},
		{"..%2Fadmin%2F", ErrIDSlash},
		{"%2e%2e%2Fadmin%2F", ErrIDSlash},
		{"a%2F..%2F..%2Fadmin%2F", ErrIDSlash},
		{"admin%2F", ErrIDSlash},
		{"a%2fb", ErrIDSlash},
		{"a%5Cb", ErrIDSlash},
		{`..\admin`, ErrIDSlash},
		{"%00", ErrIDControl},
		{"a%00b", ErrIDControl},
		{"%0d%0a", ErrIDControl},
		{"a%09b", ErrIDControl},
		{"a\x01b", ErrIDControl},
		{"%7F", ErrIDControl},
		{"%C2%80", ErrIDControl},
		{"%C2%85", ErrIDControl}, // NEL
		{"%C2%9F", ErrIDControl},
		{"%ff", ErrIDUTF8},
		{"%C3", ErrIDUTF8},
		{"%C0%AF", ErrIDUTF8}, // an overlong '/'
		{"%ED%A0%80", ErrIDUTF8},
		{"\xff", ErrIDUTF8},
		{"metrics", ErrIDReserved},
		{"%6Detrics", ErrIDReserved},
		{"healthz", ErrIDReserved},
		{"%68ealthz", ErrIDReserved},
		{"debug", ErrIDReserved},
		{"%64%65%62%75%67", ErrIDReserved},
		{"%zz", ErrIDEscape},
		{"ab%4", ErrIDEscape},
		{"%", ErrIDEscape},
		{"a%%41", ErrIDEscape},
	}
	for _, c := range refused {
		if id, err := ParseID(c.seg); !errors.Is(err, c.want) {
			t.Errorf("ParseID(%q) = %q, %v; want %v", c.seg, id, err, c.want)
		}
	}
}

func TestRemoveDotSegmentsIsRFC3986(t *testing.T) {
	t.Parallel()
	// RFC 3986 section 5.2.4's examples, and the attack's path as nginx
	// sees it once decoded.
	for in, want := range map[string]string{
		"/a/b/c/./../../g":    "/a/g",
		"mid/content=5/../6":  "mid/6",
		"/ws/../admin/":       "/admin/",
		"/ws/a/../../admin/":  "/admin/",
		"/ws/..":              "/",
		"/ws/.":               "/ws/",
		"/ws/...":             "/ws/...",
		"/ws/%2e%2e/admin%2F": "/ws/%2e%2e/admin%2F",
	} {
		if got := removeDotSegments(in); got != want {
			t.Errorf("removeDotSegments(%q) = %q, want %q", in, got, want)
		}
	}
}

// Whatever a client puts in its URL's first segment, an accepted id, in
// the API's URLs, is one segment under the base: with the dot segments
// removed (RFC 3986's way, net/url's, and nginx's, which decodes first),
// the path is the base and the id.
func FuzzID(f *testing.F) {
	for _, s := range []string{"CP-001", "CP%31", "a.b_c~d", "%41%42", "%zz", "", "metrics", "%6Detrics", "a/b", "é",
		"Z%C3%A4hler-7", "CP%201", "a+b", "%25", "%252e%252e", ".", "..", "%2e%2e", "...", "..%2Fadmin%2F",
		"%2e%2e%2Fadmin%2F", "a%2F..%2F..%2Fadmin%2F", "admin%2F", "a%5Cb", "%00", "%0d%0a", "%C2%85", "%C0%AF",
		"x;y", "!$&'()*,=", strings.Repeat("x", 255), strings.Repeat("x", 256)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, seg string) {
		id, err := ParseID(seg)
		if err != nil {
			return
		}
		if err := CheckID(id); err != nil {
			t.Fatalf("ParseID(%q) accepted %q, which CheckID refuses: %v", seg, id, err)
		}
		esc := EscapeID(id)
		for i := 0; i < len(esc); i++ {
			switch c := esc[i]; {
			case c == '%':
				if i+2 >= len(esc) || !strings.ContainsRune("0123456789ABCDEF", rune(esc[i+1])) || !strings.ContainsRune("0123456789ABCDEF", rune(esc[i+2])) {
					t.Fatalf("EscapeID(%q) = %q: not %%XX in upper case at %d", id, esc, i)
				}
				i += 2
			case !idSafe[c]:
				t.Fatalf("EscapeID(%q) = %q: %q left as it is", id, esc, c)
			}
		}
		for _, base := range []string{"/", "/ws/", "/a/b/"} {
			want := base + id
			// (a) RFC 3986: the dot segments removed, then decoded.
			p := removeDotSegments(base + esc)
			rest, under := strings.CutPrefix(p, base)
			if !under || strings.Contains(rest, "/") {
				t.Fatalf("id %q under %q: %q after dot-segment removal, not one segment under the base", id, base, p)
			}
			if got, err := url.PathUnescape(p); err != nil || got != want {
				t.Fatalf("id %q under %q: %q decodes to %q, %v; want %q", id, base, p, got, err, want)
			}
			// net/url's resolution.
			u, err := url.Parse("http://api" + base + esc)
			if err != nil {
				t.Fatalf("id %q under %q: %v", id, base, err)
			}
			if got := u.ResolveReference(&url.URL{}).Path; got != want {
				t.Fatalf("id %q under %q: net/url resolves %q to %q, want %q", id, base, base+esc, got, want)
			}
			// nginx's order: decoded first, then the dot segments removed.
			if got := removeDotSegments(want); got != want {
				t.Fatalf("id %q under %q: decoded, %q becomes %q", id, base, want, got)
			}
		}
		// (b) Decoding the escaped form gives the id back.
		if got, err := url.PathUnescape(esc); err != nil || got != id {
			t.Fatalf("EscapeID(%q) = %q decodes to %q, %v", id, esc, got, err)
		}
		again, err := ParseID(esc)
		if err != nil || again != id {
			t.Fatalf("ParseID(EscapeID(%q)) = %q, %v", id, again, err)
		}
		// (c) Escaping is idempotent on canonical input.
		if e2 := EscapeID(again); e2 != esc {
			t.Fatalf("EscapeID not idempotent: %q, then %q", esc, e2)
		}
	})
}

// removeDotSegments is RFC 3986 section 5.2.4's algorithm, as written there.
func removeDotSegments(in string) string {
	out := ""
	cutLast := func() {
		out = out[:max(0, strings.LastIndexByte(out, '/'))]
	}
	for in != "" {
		switch {
		case strings.HasPrefix(in, "../"):
			in = in[3:]
		case strings.HasPrefix(in, "./"):
			in = in[2:]
		case strings.HasPrefix(in, "/./"):
			in = in[2:]
		case in == "/.":
			in = "/"
		case strings.HasPrefix(in, "/../"):
			in = in[3:]
			cutLast()
		case in == "/..":
			in = "/"
			cutLast()
		case in == "." || in == "..":
			in = ""
		default:
			start := 0
			if in[0] == '/' {
				start = 1
			}
			end := strings.IndexByte(in[start:], '/')
			if end < 0 {
				end = len(in)
			} else {
				end += start
			}
			out += in[:end]
			in = in[end:]
		}
	}
	return out
}
