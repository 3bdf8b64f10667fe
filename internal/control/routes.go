package control

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/pprof"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ws2api/ws2api/internal/gateway"
	"github.com/ws2api/ws2api/internal/hub"
	"github.com/ws2api/ws2api/internal/ws"
)

// The control API's endpoints, in one table that both servers route by:
// the event loop's (server.go) and net/http's (Handler.ServeHTTP). A
// request is admitted first (admit.go), in one place per server, before
// its body is read; then routed here. Adding an endpoint is a line in
// routes and its function.

// request is a control request as both servers hand it to an endpoint.
type request struct {
	method      string
	path        string // as sent, still escaped
	rawQuery    string
	contentType string
	body        []byte
	// The path's {id}, {group} and {name} segments: id still escaped
	// (gateway.ParseID decodes it, once), the others decoded.
	id, group, name string
}

// query is the request's query, leaving out malformed pairs as net/http's
// URL.Query does.
func (r *request) query() url.Values {
	q, _ := url.ParseQuery(r.rawQuery)
	return q
}

// route is one endpoint: a method and a path pattern.
type route struct {
	method  string
	pattern string // literal segments and {id}, {group}, {name}; a final "/*" matches any rest
	// serve computes the answer. ops reach the clients: this node's, or
	// the cluster's (cluster.go).
	serve func(h *Handler, ops clientOps, r *request) result
	// serveHTTP instead writes through net/http (pprof, the demo page):
	// the event loop hands it to a goroutine.
	serveHTTP func(h *Handler, w http.ResponseWriter, r *http.Request)
	// inline says that the event loop may answer the request itself, on
	// its poller: it is quick and acts on this node's clients only (a
	// 404 there goes on to the cluster on a goroutine, with a Relay).
	inline func(r *request) bool
}

func always(*request) bool { return true }

// notACall is inline for a POST /<id> that is a push; a call waits for its
// client's answer.
func notACall(r *request) bool { _, await := awaitOf(r.rawQuery); return !await }

// routes are the endpoints, most specific first.
var routes = []route{
	{method: "GET", pattern: "/healthz", serve: (*Handler).healthz, inline: always},
	{method: "GET", pattern: "/metrics", serve: (*Handler).metrics},
	{method: "GET", pattern: "/debug/demo", serveHTTP: (*Handler).page},
	{method: "GET", pattern: "/debug/pprof/*", serveHTTP: profile},
	{method: "POST", pattern: "/", serve: (*Handler).broadcast},
	{method: "GET", pattern: "/", serve: (*Handler).list},
	{method: "POST", pattern: "/{id}", serve: (*Handler).push, inline: notACall},
	{method: "GET", pattern: "/{id}", serve: (*Handler).info, inline: always},
	{method: "DELETE", pattern: "/{id}", serve: (*Handler).kick, inline: always},
	{method: "PUT", pattern: "/{id}/groups/{group}", serve: (*Handler).join, inline: always},
	{method: "DELETE", pattern: "/{id}/groups/{group}", serve: (*Handler).leave, inline: always},
	{method: "PUT", pattern: "/{id}/meta/{name}", serve: (*Handler).meta, inline: always},
	{method: "DELETE", pattern: "/{id}/meta/{name}", serve: (*Handler).meta, inline: always},
}

// match finds the route for method and path (escaped, without the query),
// and fills r's segments. Without one, the answer says why: 404, or 405
// with the methods the path has.
func (h *Handler) match(method, path string, r *request) (*route, *result) {
	var allow []string
	for i := range routes {
		rt := &routes[i]
		if rt.pattern == "/debug/demo" && h.opts.Page == nil {
			continue
		}
		if !matchPath(rt.pattern, path, r) {
			continue
		}
		if rt.method == method {
			return rt, nil
		}
		if !strings.Contains(strings.Join(allow, ", "), rt.method) {
			allow = append(allow, rt.method)
		}
	}
	if len(allow) == 0 {
		return nil, &resultNotFound
	}
	res := text(http.StatusMethodNotAllowed, "method not allowed: use "+strings.Join(allow, ", "))
	res.allow = strings.Join(allow, ", ")
	return nil, &res
}

// matchPath reports whether path fits pattern, and if so sets r's
// segments. A wildcard never matches an empty segment. It walks both
// strings segment by segment, allocating nothing: every push is routed
// here.
func matchPath(pattern, path string, r *request) bool {
	if pattern == "/" || path == "/" {
		return pattern == path
	}
	pat, rest := pattern[1:], strings.TrimPrefix(path, "/")
	var id, group, name string
	for {
		p, pmore, pok := strings.Cut(pat, "/")
		if p == "*" {
			break // any rest
		}
		seg, smore, sok := strings.Cut(rest, "/")
		switch p {
		case "{id}", "{group}", "{name}":
			if seg == "" {
				return false
			}
			if p != "{id}" {
				d, err := url.PathUnescape(seg)
				if err != nil {
					return false
				}
				seg = d
			}
			switch p {
			case "{id}":
				id = seg
			case "{group}":
				group = seg
			default:
				name = seg
			}
		default:
			if p != seg {
				return false
			}
		}
		switch {
		case pok && sok:
			pat, rest = pmore, smore
			continue
		case pok && pmore == "*": // "/debug/pprof" fits "/debug/pprof/*"
		case pok || sok:
			return false // one is longer
		}
		break
	}
	r.id, r.group, r.name = id, group, name
	return true
}

// profile serves Go's profiler.
func profile(_ *Handler, w http.ResponseWriter, r *http.Request) {
	switch strings.TrimPrefix(r.URL.Path, "/debug/pprof/") {
	case "cmdline":
		pprof.Cmdline(w, r)
	case "profile":
		pprof.Profile(w, r)
	case "symbol":
		pprof.Symbol(w, r)
	case "trace":
		pprof.Trace(w, r)
	default:
		pprof.Index(w, r)
	}
}

// page serves Options.Page; no other site may frame it.
func (h *Handler) page(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Frame-Options", "DENY")
	_, _ = w.Write(h.opts.Page)
}

func (h *Handler) metrics(clientOps, *request) result {
	var b bytes.Buffer
	h.opts.Metrics.WritePrometheus(&b)
	return result{status: http.StatusOK, ctype: "text/plain; version=0.0.4; charset=utf-8", body: b.Bytes()}
}

func (h *Handler) healthz(clientOps, *request) result {
	if h.opts.Hub.Draining() {
		return text(http.StatusServiceUnavailable, "draining")
	}
	return resultOK
}

// parseID decodes and checks the client id of a control path.
func parseID(seg string) (string, *result) {
	id, err := gateway.ParseID(seg)
	if err != nil {
		r := text(http.StatusBadRequest, "bad client id: "+err.Error())
		return "", &r
	}
	return id, nil
}

// push serves POST /<id>: the body to that client; with ?await=, a call.
func (h *Handler) push(ops clientOps, r *request) result {
	id, bad := parseID(r.id)
	if bad != nil {
		return *bad
	}
	if wait, ok := awaitOf(r.rawQuery); ok {
		return h.call(ops, id, wait, r)
	}
	binary, bad := messageKind(r.contentType, r.body)
	if bad != nil {
		return *bad
	}
	_, err := ops.Do(hub.Op{Kind: hub.KindPush, ID: id, Binary: binary, Data: r.body})
	if res, failed := clientFailure(id, err); failed {
		return res
	}
	if err != nil {
		return text(http.StatusInternalServerError, err.Error())
	}
	return resultOK
}

// clientFailure answers an operation on id that reached no client: the bus
// could not carry it (503, 504), or the id is connected nowhere (404).
func clientFailure(id string, err error) (result, bool) {
	if res, failed := busFailure(id, err); failed {
		return res, true
	}
	if errors.Is(err, hub.ErrNotConnected) {
		return resultNotFound, true
	}
	return result{}, false
}

// maxAwait bounds ?await=: OCPP's own call timeouts are tens of seconds.
const maxAwait = 5 * time.Minute

// awaitOf returns the ?await= of a push's query: a duration ("30s") or a
// number of seconds. ok is false without one; a bad one is returned as
// is, for call to refuse, and a query that mentions await but cannot be
// read as "\x00", which no duration is: a call is never taken for a push.
func awaitOf(rawQuery string) (wait string, ok bool) {
	if !strings.Contains(rawQuery, "await") {
		return "", false
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return "\x00", true
	}
	return q.Get("await"), q.Has("await")
}

// parseAwait reads ?await=: a Go duration or a number of seconds, above 0
// and at most maxAwait.
func parseAwait(s string) (time.Duration, bool) {
	d, err := time.ParseDuration(s)
	if err != nil {
		secs, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil || secs != secs { // (NaN)
			return 0, false
		}
		d = time.Duration(secs * float64(time.Second))
	}
	return d, d > 0 && d <= maxAwait
}

// call serves POST /<id>?await=: the message goes to the client, and its
// answer to it comes back as this request's answer (gateway.Server.Call).
func (h *Handler) call(ops clientOps, id, await string, r *request) result {
	wait, ok := parseAwait(await)
	if !ok {
		if await == "\x00" {
			return text(http.StatusBadRequest, "malformed query with ?await=")
		}
		return text(http.StatusBadRequest, "bad ?await="+quoteShort(await)+": a duration (30s) or seconds, above 0 and at most "+maxAwait.String())
	}
	binary, bad := messageKind(r.contentType, r.body)
	if bad != nil {
		return *bad
	}
	got, err := ops.Do(hub.Op{Kind: hub.KindCall, ID: id, Binary: binary, Data: r.body, Wait: wait})
	if res, failed := clientFailure(id, err); failed {
		return res
	}
	switch {
	case err == nil && got.Answer != nil:
		ctype := "application/json"
		if got.Answer.Binary {
			ctype = "application/octet-stream"
		}
		return result{status: http.StatusOK, ctype: ctype, body: got.Answer.Data}
	case errors.Is(err, hub.ErrNotACall):
		return text(http.StatusBadRequest, err.Error())
	case errors.Is(err, hub.ErrClientGone):
		return text(http.StatusGone, err.Error())
	case errors.Is(err, hub.ErrCallTimeout):
		return text(http.StatusGatewayTimeout, "the client did not answer within "+wait.String())
	case errors.Is(err, hub.ErrCallPending):
		return text(http.StatusConflict, err.Error())
	case err == nil:
		err = errors.New("no answer")
	}
	return text(http.StatusInternalServerError, err.Error())
}

// info serves GET /<id>.
func (h *Handler) info(ops clientOps, r *request) result {
	id, bad := parseID(r.id)
	if bad != nil {
		return *bad
	}
	got, err := ops.Do(hub.Op{Kind: hub.KindInfo, ID: id})
	if res, failed := busFailure(id, err); failed {
		return res
	}
	if err != nil || got.Info == nil {
		return resultNotFound
	}
	return jsonResult(got.Info)
}

// kick serves DELETE /<id>?code=N&reason=T.
func (h *Handler) kick(ops clientOps, r *request) result {
	id, bad := parseID(r.id)
	if bad != nil {
		return *bad
	}
	q, err := url.ParseQuery(r.rawQuery)
	if err != nil {
		return text(http.StatusBadRequest, "malformed query: "+err.Error())
	}
	code := ws.CloseNormal
	if s := q.Get("code"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || !(n == ws.CloseNormal || n >= 3000 && n <= 4999) {
			return text(http.StatusBadRequest, "bad close code "+strconv.Quote(s)+": use 1000 or 3000-4999")
		}
		code = n
	}
	reason := q.Get("reason")
	switch {
	case len(reason) > ws.MaxControlPayload-2:
		return text(http.StatusBadRequest, "close reason longer than 123 bytes")
	case !utf8.ValidString(reason):
		return text(http.StatusBadRequest, "close reason is not valid UTF-8")
	}
	_, err = ops.Do(hub.Op{Kind: hub.KindKick, ID: id, Code: code, Reason: reason})
	if res, failed := busFailure(id, err); failed {
		return res
	}
	if err != nil {
		return resultNotFound
	}
	return resultOK
}

// join serves PUT /<id>/groups/<group>.
func (h *Handler) join(ops clientOps, r *request) result {
	return h.groupOp(ops, r, hub.KindJoin)
}

// leave serves DELETE /<id>/groups/<group>: 404 if it was not in it.
func (h *Handler) leave(ops clientOps, r *request) result {
	return h.groupOp(ops, r, hub.KindLeave)
}

func (h *Handler) groupOp(ops clientOps, r *request, kind hub.Kind) result {
	id, bad := parseID(r.id)
	if bad != nil {
		return *bad
	}
	got, err := ops.Do(hub.Op{Kind: kind, ID: id, Group: r.group})
	if res, failed := clientFailure(id, err); failed {
		return res
	}
	switch {
	case err != nil:
		return text(http.StatusBadRequest, "bad group: "+err.Error())
	case kind == hub.KindLeave && !got.Was:
		return text(http.StatusNotFound, "not in group")
	}
	return resultOK
}

// maxMetaValue bounds a meta header's value.
const maxMetaValue = 8 << 10

// meta serves PUT (the body is the value) and DELETE /<id>/meta/<name>: the
// X-Ws2api-Meta-<name> header sent with the client's later requests.
func (h *Handler) meta(ops clientOps, r *request) result {
	id, bad := parseID(r.id)
	if bad != nil {
		return *bad
	}
	if len(r.body) > maxMetaValue {
		return text(http.StatusBadRequest, "meta value: http: request body too large")
	}
	_, err := ops.Do(hub.Op{Kind: hub.KindMeta, ID: id, Name: r.name, Value: strings.TrimSpace(string(r.body)), Remove: r.method == http.MethodDelete})
	if res, failed := clientFailure(id, err); failed {
		return res
	}
	switch {
	case errors.Is(err, hub.ErrBadMeta):
		return text(http.StatusBadRequest, "bad meta header: the name must be a header token, the value one line of at most 8 KiB")
	case err != nil:
		return text(http.StatusBadRequest, err.Error())
	}
	return resultOK
}

// broadcast serves POST /: to every client, to one group (?group=g), or to
// the listed ids (?id=a&id=b).
func (h *Handler) broadcast(_ clientOps, r *request) result {
	binary, bad := messageKind(r.contentType, r.body)
	if bad != nil {
		return *bad
	}
	q := r.query()
	group, ids := q.Get("group"), q["id"]
	switch {
	case q.Has("await"):
		return text(http.StatusBadRequest, "?await= calls one client: POST /<id>?await=")
	case group != "" && len(ids) > 0:
		return text(http.StatusBadRequest, "give ?group= or ?id=, not both")
	case group != "":
		n, err := h.opts.Hub.BroadcastGroup(group, binary, r.body)
		if err != nil {
			return text(http.StatusBadRequest, "bad group: "+err.Error())
		}
		return h.overCluster(group, binary, r.body, n, map[string]any{"group": group})
	case len(ids) > 0:
		for _, id := range ids {
			if err := gateway.CheckID(id); err != nil { // query values are decoded already
				return text(http.StatusBadRequest, "bad client id "+strconv.Quote(id)+": "+err.Error())
			}
		}
		missing := h.opts.Hub.PushMany(ids, binary, r.body)
		var err error
		if h.opts.Relay != nil && len(missing) > 0 {
			missing, err = h.opts.Relay.PushMany(missing, binary, r.body)
		}
		answer := map[string]any{"delivered": len(ids) - len(missing), "not_connected": append([]string{}, missing...)}
		if err != nil {
			answer["error"] = err.Error()
		}
		res := jsonResult(answer)
		if err != nil {
			res.status = busStatus(err)
		}
		return res
	}
	return h.overCluster("", binary, r.body, h.opts.Hub.Broadcast(binary, r.body), map[string]any{})
}

// list serves GET /: with ?group=g a page of its members (?after=id to go
// on, ?limit=n, default 1000); without, the client count and the groups.
func (h *Handler) list(_ clientOps, r *request) result {
	q := r.query()
	group := q.Get("group")
	if group == "" {
		return jsonResult(map[string]any{"connections": h.opts.Hub.Count(), "groups": h.opts.Hub.Groups()})
	}
	limit := 1000
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 100000 {
			return text(http.StatusBadRequest, "bad limit "+strconv.Quote(s)+": 1 to 100000")
		}
		limit = n
	}
	ids, next, err := h.opts.Hub.GroupMembers(group, q.Get("after"), limit)
	if err != nil {
		return text(http.StatusBadRequest, "bad group: "+err.Error())
	}
	return jsonResult(map[string]any{"group": group, "members": append([]string{}, ids...), "next": next})
}
