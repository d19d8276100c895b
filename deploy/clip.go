package deploy

import "unicode/utf8"

// What a push may store of its head commit and pusher: a delivery is signed
// by the forge but written by whoever pushed, and every deploy record keeps
// these, the API and pages serve them, and statuses are posted beside them.
// A commit message is a few lines; the limits are far above real ones.
const (
	maxMessage = 4 << 10 // bytes of the commit message
	maxName    = 256     // bytes of the author's and the pusher's names
)

// ellipsis ends a clipped text.
const ellipsis = "…"

// clipText returns s if it has at most max bytes, and otherwise its longest
// beginning that, with "…" after it, has at most max bytes, cut before the
// first byte of a character, never inside one (in invalid UTF-8, which the
// JSON decoder has replaced already, within the last few bytes).
func clipText(s string, max int) string {
	if len(s) <= max {
		return s
	}
	end := max - len(ellipsis)
	for i := 1; i < utf8.UTFMax && end > 0 && !utf8.RuneStart(s[end]); i++ {
		end--
	}
	return s[:end] + ellipsis
}
