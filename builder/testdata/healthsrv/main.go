// Command healthsrv is the app of the builder's service tests. At start it
// reads the file a profile points at (lines like "version=2", "healthy=yes",
// "crash=yes", "delay=3"); it exits 1 at once if crash=yes, waits delay
// seconds before it listens (a service slow to come up), and then serves
// /health: 200 and "version=N" if healthy=yes, else 500.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strconv"
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
	if d := settings["delay"]; d != "" {
		secs, err := strconv.Atoi(d)
		if err != nil || secs < 0 {
			return fmt.Errorf("delay=%s: want whole seconds", d)
		}
		time.Sleep(time.Duration(secs) * time.Second)
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
