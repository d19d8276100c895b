package config

import (
	"encoding/json"
	"log/slog"
)

// redacted is what every printed form of a Secret shows.
const redacted = "[redacted]"

// Secret holds a webhook secret or token. Every way of printing it (fmt, slog,
// JSON) shows "[redacted]"; only Reveal gives the value, for the one place that
// needs it (an HMAC key, an Authorization header).
type Secret string

// Reveal returns the secret's value. Call it only where the value is used.
func (s Secret) Reveal() string { return string(s) }

// IsSet reports whether the secret has a value.
func (s Secret) IsSet() bool { return s != "" }

// String implements fmt.Stringer without revealing the secret.
func (s Secret) String() string { return redacted }

// GoString implements fmt.GoStringer without revealing the secret.
func (s Secret) GoString() string { return redacted }

// LogValue implements slog.LogValuer without revealing the secret.
func (s Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalJSON implements json.Marshaler without revealing the secret.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(redacted) }
