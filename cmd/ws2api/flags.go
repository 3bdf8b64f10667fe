package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ws2api/ws2api/internal/cluster"
	"github.com/ws2api/ws2api/internal/control"
	"github.com/ws2api/ws2api/internal/gateway"
	"github.com/ws2api/ws2api/internal/upstream"
)

// config is everything the flags (or WS2API_* variables) decide.
type config struct {
	// demoPages, set by `ws2api demo` (not a flag), renders the demo's
	// page, which the control listener serves at GET /debug/demo, and the
	// note that the public listener answers GET / with, given the
	// listeners' addresses.
	demoPages func(public, control net.Addr) (page, note []byte)

	listen        string
	api           string
	apiFile       string
	apiHealthPath string
	control       string

	cpuProfile, memProfile string

	maxConnsPerHost     int
	pipeline            int // ignored; see its flag
	maxIdleConnsPerHost int
	timeout             time.Duration

	maxMessage      byteSize
	compression     string
	compressMin     byteSize
	maxPending      byteSize
	maxPendingTotal byteSize
	maxOutgoing     byteSize
	maxOutTotal     byteSize
	maxHeader       byteSize

	handshakeTimeout time.Duration
	drainTimeout     time.Duration
	upgradeTimeout   time.Duration
	forwardHeaders   string
	trustedProxies   string

	controlToken  string
	controlHosts  string
	tlsCert       string
	tlsClientCA   string
	tlsClientAuth string
	tlsKey        string
	origins       string
	maxConns      int
	maxConnecting int
	maxMsgRate    float64
	idleTimeout   time.Duration
	pingInterval  time.Duration
	pingTimeout   time.Duration

	redis         string
	clusterPrefix string
	relayTimeout  time.Duration

	retryFirst  time.Duration
	retryMax    time.Duration
	retryGiveUp time.Duration

	pollers int

	logLevel  slog.Level
	logFormat string
}

// errUsage marks a command-line error: exit code 2.
type errUsage struct{ err error }

func (e errUsage) Error() string { return e.err.Error() }
func (e errUsage) Unwrap() error { return e.err }

// flagGroups orders `ws2api -h`.
var flagGroups = []struct {
	title string
	names []string
}{
	{"Listeners", []string{"listen", "control", "api", "api-file"}},
	{"Security", []string{"control-token", "control-hosts", "tls-cert", "tls-key", "tls-client-ca", "tls-client-auth", "origins"}},
	{"Cluster", []string{"redis", "cluster-prefix", "relay-timeout"}},
	{"Requests to the API", []string{"api-health-path", "max-conns-per-host", "max-idle-conns-per-host", "timeout", "retry-first", "retry-max", "retry-give-up", "forward-headers", "trusted-proxies", "pipeline"}},
	{"Limits", []string{"max-conns", "max-connecting", "max-message-size", "max-msg-rate", "max-pending", "max-pending-total", "max-outgoing", "max-outgoing-total", "max-header-size", "handshake-timeout", "idle-timeout", "ping-interval", "ping-timeout"}},
	{"Compression", []string{"compression", "compression-min"}},
	{"Running", []string{"pollers", "drain-timeout", "upgrade-timeout", "log-level", "log-format", "cpuprofile", "memprofile"}},
}

func newFlagSet(cfg *config) *flag.FlagSet {
	fs := flag.NewFlagSet("ws2api", flag.ContinueOnError)
	// Errors are reported by the caller in one line; the usage text is
	// printed for -h only.
	fs.SetOutput(io.Discard)
	fs.StringVar(&cfg.listen, "listen", ":7001", "public listener `address`: WebSocket upgrades at /<id>")
	fs.StringVar(&cfg.api, "api", "http://localhost:8000/", "API base `URLs`, comma-separated; the client id is appended (GET/POST/DELETE <url><id>); with several, requests go to the healthy ones in turn")
	fs.StringVar(&cfg.apiFile, "api-file", "", "read the API base URLs from `file` (one per line, # comments) instead of -api; SIGHUP re-reads it")
	fs.StringVar(&cfg.apiHealthPath, "api-health-path", "", "`path` under each API base probed with GET (2xx = healthy) to bring a failed backend back; default: a TCP connect")
	fs.StringVar(&cfg.control, "control", "127.0.0.1:7002", "control listener `address`: push, info, kick, broadcast, /metrics, /healthz, /debug/pprof/ (never make it public)")
	fs.StringVar(&cfg.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to `file`")
	fs.StringVar(&cfg.memProfile, "memprofile", "", "write a heap profile at exit to `file`")
	fs.IntVar(&cfg.maxConnsPerHost, "max-conns-per-host", upstream.HostDefaults.MaxConns, "most connections open to the API; requests beyond wait in a queue")
	fs.IntVar(&cfg.pipeline, "pipeline", 1, "ignored: requests to the API go one at a time on each connection (no pipelining, so no head-of-line blocking); kept so that old command lines still start")
	fs.IntVar(&cfg.maxIdleConnsPerHost, "max-idle-conns-per-host", upstream.HostDefaults.MaxConns, "most idle connections to the API kept for reuse")
	fs.DurationVar(&cfg.timeout, "timeout", upstream.HostDefaults.Timeout, "time the API has to answer one request")
	fs.DurationVar(&cfg.retryFirst, "retry-first", upstream.RetryDefaults.Backoff.First, "wait before the first retry of a failed request (doubles each time)")
	fs.DurationVar(&cfg.retryMax, "retry-max", upstream.RetryDefaults.Backoff.Max, "longest wait between retries")
	fs.DurationVar(&cfg.retryGiveUp, "retry-give-up", upstream.RetryDefaults.GiveUpAfter, "how long a message may keep failing before its client is closed with 1013")
	fs.StringVar(&cfg.forwardHeaders, "forward-headers", strings.Join(gateway.Defaults.ForwardHeaders, ","), "client handshake `headers` sent on with the connect GET (comma-separated)")
	fs.StringVar(&cfg.trustedProxies, "trusted-proxies", "", "peers whose X-Forwarded-For (appended to), X-Forwarded-Proto and X-Forwarded-Host are passed on, comma-separated `CIDRs` or addresses (127.0.0.1, 10.0.0.0/8); from others they are replaced by ws2api's own")
	d := gateway.Defaults
	cfg.maxMessage, cfg.maxPending, cfg.maxPendingTotal = byteSize(d.MaxMessageBytes), byteSize(d.MaxPendingBytes), byteSize(d.MaxPendingTotal)
	cfg.maxOutgoing, cfg.maxOutTotal, cfg.maxHeader = byteSize(d.MaxOutgoingBytes), byteSize(d.MaxOutgoingTotal), byteSize(d.MaxHeaderBytes)
	fs.Var(&cfg.maxMessage, "max-message-size", "largest message either way; a client sending more is closed with 1009 (`bytes`, e.g. 64KiB); a compressed one counts inflated")
	fs.StringVar(&cfg.compression, "compression", "off", "`mode` of permessage-deflate: on accepts it from clients that offer it, without context takeover (no memory kept per connection between messages; about 25 µs more CPU per message each way at 300 bytes, for 1.4x fewer bytes of OCPP); off never accepts it")
	cfg.compressMin = byteSize(d.CompressMin)
	fs.Var(&cfg.compressMin, "compression-min", "smallest message sent compressed to a client that negotiated it (`bytes`); smaller ones go as they are")
	fs.Var(&cfg.maxPending, "max-pending", "a client's messages waiting for the API, each counted as its size plus 256; past it the client is closed with 1013 (`bytes`)")
	fs.Var(&cfg.maxPendingTotal, "max-pending-total", "all clients' messages waiting for the API, counted as for -max-pending; past it a client that sends is closed with 1013 (`bytes`)")
	fs.Var(&cfg.maxOutgoing, "max-outgoing", "bytes waiting to be written to a client; past it the client is closed as a slow consumer (`bytes`)")
	fs.Var(&cfg.maxOutTotal, "max-outgoing-total", "bytes waiting to be written to all clients; a write past it first closes the clients with the oldest backlogs as slow consumers (`bytes`)")
	fs.Var(&cfg.maxHeader, "max-header-size", "largest upgrade request head (`bytes`)")
	fs.DurationVar(&cfg.handshakeTimeout, "handshake-timeout", d.HandshakeTimeout, "time a new connection has to send its upgrade request")
	fs.StringVar(&cfg.controlToken, "control-token", "", "every control request but GET /healthz must carry Authorization: Bearer `token`; 401 otherwise")
	fs.StringVar(&cfg.controlHosts, "control-hosts", "", "without -control-token, the control listener answers only requests whose Host is localhost or an IP address, against DNS rebinding; more host `names` it answers to, comma-separated (421 otherwise)")
	fs.StringVar(&cfg.tlsCert, "tls-cert", "", "serve wss on -listen with this PEM certificate chain `file` (with -tls-key); SIGHUP reloads both")
	fs.StringVar(&cfg.tlsKey, "tls-key", "", "PEM private key `file` for -tls-cert")
	fs.StringVar(&cfg.tlsClientCA, "tls-client-ca", "", "ask TLS clients for a certificate, verified against this PEM bundle of CA certificates (`file`; SIGHUP reloads it): the connect GET carries it as Client-Cert and Client-Cert-Chain (RFC 9440). OCPP security profile 3")
	fs.StringVar(&cfg.tlsClientAuth, "tls-client-auth", "require", "with -tls-client-ca: `require` a valid client certificate (refused at the handshake without), or accept clients without one (optional; one sent must be valid)")
	fs.StringVar(&cfg.origins, "origins", "", "browser origins allowed to connect, comma-separated `list` (https://app.example.com, https://*.example.com, null); another Origin is refused with 403; clients sending none are not affected")
	fs.IntVar(&cfg.maxConns, "max-conns", 0, "most clients connected at once; an upgrade past it is answered 503 (0: the open-file limit less 1024)")
	fs.IntVar(&cfg.maxConnecting, "max-connecting", d.MaxConnecting, "most upgrades waiting for the API's answer to their connect GET; one past it is answered 503 with Retry-After")
	fs.Float64Var(&cfg.maxMsgRate, "max-msg-rate", 100, "messages per second of one client sent to the API, a second's worth at once; a client sending faster is paced: its messages wait their turn within -max-pending (0: no limit)")
	fs.DurationVar(&cfg.idleTimeout, "idle-timeout", 0, "close a client with 1001 after this long without a message either way; pings do not count (0: never)")
	fs.DurationVar(&cfg.pingInterval, "ping-interval", 30*time.Second, "ping a client silent for this long (0: never ping); the API can set it per client with X-Ws2api-Ping-Interval in its connect answer")
	fs.DurationVar(&cfg.pingTimeout, "ping-timeout", d.PingTimeout, "a pinged client that then sends nothing for this long is dead: closed, DELETE with 1006")
	fs.StringVar(&cfg.redis, "redis", "", "join the cluster whose bus is this Redis `URL` (redis://[:password@]host:port/db, rediss:// for TLS; under Sentinel redis-sentinel://[:password@]host:port,host:port/<master>): control requests reach clients on any node, broadcasts every node")
	fs.StringVar(&cfg.clusterPrefix, "cluster-prefix", cluster.Defaults.Prefix, "`prefix` of every Redis key and channel the cluster uses (clusters sharing one Redis need different ones)")
	fs.DurationVar(&cfg.relayTimeout, "relay-timeout", cluster.Defaults.Timeout, "time a control request relayed to another node has to be answered")
	fs.DurationVar(&cfg.drainTimeout, "drain-timeout", 30*time.Second, "at shutdown, time to deliver pending messages and DELETEs before exiting")
	fs.DurationVar(&cfg.upgradeTimeout, "upgrade-timeout", 30*time.Second, "on SIGUSR2 (binary upgrade), time the new process has to take the listeners over; past it, or if it exits, this process serves on")
	cfg.logLevel = slog.LevelInfo
	fs.Var(&logLevel{&cfg.logLevel}, "log-level", "log `level`: debug, info, warn or error")
	fs.StringVar(&cfg.logFormat, "log-format", "text", "log `format`: text or json")
	fs.IntVar(&cfg.pollers, "pollers", 0, "event-loop goroutines serving every socket (0: one per CPU)")
	fs.Usage = func() { usage(fs) }
	return fs
}

func usage(fs *flag.FlagSet) {
	w := fs.Output()
	fmt.Fprint(w, `ws2api: a WebSocket gateway that turns client messages into HTTP requests
to your API, and lets the API push to any client with one HTTP POST.

Usage:
  ws2api [flags]            run the gateway
  ws2api demo [flags]       try it: the gateway, an echo API and a page at http://127.0.0.1:7002/debug/demo
  ws2api bench [flags]      run the load tool (ws2api bench -h)
  ws2api version            print the version

Every flag can also be set as WS2API_<FLAG> (upper case, - as _); a flag wins.
`)
	for _, g := range flagGroups {
		fmt.Fprintf(w, "\n%s:\n", g.title)
		for _, name := range g.names {
			f := fs.Lookup(name)
			kind, help := flag.UnquoteUsage(f)
			fmt.Fprintf(w, "  -%s %s\n    \t%s (default %s; env %s)\n", f.Name, kind, help, defaultText(f), envName(f.Name))
		}
	}
}

func defaultText(f *flag.Flag) string {
	if f.DefValue == "" {
		return "off"
	}
	return strconv.Quote(f.DefValue)
}

func envName(flagName string) string {
	return "WS2API_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseFlags fills cfg from the environment, then from args (a flag wins
// over its variable), and checks the values.
func parseFlags(args []string, getenv func(string) string, stdout io.Writer) (*config, error) {
	cfg := &config{}
	fs := newFlagSet(cfg)
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		v := getenv(envName(f.Name))
		if v == "" || envErr != nil {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			envErr = fmt.Errorf("invalid value %q for %s (flag -%s): %v", v, envName(f.Name), f.Name, err)
		}
	})
	if envErr != nil {
		return nil, errUsage{envErr}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return nil, err
		}
		return nil, errUsage{err}
	}
	if fs.NArg() > 0 {
		return nil, errUsage{fmt.Errorf("unexpected argument %q (flags start with -)", fs.Arg(0))}
	}
	if err := cfg.check(); err != nil {
		return nil, errUsage{err}
	}
	return cfg, nil
}

func (c *config) check() error {
	bad := func(name, why string) error { return fmt.Errorf("invalid value for flag -%s: %s", name, why) }
	if c.apiFile != "" {
		if _, err := c.backends(); err != nil {
			return bad("api-file", err.Error())
		}
	} else if _, err := upstream.ParseBackends(c.api); err != nil {
		return bad("api", err.Error())
	}
	if c.apiHealthPath != "" && (!strings.HasPrefix(c.apiHealthPath, "/") || strings.ContainsAny(c.apiHealthPath, "?# ")) {
		return bad("api-health-path", "must be a path starting with /")
	}
	if c.listen == "" {
		return bad("listen", "empty address")
	}
	if c.control == "" {
		return bad("control", "empty address")
	}
	if c.maxConnsPerHost < 1 {
		return bad("max-conns-per-host", "must be at least 1")
	}
	if c.compression != "on" && c.compression != "off" {
		return bad("compression", "must be on or off")
	}
	if c.maxIdleConnsPerHost < 0 {
		return bad("max-idle-conns-per-host", "must not be negative")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"timeout", c.timeout}, {"retry-first", c.retryFirst}, {"retry-max", c.retryMax},
		{"retry-give-up", c.retryGiveUp}, {"handshake-timeout", c.handshakeTimeout}, {"drain-timeout", c.drainTimeout},
	} {
		if d.v <= 0 {
			return bad(d.name, "must be positive")
		}
	}
	if c.retryMax < c.retryFirst {
		return bad("retry-max", "must not be below -retry-first")
	}
	for _, b := range []struct {
		name string
		v    byteSize
	}{
		{"max-message-size", c.maxMessage}, {"max-pending", c.maxPending}, {"max-pending-total", c.maxPendingTotal},
		{"max-outgoing", c.maxOutgoing}, {"max-outgoing-total", c.maxOutTotal}, {"max-header-size", c.maxHeader},
	} {
		if b.v <= 0 {
			return bad(b.name, "must be positive")
		}
	}
	if c.maxHeader < 256 {
		return bad("max-header-size", "must be at least 256 bytes")
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return bad("tls-cert", "-tls-cert and -tls-key go together")
	}
	if c.upgradeTimeout <= 0 {
		return bad("upgrade-timeout", "must be positive")
	}
	if c.tlsClientCA != "" && c.tlsCert == "" {
		return bad("tls-client-ca", "needs -tls-cert: ws2api verifies client certificates only where it terminates TLS (behind a proxy, the proxy does, see deploy/haproxy.cfg)")
	}
	if c.tlsClientAuth != "require" && c.tlsClientAuth != "optional" {
		return bad("tls-client-auth", "require or optional")
	}
	if strings.ContainsAny(c.controlToken, " \t\r\n") {
		return bad("control-token", "must not contain spaces or line breaks")
	}
	if err := control.CheckHosts(c.controlHostList()); err != nil {
		return bad("control-hosts", err.Error())
	}
	if err := gateway.CheckOrigins(c.originList()); err != nil {
		return bad("origins", err.Error())
	}
	if c.maxConns < 0 {
		return bad("max-conns", "must not be negative")
	}
	if c.maxConnecting < 1 {
		return bad("max-connecting", "must be at least 1")
	}
	if c.maxMsgRate < 0 || c.maxMsgRate != c.maxMsgRate {
		return bad("max-msg-rate", "must not be negative")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"idle-timeout", c.idleTimeout}, {"ping-interval", c.pingInterval}} {
		if d.v < 0 {
			return bad(d.name, "must not be negative (0 turns it off)")
		}
	}
	if c.pingTimeout <= 0 {
		return bad("ping-timeout", "must be positive")
	}
	if c.redis != "" {
		if err := cluster.CheckURL(c.redis); err != nil {
			return bad("redis", err.Error())
		}
	}
	if c.clusterPrefix == "" {
		return bad("cluster-prefix", "must not be empty")
	}
	if c.relayTimeout <= 0 {
		return bad("relay-timeout", "must be positive")
	}
	if c.pollers < 0 {
		return bad("pollers", "must not be negative")
	}
	if c.logFormat != "text" && c.logFormat != "json" {
		return bad("log-format", "must be text or json")
	}
	for h := range strings.SplitSeq(c.forwardHeaders, ",") {
		if h = strings.TrimSpace(h); h != "" {
			if err := gateway.CheckForwardHeader(h); err != nil {
				return bad("forward-headers", err.Error())
			}
		}
	}
	if _, err := gateway.ParseTrustedProxies(c.trustedProxyList()); err != nil {
		return bad("trusted-proxies", err.Error())
	}
	return nil
}

// trustedProxyList splits -trusted-proxies.
func (c *config) trustedProxyList() []string {
	if c.trustedProxies == "" {
		return nil
	}
	return strings.Split(c.trustedProxies, ",")
}

// originList splits -origins.
func (c *config) originList() []string {
	if c.origins == "" {
		return nil
	}
	return strings.Split(c.origins, ",")
}

// controlHostList splits -control-hosts.
func (c *config) controlHostList() []string {
	if c.controlHosts == "" {
		return nil
	}
	return strings.Split(c.controlHosts, ",")
}

// backends returns the API base URLs: from -api-file if set, else -api.
func (c *config) backends() ([]string, error) {
	if c.apiFile == "" {
		return upstream.ParseBackends(c.api)
	}
	b, err := os.ReadFile(c.apiFile)
	if err != nil {
		return nil, err
	}
	bases, err := upstream.ParseBackends(string(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.apiFile, err)
	}
	return bases, nil
}

// byteSize is a flag value in bytes: a number with an optional unit (B,
// KiB, MiB, GiB, or KB, MB, GB).
type byteSize int64

func (b *byteSize) String() string {
	v := int64(*b)
	for _, u := range []struct {
		name string
		n    int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if v >= u.n && v%u.n == 0 {
			return strconv.FormatInt(v/u.n, 10) + u.name
		}
	}
	return strconv.FormatInt(v, 10)
}

func (b *byteSize) Set(s string) error {
	units := []struct {
		suffix string
		n      int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1000}, {"MB", 1000_000}, {"GB", 1000_000_000}, {"B", 1}}
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range units {
		if rest, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(rest), u.n
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return errors.New("want a size in bytes such as 65536, 64KiB or 5MiB")
	}
	*b = byteSize(n * mult)
	return nil
}

func newLogger(cfg *config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.logLevel}
	if cfg.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// logLevel is the -log-level flag: a slog level, written in lower case.
type logLevel struct{ l *slog.Level }

func (v *logLevel) String() string {
	if v.l == nil {
		return "info"
	}
	return strings.ToLower(v.l.String())
}

func (v *logLevel) Set(s string) error { return v.l.UnmarshalText([]byte(s)) }
