package gateway

import (
	"bytes"
	"encoding/json"
	"strings"
	"time"

	"github.com/ws2api/ws2api/internal/hub"
	"github.com/ws2api/ws2api/internal/metrics"
)

// A synchronous call (the control API's POST /<id>?await=): the API sends
// a client a request and gets the client's answer to it in the same HTTP
// exchange, instead of as a later POST of its own.
//
//	Call              registers a waiter under the request's key, pushes it
//	readFramesLocked  a message whose key has a waiter is its answer
//	                  (callAnsweredLocked): it goes to the waiter, not to
//	                  the API
//	OnClose           wakes every waiter of the connection: the client is
//	                  gone
//
// A key is the OCPP-J unique id of a CALL [2,"<uid>",...], answered by a
// CALLRESULT [3,"<uid>",...] or CALLERROR [4,"<uid>",...], or the id of a
// JSON-RPC 2.0 request, answered by the response with that id. What a
// message is is told by its shape, whatever the subprotocol.

// callReply is what wakes a waiting Call: an answer, or gone.
type callReply struct {
	answer hub.Answer
	gone   bool
}

// Call sends data to the client holding id and waits up to timeout for its
// answer. data must be an OCPP-J CALL or a JSON-RPC 2.0 request with an id
// (hub.ErrNotACall otherwise). The answer is not forwarded to the API; one
// that comes after the timeout is, as an ordinary message.
func (s *Server) Call(id string, binary bool, data []byte, timeout time.Duration) (hub.Answer, error) {
	s.awaitArrival(id)
	key, err := CallKey(data)
	if err != nil {
		return hub.Answer{}, err
	}
	c := s.reg.get(id)
	if c == nil {
		if n := s.next(); n != nil {
			return n.Call(id, binary, data, timeout) // it moved on meanwhile (handover.go)
		}
		s.m.Call(metrics.CallNotConnected)
		return hub.Answer{}, hub.ErrNotConnected
	}
	wake := make(chan callReply, 1)
	c.mu.Lock()
	switch {
	case c.state != stOpen || c.moving == detaching:
		c.mu.Unlock()
		if n := s.next(); n != nil {
			return n.Call(id, binary, data, timeout)
		}
		s.m.Call(metrics.CallNotConnected)
		return hub.Answer{}, hub.ErrNotConnected
	case c.calls[key] != nil:
		c.mu.Unlock()
		s.m.Call(metrics.CallConflict)
		return hub.Answer{}, hub.ErrCallPending
	}
	if c.calls == nil {
		c.calls = map[string]chan<- callReply{}
	}
	c.calls[key] = wake
	err = c.writeDataLocked(opcode(binary), data, metrics.SourcePush)
	if err != nil {
		c.forgetCallLocked(key)
	}
	c.mu.Unlock()
	if err != nil {
		s.m.Call(metrics.CallNotConnected)
		return hub.Answer{}, err
	}
	s.m.Pushes.Inc()

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case r := <-wake:
		return s.called(r)
	case <-timer.C:
	}
	c.mu.Lock()
	if c.calls[key] == wake {
		c.forgetCallLocked(key)
	}
	c.mu.Unlock()
	select {
	case r := <-wake: // it came as the timer fired
		return s.called(r)
	default:
		s.m.Call(metrics.CallTimeout)
		return hub.Answer{}, hub.ErrCallTimeout
	}
}

func (s *Server) called(r callReply) (hub.Answer, error) {
	if r.gone {
		s.m.Call(metrics.CallGone)
		return hub.Answer{}, hub.ErrClientGone
	}
	s.m.Call(metrics.CallAnswered)
	return r.answer, nil
}

// callAnsweredLocked hands a message from the client to the Call waiting for it, and
// reports whether there was one. c.mu is held.
func (c *conn) callAnsweredLocked(binary bool, payload []byte) bool {
	key := answerKey(payload)
	if key == "" {
		return false
	}
	wake := c.calls[key]
	if wake == nil {
		return false
	}
	c.forgetCallLocked(key)
	c.s.m.MessagesIn.Inc()
	c.s.m.BytesIn.Add(len(payload))
	c.msgsIn.Add(1)
	c.lastActive.Store(time.Now().UnixNano())
	wake <- callReply{answer: hub.Answer{Binary: binary, Data: append([]byte(nil), payload...)}}
	return true
}

// forgetCallLocked removes a call's waiter; the map goes with the last
// one, so that a connection called once keeps no memory for it.
func (c *conn) forgetCallLocked(key string) {
	delete(c.calls, key)
	if len(c.calls) == 0 {
		c.calls = nil
	}
}

// wakeCallsLocked tells every waiting Call that the client is gone.
func (c *conn) wakeCallsLocked() {
	for _, wake := range c.calls {
		wake <- callReply{gone: true}
	}
	c.calls = nil
}

// CallKey returns the key a call's answer is matched by, or an error that
// says why body is not a call.
func CallKey(body []byte) (string, error) {
	b := bytes.TrimSpace(body)
	switch {
	case len(b) > 0 && b[0] == '[':
		var call []json.RawMessage
		if err := json.Unmarshal(b, &call); err != nil {
			return "", notACall("not JSON: " + err.Error())
		}
		if len(call) != 4 || string(call[0]) != "2" {
			return "", notACall(`an OCPP-J CALL is [2,"<unique id>","<action>",{payload}]`)
		}
		uid, ok := jsonString(call[1])
		if !ok || uid == "" {
			return "", notACall("the CALL's unique id must be a non-empty string")
		}
		return ocppKey(uid), nil
	case len(b) > 0 && b[0] == '{':
		var req struct {
			JSONRPC string          `json:"jsonrpc"`
			Method  *string         `json:"method"`
			ID      json.RawMessage `json:"id"`
		}
		if err := json.Unmarshal(b, &req); err != nil {
			return "", notACall("not JSON: " + err.Error())
		}
		key, ok := rpcKey(req.ID)
		if req.JSONRPC != "2.0" || req.Method == nil || !ok {
			return "", notACall(`a JSON-RPC 2.0 request is {"jsonrpc":"2.0","method":"...","id":<string or number>}`)
		}
		return key, nil
	}
	return "", notACall("send an OCPP-J CALL or a JSON-RPC 2.0 request with an id")
}

func notACall(why string) error { return &callError{why} }

type callError struct{ why string }

func (e *callError) Error() string        { return "not a call: " + e.why }
func (e *callError) Is(target error) bool { return target == hub.ErrNotACall }

// answerKey returns the key of an answer to a call (an OCPP-J CALLRESULT
// or CALLERROR, a JSON-RPC response), or "" for any other message. It
// runs only on a connection with a call waiting.
func answerKey(msg []byte) string {
	b := bytes.TrimSpace(msg)
	switch {
	case len(b) > 0 && b[0] == '[':
		var answer []json.RawMessage
		if json.Unmarshal(b, &answer) != nil || len(answer) < 3 {
			return ""
		}
		if t := string(answer[0]); t != "3" && t != "4" {
			return ""
		}
		if uid, ok := jsonString(answer[1]); ok {
			return ocppKey(uid)
		}
	case len(b) > 0 && b[0] == '{':
		var resp struct {
			Method *string         `json:"method"`
			ID     json.RawMessage `json:"id"`
		}
		if json.Unmarshal(b, &resp) != nil || resp.Method != nil {
			return ""
		}
		if key, ok := rpcKey(resp.ID); ok {
			return key
		}
	}
	return ""
}

func ocppKey(uid string) string { return "o:" + uid }

// rpcKey keys a JSON-RPC id: a string, or a number as written.
func rpcKey(id json.RawMessage) (string, bool) {
	if s, ok := jsonString(id); ok {
		return "s:" + s, true
	}
	var n json.Number
	if len(id) > 0 && id[0] != '"' && json.Unmarshal(id, &n) == nil && n != "" {
		return "n:" + strings.TrimSpace(n.String()), true
	}
	return "", false
}

func jsonString(raw json.RawMessage) (string, bool) {
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}
