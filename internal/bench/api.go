package bench

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lesismal/nbio"

	"github.com/ws2api/ws2api/internal/http1"
	"github.com/ws2api/ws2api/internal/loop"
)

// EchoAPI is the API the benchmarks run behind ws2api: GET answers "ok",
// POST echoes its body with its Content-Type, DELETE answers nothing. It
// speaks just enough HTTP/1.1 for that (keep-alive, pipelining,
// Content-Length bodies) on an event loop, so that it costs little next to
// the gateway it serves, as the original benchmark's fasthttp echo server
// did.
type EchoAPI struct {
	loop *loop.Loop
	ln   net.Listener
	Addr string

	opts EchoOptions
	// until is when the API starts answering (unix nanoseconds): before it,
	// every request gets 503.
	until atomic.Int64
	logMu sync.Mutex
}

// EchoOptions are the echo API's test knobs.
type EchoOptions struct {
	// Log, if set, gets one line per request answered 2xx:
	// METHOD /id connection-id "body" (the body quoted), written before the
	// answer.
	Log io.Writer
	// UnavailableFor makes every request get 503 for that long after the
	// start, as an API that is starting up or overloaded.
	UnavailableFor time.Duration
	// OCPP makes it a central system for the load tool's chargers (-ocpp):
	// a connect is accepted with the first subprotocol the client offered,
	// an OCPP-J CALL is answered with a CALLRESULT to it, and a CALLRESULT
	// or CALLERROR gets an empty answer (nothing goes to the client).
	// Other bodies are echoed.
	OCPP bool
}

// StartEchoAPI listens on addr.
func StartEchoAPI(addr string, pollers int, opts ...EchoOptions) (*EchoAPI, error) {
	l, err := loop.New("echo-api", pollers, 0)
	if err != nil {
		return nil, err
	}
	a := &EchoAPI{loop: l}
	if len(opts) > 0 {
		a.opts = opts[0]
	}
	a.until.Store(time.Now().Add(a.opts.UnavailableFor).UnixNano())
	l.OnAccept(func(*nbio.Conn) loop.Handler { return &echoConn{api: a} })
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		l.Stop()
		return nil, err
	}
	l.AddAll(ln)
	a.ln, a.Addr = ln, ln.Addr().String()
	return a, nil
}

// Unavailable makes every request get 503 for d from now.
func (a *EchoAPI) Unavailable(d time.Duration) { a.until.Store(time.Now().Add(d).UnixNano()) }

// Stop closes the listener and every connection.
func (a *EchoAPI) Stop() {
	a.ln.Close()
	a.loop.Stop()
}

type echoConn struct {
	api  *EchoAPI
	in   []byte
	out  []byte
	log  []byte
	body []byte // an OCPP answer being built
}

// OnData answers every complete request (loop.Handler).
func (ec *echoConn) OnData(c *nbio.Conn, data []byte) {
	out, err := ec.serve(data)
	if len(out) > 0 {
		_, _ = c.Write(out)
	}
	if err != nil {
		_ = c.Close()
	}
}

// OnClose implements loop.Handler.
func (ec *echoConn) OnClose(*nbio.Conn, error) {}

var errBadRequest = errors.New("bad request")

// serve parses every complete request in what arrived and returns the
// answers, to be written at once.
func (ec *echoConn) serve(data []byte) ([]byte, error) {
	buf := data
	if len(ec.in) > 0 {
		ec.in = append(ec.in, data...)
		buf = ec.in
	}
	out := ec.out[:0]
	ec.log = ec.log[:0]
	var err error
	for len(buf) > 0 {
		var n int
		out, n, err = ec.answer(out, buf)
		if err != nil || n == 0 {
			break
		}
		buf = buf[n:]
	}
	if len(ec.log) > 0 {
		// One write for the batch, before the answers go out.
		ec.api.logMu.Lock()
		_, _ = ec.api.opts.Log.Write(ec.log)
		ec.api.logMu.Unlock()
	}
	if err != nil {
		out = http1.AppendResponse(out, &http1.Response{Status: 400, Close: true})
	}
	switch {
	case len(buf) == 0:
		ec.in = ec.in[:0]
	case len(ec.in) > 0:
		ec.in = ec.in[:copy(ec.in, buf)]
	default:
		ec.in = append(ec.in[:0], buf...)
	}
	ec.out = out
	return out, err
}

// okBody is the body of an accepting answer.
var okBody = []byte("ok")

// answer appends the answer to the request at the start of b and returns
// the bytes consumed, or 0 if the request is not complete.
func (ec *echoConn) answer(out, b []byte) ([]byte, int, error) {
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 {
		if len(b) > 64<<10 {
			return out, 0, errBadRequest
		}
		return out, 0, nil
	}
	head := b[:end]
	line, rest, _ := bytes.Cut(head, []byte("\r\n"))
	method, _, _ := bytes.Cut(line, []byte(" "))
	length, ctype, connID, protocols := 0, []byte(nil), []byte("-"), []byte(nil)
	for len(rest) > 0 {
		var h []byte
		h, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		name, value, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			return out, 0, errBadRequest
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			n, err := strconv.Atoi(string(value))
			if err != nil || n < 0 {
				return out, 0, errBadRequest
			}
			length = n
		case bytes.EqualFold(name, []byte("Content-Type")):
			ctype = value
		case bytes.EqualFold(name, []byte("X-Ws2api-Connection-Id")):
			connID = value
		case bytes.EqualFold(name, []byte("Sec-WebSocket-Protocol")):
			protocols = value
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			return out, 0, errBadRequest
		}
	}
	total := end + 4 + length
	if len(b) < total {
		return out, 0, nil
	}
	body := b[end+4 : total]
	if time.Now().UnixNano() < ec.api.until.Load() {
		return http1.AppendResponse(out, &http1.Response{Status: 503}), total, nil
	}
	if ec.api.opts.Log != nil {
		target, _, _ := bytes.Cut(bytes.TrimPrefix(line, append(method, ' ')), []byte(" "))
		ec.log = append(ec.log, method...)
		ec.log = append(ec.log, ' ')
		ec.log = append(ec.log, target...)
		ec.log = append(ec.log, ' ')
		ec.log = append(ec.log, connID...)
		ec.log = append(ec.log, ' ')
		ec.log = strconv.AppendQuote(ec.log, string(body))
		ec.log = append(ec.log, '\n')
	}
	if ec.api.opts.OCPP {
		switch string(method) {
		case "GET":
			// The subprotocol: the first the charger offered.
			r := http1.Response{Status: 200, ContentType: "text/plain", Body: okBody}
			if first, _, _ := bytes.Cut(protocols, []byte(",")); len(bytes.TrimSpace(first)) > 0 {
				r.Header = []http1.Header{{Name: "Sec-WebSocket-Protocol", Value: string(bytes.TrimSpace(first))}}
			}
			return http1.AppendResponse(out, &r), total, nil
		case "POST":
			var ok bool
			if ec.body, ok = appendOCPPAnswer(ec.body[:0], body); ok {
				return http1.AppendResponse(out, &http1.Response{Status: 200, ContentType: "application/json", Body: ec.body}), total, nil
			}
		}
	}
	switch string(method) {
	case "GET":
		out = http1.AppendResponse(out, &http1.Response{Status: 200, ContentType: "text/plain", Body: okBody})
	case "POST":
		r := http1.Response{Status: 200, ContentType: "text/plain", Body: body}
		if len(ctype) > 0 {
			r.ContentType = string(ctype)
		}
		out = http1.AppendResponse(out, &r)
	default:
		out = http1.AppendResponse(out, &http1.Response{Status: 200})
	}
	return out, total, nil
}

// runAPI is `ws2api bench api`.
func runAPI(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("ws2api bench api", flag.ContinueOnError)
	fs.SetOutput(stdout)
	listen := fs.String("listen", "127.0.0.1:8000", "address to serve the echo API on")
	pollers := fs.Int("pollers", 1, "event-loop goroutines")
	logFile := fs.String("log", "", "append one line per request answered 2xx to this `file`: METHOD /id connection-id \"body\"")
	unavailable := fs.Duration("unavailable-for", 0, "answer 503 to every request for this long after starting, and again after each SIGUSR1")
	netHTTP := fs.Bool("net-http", false, "serve with Go's net/http instead of the event loop: a real server's costs, for comparisons")
	ocpp := fs.Bool("ocpp", false, "a central system for the load tool's -ocpp chargers: accept the first subprotocol offered, answer a CALL with a CALLRESULT to it, a CALLRESULT or CALLERROR with nothing; echo anything else")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *netHTTP {
		return serveNetHTTP(ctx, *listen, *ocpp)
	}
	var opts EchoOptions
	opts.OCPP = *ocpp
	opts.UnavailableFor = *unavailable
	if *logFile != "" {
		f, err := os.OpenFile(*logFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		opts.Log = f
	}
	api, err := StartEchoAPI(*listen, *pollers, opts)
	if err != nil {
		return fmt.Errorf("echo API: %w", err)
	}
	slog.Info("echo API serving", "addr", api.Addr)
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	for {
		select {
		case <-ctx.Done():
			api.Stop()
			return nil
		case <-usr1:
			api.Unavailable(*unavailable)
			slog.Info("echo API unavailable", "for", unavailable.String())
		}
	}
}

// serveNetHTTP is the echo API on Go's net/http, with the same OCPP mode.
func serveNetHTTP(ctx context.Context, addr string, ocpp bool) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("echo API: %w", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet:
			if first, _, _ := strings.Cut(r.Header.Get("Sec-WebSocket-Protocol"), ","); ocpp && strings.TrimSpace(first) != "" {
				w.Header().Set("Sec-WebSocket-Protocol", strings.TrimSpace(first))
			}
			io.WriteString(w, "ok")
		case http.MethodPost:
			b, _ := io.ReadAll(r.Body)
			if ocpp {
				if answer, ok := appendOCPPAnswer(nil, b); ok {
					w.Header().Set("Content-Type", "application/json")
					w.Write(answer)
					return
				}
			}
			if ct := r.Header.Get("Content-Type"); ct != "" {
				w.Header().Set("Content-Type", ct)
			}
			w.Write(b)
		}
	})}
	slog.Info("echo API serving (net/http)", "addr", ln.Addr().String())
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
