// Command healthsrv is the app of the builder's service tests. At start it
// reads the file a profile points at (lines like "version=2", "healthy=yes",
// "crash=yes", "gate=/path/to/pipe"); it exits 1 at once if crash=yes,
// waits at the gate before it listens if gate is set (a service slow to
// come up for exactly as long as its test holds the gate: it reads the
// named pipe to its end, see internal/testenv.Gate), and then serves
// /health: 200 and "version=N" if healthy=yes, else 500.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	profile := flag.String("profile", "", "file to read the build's settings from")
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on")
	flag.Parse()
	if err := run(*profile, *addr); err != nil {
		fmt.Fprintln(os.Stderr, "healthsrv:", err)
		os.Exit(1)
	}
}

func run(profile, addr string) error {
	b, err := os.ReadFile(profile)
	if err != nil {
		return err
	}
	settings := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			settings[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	if settings["crash"] == "yes" {
		return errors.New("crashing at start, as this build says")
	}
	if gate := settings["gate"]; gate != "" {
		fmt.Println("waiting at the gate")
		if err := waitAtGate(gate); err != nil {
			return err
		}
		fmt.Println("through the gate")
	}
	version := settings["version"]
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		if settings["healthy"] != "yes" {
			http.Error(w, "unhealthy version="+version, http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "version=%s", version)
	})
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	fmt.Printf("serving version %s on %s\n", version, addr)
	return srv.ListenAndServe()
}

// waitAtGate reads the named pipe at path until its end: until the test
// opens the gate.
func waitAtGate(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("gate: %w", err)
	}
	defer f.Close()
	if _, err := io.Copy(io.Discard, f); err != nil {
		return fmt.Errorf("gate: %w", err)
	}
	return nil
}
