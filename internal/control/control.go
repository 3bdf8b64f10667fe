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
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/ws2api/ws2api/internal/gateway"
	"github.com/ws2api/ws2api/internal/hub"
	"github.com/ws2api/ws2api/internal/metrics"
	"github.com/ws2api/ws2api/internal/warnlog"
)

// Hub is what the control API acts on: the gateway's connections.
type Hub interface {
	hub.Clients
	Groups() map[string]int
	GroupMembers(group, after string, limit int) (ids []string, next string, err error)
	Count() int
	Draining() bool
	// HandingOver reports a binary upgrade moving connections between
	// processes: an op may then wait for the other process, so none is
	// served on the event loop.
	HandingOver() bool
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
	token *[sha256.Size]byte // the token's hash; nil: no token needed
	hosts map[string]bool    // Options.Hosts: lower case, no final dot
	ops   clientOps          // the Hub's clients, or with a Relay the cluster's
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
	h := &Handler{opts: opts, ops: localOps{opts.Hub}}
	if opts.Relay != nil {
		h.ops = clusterOps{local: opts.Hub, relay: opts.Relay}
	}
	if opts.Token != "" {
		sum := sha256.Sum256([]byte(opts.Token))
		h.token = &sum
	}
	h.hosts, _ = parseHosts(opts.Hosts)
	return h
}

// ServeHTTP implements http.Handler: admitted, then routed as the event
// loop routes.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if res, ok := h.admit(admissionOf(r)); !ok {
		res.write(w)
		return
	}
	h.serveAdmitted(w, r)
}

// serveAdmitted serves a request already admitted: from ServeHTTP, or from
// the event loop's server, which admitted it as it read its head.
func (h *Handler) serveAdmitted(w http.ResponseWriter, r *http.Request) {
	req := request{method: r.Method, path: r.URL.EscapedPath(), rawQuery: r.URL.RawQuery, contentType: r.Header.Get("Content-Type")}
	rt, miss := h.match(r.Method, req.path, &req)
	switch {
	case miss != nil:
		miss.write(w)
		return
	case rt.serveHTTP != nil:
		rt.serveHTTP(h, w, r)
		return
	}
	if r.Method == http.MethodPost || r.Method == http.MethodPut {
		body, ok := h.readBody(w, r)
		if !ok {
			return
		}
		req.body = body
	}
	rt.serve(h, h.ops, &req).write(w)
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
