package upstream

import "strconv"

// The HTTP/1.1 the client speaks: requests are encoded straight
// into a connection's output buffer, responses parsed from its input
// buffer without copying, so a message costs no allocation on its way.

// appendRequest encodes r for the API at host, whose base path is base
// (ending in '/').
func appendRequest(b []byte, r *Request, host, base string) []byte {
	b = append(b, r.Method...)
	b = append(b, ' ')
	b = append(b, base...)
	b = append(b, r.Path...)
	if r.Query != "" && r.Method == "GET" {
		b = append(b, '?')
		b = append(b, r.Query...)
	}
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, host...)
	b = append(b, "\r\n"...)
	for _, h := range r.Header {
		b = append(b, h.Name...)
		b = append(b, ": "...)
		b = append(b, h.Value...)
		b = append(b, "\r\n"...)
	}
	if r.Key.Prefix != "" {
		b = append(b, HeaderIdempotencyKey+": "...)
		b = r.Key.append(b)
		b = append(b, "\r\n"...)
	}
	if r.ContentType != "" {
		b = append(b, "Content-Type: "...)
		b = append(b, r.ContentType...)
		b = append(b, "\r\n"...)
	}
	if len(r.Body) > 0 || r.Method == "POST" || r.Method == "DELETE" {
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, int64(len(r.Body)), 10)
		b = append(b, "\r\n"...)
	}
	b = append(b, "\r\n"...)
	return append(b, r.Body...)
}
