"""The conformance API (see ../../conformance_test.go and router.php, whose
behaviour this repeats), on Python's http.server, speaking HTTP/1.0: every
answer is close-delimited, without Content-Length, and none is chunked.

Usage: python3 server.py <host:port> <log file>
"""
import hashlib
import http.server
import sys
import threading
import time
import urllib.parse

addr, log_path = sys.argv[1], sys.argv[2]
log_lock = threading.Lock()


def pattern(n):
    blocks = ["%015d\n" % i for i in range((n + 15) // 16)]
    return "".join(blocks)[:n].encode()


def record(method, ident, key, body):
    if len(body) > 64:
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
    else:
        digest = urllib.parse.quote(body, safe="") if body else "-"
    key = urllib.parse.quote(key, safe="") if key else "-"
    with log_lock, open(log_path, "a") as f:
        f.write("%s %s %s %d %s\n" % (method, ident, key, len(body), digest))


def answer(body):
    if len(body) > 100000:
        return hashlib.sha256(body).hexdigest().encode(), {}
    verb, _, rest = body.partition(b":")
    if verb == b"echo":
        return rest, {}
    if verb == b"big":
        return pattern(int(rest)), {}
    if verb == b"sleep":
        ms, _, text = rest.partition(b":")
        time.sleep(int(ms) / 1000)
        return text, {}
    if verb == b"close":
        return rest, {"Connection": "close"}
    if verb == b"chunked":
        return rest, {}  # HTTP/1.0 cannot chunk: close-delimited, as every answer here
    return body, {}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    # The answer leaves in one write when the handler ends. Unbuffered, the
    # head went out before the body, and a server killed between the two
    # (case h) closed the connection with a FIN after the head: a
    # close-delimited answer cut there is, on the wire, a whole answer with
    # an empty body, which no client can tell from one (net/http neither).
    wbufsize = 1 << 21

    def log_message(self, format, *args):
        pass

    def serve(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        ident = self.path.split("?", 1)[0][1:]
        record(self.command, ident, self.headers.get("Idempotency-Key"), body)
        reply, headers = b"", {}
        if self.command == "GET":
            reply = b"ok"
        elif self.command == "POST":
            reply, headers = answer(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = do_DELETE = serve


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


host, _, port = addr.rpartition(":")
server = Server((host, int(port)), Handler)
print("listening on", addr, flush=True)
server.serve_forever()
