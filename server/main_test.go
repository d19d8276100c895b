package server

import (
	"flag"
	"os"
	"runtime"
	"strconv"
	"testing"
)

// TestMain lets more tests run at once than there are CPUs, unless
// -test.parallel (or -test.fuzz) is given: the page, API and stream tests,
// which call t.Parallel, spend most of their time waiting on nix, git,
// SQLite and each other's connections, not on the CPU, and one after the
// other they made this package too slow to run once per mutant.
func TestMain(m *testing.M) {
	flag.Parse()
	given := false
	flag.Visit(func(f *flag.Flag) {
		if f.Name == "test.parallel" || f.Name == "test.fuzz" {
			given = true
		}
	})
	if !given {
		if err := flag.Set("test.parallel", strconv.Itoa(max(8, 4*runtime.GOMAXPROCS(0)))); err != nil {
			panic(err)
		}
	}
	os.Exit(m.Run())
}
