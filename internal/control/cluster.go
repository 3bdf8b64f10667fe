package control

import (
	"errors"
	"net/http"
	"time"

	"github.com/ws2api/ws2api/internal/cluster"
	"github.com/ws2api/ws2api/internal/gateway"
)

// With Options.Relay, the control API answers for the whole cluster: a
// request for an id not connected here goes to the node holding it
// (clusterHub), a broadcast reaches every node (overCluster), and what the
// bus cannot carry is a 503 or 504 that says so (busFailure).

// Relay reaches clients held by other nodes (internal/cluster's Bus).
// Its methods block, for a round trip through Redis and another node.
type Relay interface {
	Push(id string, binary bool, data []byte) error
	PushMany(ids []string, binary bool, data []byte) (notConnected []string, err error)
	Info(id string) (gateway.Info, error)
	Kick(id string, code int, reason string) error
	Join(id, group string) error
	Leave(id, group string) (bool, error)
	SetMeta(id, name, value string, remove bool) error
	Call(id string, binary bool, data []byte, wait time.Duration) (gateway.Answer, error)
	Broadcast(group string, binary bool, data []byte) (delivered, nodes int, err error)
}

var _ Relay = (*cluster.Bus)(nil)

// clientHub is what the per-client endpoints act on: this node's clients
// (the Hub), or with a Relay, the cluster's.
type clientHub interface {
	Push(id string, binary bool, data []byte) error
	Info(id string) (gateway.Info, error)
	Kick(id string, code int, reason string) error
	Join(id, group string) error
	Leave(id, group string) (bool, error)
	SetMeta(id, name, value string, remove bool) error
	Call(id string, binary bool, data []byte, wait time.Duration) (gateway.Answer, error)
}

// clusterHub tries this node's clients first, then the node holding the
// id.
type clusterHub struct {
	local Hub
	relay Relay
}

func (c clusterHub) Push(id string, binary bool, data []byte) error {
	if err := c.local.Push(id, binary, data); !errors.Is(err, gateway.ErrNotConnected) {
		return err
	}
	return c.relay.Push(id, binary, data)
}

func (c clusterHub) Call(id string, binary bool, data []byte, wait time.Duration) (gateway.Answer, error) {
	if a, err := c.local.Call(id, binary, data, wait); !errors.Is(err, gateway.ErrNotConnected) {
		return a, err
	}
	return c.relay.Call(id, binary, data, wait)
}

func (c clusterHub) Info(id string) (gateway.Info, error) {
	if info, err := c.local.Info(id); !errors.Is(err, gateway.ErrNotConnected) {
		return info, err
	}
	return c.relay.Info(id)
}

func (c clusterHub) Kick(id string, code int, reason string) error {
	if err := c.local.Kick(id, code, reason); !errors.Is(err, gateway.ErrNotConnected) {
		return err
	}
	return c.relay.Kick(id, code, reason)
}

func (c clusterHub) Join(id, group string) error {
	if err := c.local.Join(id, group); !errors.Is(err, gateway.ErrNotConnected) {
		return err
	}
	return c.relay.Join(id, group)
}

func (c clusterHub) Leave(id, group string) (bool, error) {
	if was, err := c.local.Leave(id, group); !errors.Is(err, gateway.ErrNotConnected) {
		return was, err
	}
	return c.relay.Leave(id, group)
}

func (c clusterHub) SetMeta(id, name, value string, remove bool) error {
	if err := c.local.SetMeta(id, name, value, remove); !errors.Is(err, gateway.ErrNotConnected) {
		return err
	}
	return c.relay.SetMeta(id, name, value, remove)
}

// busFailure answers a request the cluster bus could not carry, if err
// says so.
func busFailure(id string, err error) (result, bool) {
	switch {
	case errors.Is(err, cluster.ErrUnavailable):
		return text(http.StatusServiceUnavailable, "the cluster bus (Redis) is unavailable, and "+id+" is not connected to this node: try again shortly\n"), true
	case errors.Is(err, cluster.ErrTimeout):
		return text(http.StatusGatewayTimeout, "the node holding "+id+" did not answer in time\n"), true
	}
	return result{}, false
}

// overCluster takes a broadcast this node delivered to n of its clients to
// the other nodes, if there are any, and answers with the total. If the
// bus cannot carry it, the answer is 503 and says how many got it.
func (h *Handler) overCluster(group string, binary bool, body []byte, n int, answer map[string]any) result {
	answer["delivered"] = n
	if h.opts.Relay == nil {
		return jsonResult(answer)
	}
	remote, nodes, err := h.opts.Relay.Broadcast(group, binary, body)
	answer["delivered"], answer["nodes"] = n+remote, nodes+1
	if err == nil {
		return jsonResult(answer)
	}
	answer["error"] = err.Error() + ": only the nodes counted got it"
	res := jsonResult(answer)
	res.status = http.StatusServiceUnavailable
	if errors.Is(err, cluster.ErrTimeout) {
		res.status = http.StatusGatewayTimeout
	}
	return res
}
