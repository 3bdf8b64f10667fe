package loop

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/lesismal/nbio/logging"
)

// nbio logs through one process-wide logger. Its lines go to slog's default
// logger (which main sets): errors as warnings, the rest at debug level.
var nbioLogOnce sync.Once

func setNBIOLogger() {
	nbioLogOnce.Do(func() { logging.SetLogger(nbioLog{}) })
}

type nbioLog struct{}

func (nbioLog) Debug(format string, v ...any) { put(slog.LevelDebug, format, v) }
func (nbioLog) Info(format string, v ...any)  { put(slog.LevelDebug, format, v) }
func (nbioLog) Warn(format string, v ...any)  { put(slog.LevelDebug, format, v) }
func (nbioLog) Error(format string, v ...any) { put(slog.LevelWarn, format, v) }

func put(level slog.Level, format string, v []any) {
	l := slog.Default()
	if l.Enabled(context.Background(), level) {
		l.Log(context.Background(), level, "nbio: "+fmt.Sprintf(format, v...))
	}
}
