package deploy

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestClipTextCutsBetweenCharacters(t *testing.T) {
	tests := []struct {
		name, in string
		max      int
		want     string
	}{
		{"short text stays", "fix: typo", 10, "fix: typo"},
		{"text of the limit stays", "0123456789", 10, "0123456789"},
		{"ASCII over the limit", "0123456789a", 10, "0123456…"},
		{"cut inside a two-byte character", strings.Repeat("é", 10), 10, "ééé…"},
		{"cut inside a four-byte character", "ab" + strings.Repeat("🚀", 5), 12, "ab🚀…"},
		{"cut after a whole character", "a" + strings.Repeat("é", 10), 10, "aééé…"},
		{"invalid bytes are cut within a character's length", strings.Repeat("\x80", 20), 10, "\x80\x80\x80\x80…"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := clipText(tc.in, tc.max)
			if got != tc.want || len(got) > tc.max {
				t.Errorf("clipText(%q, %d) = %q (%d bytes), want %q", tc.in, tc.max, got, len(got), tc.want)
			}
			if utf8.ValidString(tc.in) && !utf8.ValidString(got) {
				t.Errorf("clipText(%q, %d) = %q is not valid UTF-8", tc.in, tc.max, got)
			}
		})
	}
}
