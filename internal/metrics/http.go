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

// HandlerOptions say what the endpoints judge and serve.
type HandlerOptions struct {
	// RedisUp reports whether Redis acknowledges (the writer is not
	// failing); nil means always.
	RedisUp func() bool
	// StuckAfter is how long the pipeline may hold unconfirmed WAL without
	// confirming any while PostgreSQL and Redis answer before /healthz
	// answers 503 (0: never).
	StuckAfter time.Duration
	// Pprof serves the runtime profiles under /debug/pprof/.
	Pprof bool
}

// Handler serves the daemon's endpoints:
//
//	/metrics        Prometheus text format
//	/healthz        200 unless the pipeline is stuck (see progress.live):
//	                the liveness probe, which restarts the process
//	/readyz         200 while streaming (also while Redis fails: the body
//	                says so) or standing by as a passive instance; 503
//	                while starting, reconnecting or stopped, saying why
//	/debug/pprof/   the runtime profiles, with Pprof only; never cmdline
//
// Nothing it serves carries the command line or the environment: both can
// hold passwords (--database-url). expvar (linked in by a dependency)
// publishes the command line at /debug/vars, and net/http/pprof registers
// cmdline too, both on http.DefaultServeMux, which is never served.
func (m *Metrics) Handler(o HandlerOptions) http.Handler {
	redisUp := o.RedisUp
	if redisUp == nil {
		redisUp = func() bool { return true }
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		ok, why := m.liveness(redisUp, o.StuckAfter, time.Now())
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, why)
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, why := m.ready(redisUp)
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, why)
	})
	if o.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "not served: the command line can hold passwords", http.StatusNotFound)
		})
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// Paths is what Handler serves, for the log line that announces it.
func (o HandlerOptions) Paths() string {
	if o.Pprof {
		return "/metrics, /healthz, /readyz and /debug/pprof/"
	}
	return "/metrics, /healthz and /readyz"
}

// ready is the readiness verdict and the line that explains it. A Redis
// outage keeps a streaming instance ready: readiness routes no traffic to
// cachesync, it only counts for the PodDisruptionBudget and rollouts, and an
// outage that made the active instance unready would block node drains
// (deploy/kubernetes/poddisruptionbudget.yaml) while changing nothing.
func (m *Metrics) ready(redisUp func() bool) (bool, string) {
	state, detail := m.State()
	switch {
	case state == StateStandby:
		return true, "standby: another instance holds the slot; this one takes over when it is free"
	case state == StateStreaming && !redisUp():
		return true, "streaming, but Redis is failing: nothing is confirmed until it recovers"
	case state == StateStreaming:
		return true, "streaming"
	case detail != "":
		return false, state + ": " + detail
	}
	return false, state
}

// Serve listens on addr (an error here, such as the port being taken, is
// returned at once) and serves h until ctx is done.
func Serve(ctx context.Context, addr string, h http.Handler, paths string, log zerolog.Logger) (wait func(), err error) {
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
	log.Info().Str("addr", ln.Addr().String()).Msg("serving " + paths)
	return func() { <-done }, nil
}
