package bench

import (
	"math"
	"sync/atomic"
	"time"
)

// Histogram counts latencies in buckets 2% wide, from 1µs to about 2
// minutes; counts merge across goroutines and processes by addition.
type Histogram struct {
	counts [histBuckets]atomic.Uint64
}

const (
	histBuckets = 950
	histGrowth  = 1.02
)

var logGrowth = math.Log(histGrowth)

func bucketOf(d time.Duration) int {
	us := float64(d) / float64(time.Microsecond)
	if us <= 1 {
		return 0
	}
	return min(int(math.Log(us)/logGrowth), histBuckets-1)
}

// bucketValue is the upper bound of bucket i.
func bucketValue(i int) time.Duration {
	return time.Duration(math.Pow(histGrowth, float64(i+1)) * float64(time.Microsecond))
}

// Record adds one latency.
func (h *Histogram) Record(d time.Duration) { h.counts[bucketOf(d)].Add(1) }

// Snapshot returns the counts and resets nothing.
func (h *Histogram) Snapshot() []uint64 {
	out := make([]uint64, histBuckets)
	for i := range out {
		out[i] = h.counts[i].Load()
	}
	return out
}

// Counts is a histogram's counts, for merging and quantiles.
type Counts []uint64

// Add merges o into c.
func (c Counts) Add(o []uint64) {
	for i, v := range o {
		if i < len(c) {
			c[i] += v
		}
	}
}

// Sub returns c minus an earlier snapshot.
func (c Counts) Sub(earlier []uint64) Counts {
	out := make(Counts, len(c))
	for i := range c {
		out[i] = c[i]
		if i < len(earlier) {
			out[i] -= earlier[i]
		}
	}
	return out
}

// Total is the number of latencies counted.
func (c Counts) Total() uint64 {
	var n uint64
	for _, v := range c {
		n += v
	}
	return n
}

// Quantile returns the latency under which a fraction q of the counts lie
// (the bucket's upper bound), or 0 if there are none.
func (c Counts) Quantile(q float64) time.Duration {
	total := c.Total()
	if total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(total)))
	var seen uint64
	for i, v := range c {
		seen += v
		if seen >= rank && v > 0 {
			return bucketValue(i)
		}
	}
	return bucketValue(len(c) - 1)
}

// Max returns the upper bound of the highest non-empty bucket.
func (c Counts) Max() time.Duration {
	for i := len(c) - 1; i >= 0; i-- {
		if c[i] > 0 {
			return bucketValue(i)
		}
	}
	return 0
}
