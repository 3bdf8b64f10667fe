package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/ws2api/ws2api/internal/upstream"
)

// The OCPP shape (-ocpp): each connection is a charger speaking OCPP 1.6-J
// over subprotocol ocpp1.6. It sends a BootNotification CALL once
// upgraded, a Heartbeat CALL every -interval once the boot is answered,
// and answers every CALL it receives with a CALLRESULT at once. The driver
// makes -call-rate synchronous calls a second through the control API
// (POST /<id>?await=), each a Reset CALL to a random charger, and times
// each from its POST to its 200.
//
// Unique ids carry what the latency needs: <kind><send time in unix ns>-...,
// kind 'b' a boot, 'm' a heartbeat (a "message" of the plain shape), 'c'
// a call from the driver. They never hold a quote or a backslash, so the
// tool reads them without a JSON parser.

// ocppProtocol is the subprotocol a charger offers and insists on.
const ocppProtocol = "ocpp1.6"

// ocppAccepted is a charger's answer payload to any CALL.
const ocppAccepted = `{"status":"Accepted"}`

// appendOCPPCall appends a charger's CALL: a BootNotification (kind 'b')
// or a Heartbeat (any other kind), its unique id <kind><now>-<idx>-<seq>.
func appendOCPPCall(p []byte, kind byte, idx, seq int) []byte {
	p = append(p, `[2,"`...)
	p = append(p, kind)
	p = strconv.AppendInt(p, time.Now().UnixNano(), 10)
	p = append(p, '-')
	p = strconv.AppendInt(p, int64(idx), 10)
	p = append(p, '-')
	p = strconv.AppendInt(p, int64(seq), 10)
	if kind == 'b' {
		return append(p, `","BootNotification",{"chargePointVendor":"ws2api","chargePointModel":"bench"}]`...)
	}
	return append(p, `","Heartbeat",{}]`...)
}

// appendOCPPResult appends the CALLRESULT [3,"<uid>",<payload>].
func appendOCPPResult(p, uid []byte, payload string) []byte {
	p = append(p, `[3,"`...)
	p = append(p, uid...)
	p = append(p, `",`...)
	p = append(p, payload...)
	return append(p, ']')
}

// parseOCPP reads an OCPP-J message's type (2 CALL, 3 CALLRESULT, 4
// CALLERROR), unique id and, for a CALL, action. ok is false for anything
// else; a unique id with escapes goes through encoding/json.
func parseOCPP(b []byte) (typ byte, uid, action []byte, ok bool) {
	b = bytes.TrimSpace(b)
	if len(b) < 6 || b[0] != '[' {
		return 0, nil, nil, false
	}
	b = bytes.TrimLeft(b[1:], " \t\r\n")
	if len(b) < 2 || b[0] < '2' || b[0] > '4' {
		return 0, nil, nil, false
	}
	typ = b[0] - '0'
	b = bytes.TrimLeft(b[1:], " \t\r\n")
	if len(b) == 0 || b[0] != ',' {
		return 0, nil, nil, false
	}
	b = bytes.TrimLeft(b[1:], " \t\r\n")
	uid, rest, ok := cutJSONString(b)
	if !ok || typ != 2 {
		return typ, uid, nil, ok
	}
	rest = bytes.TrimLeft(rest, " \t\r\n")
	if len(rest) == 0 || rest[0] != ',' {
		return 0, nil, nil, false
	}
	action, _, ok = cutJSONString(bytes.TrimLeft(rest[1:], " \t\r\n"))
	return typ, uid, action, ok
}

// cutJSONString reads the JSON string at the start of b.
func cutJSONString(b []byte) (s, rest []byte, ok bool) {
	if len(b) < 2 || b[0] != '"' {
		return nil, nil, false
	}
	end := bytes.IndexByte(b[1:], '"')
	if end < 0 {
		return nil, nil, false
	}
	s = b[1 : 1+end]
	if bytes.IndexByte(s, '\\') < 0 {
		return s, b[2+end:], true
	}
	// Escapes: let the decoder find where the string ends.
	dec := json.NewDecoder(bytes.NewReader(b))
	var v string
	if dec.Decode(&v) != nil {
		return nil, nil, false
	}
	return []byte(v), b[dec.InputOffset():], true
}

// uidTime reads the send time out of one of the tool's unique ids:
// <kind><unix ns>-...
func uidTime(uid []byte) (kind byte, sent int64, ok bool) {
	if len(uid) < 2 {
		return 0, 0, false
	}
	end := bytes.IndexByte(uid, '-')
	if end < 0 {
		end = len(uid)
	}
	ts, err := strconv.ParseInt(string(uid[1:end]), 10, 64)
	return uid[0], ts, err == nil
}

// receivedOCPP handles a message to a charger (lc.mu is held): the API's
// CALLRESULT to a boot or a heartbeat, or a CALL to answer.
func (lc *loadConn) receivedOCPP(p []byte) {
	now := time.Now().UnixNano()
	w := lc.w
	typ, uid, _, ok := parseOCPP(p)
	if !ok {
		w.errs.Add(1)
		w.noteError(fmt.Errorf("unexpected message %q", truncate(p, 60)))
		return
	}
	switch typ {
	case 2:
		// A CALL from the central system: answer at once, as a charger must.
		lc.buf = appendOCPPResult(lc.buf[:0], uid, ocppAccepted)
		if err := lc.writeText(lc.buf); err != nil {
			w.errs.Add(1)
			w.noteError(fmt.Errorf("answering a CALL: %w", err))
			return
		}
		w.calls.Add(1)
		if kind, sent, ok := uidTime(uid); ok && kind == 'c' {
			w.callLat.Record(time.Duration(now - sent))
		}
	case 3:
		kind, sent, ok := uidTime(uid)
		if !ok {
			w.errs.Add(1)
			w.noteError(fmt.Errorf("a CALLRESULT to no CALL of ours: %q", truncate(p, 60)))
			return
		}
		switch kind {
		case 'b':
			w.bootsOK.Add(1)
			w.beat(lc) // booted: heartbeats start
		default:
			w.recv.Add(1)
			w.lat.Record(time.Duration(now - sent))
		}
	case 4:
		w.errs.Add(1)
		w.noteError(fmt.Errorf("CALLERROR from the API: %q", truncate(p, 80)))
	}
}

// beat adds a booted charger to the heartbeat schedule, in a random slot.
func (w *worker) beat(lc *loadConn) {
	if w.slots == nil {
		return
	}
	w.mu.Lock()
	k := rand.IntN(len(w.slots))
	w.slots[k] = append(w.slots[k], lc)
	w.mu.Unlock()
}

// appendOCPPAnswer appends the echo API's answer to a charger's message
// in the OCPP shape: a CALLRESULT to a CALL (Accepted to a boot, the time
// to a heartbeat, an empty payload to anything else), nothing to a
// CALLRESULT or CALLERROR, which answer calls of the central system's.
// ok is false for a body that is not OCPP-J: it is echoed.
func appendOCPPAnswer(out, body []byte) ([]byte, bool) {
	typ, uid, action, ok := parseOCPP(body)
	if !ok {
		return out, false
	}
	if typ != 2 {
		return out, true
	}
	out = append(out, `[3,"`...)
	out = append(out, uid...) // unescaped: the tool's own ids need none
	out = append(out, `",`...)
	switch string(action) {
	case "BootNotification":
		out = append(out, `{"status":"Accepted","currentTime":"`...)
		out = time.Now().UTC().AppendFormat(out, time.RFC3339)
		out = append(out, `","interval":300}`...)
	case "Heartbeat":
		out = append(out, `{"currentTime":"`...)
		out = time.Now().UTC().AppendFormat(out, time.RFC3339)
		out = append(out, `"}`...)
	default:
		out = append(out, "{}"...)
	}
	return append(out, ']'), true
}

// callDriver makes the run's synchronous calls through the control API.
type callDriver struct {
	sent, ok atomicInt
	lat      Histogram // POST to 200, the calls answered

	mu     sync.Mutex
	failed map[string]int64 // by status, or "timeout", "transport", "bad answer"
	last   string
}

func (d *callDriver) fail(why, detail string) {
	d.mu.Lock()
	if d.failed == nil {
		d.failed = map[string]int64{}
	}
	d.failed[why]++
	d.last = detail
	d.mu.Unlock()
}

// failures returns a copy of the failure counts, their sum and the last
// one's detail.
func (d *callDriver) failures() (map[string]int64, int64, string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var n int64
	out := make(map[string]int64, len(d.failed))
	for k, v := range d.failed {
		out[k] = v
		n += v
	}
	return out, n, d.last
}

// run sends o.CallRate calls a second until ctx ends, to chargers picked
// at random among the o.Conns ids, then waits for the last answers.
func (d *callDriver) run(ctx context.Context, o Options) {
	// Keep-alive connections, one call waiting on each (HTTP/1.1 answers
	// in order, so a second request on one would wait behind the first);
	// a call finding every connection busy waits for one, and its latency
	// counts that wait.
	client, err := upstream.NewHostClient(upstream.HostOptions{BaseURL: o.Control + "/", MaxConns: o.CallConns, Timeout: o.CallAwait + 5*time.Second})
	if err != nil {
		d.fail("transport", err.Error())
		return
	}
	defer client.Close()
	query := "?await=" + o.CallAwait.String()
	var inflight sync.WaitGroup
	every := time.Second / time.Duration(o.CallRate)
	next := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for seq := 0; ctx.Err() == nil; seq++ {
		next = next.Add(every)
		if wait := time.Until(next); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				continue
			case <-timer.C:
			}
		}
		g := rand.IntN(max(1, o.Conns))
		start := time.Now()
		uid := "c" + strconv.FormatInt(start.UnixNano(), 10) + "-" + strconv.Itoa(seq)
		want := `[3,"` + uid + `"`
		req := &upstream.Request{Method: "POST", Path: o.Prefix + strconv.Itoa(g) + query, ContentType: "application/json",
			Body: []byte(`[2,"` + uid + `","Reset",{"type":"Soft"}]`)}
		d.sent.Add(1)
		inflight.Add(1)
		client.Do(req, func(resp *upstream.Response, err error) {
			defer inflight.Done()
			switch {
			case err != nil && upstream.IsTimeout(err):
				d.fail("timeout", err.Error())
			case err != nil:
				d.fail("transport", err.Error())
			case resp.Status != 200:
				d.fail(strconv.Itoa(resp.Status), strconv.Itoa(resp.Status)+" "+string(truncate(resp.Body, 80)))
			case !bytes.HasPrefix(resp.Body, []byte(want)):
				d.fail("bad answer", "answered "+string(truncate(resp.Body, 80))+" to "+uid)
			default:
				d.lat.Record(time.Since(start))
				d.ok.Add(1)
			}
		})
	}
	inflight.Wait()
}
