package http1

import (
	"net/http"
	"strconv"
)

// Response is an answer ws2api writes itself, with its whole body: to an
// upgrade it refuses, on the control listener, from the load tool's API.
type Response struct {
	Status      int
	ContentType string   // "" for none
	Header      []Header // more header fields, in order
	Close       bool     // Connection: close: nothing more on this connection
	Body        []byte
}

// AppendResponse encodes r as HTTP/1.1: the status line with the status's
// standard text, Content-Type, the fields of r.Header, Connection: close
// if asked, Content-Length, and the body. Names and values are written as
// they are: callers pass only what they made themselves.
func AppendResponse(b []byte, r *Response) []byte {
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(r.Status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(r.Status)...)
	b = append(b, "\r\n"...)
	if r.ContentType != "" {
		b = appendField(b, "Content-Type", r.ContentType)
	}
	for _, h := range r.Header {
		b = appendField(b, h.Name, h.Value)
	}
	if r.Close {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "Content-Length: "...)
	b = strconv.AppendInt(b, int64(len(r.Body)), 10)
	b = append(b, "\r\n\r\n"...)
	return append(b, r.Body...)
}

func appendField(b []byte, name, value string) []byte {
	b = append(b, name...)
	b = append(b, ": "...)
	b = append(b, value...)
	return append(b, "\r\n"...)
}
