package builder

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestHealthCheck(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("/created", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("/broken", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", http.StatusServiceUnavailable) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedURL := "http://" + closed.Addr().String() + "/health"
	_ = closed.Close()
	base := "http://" + ln.Addr().String()

	tests := []struct {
		name     string
		url      string
		wantCode int
		wantErr  string
	}{
		{name: "200", url: base + "/ok", wantCode: 200},
		{name: "204", url: base + "/created", wantCode: 204},
		{name: "503", url: base + "/broken", wantCode: 503, wantErr: "health " + base + "/broken answered 503 Service Unavailable"},
		{name: "404", url: base + "/missing", wantCode: 404, wantErr: "answered 404 Not Found"},
		{name: "nobody listening", url: closedURL, wantErr: "connection refused"},
		{name: "a password", url: strings.Replace(closedURL, "http://", "http://app:hunter2@", 1), wantErr: "connection refused"},
	}
	client := newHealthClient()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			display, err := parseHealthURL(tc.url)
			if err != nil {
				t.Fatal(err)
			}
			code, err := checkHealth(context.Background(), client, tc.url, display)
			if code != tc.wantCode {
				t.Errorf("code = %d, want %d", code, tc.wantCode)
			}
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("error = %v, want %q", err, tc.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error %q shows the password", err)
			}
		})
	}
}

func TestParseHealthURL(t *testing.T) {
	tests := []struct {
		url     string
		want    string
		wantErr string
	}{
		{url: "http://127.0.0.1:8080/health", want: "http://127.0.0.1:8080/health"},
		{url: "https://app.example/healthz?full=1", want: "https://app.example/healthz?full=1"},
		{url: "http://app:hunter2@127.0.0.1/health", want: "http://app:xxxxx@127.0.0.1/health"},
		{url: "ftp://app.example/", wantErr: `health url "ftp://app.example/": want http:// or https:// and a host`},
		{url: "127.0.0.1:8080/health", wantErr: "health url: not a URL"},
		{url: "http:///health", wantErr: "want http:// or https:// and a host"},
		{url: "http://app:hunter2@a b/", wantErr: "health url: not a URL"},
		{url: "ftp://app:hunter2@app.example/", wantErr: `health url "ftp://app:xxxxx@app.example/"`},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			got, err := parseHealthURL(tc.url)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseHealthURL = %q, %v; want error %q", got, err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Errorf("error %q shows the password", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("parseHealthURL = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
