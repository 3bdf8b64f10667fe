// Package metrics owns every figure ws2api exports on /metrics: the five
// counters the original gateway's dashboards use, under their exact names,
// and Prometheus-style ones beside them. Each metric carries HELP and TYPE
// lines.
package metrics

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	vm "github.com/VictoriaMetrics/metrics"

	"github.com/ws2api/ws2api/internal/upstream"
)

// Close causes, the label values of ws2api_closes_total.
const (
	CauseClient       = "client"        // the client sent a close frame
	CauseNetwork      = "network"       // the connection dropped without one
	CauseKick         = "kick"          // the control API closed it
	CauseShutdown     = "shutdown"      // the gateway is stopping
	CauseReplaced     = "replaced"      // another connection took its id
	CauseSlowConsumer = "slow_consumer" // its outgoing queue overflowed
	CauseTooBig       = "too_big"       // it sent a message over the size limit
	CauseProtocol     = "protocol"      // it broke RFC 6455
	CauseBacklog      = "backlog"       // its messages waiting for the API passed the cap
	CauseGatewayFull  = "gateway_full"  // all clients' waiting messages passed the gateway's cap
	CauseTimeout      = "timeout"       // a read timed out
	CauseAPIGaveUp    = "api_gave_up"   // a message could not be delivered to the API in time
	CauseIdle         = "idle"          // no message either way for the idle timeout
	CausePingTimeout  = "ping_timeout"  // it stopped answering pings: a dead peer
	// CauseOutgoingTotal: all clients' outgoing backlogs passed the
	// gateway's cap and this client's was among the largest: a slow
	// consumer, shed.
	CauseOutgoingTotal = "outgoing_total"
	CauseControlFlood  = "control_flood" // it sent pings or pongs at over ten times its message rate
)

var closeCauses = []string{
	CauseClient, CauseNetwork, CauseKick, CauseShutdown, CauseReplaced, CauseSlowConsumer,
	CauseTooBig, CauseProtocol, CauseBacklog, CauseGatewayFull, CauseTimeout, CauseAPIGaveUp,
	CauseIdle, CausePingTimeout, CauseOutgoingTotal, CauseControlFlood,
}

// Message sources, the label values of ws2api_messages_out_total.
// Outcomes of a synchronous call to a client (ws2api_calls_total).
const (
	CallAnswered     = "answered"      // the client answered in time
	CallTimeout      = "timeout"       // it did not
	CallGone         = "gone"          // it disconnected while the call waited
	CallNotConnected = "not_connected" // no such client here
	CallConflict     = "conflict"      // a call with the same id was already waiting
)

var callOutcomes = []string{CallAnswered, CallTimeout, CallGone, CallNotConnected, CallConflict}

const (
	SourceReply     = "reply"
	SourcePush      = "push"
	SourceBroadcast = "broadcast"
)

// Metrics is one gateway's set of metrics. Create it with [New]; the zero
// value is not usable.
type Metrics struct {
	set  *vm.Set
	meta map[string]family

	// The original gateway's counters. requests_* count HTTP requests to the
	// API; started minus (succeeded plus failed) is the number in flight.
	ConnectionsOpened *vm.Counter
	ConnectionsClosed *vm.Counter
	RequestsStarted   *vm.Counter
	RequestsFailed    *vm.Counter
	RequestsSucceeded *vm.Counter

	Connections *vm.Gauge
	MessagesIn  *vm.Counter
	BytesIn     *vm.Counter
	MessagesOut map[string]*vm.Counter // by source
	BytesOut    *vm.Counter
	// Messages that went compressed (permessage-deflate), and their
	// compressed payload bytes: beside BytesIn/BytesOut, the saving.
	CompressedIn, CompressedOut           *vm.Counter
	CompressedBytesIn, CompressedBytesOut *vm.Counter
	APIRefused                            *vm.Counter
	APIRetries                            map[string]*vm.Counter // by cause (upstream.Causes)
	PendingMessages                       *vm.Gauge
	PendingBytes                          *vm.Gauge
	Pushes                                *vm.Counter
	PushesNotFound                        *vm.Counter
	Broadcasts                            *vm.Counter
	Calls                                 map[string]*vm.Counter             // synchronous calls to clients, by outcome
	Upgraded                              map[string]*vm.Counter             // clients of a binary upgrade, by what became of them (UpgradeOutcomes)
	Closes                                map[string]*vm.Counter             // by cause
	ControlDropped                        *vm.Counter                        // pings and pongs past a client's rate, not acted on
	Rejected                              map[int]*vm.Counter                // handshakes answered with an error, by status
	latency                               map[string]*vm.PrometheusHistogram // API request latency by method

	mu sync.Mutex
}

type family struct{ typ, help string }

// New registers every metric in a fresh set.
func New() *Metrics {
	m := &Metrics{set: vm.NewSet(), meta: map[string]family{}}
	m.ConnectionsOpened = m.counter("connections_opened", "WebSocket connections upgraded (the original gateway's name).")
	m.ConnectionsClosed = m.counter("connections_closed", "Upgraded WebSocket connections closed (the original gateway's name).")
	m.RequestsStarted = m.counter("requests_started", "HTTP requests sent to the API (the original gateway's name).")
	m.RequestsFailed = m.counter("requests_failed", "HTTP requests to the API without a 2xx answer (the original gateway's name).")
	m.RequestsSucceeded = m.counter("requests_succeeded", "HTTP requests to the API answered 2xx (the original gateway's name).")

	m.Connections = m.gauge("ws2api_connections", "WebSocket connections open now.")
	m.MessagesIn = m.counter("ws2api_messages_in_total", "Messages received from clients.")
	m.BytesIn = m.counter("ws2api_message_bytes_in_total", "Payload bytes of messages received from clients.")
	m.declare("ws2api_messages_out_total", "counter", "Messages written to clients, by source (reply, push, broadcast).")
	m.MessagesOut = map[string]*vm.Counter{}
	for _, s := range []string{SourceReply, SourcePush, SourceBroadcast} {
		m.MessagesOut[s] = m.set.NewCounter(fmt.Sprintf(`ws2api_messages_out_total{source=%q}`, s))
	}
	m.BytesOut = m.counter("ws2api_message_bytes_out_total", "Payload bytes of messages written to clients.")
	m.CompressedIn = m.counter("ws2api_compressed_messages_in_total", "Messages received from clients compressed (permessage-deflate).")
	m.CompressedOut = m.counter("ws2api_compressed_messages_out_total", "Messages written to clients compressed (permessage-deflate).")
	m.CompressedBytesIn = m.counter("ws2api_compressed_bytes_in_total", "Compressed payload bytes of the messages received compressed (ws2api_message_bytes_in_total counts them inflated).")
	m.CompressedBytesOut = m.counter("ws2api_compressed_bytes_out_total", "Compressed payload bytes of the messages written compressed (ws2api_message_bytes_out_total counts them uncompressed).")
	m.APIRefused = m.counter("ws2api_api_refused_total", "Client messages the API answered with 4xx (not retried).")
	m.declare("ws2api_api_retries_total", "counter", "Requests to the API sent again, by the cause of the failure before (unreachable: never sent; status: an answer neither 2xx nor 4xx, mostly a 5xx; timeout, lost, malformed: may have been processed).")
	m.APIRetries = map[string]*vm.Counter{}
	for _, c := range upstream.Causes {
		m.APIRetries[c] = m.set.NewCounter(fmt.Sprintf(`ws2api_api_retries_total{cause=%q}`, c))
	}
	m.PendingMessages = m.gauge("ws2api_pending_messages", "Client messages waiting to be delivered to the API.")
	m.PendingBytes = m.gauge("ws2api_pending_bytes", "Payload bytes of client messages waiting to be delivered to the API.")
	m.Pushes = m.counter("ws2api_pushes_total", "Messages pushed to one client through the control API.")
	m.PushesNotFound = m.counter("ws2api_pushes_not_found_total", "Pushes to an id that is not connected.")
	m.Broadcasts = m.counter("ws2api_broadcasts_total", "Broadcasts through the control API.")
	m.declare("ws2api_calls_total", "counter", "Synchronous calls to a client through the control API (POST /<id>?await=), by outcome.")
	m.Calls = map[string]*vm.Counter{}
	for _, o := range callOutcomes {
		m.Calls[o] = m.set.NewCounter(fmt.Sprintf(`ws2api_calls_total{outcome=%q}`, o))
	}

	m.declare("ws2api_upgrade_connections_total", "counter",
		"Client connections of the binary upgrades that started this process: taken over with their state, or closed by the old process with 1012.")
	m.Upgraded = map[string]*vm.Counter{}
	for _, o := range UpgradeOutcomes {
		m.Upgraded[o] = m.set.NewCounter(fmt.Sprintf(`ws2api_upgrade_connections_total{outcome=%q}`, o))
	}

	m.declare("ws2api_closes_total", "counter", "Client connections closed, by cause.")
	m.Closes = map[string]*vm.Counter{}
	for _, c := range closeCauses {
		m.Closes[c] = m.set.NewCounter(fmt.Sprintf(`ws2api_closes_total{cause=%q}`, c))
	}
	m.ControlDropped = m.counter("ws2api_control_frames_dropped_total", "Pings and pongs from clients past their -max-msg-rate, dropped unanswered.")
	m.declare("ws2api_handshakes_rejected_total", "counter", "Upgrade requests answered with an error, by HTTP status.")
	m.Rejected = map[int]*vm.Counter{}
	for _, s := range []int{400, 403, 404, 429, 431, 502, 503, 504} {
		m.Rejected[s] = m.set.NewCounter(fmt.Sprintf(`ws2api_handshakes_rejected_total{status="%d"}`, s))
	}
	m.declare("ws2api_api_request_duration_seconds", "histogram", "Time from sending a request to the API to its full answer, by method.")
	m.latency = map[string]*vm.PrometheusHistogram{}
	for _, method := range []string{"GET", "POST", "DELETE"} {
		m.latency[method] = m.set.NewPrometheusHistogramExt(
			fmt.Sprintf(`ws2api_api_request_duration_seconds{method=%q}`, method), latencyBuckets)
	}
	return m
}

var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// Started counts a request sent to the API (upstream.Observer).
func (m *Metrics) Started(string) { m.RequestsStarted.Inc() }

// CompressedOutMessage counts a message written compressed, n bytes on the
// wire.
func (m *Metrics) CompressedOutMessage(n int) {
	m.CompressedOut.Inc()
	m.CompressedBytesOut.Add(n)
}

// CompressedInMessage counts a message received compressed, n bytes on the
// wire.
func (m *Metrics) CompressedInMessage(n int) {
	m.CompressedIn.Inc()
	m.CompressedBytesIn.Add(n)
}

// Resent counts a request sent to the API again (upstream.Observer).
func (m *Metrics) Resent(_, cause string) {
	if c := m.APIRetries[cause]; c != nil {
		c.Inc()
	}
}

// Finished records a request to the API that ended (upstream.Observer).
func (m *Metrics) Finished(method string, d time.Duration, delivered bool) {
	if delivered {
		m.RequestsSucceeded.Inc()
	} else {
		m.RequestsFailed.Inc()
	}
	if h := m.latency[method]; h != nil {
		h.Update(d.Seconds())
	}
}

// BuildInfo exposes ws2api_build_info{version, go} 1: which binary serves
// (after an upgrade, the new one's).
func (m *Metrics) BuildInfo(version, goVersion string) {
	m.declare("ws2api_build_info", "gauge", "1, labelled with the version of ws2api serving and the Go release it was built with.")
	m.set.NewGauge(fmt.Sprintf(`ws2api_build_info{version=%q,go=%q}`, version, goVersion), func() float64 { return 1 })
}

// UpgradeOutcomes label ws2api_upgrade_connections_total: a connection
// taken over from the old process, or one it closed with 1012 instead (it
// could not be passed: TLS, its upgrade unfinished, a backlog that did not
// drain in time).
var UpgradeOutcomes = []string{"taken_over", "closed"}

// Call counts one synchronous call to a client, by outcome.
func (m *Metrics) Call(outcome string) {
	if c := m.Calls[outcome]; c != nil {
		c.Inc()
	}
}

// Close counts one closed client connection.
func (m *Metrics) Close(cause string) {
	if c := m.Closes[cause]; c != nil {
		c.Inc()
	}
}

// Reject counts one refused upgrade.
func (m *Metrics) Reject(status int) {
	if c := m.Rejected[status]; c != nil {
		c.Inc()
	}
}

// Backend adds ws2api_api_backend_up{backend=base}, read from up at scrape
// time; the returned func removes it.
func (m *Metrics) Backend(base string, up func() bool) (remove func()) {
	m.declare("ws2api_api_backend_up", "gauge", "Whether an API backend takes requests (1) or is out after failing (0).")
	name := fmt.Sprintf(`ws2api_api_backend_up{backend=%q}`, base)
	m.set.GetOrCreateGauge(name, func() float64 {
		if up() {
			return 1
		}
		return 0
	})
	return func() { m.set.UnregisterMetric(name) }
}

// Gauge adds a gauge whose value f computes at scrape time.
func (m *Metrics) Gauge(name, help string, f func() float64) {
	m.declare(name, "gauge", help)
	m.set.NewGauge(name, f)
}

// Counter adds a counter.
func (m *Metrics) Counter(name, help string) *vm.Counter {
	return m.counter(name, help)
}

func (m *Metrics) counter(name, help string) *vm.Counter {
	m.declare(name, "counter", help)
	return m.set.NewCounter(name)
}

func (m *Metrics) gauge(name, help string) *vm.Gauge {
	m.declare(name, "gauge", help)
	return m.set.NewGauge(name, nil)
}

func (m *Metrics) declare(name, typ, help string) {
	m.mu.Lock()
	m.meta[name] = family{typ, help}
	m.mu.Unlock()
}

// exposeOnce turns on the library's TYPE lines, process-wide: the Go
// runtime and process metrics then carry theirs, and ours are replaced by
// lines with real help texts.
var exposeOnce sync.Once

// WritePrometheus writes every metric in the Prometheus text format, each
// family preceded by its HELP and TYPE lines, followed by the Go runtime's
// and the process's own (go_*, process_*).
func (m *Metrics) WritePrometheus(w io.Writer) {
	exposeOnce.Do(func() { vm.ExposeMetadata(true) })
	var buf bytes.Buffer
	m.set.WritePrometheus(&buf)
	vm.WriteProcessMetrics(&buf)
	m.mu.Lock()
	defer m.mu.Unlock()
	bw := bufio.NewWriter(w)
	last := ""
	sc := bufio.NewScanner(&buf)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if meta, ok := strings.CutPrefix(line, "# "); ok {
			// The library's own HELP or TYPE line: kept for families
			// ws2api does not describe itself.
			f := strings.Fields(meta)
			if len(f) >= 2 {
				if _, known := m.meta[f[1]]; known {
					continue
				}
			}
			bw.WriteString(line)
			bw.WriteByte('\n')
			continue
		}
		if fam := m.familyOf(line); fam != "" && fam != last {
			f := m.meta[fam]
			fmt.Fprintf(bw, "# HELP %s %s\n# TYPE %s %s\n", fam, f.help, fam, f.typ)
			last = fam
		}
		bw.WriteString(line)
		bw.WriteByte('\n')
	}
	bw.Flush()
}

func (m *Metrics) familyOf(line string) string {
	name := line
	if i := strings.IndexAny(line, "{ "); i >= 0 {
		name = line[:i]
	}
	if _, ok := m.meta[name]; ok {
		return name
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if f, ok := m.meta[base]; ok && f.typ == "histogram" {
				return base
			}
		}
	}
	return ""
}

// Relay outcomes, the label values of ws2api_cluster_relays_total.
const (
	RelayDelivered   = "delivered"   // the holding node answered
	RelayNotFound    = "not_found"   // the id is connected nowhere
	RelayUnavailable = "unavailable" // the bus (Redis) could not be used
	RelayTimeout     = "timeout"     // the holding node did not answer in time
)

// Cluster holds the cluster bus's figures (internal/cluster).
type Cluster struct {
	Relays      map[string]*vm.Counter // control requests relayed to another node, by outcome
	Served      *vm.Counter            // requests served for other nodes
	Latency     *vm.PrometheusHistogram
	PresenceErr *vm.Counter
}

// Cluster registers the bus's metrics; up is read at scrape time.
func (m *Metrics) Cluster(up func() bool) *Cluster {
	m.Gauge("ws2api_cluster_bus_up", "Whether this node is subscribed to the cluster bus (1) or not (0).", func() float64 {
		if up() {
			return 1
		}
		return 0
	})
	c := &Cluster{Relays: map[string]*vm.Counter{}}
	m.declare("ws2api_cluster_relays_total", "counter", "Control requests for an id held by another node, relayed over the bus, by outcome.")
	for _, o := range []string{RelayDelivered, RelayNotFound, RelayUnavailable, RelayTimeout} {
		c.Relays[o] = m.set.NewCounter(fmt.Sprintf(`ws2api_cluster_relays_total{outcome=%q}`, o))
	}
	c.Served = m.counter("ws2api_cluster_served_total", "Control requests and broadcasts served for other nodes.")
	m.declare("ws2api_cluster_relay_duration_seconds", "histogram", "Time from relaying a control request to the holding node's answer.")
	c.Latency = m.set.NewPrometheusHistogramExt("ws2api_cluster_relay_duration_seconds", latencyBuckets)
	c.PresenceErr = m.counter("ws2api_cluster_presence_errors_total", "Batches of presence updates that could not be written to the bus.")
	return c
}
