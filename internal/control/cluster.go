package control

import (
	"errors"
	"net/http"

	"github.com/ws2api/ws2api/internal/cluster"
	"github.com/ws2api/ws2api/internal/hub"
)

// With Options.Relay, the control API answers for the whole cluster: an
// operation on an id not connected here goes to the node holding it
// (clusterOps), a broadcast reaches every node (overCluster), and what the
// bus cannot carry is a 503 or 504 that says so (busStatus).

// Relay reaches clients held by other nodes (internal/cluster's Bus).
// Its methods block, for a round trip through Redis and another node.
type Relay interface {
	// Do runs an operation on the node holding op.ID.
	Do(op hub.Op) (hub.Result, error)
	PushMany(ids []string, binary bool, data []byte) (notConnected []string, err error)
	Broadcast(group string, binary bool, data []byte) (delivered, nodes int, err error)
}

var _ Relay = (*cluster.Bus)(nil)

// clientOps runs the operations on one client: on this node's clients
// (localOps), or with a Relay, on the cluster's (clusterOps).
type clientOps interface {
	Do(op hub.Op) (hub.Result, error)
}

type localOps struct{ hub hub.Clients }

func (l localOps) Do(op hub.Op) (hub.Result, error) { return op.Apply(l.hub) }

// clusterOps tries this node's clients first, then the node holding the
// id.
type clusterOps struct {
	local hub.Clients
	relay Relay
}

func (c clusterOps) Do(op hub.Op) (hub.Result, error) {
	if r, err := op.Apply(c.local); !errors.Is(err, hub.ErrNotConnected) {
		return r, err
	}
	return c.relay.Do(op)
}

// busStatus is the status of a failure of the cluster bus: 504 when the
// node holding the client did not answer in time, 503 when the bus is
// away (or for any other error).
func busStatus(err error) int {
	if errors.Is(err, cluster.ErrTimeout) {
		return http.StatusGatewayTimeout
	}
	return http.StatusServiceUnavailable
}

// busFailure answers a request for id that the cluster bus could not
// carry, if err says so.
func busFailure(id string, err error) (result, bool) {
	switch {
	case errors.Is(err, cluster.ErrUnavailable):
		return text(busStatus(err), "the cluster bus (Redis) is unavailable, and "+id+" is not connected to this node: try again shortly\n"), true
	case errors.Is(err, cluster.ErrTimeout):
		return text(busStatus(err), "the node holding "+id+" did not answer in time\n"), true
	}
	return result{}, false
}

// overCluster takes a broadcast this node delivered to n of its clients to
// the other nodes, if there are any, and answers with the total. If the
// bus cannot carry it, the answer is 503 (504) and says how many got it.
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
	res.status = busStatus(err)
	return res
}
