// Package control serves the control listener, the API's way in to its
// clients: push to one id, look one up or close it, broadcast to all, plus
// /metrics, /healthz and /debug/pprof/. It must never be reachable by
// clients: anyone who can reach it can write to every connection.
//
// Each endpoint's answer is computed once, as a result; [Server] writes
// the frequent ones straight from the event loop, and [Handler] is the
// same API as an http.Handler for everything else.
package control

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ws2api/ws2api/internal/cluster"
	"github.com/ws2api/ws2api/internal/gateway"
	"github.com/ws2api/ws2api/internal/metrics"
	"github.com/ws2api/ws2api/internal/warnlog"
	"github.com/ws2api/ws2api/internal/ws"
)

// Hub is what the control API acts on: the gateway's connections.
type Hub interface {
	Push(id string, binary bool, data []byte) error
	PushMany(ids []string, binary bool, data []byte) (notConnected []string)
	Info(id string) (gateway.Info, error)
	Kick(id string, code int, reason string) error
	Broadcast(binary bool, data []byte) int
	BroadcastGroup(group string, binary bool, data []byte) (int, error)
	Join(id, group string) error
	Leave(id, group string) (bool, error)
	Groups() map[string]int
	GroupMembers(group, after string, limit int) (ids []string, next string, err error)
	SetMeta(id, name, value string, remove bool) error
	Call(id string, binary bool, data []byte, wait time.Duration) (gateway.Answer, error)
	Count() int
	Draining() bool
}

var _ Hub = (*gateway.Server)(nil)

// Options configures a [Handler]. Hub and Metrics are required.
type Options struct {
	Hub     Hub
	Metrics *metrics.Metrics
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// MaxBodyBytes bounds a pushed or broadcast message. Default 1 MiB.
	MaxBodyBytes int64
	// Token, when set, must come with every request but GET /healthz as
	// "Authorization: Bearer <Token>"; without it the answer is 401.
	Token string
	// Hosts are the names, beside localhost and any IP address, that a
	// request's Host may give when there is no Token (see admit.go);
	// entries that are neither a name nor an address are left out
	// ([CheckHosts] reports them). Default none.
	Hosts []string
	// Relay, when set, reaches the clients of the cluster's other nodes:
	// a request for an id not connected here goes to the node holding
	// it, and broadcasts reach every node.
	Relay Relay
	// Page, when set, is `ws2api demo`'s page, served at GET /debug/demo:
	// from here, its pushes are same-origin requests. Production leaves
	// it nil.
	Page []byte
}

// Handler is the control API as an http.Handler.
type Handler struct {
	opts  Options
	mux   *http.ServeMux
	token *[sha256.Size]byte // the token's hash; nil: no token needed
	hosts map[string]bool    // Options.Hosts: lower case, no final dot
	hub   clientHub          // the Hub, or with a Relay the cluster
	warn  warnlog.Limiter    // for refused requests
}

var _ http.Handler = (*Handler)(nil)

// New builds the handler.
func New(opts Options) *Handler {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 1 << 20
	}
	h := &Handler{opts: opts, mux: http.NewServeMux(), hub: opts.Hub}
	if opts.Relay != nil {
		h.hub = clusterHub{local: opts.Hub, relay: opts.Relay}
	}
	if opts.Token != "" {
		sum := sha256.Sum256([]byte(opts.Token))
		h.token = &sum
	}
	h.hosts, _ = parseHosts(opts.Hosts)
	h.mux.HandleFunc("GET /metrics", h.metrics)
	h.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { h.healthz().write(w) })
	h.mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	h.mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	h.mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	h.mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	h.mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	if opts.Page != nil {
		h.mux.HandleFunc("GET /debug/demo", h.page)
	}
	h.mux.HandleFunc("POST /{$}", h.broadcast)
	h.mux.HandleFunc("GET /{$}", h.list)
	h.mux.HandleFunc("/{id}", h.client)
	h.mux.HandleFunc("PUT /{id}/groups/{group}", h.group)
	h.mux.HandleFunc("DELETE /{id}/groups/{group}", h.group)
	h.mux.HandleFunc("PUT /{id}/meta/{name}", h.meta)
	h.mux.HandleFunc("DELETE /{id}/meta/{name}", h.meta)
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if res, ok := h.admit(admissionOf(r)); !ok {
		res.write(w)
		return
	}
	h.mux.ServeHTTP(w, r)
}

// result is an answer before it is written, by net/http or by the
// event-loop server.
type result struct {
	status int
	ctype  string // default text/plain; charset=utf-8
	body   []byte
	allow  string    // the Allow header of a 405
	header [2]string // one more header: name, value
}

func text(status int, msg string) result { return result{status: status, body: []byte(msg)} }

var (
	resultOK           = text(http.StatusOK, "ok")
	resultNotFound     = text(http.StatusNotFound, "not found")
	resultUnauthorized = result{status: http.StatusUnauthorized, body: []byte("unauthorized: send Authorization: Bearer <the -control-token>\n"),
		header: [2]string{"WWW-Authenticate", `Bearer realm="ws2api"`}}
)

func (r result) contentType() string {
	if r.ctype == "" {
		return "text/plain; charset=utf-8"
	}
	return r.ctype
}

func (r result) write(w http.ResponseWriter) {
	w.Header().Set("Content-Type", r.contentType())
	if r.allow != "" {
		w.Header().Set("Allow", r.allow)
	}
	if r.header[0] != "" {
		w.Header().Set(r.header[0], r.header[1])
	}
	w.WriteHeader(r.status)
	_, _ = w.Write(r.body)
}

// page serves Options.Page; no other site may frame it.
func (h *Handler) page(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Frame-Options", "DENY")
	_, _ = w.Write(h.opts.Page)
}

func (h *Handler) metrics(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	h.opts.Metrics.WritePrometheus(w)
}

func (h *Handler) healthz() result {
	if h.opts.Hub.Draining() {
		return text(http.StatusServiceUnavailable, "draining")
	}
	return resultOK
}

// client serves /<id> through net/http.
func (h *Handler) client(w http.ResponseWriter, r *http.Request) {
	var body []byte
	if r.Method == http.MethodPost {
		var ok bool
		if body, ok = h.readBody(w, r); !ok {
			return
		}
	}
	h.clientResult(h.hub, r.Method, pathID(r), r.URL.RawQuery, r.Header.Get("Content-Type"), body).write(w)
}

// pathID is the first segment of a request's path as sent, still escaped:
// [gateway.ParseID] decodes it once, as the public listener does, so that
// /CP%31 and /CP1 name the same client. (net/http's PathValue would do
// the decoding too, but lets a malformed escape through as it is.)
func pathID(r *http.Request) string {
	seg, _, _ := strings.Cut(strings.TrimPrefix(r.URL.EscapedPath(), "/"), "/")
	return seg
}

// parseID decodes and checks a client id from a control path.
func parseID(seg string) (string, *result) {
	id, err := gateway.ParseID(seg)
	if err != nil {
		r := text(http.StatusBadRequest, "bad client id: "+err.Error())
		return "", &r
	}
	return id, nil
}

// readBody reads a message up to Options.MaxBodyBytes; past it, or if the
// body cannot be read, it answers (413 or 400) and reports false.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.opts.MaxBodyBytes))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		h.tooLarge().write(w)
		return nil, false
	case err != nil:
		text(http.StatusBadRequest, "reading the body: "+err.Error()).write(w)
		return nil, false
	}
	return body, true
}

func (h *Handler) tooLarge() result { return text(http.StatusRequestEntityTooLarge, h.tooLargeText()) }

func (h *Handler) tooLargeText() string {
	return "message larger than " + strconv.FormatInt(h.opts.MaxBodyBytes, 10) + " bytes"
}

// clientResult answers /<seg>: POST pushes (with ?await=, calls), GET
// describes, DELETE closes. seg is the id as sent, escaped.
func (h *Handler) clientResult(hub clientHub, method, seg, rawQuery, contentType string, body []byte) result {
	id, bad := parseID(seg)
	if bad != nil {
		return *bad
	}
	switch method {
	case http.MethodPost:
		if wait, ok := awaitOf(rawQuery); ok {
			return h.call(hub, id, wait, contentType, body)
		}
		return h.push(hub, id, contentType, body)
	case http.MethodGet:
		return h.info(hub, id)
	case http.MethodDelete:
		return h.kick(hub, id, rawQuery)
	}
	r := text(http.StatusMethodNotAllowed, "method not allowed: use POST to push, GET to look up, DELETE to close")
	r.allow = "GET, POST, DELETE"
	return r
}

func (h *Handler) push(hub clientHub, id, contentType string, body []byte) result {
	binary, bad := messageKind(contentType, body)
	if bad != nil {
		return *bad
	}
	err := hub.Push(id, binary, body)
	if r, ok := busFailure(id, err); ok {
		return r
	}
	switch {
	case errors.Is(err, gateway.ErrNotConnected):
		return resultNotFound
	case err != nil:
		return text(http.StatusInternalServerError, err.Error())
	}
	return resultOK
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
func (h *Handler) call(hub clientHub, id, await, contentType string, body []byte) result {
	wait, ok := parseAwait(await)
	if !ok {
		if await == "\x00" {
			return text(http.StatusBadRequest, "malformed query with ?await=")
		}
		return text(http.StatusBadRequest, "bad ?await="+quoteShort(await)+": a duration (30s) or seconds, above 0 and at most "+maxAwait.String())
	}
	binary, bad := messageKind(contentType, body)
	if bad != nil {
		return *bad
	}
	answer, err := hub.Call(id, binary, body, wait)
	if r, ok := busFailure(id, err); ok {
		return r
	}
	switch {
	case err == nil:
		ctype := "application/json"
		if answer.Binary {
			ctype = "application/octet-stream"
		}
		return result{status: http.StatusOK, ctype: ctype, body: answer.Data}
	case errors.Is(err, gateway.ErrNotACall):
		return text(http.StatusBadRequest, err.Error())
	case errors.Is(err, gateway.ErrNotConnected):
		return resultNotFound
	case errors.Is(err, gateway.ErrClientGone):
		return text(http.StatusGone, err.Error())
	case errors.Is(err, gateway.ErrCallTimeout):
		return text(http.StatusGatewayTimeout, "the client did not answer within "+wait.String())
	case errors.Is(err, gateway.ErrCallPending):
		return text(http.StatusConflict, err.Error())
	}
	return text(http.StatusInternalServerError, err.Error())
}

func (h *Handler) info(hub clientHub, id string) result {
	info, err := hub.Info(id)
	if r, ok := busFailure(id, err); ok {
		return r
	}
	if err != nil {
		return resultNotFound
	}
	return jsonResult(info)
}

func (h *Handler) kick(hub clientHub, id, rawQuery string) result {
	q, err := url.ParseQuery(rawQuery)
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
	err = hub.Kick(id, code, reason)
	if r, ok := busFailure(id, err); ok {
		return r
	}
	if err != nil {
		return resultNotFound
	}
	return resultOK
}

// broadcast serves POST /: to every client, to one group (?group=g), or to
// the listed ids (?id=a&id=b).
func (h *Handler) broadcast(w http.ResponseWriter, r *http.Request) {
	body, ok := h.readBody(w, r)
	if !ok {
		return
	}
	binary, bad := messageKind(r.Header.Get("Content-Type"), body)
	if bad != nil {
		bad.write(w)
		return
	}
	q := r.URL.Query()
	group, ids := q.Get("group"), q["id"]
	switch {
	case q.Has("await"):
		text(http.StatusBadRequest, "?await= calls one client: POST /<id>?await=").write(w)
	case group != "" && len(ids) > 0:
		text(http.StatusBadRequest, "give ?group= or ?id=, not both").write(w)
	case group != "":
		n, err := h.opts.Hub.BroadcastGroup(group, binary, body)
		if err != nil {
			text(http.StatusBadRequest, "bad group: "+err.Error()).write(w)
			return
		}
		h.overCluster(group, binary, body, n, map[string]any{"group": group}).write(w)
	case len(ids) > 0:
		for _, id := range ids {
			if err := gateway.CheckID(id); err != nil { // query values are decoded already
				text(http.StatusBadRequest, "bad client id "+strconv.Quote(id)+": "+err.Error()).write(w)
				return
			}
		}
		missing := h.opts.Hub.PushMany(ids, binary, body)
		var err error
		if h.opts.Relay != nil && len(missing) > 0 {
			missing, err = h.opts.Relay.PushMany(missing, binary, body)
		}
		res := jsonResult(map[string]any{"delivered": len(ids) - len(missing), "not_connected": append([]string{}, missing...)})
		if err != nil {
			res = jsonResult(map[string]any{"delivered": len(ids) - len(missing), "not_connected": append([]string{}, missing...), "error": err.Error()})
			res.status = http.StatusServiceUnavailable
			if errors.Is(err, cluster.ErrTimeout) {
				res.status = http.StatusGatewayTimeout
			}
		}
		res.write(w)
	default:
		h.overCluster("", binary, body, h.opts.Hub.Broadcast(binary, body), map[string]any{}).write(w)
	}
}

// list serves GET /: with ?group=g a page of its members (?after=id to go
// on, ?limit=n, default 1000); without, the client count and the groups.
func (h *Handler) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	group := q.Get("group")
	if group == "" {
		jsonResult(map[string]any{"connections": h.opts.Hub.Count(), "groups": h.opts.Hub.Groups()}).write(w)
		return
	}
	limit := 1000
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 100000 {
			text(http.StatusBadRequest, "bad limit "+strconv.Quote(s)+": 1 to 100000").write(w)
			return
		}
		limit = n
	}
	ids, next, err := h.opts.Hub.GroupMembers(group, q.Get("after"), limit)
	if err != nil {
		text(http.StatusBadRequest, "bad group: "+err.Error()).write(w)
		return
	}
	jsonResult(map[string]any{"group": group, "members": append([]string{}, ids...), "next": next}).write(w)
}

// group serves PUT and DELETE /<id>/groups/<group>.
func (h *Handler) group(w http.ResponseWriter, r *http.Request) {
	id, bad := parseID(pathID(r))
	if bad != nil {
		bad.write(w)
		return
	}
	group := r.PathValue("group")
	var err error
	if r.Method == http.MethodPut {
		err = h.hub.Join(id, group)
	} else {
		var was bool
		if was, err = h.hub.Leave(id, group); err == nil && !was {
			text(http.StatusNotFound, "not in group").write(w)
			return
		}
	}
	if res, ok := busFailure(id, err); ok {
		res.write(w)
		return
	}
	switch {
	case errors.Is(err, gateway.ErrNotConnected):
		resultNotFound.write(w)
	case err != nil:
		text(http.StatusBadRequest, "bad group: "+err.Error()).write(w)
	default:
		resultOK.write(w)
	}
}

// meta serves PUT (the body is the value) and DELETE /<id>/meta/<name>: the
// X-Ws2api-Meta-<name> header sent with the client's later requests.
func (h *Handler) meta(w http.ResponseWriter, r *http.Request) {
	id, bad := parseID(pathID(r))
	if bad != nil {
		bad.write(w)
		return
	}
	name := r.PathValue("name")
	value, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 8<<10))
	if err != nil {
		text(http.StatusBadRequest, "meta value: "+err.Error()).write(w)
		return
	}
	err = h.hub.SetMeta(id, name, strings.TrimSpace(string(value)), r.Method == http.MethodDelete)
	if res, ok := busFailure(id, err); ok {
		res.write(w)
		return
	}
	switch {
	case errors.Is(err, gateway.ErrNotConnected):
		resultNotFound.write(w)
	case errors.Is(err, gateway.ErrBadMeta):
		text(http.StatusBadRequest, "bad meta header: the name must be a header token, the value one line of at most 8 KiB").write(w)
	case err != nil:
		text(http.StatusBadRequest, err.Error()).write(w)
	default:
		resultOK.write(w)
	}
}

func jsonResult(v any) result {
	b, _ := json.Marshal(v)
	return result{status: http.StatusOK, ctype: "application/json", body: append(b, '\n')}
}

// messageKind says whether a pushed message is binary (Content-Type
// application/octet-stream) or text, which must be UTF-8.
func messageKind(contentType string, body []byte) (binary bool, bad *result) {
	ct, _, _ := strings.Cut(contentType, ";")
	if strings.EqualFold(strings.TrimSpace(ct), "application/octet-stream") {
		return true, nil
	}
	if !utf8.Valid(body) {
		r := text(http.StatusBadRequest, "a text message must be UTF-8; send binary with Content-Type: application/octet-stream")
		return false, &r
	}
	return false, nil
}
