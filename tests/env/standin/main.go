// A stand-in for the agent in the operator's tests: a real container on a real node that
// answers the kubelet's probes, so operator behaviour (children, coverage, READY, restores) is
// tested without depending on the agent's progress.
//
// It is started exactly as the operator starts the agent (`observatory-agent run --config
// FILE ...`): it reads the port and its tags from the agent config and binds POD_IP.
// /healthz and /readyz answer 200. /status depends on the collector's `standin` tag, so a test
// can play a slow or a hostile agent on a real node:
//
//	(none)           404: an agent that does not report
//	slow             a good answer after 1.5 s
//	huge             a 20 MB body
//	nan              NaN and Infinity where numbers go
//	future           a last write in 2096
//	enormous-number  1e400 and -1e400
//
// Installed as `chown` too: the agent pod's buffer-owner init container runs `chown UID:GID DIR`
// with the agent's image, and this one does exactly that (numeric ids only, not recursive).
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

type config struct {
	Port int               `json:"port"`
	Tags map[string]string `json:"tags"`
}

func load(args []string) config {
	cfg := config{Port: 9464}
	for i, a := range args {
		if a == "--config" && i+1 < len(args) {
			if raw, err := os.ReadFile(args[i+1]); err == nil {
				_ = json.Unmarshal(raw, &cfg)
			}
		}
	}
	if cfg.Port <= 0 {
		cfg.Port = 9464
	}
	return cfg
}

func status(mode string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		var body string
		switch mode {
		case "slow":
			time.Sleep(1500 * time.Millisecond)
			body = fmt.Sprintf(`{"last_successful_write": %d, "ready": true}`, time.Now().Unix())
		case "huge":
			body = `{"last_successful_write": ` + strings.Repeat("1", 20_000_000) + `}`
		case "nan":
			body = `{"last_successful_write": NaN, "buffered_points": Infinity, "ready": true}`
		case "future":
			body = `{"last_successful_write": 4000000000, "buffered_points": 5, "ready": true}`
		case "enormous-number":
			body = `{"last_successful_write": 1e400, "buffered_points": -1e400}`
		default:
			http.NotFound(w, nil)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(body))
	}
}

// chown does what the buffer-owner init container asks of coreutils' chown: `chown UID:GID PATH...`.
func chown(args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "chown: usage: chown UID:GID PATH...")
		return 1
	}
	var uid, gid int
	if _, err := fmt.Sscanf(args[0], "%d:%d", &uid, &gid); err != nil {
		fmt.Fprintf(os.Stderr, "chown: %q: want numeric UID:GID\n", args[0])
		return 1
	}
	for _, path := range args[1:] {
		if err := os.Chown(path, uid, gid); err != nil {
			fmt.Fprintln(os.Stderr, "chown:", err)
			return 1
		}
	}
	return 0
}

func main() {
	if filepath.Base(os.Args[0]) == "chown" {
		os.Exit(chown(os.Args[1:]))
	}
	cfg := load(os.Args)
	ok := func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") }
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", ok)
	mux.HandleFunc("/readyz", ok)
	mux.HandleFunc("/status", status(cfg.Tags["standin"]))
	addr := fmt.Sprintf("%s:%d", os.Getenv("POD_IP"), cfg.Port)
	go func() {
		if err := http.ListenAndServe(addr, mux); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}()
	fmt.Println("stand-in agent listening on", addr, "status mode", cfg.Tags["standin"])
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
