package main

import (
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The demo: `ws2api demo` runs the gateway with a built-in echo API and
// serves a page where a person connects, sends messages and pushes.
// Everything else is the real gateway. The page comes from the control
// listener (at /debug/demo), so that its pushes are same-origin requests:
// the control listener refuses those a page of another origin sends
// (internal/control/admit.go). Its WebSocket goes to the public listener,
// which answers GET / with a note saying where the page is.

//go:embed demo/index.html
var demoHTML []byte

// demo starts the echo API on a loopback port of its own, then the gateway
// in front of it, with the page. Flags are the gateway's; -listen defaults
// to 127.0.0.1:7001 here, as the demo is for this machine.
func demo(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("demo API: %w", err)
	}
	api := &http.Server{Handler: demoAPI(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = api.Serve(ln) }()
	defer api.Close()

	args = append([]string{"-listen", "127.0.0.1:7001", "-api", "http://" + ln.Addr().String() + "/"}, args...)
	cfg, err := parseFlags(args, getenv, stdout)
	if err != nil {
		return err
	}
	scheme := "ws"
	if cfg.tlsCert != "" {
		scheme = "wss"
	}
	cfg.demoPages = func(public, control net.Addr) (page, note []byte) {
		page = bytes.ReplaceAll(demoHTML, []byte("{{PUBLIC_PORT}}"), []byte(strconv.Itoa(public.(*net.TCPAddr).Port)))
		page = bytes.ReplaceAll(page, []byte("{{PUBLIC_SCHEME}}"), []byte(scheme))
		url := html.EscapeString(demoURL(control))
		note = []byte("<!doctype html>\n<title>ws2api demo</title>\n<p>The demo page is on the control listener, so that its pushes are same-origin: " +
			"open <code>" + url + "</code> from the address bar. (A link from here would not do: the control listener refuses requests sent by other sites' pages.)</p>\n")
		return page, note
	}
	return startGateway(ctx, cfg, stderr)
}

// demoAPI is the application the demo puts behind the gateway, what yours
// would do: accept or refuse a connect, answer messages, hear of closes.
// It logs each request as the gateway logs (-log-format).
func demoAPI() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log := slog.Default().With("from", "demo API")
		id := strings.TrimPrefix(r.URL.Path, "/")
		switch r.Method {
		case http.MethodGet:
			if strings.HasPrefix(id, "bad") {
				log.Info("connect refused", "id", id)
				fmt.Fprint(w, "ids starting with bad are turned away by the demo API")
				return
			}
			log.Info("connect accepted", "id", id, "connection", r.Header.Get("X-Ws2api-Connection-Id"))
			fmt.Fprint(w, "ok")
		case http.MethodPost:
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			if r.Header.Get("Content-Type") == "application/octet-stream" {
				log.Info("binary message", "id", id, "bytes", len(body))
				w.Header().Set("Content-Type", "application/octet-stream")
				_, _ = w.Write(body)
				return
			}
			log.Info("message", "id", id, "text", string(body))
			fmt.Fprintf(w, "echo: %s", body)
		case http.MethodDelete:
			reason, _ := io.ReadAll(r.Body)
			log.Info("disconnected", "id", id, "code", r.Header.Get("X-Ws2api-Close-Code"), "reason", string(reason))
		default:
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		}
	})
}

// demoURL is where a browser finds the demo page.
func demoURL(control net.Addr) string {
	return "http://" + browsable(control.String()) + "/debug/demo"
}

// browsable turns a listen address into one a browser can open: an
// unspecified host becomes localhost.
func browsable(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}
