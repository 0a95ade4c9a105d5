package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
)

// Handler serves the daemon's endpoints:
//
//	/metrics        Prometheus text format
//	/healthz        200 while the process serves requests
//	/readyz         200 while streaming with Redis reachable, or standing by
//	                as a passive instance; 503 otherwise, saying why
//	/debug/pprof/   the runtime profiles
//
// redisUp reports whether Redis acknowledges (the writer is not failing).
func (m *Metrics) Handler(redisUp func() bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, why := m.ready(redisUp)
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, why)
	})
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}

// ready is the readiness verdict and the line that explains it.
func (m *Metrics) ready(redisUp func() bool) (bool, string) {
	state, detail := m.State()
	switch {
	case state == StateStandby:
		return true, "standby: another instance holds the slot; this one takes over when it is free"
	case state == StateStreaming && !redisUp():
		return false, "streaming, but Redis is failing: nothing is confirmed until it recovers"
	case state == StateStreaming:
		return true, "streaming"
	case detail != "":
		return false, state + ": " + detail
	}
	return false, state
}

// Serve listens on addr (an error here, such as the port being taken, is
// returned at once) and serves h until ctx is done.
func Serve(ctx context.Context, addr string, h http.Handler, log zerolog.Logger) (wait func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--listen %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("metrics listener failed")
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info().Str("addr", ln.Addr().String()).Msg("serving /metrics, /healthz, /readyz and /debug/pprof/")
	return func() { <-done }, nil
}
