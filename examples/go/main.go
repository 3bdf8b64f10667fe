// Command example-api is an API behind ws2api in plain net/http, the same
// as examples/php: it accepts every client whose id does not start with
// "banned", answers each message, logs disconnects, and pushes a greeting
// to a client through ws2api's control listener a second after it
// connects. It also answers OCPP 1.6-J chargers (subprotocol "ocpp1.6"):
// a CALL gets its CALLRESULT, and a charger's CALLRESULT to a CALL pushed
// through the control listener arrives as an ordinary POST and is logged.
//
//	go run ./examples/go -listen :8000 -control http://127.0.0.1:7002
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"slices"
	"strings"
	"time"
)

func main() {
	listen := flag.String("listen", ":8000", "address to serve the API on")
	control := flag.String("control", "http://127.0.0.1:7002", "ws2api's control listener, for pushes")
	flag.Parse()

	http.HandleFunc("/{id}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		conn := r.Header.Get("X-Ws2api-Connection-Id")
		body, _ := io.ReadAll(r.Body)
		switch r.Method {
		case http.MethodGet: // a client wants to connect
			if strings.HasPrefix(id, "banned") {
				log.Printf("refused %s", id)
				fmt.Fprint(w, "you are not welcome here") // any text but "ok" refuses, with that text
				return
			}
			log.Printf("connect %s (connection %s) from %s", id, conn, r.Header.Get("X-Forwarded-For"))
			// ws2api forwards the protocols the client offered; naming one
			// selects it. OCPP chargers refuse a socket without it.
			if slices.Contains(offered(r), "ocpp1.6") {
				w.Header().Set("Sec-WebSocket-Protocol", "ocpp1.6")
			} else {
				go push(*control, id, "welcome, "+id)
			}
			fmt.Fprint(w, "ok")
		case http.MethodPost: // a client sent a message: the answer goes back to it
			var msg []json.RawMessage
			if json.Unmarshal(body, &msg) == nil && len(msg) >= 3 {
				ocpp(w, id, msg)
				return
			}
			log.Printf("message from %s: %q", id, body)
			fmt.Fprintf(w, "you said: %s", body)
		case http.MethodDelete: // a client is gone
			log.Printf("disconnect %s: code %s, %q", id, r.Header.Get("X-Ws2api-Close-Code"), body)
		}
	})
	log.Printf("example API on %s", *listen)
	log.Fatal(http.ListenAndServe(*listen, nil))
}

func offered(r *http.Request) []string {
	var out []string
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for p := range strings.SplitSeq(v, ",") {
			out = append(out, strings.TrimSpace(p))
		}
	}
	return out
}

// ocpp answers one OCPP 1.6-J message from charger id.
func ocpp(w http.ResponseWriter, id string, msg []json.RawMessage) {
	var typ int
	var uid string
	_ = json.Unmarshal(msg[0], &typ)
	_ = json.Unmarshal(msg[1], &uid)
	switch typ {
	case 2: // CALL: [2, uid, action, payload]
		var action string
		_ = json.Unmarshal(msg[2], &action)
		now := time.Now().UTC().Format(time.RFC3339)
		var payload any
		switch action {
		case "BootNotification":
			// A real central system would say 300 s; 10 s shows heartbeats soon.
			payload = map[string]any{"status": "Accepted", "currentTime": now, "interval": 10}
		case "Heartbeat":
			payload = map[string]any{"currentTime": now}
		case "StatusNotification", "MeterValues":
			payload = struct{}{}
		default:
			log.Printf("OCPP %s from %s: answered NotImplemented", action, id)
			_ = json.NewEncoder(w).Encode([]any{4, uid, "NotImplemented", action + " is not handled here", struct{}{}})
			return
		}
		log.Printf("OCPP %s from %s: answered with a CALLRESULT", action, id)
		_ = json.NewEncoder(w).Encode([]any{3, uid, payload})
	case 3: // CALLRESULT: the charger's answer to a CALL we pushed
		log.Printf("OCPP CALLRESULT %s from %s: %s", uid, id, msg[2])
	case 4: // CALLERROR
		log.Printf("OCPP CALLERROR %s from %s: %s", uid, id, msg[2])
	}
}

// push sends a message to a client through ws2api's control listener.
func push(control, id, msg string) {
	time.Sleep(time.Second)
	resp, err := http.Post(control+"/"+id, "text/plain", strings.NewReader(msg))
	if err != nil {
		log.Printf("push to %s: %v", id, err)
		return
	}
	resp.Body.Close()
	log.Printf("push to %s: %s", id, resp.Status)
}
