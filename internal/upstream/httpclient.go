package upstream

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// HTTPOptions configures an [HTTPClient]. The zero value of every field but
// BaseURL picks the default written beside it.
type HTTPOptions struct {
	// BaseURL is the API's base URL; a request's Path is appended to it
	// (a missing final '/' is added). Required.
	BaseURL string
	// MaxConnsPerHost bounds the connections open to the API, and so the
	// requests in flight; requests beyond it wait in a queue, never fail.
	// Default 256.
	MaxConnsPerHost int
	// MaxIdleConnsPerHost bounds the idle connections kept for reuse.
	// Default MaxConnsPerHost.
	MaxIdleConnsPerHost int
	// Timeout bounds one request from sending to the last byte of the
	// answer. Default 60s.
	Timeout time.Duration
	// MaxBodyBytes bounds a response body kept; a longer one is dropped
	// and the response marked Truncated. Default 16 MiB.
	MaxBodyBytes int64
	// Observer, if set, is told of each request.
	Observer Observer
}

func (o HTTPOptions) withDefaults() HTTPOptions {
	if o.MaxConnsPerHost <= 0 {
		o.MaxConnsPerHost = 256
	}
	if o.MaxIdleConnsPerHost <= 0 {
		o.MaxIdleConnsPerHost = o.MaxConnsPerHost
	}
	if o.Timeout <= 0 {
		o.Timeout = 60 * time.Second
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = 16 << 20
	}
	return o
}

// HTTPClient is a [Client] on net/http: a fixed pool of workers, one per
// allowed connection, takes requests from a FIFO queue.
type HTTPClient struct {
	opts   HTTPOptions
	base   *url.URL
	client *http.Client

	mu     sync.Mutex
	cond   sync.Cond
	queue  []job // FIFO: queue[head:] waits
	head   int
	closed bool
	wg     sync.WaitGroup
}

type job struct {
	r    *Request
	done func(*Response, error)
}

var _ Client = (*HTTPClient)(nil)

// NewHTTPClient checks the options and starts the workers.
func NewHTTPClient(opts HTTPOptions) (*HTTPClient, error) {
	opts = opts.withDefaults()
	base, err := ParseBaseURL(opts.BaseURL)
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{
		Proxy:               nil, // the API is ours: never through a proxy from the environment
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxConnsPerHost:     opts.MaxConnsPerHost,
		MaxIdleConnsPerHost: opts.MaxIdleConnsPerHost,
		MaxIdleConns:        opts.MaxIdleConnsPerHost,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	c := &HTTPClient{
		opts:   opts,
		base:   base,
		client: &http.Client{Transport: tr, Timeout: opts.Timeout},
	}
	c.cond.L = &c.mu
	for range opts.MaxConnsPerHost {
		c.wg.Add(1)
		go c.work()
	}
	return c, nil
}

// ParseBaseURL checks an API base URL: http or https, a host, no query or
// fragment. The path gets a final '/' so that ids append cleanly.
func ParseBaseURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("api url %q: %w", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("api url %q: scheme must be http or https", s)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("api url %q: no host", s)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("api url %q: no query, fragment or user info allowed", s)
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
		if u.RawPath != "" {
			u.RawPath += "/"
		}
	}
	return u, nil
}

// Do implements [Client].
func (c *HTTPClient) Do(r *Request, done func(*Response, error)) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		go done(nil, ErrClosed)
		return
	}
	c.queue = append(c.queue, job{r, done})
	c.mu.Unlock()
	c.cond.Signal()
}

// Close implements [Client]: queued requests fail with [ErrClosed].
func (c *HTTPClient) Close() {
	c.mu.Lock()
	c.closed = true
	left := c.queue[c.head:]
	c.queue, c.head = nil, 0
	c.mu.Unlock()
	c.cond.Broadcast()
	for _, j := range left {
		j.done(nil, ErrClosed)
	}
	c.wg.Wait()
	c.client.CloseIdleConnections()
}

func (c *HTTPClient) next() (job, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.head == len(c.queue) && !c.closed {
		c.cond.Wait()
	}
	if c.closed {
		return job{}, false
	}
	j := c.queue[c.head]
	c.queue[c.head] = job{}
	c.head++
	if c.head == len(c.queue) {
		c.queue, c.head = c.queue[:0], 0
	} else if c.head > 1024 && c.head*2 > len(c.queue) {
		n := copy(c.queue, c.queue[c.head:])
		c.queue, c.head = c.queue[:n], 0
	}
	return j, true
}

func (c *HTTPClient) work() {
	defer c.wg.Done()
	for {
		j, ok := c.next()
		if !ok {
			return
		}
		start := time.Now()
		if o := c.opts.Observer; o != nil {
			o.Started(j.r.Method)
		}
		resp, err := c.roundTrip(j.r)
		if o := c.opts.Observer; o != nil {
			o.Finished(j.r.Method, time.Since(start), Classify(resp, err) == Delivered)
		}
		j.done(resp, err)
	}
}

func (c *HTTPClient) roundTrip(r *Request) (*Response, error) {
	path, err := url.PathUnescape(r.Path)
	if err != nil {
		return nil, fmt.Errorf("api request path %q: %w", r.Path, err)
	}
	u := *c.base
	u.Path += path
	if path != r.Path || c.base.RawPath != "" {
		u.RawPath = c.base.EscapedPath() + r.Path
	}
	if r.Method == http.MethodGet {
		u.RawQuery = r.Query
	}
	var body io.Reader = http.NoBody
	if len(r.Body) > 0 {
		body = bytes.NewReader(r.Body)
	}
	req, err := http.NewRequestWithContext(context.Background(), r.Method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("api request: %w", err)
	}
	for _, h := range r.Header {
		req.Header.Add(h.Name, h.Value)
	}
	if r.ContentType != "" {
		req.Header.Set("Content-Type", r.ContentType)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		if IsTimeout(err) {
			return nil, fmt.Errorf("%w: %w", ErrTimeout, err)
		}
		return nil, err
	}
	defer resp.Body.Close()
	out := &Response{Status: resp.StatusCode, Header: make([]Header, 0, len(resp.Header))}
	for name, values := range resp.Header {
		for _, v := range values {
			out.Header = append(out.Header, Header{name, v})
		}
	}
	out.Body, err = io.ReadAll(io.LimitReader(resp.Body, c.opts.MaxBodyBytes+1))
	if err != nil {
		if IsTimeout(err) {
			return nil, fmt.Errorf("%w: reading the answer: %w", ErrTimeout, err)
		}
		return nil, fmt.Errorf("reading the answer: %w", err)
	}
	if int64(len(out.Body)) > c.opts.MaxBodyBytes {
		out.Body, out.Truncated = nil, true
		_, _ = io.Copy(io.Discard, resp.Body)
	}
	return out, nil
}
