// Package control serves the control listener, the API's way in to its
// clients: push to one id, look one up or close it, broadcast to all, plus
// /metrics, /healthz and /debug/pprof/. It must never be reachable by
// clients: anyone who can reach it can write to every connection.
package control

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/ws2api/ws2api/internal/gateway"
	"github.com/ws2api/ws2api/internal/metrics"
	"github.com/ws2api/ws2api/internal/ws"
)

// Hub is what the control API acts on: the gateway's connections.
type Hub interface {
	Push(id string, binary bool, data []byte) error
	Info(id string) (gateway.Info, error)
	Kick(id string, code int, reason string) error
	Broadcast(binary bool, data []byte) int
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
}

// Handler is the control listener's http.Handler.
type Handler struct {
	opts Options
	mux  *http.ServeMux
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
	h := &Handler{opts: opts, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /metrics", h.metrics)
	h.mux.HandleFunc("GET /healthz", h.healthz)
	h.mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	h.mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	h.mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	h.mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	h.mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	h.mux.HandleFunc("POST /{$}", h.broadcast)
	h.mux.HandleFunc("/{id}", h.client)
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Handler) metrics(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	h.opts.Metrics.WritePrometheus(w)
}

func (h *Handler) healthz(w http.ResponseWriter, _ *http.Request) {
	if h.opts.Hub.Draining() {
		text(w, http.StatusServiceUnavailable, "draining")
		return
	}
	text(w, http.StatusOK, "ok")
}

// client serves /<id>: POST pushes, GET describes, DELETE closes.
func (h *Handler) client(w http.ResponseWriter, r *http.Request) {
	id := strings.TrimPrefix(r.URL.EscapedPath(), "/")
	if err := gateway.ValidID(id); err != nil {
		text(w, http.StatusBadRequest, "bad client id: "+err.Error())
		return
	}
	switch r.Method {
	case http.MethodPost:
		h.push(w, r, id)
	case http.MethodGet:
		h.info(w, id)
	case http.MethodDelete:
		h.kick(w, r, id)
	default:
		w.Header().Set("Allow", "GET, POST, DELETE")
		text(w, http.StatusMethodNotAllowed, "method not allowed: use POST to push, GET to look up, DELETE to close")
	}
}

func (h *Handler) push(w http.ResponseWriter, r *http.Request, id string) {
	binary, body, ok := h.readMessage(w, r)
	if !ok {
		return
	}
	switch err := h.opts.Hub.Push(id, binary, body); {
	case errors.Is(err, gateway.ErrNotConnected):
		text(w, http.StatusNotFound, "not found")
	case err != nil:
		text(w, http.StatusInternalServerError, err.Error())
	default:
		text(w, http.StatusOK, "ok")
	}
}

func (h *Handler) info(w http.ResponseWriter, id string) {
	info, err := h.opts.Hub.Info(id)
	if errors.Is(err, gateway.ErrNotConnected) {
		text(w, http.StatusNotFound, "not found")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(info)
}

func (h *Handler) kick(w http.ResponseWriter, r *http.Request, id string) {
	q := r.URL.Query()
	code := ws.CloseNormal
	if s := q.Get("code"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || !(n == ws.CloseNormal || n >= 3000 && n <= 4999) {
			text(w, http.StatusBadRequest, "bad close code "+strconv.Quote(s)+": use 1000 or 3000-4999")
			return
		}
		code = n
	}
	reason := q.Get("reason")
	if len(reason) > ws.MaxControlPayload-2 {
		text(w, http.StatusBadRequest, "close reason longer than 123 bytes")
		return
	}
	if !utf8.ValidString(reason) {
		text(w, http.StatusBadRequest, "close reason is not valid UTF-8")
		return
	}
	if err := h.opts.Hub.Kick(id, code, reason); errors.Is(err, gateway.ErrNotConnected) {
		text(w, http.StatusNotFound, "not found")
		return
	}
	text(w, http.StatusOK, "ok")
}

func (h *Handler) broadcast(w http.ResponseWriter, r *http.Request) {
	binary, body, ok := h.readMessage(w, r)
	if !ok {
		return
	}
	n := h.opts.Hub.Broadcast(binary, body)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]int{"delivered": n})
}

// readMessage reads a pushed message: binary when the Content-Type is
// application/octet-stream, else text, which must be UTF-8.
func (h *Handler) readMessage(w http.ResponseWriter, r *http.Request) (binary bool, body []byte, ok bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.opts.MaxBodyBytes))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		text(w, http.StatusRequestEntityTooLarge, "message larger than "+strconv.FormatInt(h.opts.MaxBodyBytes, 10)+" bytes")
		return false, nil, false
	case err != nil:
		text(w, http.StatusBadRequest, "reading the body: "+err.Error())
		return false, nil, false
	}
	ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";")
	binary = strings.EqualFold(strings.TrimSpace(ct), "application/octet-stream")
	if !binary && !utf8.Valid(body) {
		text(w, http.StatusBadRequest, "a text message must be UTF-8; send binary with Content-Type: application/octet-stream")
		return false, nil, false
	}
	return binary, body, true
}

func text(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg)
}
