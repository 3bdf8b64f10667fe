package control

import (
	"testing"

	"github.com/ws2api/ws2api/internal/metrics"
	"github.com/ws2api/ws2api/internal/testkit/race"
)

// Routing a push, the control listener's most frequent request, costs no
// allocation.
func TestRoutingAPushAllocatesNothing(t *testing.T) {
	if race.Enabled {
		t.Skip("allocation counts under -race are not the program's; scripts/test runs this without it")
	}
	h := New(Options{Hub: &stubHub{}, Metrics: metrics.New()})
	var r request
	allocs := testing.AllocsPerRun(1000, func() {
		if rt, miss := h.match("POST", "/CP%201", &r); miss != nil || rt.pattern != "/{id}" || r.id != "CP%201" {
			t.Fatalf("routed to %v %v %q", rt, miss, r.id)
		}
	})
	if allocs > 0 {
		t.Errorf("%.0f allocations to route a push", allocs)
	}
}

// The patterns' edges: a wildcard takes no empty segment, a final * takes
// any rest (none too), a segment is decoded for {group} but not {id}.
func TestMatchPath(t *testing.T) {
	for _, tc := range []struct {
		pattern, path string
		ok            bool
		id, group     string
	}{
		{"/", "/", true, "", ""},
		{"/", "/x", false, "", ""},
		{"/{id}", "/", false, "", ""},
		{"/{id}", "/a%2Fb", true, "a%2Fb", ""},
		{"/{id}", "/a/", false, "", ""},
		{"/{id}", "/a/b", false, "", ""},
		{"/{id}/groups/{group}", "/a/groups/g%20h", true, "a", "g h"},
		{"/{id}/groups/{group}", "/a/groups/", false, "", ""},
		{"/{id}/groups/{group}", "/a/meta/g", false, "", ""},
		{"/{id}/groups/{group}", "/a/groups/%zz", false, "", ""},
		{"/debug/pprof/*", "/debug/pprof/", true, "", ""},
		{"/debug/pprof/*", "/debug/pprof/heap", true, "", ""},
		{"/debug/pprof/*", "/debug/pprof", true, "", ""},
		{"/debug/pprof/*", "/debug/x", false, "", ""},
		{"/healthz", "/healthz", true, "", ""},
		{"/healthz", "/healthz/x", false, "", ""},
	} {
		var r request
		if ok := matchPath(tc.pattern, tc.path, &r); ok != tc.ok || ok && (r.id != tc.id || r.group != tc.group) {
			t.Errorf("matchPath(%q, %q) = %v, id %q group %q; want %v, %q, %q", tc.pattern, tc.path, ok, r.id, r.group, tc.ok, tc.id, tc.group)
		}
	}
}
