package gateway_test

import (
	"context"
)

// drain shuts the gateway down and waits for the drain to complete: once
// it returns, every request the gateway owed the API for its clients (a
// pending message, a DELETE) has been sent and answered, and no other will
// come. A test that asserts a request was never sent waits for this, not
// for a guessed time. (The harness's cleanup shuts down again: harmless.)
func (h *harness) drain() {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := h.srv.Shutdown(ctx); err != nil {
		h.t.Fatalf("drain: %v", err)
	}
}
