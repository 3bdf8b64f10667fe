//go:build !race

// Package race tells tests whether the race detector is on: it changes
// what allocation counts mean (sync.Pool drops items on purpose).
package race

// Enabled is true when built with -race.
const Enabled = false
