// Command example-api is the smallest useful API behind ws2api, in plain
// net/http: it accepts every client whose id does not start with "banned",
// answers each message, logs disconnects, and pushes a greeting to a client
// through ws2api's control listener a second after it connects.
//
//	go run ./examples/go -listen :8000 -control http://127.0.0.1:7002
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
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
				fmt.Fprint(w, "you are not welcome here") // any text but "ok" refuses, with that text
				return
			}
			log.Printf("connect %s (connection %s) from %s", id, conn, r.Header.Get("X-Forwarded-For"))
			go push(*control, id, "welcome, "+id)
			fmt.Fprint(w, "ok")
		case http.MethodPost: // a client sent a message: the answer goes back to it
			log.Printf("message from %s: %q", id, body)
			fmt.Fprintf(w, "you said: %s", body)
		case http.MethodDelete: // a client is gone
			log.Printf("disconnect %s: code %s, %q", id, r.Header.Get("X-Ws2api-Close-Code"), body)
		}
	})
	log.Printf("example API on %s", *listen)
	log.Fatal(http.ListenAndServe(*listen, nil))
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
