package gateway

import "sync"

// Client messages wait for the API in buffers from these pools, one per
// size class, and go back once delivered: a message costs no allocation.
var bufClasses = [...]int{256, 1 << 10, 4 << 10, 16 << 10, 64 << 10}

var bufPools [len(bufClasses)]sync.Pool

// getBuf returns a buffer holding a copy of p.
func getBuf(p []byte) *[]byte {
	for i, size := range bufClasses {
		if len(p) <= size {
			bp, _ := bufPools[i].Get().(*[]byte)
			if bp == nil {
				b := make([]byte, 0, size)
				bp = &b
			}
			*bp = append((*bp)[:0], p...)
			return bp
		}
	}
	b := append([]byte(nil), p...)
	return &b
}

// putBuf gives a buffer back to its pool; the caller must not use it
// again.
func putBuf(bp *[]byte) {
	if bp == nil {
		return
	}
	c := cap(*bp)
	for i, size := range bufClasses {
		if c == size {
			*bp = (*bp)[:0]
			bufPools[i].Put(bp)
			return
		}
	}
}
