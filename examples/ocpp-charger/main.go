// Command ocpp-charger simulates an EV charger speaking OCPP 1.6-J to a
// central system behind ws2api: it connects with subprotocol "ocpp1.6",
// sends a BootNotification, then a Heartbeat at the interval the central
// system names, and answers the central system's CALLs (Reset is
// accepted; anything else is NotImplemented).
//
//	go run ./examples/ocpp-charger -url ws://127.0.0.1:7001/ -id CP1
//
// Behind ws2api, the charger's CALLs reach the API as POSTs and the API's
// answers come back as CALLRESULTs; a CALL the API pushes through the
// control listener arrives here, and this charger's CALLRESULT reaches the
// API as an ordinary POST (examples/php answers all of it).
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

// OCPP-J message types.
const (
	call       = 2
	callResult = 3
	callError  = 4
)

func main() {
	url := flag.String("url", "ws://127.0.0.1:7001/", "ws2api's public listener; the id is appended")
	id := flag.String("id", "CP1", "the charge point's identity")
	heartbeat := flag.Duration("heartbeat", 0, "heartbeat interval (default: the one BootNotification's answer names)")
	flag.Parse()
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	if err := run(*url+*id, *heartbeat); err != nil {
		log.Fatal(err)
	}
}

// charger is one connection to the central system.
type charger struct {
	conn    *websocket.Conn
	wmu     sync.Mutex
	seq     int
	mu      sync.Mutex
	pending map[string]chan json.RawMessage // our CALLs awaiting their CALLRESULT
}

func run(url string, heartbeat time.Duration) error {
	d := websocket.Dialer{Subprotocols: []string{"ocpp1.6"}, HandshakeTimeout: 10 * time.Second}
	conn, resp, err := d.Dial(url, nil)
	if err != nil {
		if resp != nil {
			return fmt.Errorf("connect %s: %v (HTTP %d)", url, err, resp.StatusCode)
		}
		return fmt.Errorf("connect %s: %v", url, err)
	}
	defer conn.Close()
	if conn.Subprotocol() != "ocpp1.6" {
		return errors.New("the central system did not select subprotocol ocpp1.6")
	}
	log.Printf("connected to %s with ocpp1.6", url)
	c := &charger{conn: conn, pending: map[string]chan json.RawMessage{}}
	readErr := make(chan error, 1)
	go func() { readErr <- c.read() }()

	var boot struct {
		Status   string `json:"status"`
		Interval int    `json:"interval"`
	}
	if err := c.call("BootNotification", map[string]string{"chargePointVendor": "ws2api", "chargePointModel": "simulator"}, &boot); err != nil {
		return err
	}
	log.Printf("BootNotification: %s, heartbeat interval %ds", boot.Status, boot.Interval)
	if boot.Status != "Accepted" {
		return fmt.Errorf("boot %s", boot.Status)
	}
	if heartbeat <= 0 {
		heartbeat = time.Duration(max(boot.Interval, 1)) * time.Second
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			var hb struct {
				CurrentTime string `json:"currentTime"`
			}
			if err := c.call("Heartbeat", struct{}{}, &hb); err != nil {
				return err
			}
			log.Printf("Heartbeat: central system time %s", hb.CurrentTime)
		case err := <-readErr:
			return fmt.Errorf("connection lost: %v", err)
		case <-stop:
			c.wmu.Lock()
			_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "charger stopped"), time.Now().Add(time.Second))
			c.wmu.Unlock()
			return nil
		}
	}
}

// call sends a CALL and waits for its CALLRESULT, decoded into result.
func (c *charger) call(action string, payload, result any) error {
	c.mu.Lock()
	c.seq++
	uid := strconv.Itoa(c.seq)
	ch := make(chan json.RawMessage, 1)
	c.pending[uid] = ch
	c.mu.Unlock()
	if err := c.send([]any{call, uid, action, payload}); err != nil {
		return err
	}
	select {
	case raw := <-ch:
		if raw == nil {
			return fmt.Errorf("%s: the central system answered with a CALLERROR", action)
		}
		return json.Unmarshal(raw, result)
	case <-time.After(30 * time.Second):
		return fmt.Errorf("%s: no answer within 30s", action)
	}
}

func (c *charger) send(msg []any) error {
	b, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.conn.WriteMessage(websocket.TextMessage, b)
}

// read handles what the central system sends: answers to our CALLs, and
// its own CALLs.
func (c *charger) read() error {
	for {
		_, data, err := c.conn.ReadMessage()
		if err != nil {
			return err
		}
		var msg []json.RawMessage
		var typ int
		var uid string
		if json.Unmarshal(data, &msg) != nil || len(msg) < 3 || json.Unmarshal(msg[0], &typ) != nil || json.Unmarshal(msg[1], &uid) != nil {
			log.Printf("not an OCPP-J message: %s", data)
			continue
		}
		switch typ {
		case callResult, callError:
			c.mu.Lock()
			ch := c.pending[uid]
			delete(c.pending, uid)
			c.mu.Unlock()
			if ch == nil {
				log.Printf("an answer to no CALL of ours: %s", data)
				continue
			}
			if typ == callResult {
				ch <- msg[2]
			} else {
				log.Printf("CALLERROR: %s", data)
				ch <- nil
			}
		case call:
			var action string
			_ = json.Unmarshal(msg[2], &action)
			c.answer(uid, action, data)
		}
	}
}

// answer replies to the central system's CALL.
func (c *charger) answer(uid, action string, data []byte) {
	switch action {
	case "Reset":
		log.Printf("Reset requested by the central system (%s): accepted", data)
		_ = c.send([]any{callResult, uid, map[string]string{"status": "Accepted"}})
	default:
		log.Printf("%s requested by the central system: not implemented here", action)
		_ = c.send([]any{callError, uid, "NotImplemented", action + " is not simulated", struct{}{}})
	}
}
