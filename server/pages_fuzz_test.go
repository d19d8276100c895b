package server

import (
	"math/big"
	"strconv"
	"testing"
)

// FuzzParseID holds the deploy id of a URL to its claim: parseID accepts
// exactly the canonical positive decimal numbers that fit an int64 (no
// sign, no leading zero, nothing around them), and an accepted id prints
// back as the text it came from, so one deploy has one URL.
func FuzzParseID(f *testing.F) {
	for _, s := range []string{
		"1", "42", "9223372036854775807", // ids of real deploys, the last the largest
		"0", "-1", "+1", "01", "007", "9223372036854775808", "99999999999999999999",
		"", " 1", "1 ", "1e3", "0x10", "1_000", "12abc", "١٢", "x1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, ok := parseID(s)
		canonical := s != "" && s[0] >= '1' && s[0] <= '9'
		for i := 0; i < len(s) && canonical; i++ {
			canonical = s[i] >= '0' && s[i] <= '9'
		}
		want := false
		if canonical {
			n, _ := new(big.Int).SetString(s, 10)
			want = n.IsInt64()
		}
		if ok != want {
			t.Fatalf("parseID(%q) = %d, %v; want accepted=%v", s, id, ok, want)
		}
		if ok && (id <= 0 || strconv.FormatInt(id, 10) != s) {
			t.Fatalf("parseID(%q) = %d, which prints as %q", s, id, strconv.FormatInt(id, 10))
		}
	})
}
