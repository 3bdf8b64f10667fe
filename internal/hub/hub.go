// Package hub is the contract between the gateway, which holds a node's
// clients, and what acts on them: the control API and the cluster bus.
// The gateway implements [Clients]; control calls it, and for a client
// held by another node sends the same request, an [Op], over the bus,
// where that node's bus applies it to its own Clients. A new operation on
// one client is a method here, its [Kind] and case in [Op.Apply], the
// gateway's method, and the control API's route: the bus carries any Op.
//
// It imports nothing of ws2api's: the gateway, control and cluster all
// depend on it, and it on none of them.
package hub

import (
	"errors"
	"time"
)

// Clients is what one node's clients offer (gateway.Server).
type Clients interface {
	// Operations on the client holding one id (Op kinds).
	Push(id string, binary bool, data []byte) error
	Call(id string, binary bool, data []byte, wait time.Duration) (Answer, error)
	Info(id string) (Info, error)
	Kick(id string, code int, reason string) error
	Join(id, group string) error
	Leave(id, group string) (was bool, err error)
	SetMeta(id, name, value string, remove bool) error

	// Operations on many.
	PushMany(ids []string, binary bool, data []byte) (notConnected []string)
	Broadcast(binary bool, data []byte) int
	BroadcastGroup(group string, binary bool, data []byte) (int, error)
}

// Errors of Clients' operations, the same on every node: those with a
// name in Named cross the bus as themselves.
var (
	// ErrNotConnected: no open connection holds the id on this node.
	ErrNotConnected = errors.New("not connected")
	// ErrBadMeta: a meta header name or value that cannot be sent.
	ErrBadMeta = errors.New("bad meta header")
	// A Call's: the body is not a call (wrapped with the reason), the
	// client did not answer in time, it left while the call waited, or a
	// call with the same id already waits on it.
	ErrNotACall    = errors.New("not a call")
	ErrCallTimeout = errors.New("the client did not answer in time")
	ErrClientGone  = errors.New("the client disconnected before answering")
	ErrCallPending = errors.New("a call with this id is already waiting for its answer")
)

// Named are the errors that keep their identity on their way back over the
// bus, by the name they travel under.
var Named = map[string]error{
	"not_connected": ErrNotConnected,
	"bad_meta":      ErrBadMeta,
	"call_timeout":  ErrCallTimeout,
	"client_gone":   ErrClientGone,
	"call_pending":  ErrCallPending,
}

// NameOf returns the name err travels under, or "".
func NameOf(err error) string {
	for name, known := range Named {
		if errors.Is(err, known) {
			return name
		}
	}
	return ""
}

// Info is what the control API tells of one connection.
type Info struct {
	ID              string            `json:"id"`
	ConnectionID    string            `json:"connection_id"`
	ConnectedAt     time.Time         `json:"connected_at"`
	LastActiveAt    time.Time         `json:"last_active_at"`
	RemoteAddr      string            `json:"remote_addr"`
	UserAgent       string            `json:"user_agent"`
	Subprotocol     string            `json:"subprotocol"`
	Groups          []string          `json:"groups"`
	Meta            map[string]string `json:"meta"` // X-Ws2api-Meta-<Name> headers, by Name
	MessagesIn      uint64            `json:"messages_in"`
	MessagesOut     uint64            `json:"messages_out"`
	PendingMessages int               `json:"pending_messages"`
	PendingBytes    int64             `json:"pending_bytes"`
	Node            string            `json:"node"` // the node holding it
}

// Answer is a client's answer to a Call.
type Answer struct {
	Binary bool   `json:"bin,omitempty"`
	Data   []byte `json:"data,omitempty"`
}

// Held is one id connected to a node, and its connection's id.
type Held struct{ ID, ConnID string }

// Kind names an operation on one client.
type Kind string

// The operations on one client, one per method of Clients.
const (
	KindPush  Kind = "push"
	KindCall  Kind = "call"
	KindInfo  Kind = "info"
	KindKick  Kind = "kick"
	KindJoin  Kind = "join"
	KindLeave Kind = "leave"
	KindMeta  Kind = "meta"
)

// Op is an operation on the client holding ID, as data: what the control
// API asks of this node's clients, and sends over the bus when another
// node holds the id. Its JSON is the bus's.
type Op struct {
	Kind   Kind          `json:"op,omitempty"`
	ID     string        `json:"id,omitempty"`
	Binary bool          `json:"bin,omitempty"` // push, call
	Data   []byte        `json:"data,omitempty"`
	Code   int           `json:"code,omitempty"` // kick
	Reason string        `json:"reason,omitempty"`
	Group  string        `json:"group,omitempty"` // join, leave
	Name   string        `json:"name,omitempty"`  // meta
	Value  string        `json:"value,omitempty"`
	Remove bool          `json:"remove,omitempty"`
	Wait   time.Duration `json:"wait,omitempty"` // call: how long to wait for the answer
}

// Result is what an Op gave, beside its error.
type Result struct {
	Info   *Info   `json:"info,omitempty"`   // info
	Answer *Answer `json:"answer,omitempty"` // call
	Was    bool    `json:"was,omitempty"`    // leave: it was in the group
}

// Apply runs op on c.
func (op Op) Apply(c Clients) (Result, error) {
	var r Result
	var err error
	switch op.Kind {
	case KindPush:
		err = c.Push(op.ID, op.Binary, op.Data)
	case KindCall:
		var a Answer
		if a, err = c.Call(op.ID, op.Binary, op.Data, op.Wait); err == nil {
			r.Answer = &a
		}
	case KindInfo:
		var info Info
		if info, err = c.Info(op.ID); err == nil {
			r.Info = &info
		}
	case KindKick:
		err = c.Kick(op.ID, op.Code, op.Reason)
	case KindJoin:
		err = c.Join(op.ID, op.Group)
	case KindLeave:
		r.Was, err = c.Leave(op.ID, op.Group)
	case KindMeta:
		err = c.SetMeta(op.ID, op.Name, op.Value, op.Remove)
	default:
		err = errors.New("unknown operation " + string(op.Kind))
	}
	return r, err
}

// Timeout is how long op may take on the node holding its client beyond
// an ordinary request: a call waits for the client's answer.
func (op Op) Timeout() time.Duration {
	if op.Kind == KindCall {
		return op.Wait
	}
	return 0
}
