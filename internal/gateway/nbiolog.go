package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/lesismal/nbio/logging"
)

// nbio logs through a process-wide logger; the first Server's logger gets
// its lines: errors as warnings, the rest at debug level.
var nbioLogOnce sync.Once

func setNBIOLogger(l *slog.Logger) {
	nbioLogOnce.Do(func() { logging.SetLogger(nbioLog{l}) })
}

type nbioLog struct{ l *slog.Logger }

func (n nbioLog) Debug(format string, v ...any) { n.put(slog.LevelDebug, format, v) }
func (n nbioLog) Info(format string, v ...any)  { n.put(slog.LevelDebug, format, v) }
func (n nbioLog) Warn(format string, v ...any)  { n.put(slog.LevelDebug, format, v) }
func (n nbioLog) Error(format string, v ...any) { n.put(slog.LevelWarn, format, v) }

func (n nbioLog) put(level slog.Level, format string, v []any) {
	if n.l.Enabled(context.Background(), level) {
		n.l.Log(context.Background(), level, "nbio: "+fmt.Sprintf(format, v...))
	}
}
