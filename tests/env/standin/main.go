// A stand-in for the agent in the operator's tests: a real container on a real node that
// answers the kubelet's probes and nothing else, so operator behaviour (children, coverage,
// READY, restores) is tested without depending on the agent's progress.
//
// It is started exactly as the operator starts the agent (`observatory-agent run --config
// FILE ...`): it reads the port from the agent config and binds POD_IP (or 0.0.0.0).
// /healthz and /readyz answer 200; everything else 404, so the operator sees an agent that
// does not report (no /status), the same as the simulator's status-only pods.
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

func port(args []string) int {
	for i, a := range args {
		if a == "--config" && i+1 < len(args) {
			raw, err := os.ReadFile(args[i+1])
			if err != nil {
				return 9464
			}
			var cfg struct {
				Port int `json:"port"`
			}
			if json.Unmarshal(raw, &cfg) == nil && cfg.Port > 0 {
				return cfg.Port
			}
		}
	}
	return 9464
}

func main() {
	ok := func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") }
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", ok)
	mux.HandleFunc("/readyz", ok)
	addr := fmt.Sprintf("%s:%d", os.Getenv("POD_IP"), port(os.Args))
	go func() {
		if err := http.ListenAndServe(addr, mux); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}()
	fmt.Println("stand-in agent listening on", addr)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
