// Command example-api is an API behind ws2api in plain net/http, the same
// as examples/php: it accepts every client whose id does not start with
// "banned", answers each message, logs disconnects, and pushes a greeting
// to a client through ws2api's control listener a second after it
// connects. It also answers OCPP chargers, 1.6-J (subprotocol "ocpp1.6")
// and 2.0.1 (subprotocol "ocpp2.0.1"): a CALL gets its CALLRESULT, and a
// charger's CALLRESULT to a CALL pushed through the control listener
// arrives as an ordinary POST and is logged. Behind ws2api with
// -tls-client-ca (OCPP security profile 3), it refuses a charger whose
// client certificate names another identity.
//
//	go run ./examples/go -listen :8000 -control http://127.0.0.1:7002
package main

import (
	"crypto/x509"
	"encoding/base64"
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
			cert, err := clientCert(r, id)
			if err != nil {
				log.Printf("refused %s: %v", id, err)
				fmt.Fprint(w, err)
				return
			}
			log.Printf("connect %s (connection %s) from %s%s", id, conn, r.Header.Get("X-Forwarded-For"), cert)
			// ws2api forwards the protocols the client offered; naming one
			// selects it. OCPP chargers refuse a socket without it. The
			// newer version wins when a charger offers both.
			if p := ocppVersion(offered(r)); p != "" {
				w.Header().Set("Sec-WebSocket-Protocol", p)
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

// ocppVersion is the OCPP subprotocol to select of those offered, the
// newest; "" for a client that is not a charger.
func ocppVersion(offered []string) string {
	for _, p := range []string{"ocpp2.0.1", "ocpp1.6"} {
		if slices.Contains(offered, p) {
			return p
		}
	}
	return ""
}

// clientCert reads the certificate ws2api verified for an mTLS client
// (RFC 9440's Client-Cert header, ":<base64 DER>:"; Client-Cert-Chain
// holds its intermediates the same way) and checks that its subject's
// common name is the client's id, as OCPP security profile 3 requires: a
// charger may only connect as itself. It returns what to log; without the
// header (no client certificate) nothing.
func clientCert(r *http.Request, id string) (string, error) {
	h := r.Header.Get("Client-Cert")
	if h == "" {
		return "", nil
	}
	cert, err := parseSF(h)
	if err != nil {
		return "", fmt.Errorf("bad client certificate: %v", err)
	}
	if cert.Subject.CommonName != id {
		return "", fmt.Errorf("the client certificate is for %q", cert.Subject.CommonName)
	}
	var chain []string
	for _, v := range r.Header.Values("Client-Cert-Chain") {
		for b := range strings.SplitSeq(v, ",") {
			c, err := parseSF(b)
			if err != nil {
				return "", fmt.Errorf("bad client certificate chain: %v", err)
			}
			chain = append(chain, "CN="+c.Subject.CommonName)
		}
	}
	return fmt.Sprintf(" with client certificate CN=%s (chain: %s)", cert.Subject.CommonName, strings.Join(chain, ", ")), nil
}

// parseSF parses one certificate as RFC 9440 sends it, a structured-field
// byte sequence: ":" base64 DER ":".
func parseSF(v string) (*x509.Certificate, error) {
	v = strings.TrimSpace(v)
	if len(v) < 2 || v[0] != ':' || v[len(v)-1] != ':' {
		return nil, fmt.Errorf("not :base64: but %.20q", v)
	}
	der, err := base64.StdEncoding.DecodeString(v[1 : len(v)-1])
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// ocpp answers one OCPP message from charger id. The answers it gives
// have the same fields in OCPP 1.6 and 2.0.1 (BootNotification:
// currentTime, interval, status; Heartbeat: currentTime;
// StatusNotification and MeterValues: none), so one answer is right for
// both and it need not know the charger's version. (ws2api sends the
// subprotocol on the connect GET only; an answer that differs by version,
// Authorize's, would tell the version by its request: idTag in 1.6,
// idToken in 2.0.1.)
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
