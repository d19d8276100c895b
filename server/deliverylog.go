package server

import (
	"context"
	"log/slog"
	"slices"
)

// attrLogger logs a message with attributes: a *slog.Logger, or a
// deliveryLog.
type attrLogger interface {
	LogAttrs(ctx context.Context, level slog.Level, msg string, attrs ...slog.Attr)
}

// deliveryLog is the log of one webhook delivery: the attributes that
// describe it, collected as the handler learns them, go with every record.
// Unlike slog.Logger.With, adding one formats nothing; a record is
// formatted once, when it is logged, which matters on a path that answers
// thousands of deliveries a second.
type deliveryLog struct {
	log   *slog.Logger
	attrs []slog.Attr
}

// newDeliveryLog starts the log of a delivery with attrs.
func newDeliveryLog(log *slog.Logger, attrs ...slog.Attr) *deliveryLog {
	l := &deliveryLog{log: log, attrs: make([]slog.Attr, 0, 8)}
	l.attrs = append(l.attrs, attrs...)
	return l
}

// add adds attributes to every later record.
func (l *deliveryLog) add(attrs ...slog.Attr) {
	l.attrs = append(l.attrs, attrs...)
}

// LogAttrs logs msg with the delivery's attributes, then attrs.
func (l *deliveryLog) LogAttrs(ctx context.Context, level slog.Level, msg string, attrs ...slog.Attr) {
	if !l.log.Enabled(ctx, level) {
		return
	}
	all := append(slices.Clip(l.attrs), attrs...)
	l.log.LogAttrs(ctx, level, msg, all...)
}
