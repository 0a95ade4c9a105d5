package main

// The client's table (-client-only): what the application side, package
// cacheaside, costs. A GetOrLoad hit against a raw go-redis GET of the same
// value, alternated op by op on one connection pool; the round trips of a
// hit and of a miss with a fenced fill, counted with a go-redis hook; and a
// stampede: -client-callers concurrent callers of one cold key spread over
// 4 processes (this binary re-executed), with a 50 ms loader, whose loads
// the in-process singleflight and the cross-process lock should hold to one
// in all. It needs only redis-server (and, with -cluster, a Redis Cluster).

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/cacheaside"
	"github.com/cachesync/cachesync/internal/testenv"
)

// clientOptions are the flags of the client table, declared in main.
type clientOptions struct {
	Only    bool `json:"-"`
	Callers int  `json:"callers"`
}

var clientOpts clientOptions

const (
	// clientHelperEnv, set, makes this binary a stampede process: it reads
	// its stampedeSpec from the variable.
	clientHelperEnv = "CACHESYNC_BENCH_CLIENT_HELPER"
	stampedeProcs   = 4
	stampedeLoad    = 50 * time.Millisecond
	// hitPairs raw GETs and GetOrLoad hits, alternated; missOps misses.
	hitPairs = 20_000
	missOps  = 2_000
)

// clientMain runs the client benchmark when it is asked for: as a stampede
// process (re-executed by the benchmark), or with -client-only. It reports
// whether it ran; it exits the process on failure.
func clientMain(o options) bool {
	if spec := os.Getenv(clientHelperEnv); spec != "" {
		if err := stampedeProcess(spec, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "cachesync-bench: stampede process:", err)
			os.Exit(1)
		}
		return true
	}
	if !clientOpts.Only {
		return false
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
	path, err := runClientBench(ctx, o, clientOpts, os.Stdout, logf)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cachesync-bench:", err)
		os.Exit(1)
	}
	fmt.Printf("\nwrote %s\n", path)
	return true
}

// clientRun is one run's measurements.
type clientRun struct {
	RawGETMicros    float64        `json:"raw_get_us"`
	RawDecodeMicros float64        `json:"raw_get_decode_us"`
	HitMicros       float64        `json:"hit_us"`
	HitRoundTrips   float64        `json:"hit_round_trips"`
	MissMicros      float64        `json:"miss_us"`
	MissRoundTrips  float64        `json:"miss_round_trips"`
	MissTagsRTs     float64        `json:"miss_tags_round_trips"`
	ClusterMissRTs  float64        `json:"cluster_miss_round_trips,omitempty"`
	ClusterTagsRTs  float64        `json:"cluster_miss_tags_round_trips,omitempty"`
	Stampede        stampedeResult `json:"stampede"`
}

type stampedeResult struct {
	Callers   int              `json:"callers"`
	Processes []stampedeReport `json:"processes"`
	Loads     uint64           `json:"loads"`
	MaxLoads  uint64           `json:"max_loads_per_process"`
	LockWaits uint64           `json:"lock_waits"`
	P50Ms     float64          `json:"p50_ms"`
	P99Ms     float64          `json:"p99_ms"`
	MaxMs     float64          `json:"max_ms"`
}

// clientReport is what -client-only writes as client.json.
type clientReport struct {
	Started time.Time      `json:"started"`
	Machine map[string]any `json:"machine"`
	Options clientOptions  `json:"options"`
	Runs    []clientRun    `json:"runs"`
	Figures []clientFigure `json:"figures"`
}

// clientFigure is a line of the client table: a value per run, and its
// ratio to what it is compared with.
type clientFigure struct {
	Name     string    `json:"figure"`
	Unit     string    `json:"unit"`
	Values   []float64 `json:"values"`
	Versus   string    `json:"versus,omitempty"`
	Ratios   []float64 `json:"ratios,omitempty"`
	Target   string    `json:"target,omitempty"`
	Met      *bool     `json:"target_met,omitempty"`
	atMost   float64   // target: the median (of the ratio when Versus is set) at most this
	hasLimit bool
}

func runClientBench(ctx context.Context, o options, co clientOptions, stdout io.Writer, logf func(string, ...any)) (string, error) {
	if o.Runs < 1 || co.Callers < stampedeProcs {
		return "", fmt.Errorf("-runs must be positive and -client-callers at least %d", stampedeProcs)
	}
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	url, stopRedis, err := startBenchRedis()
	if err != nil {
		return "", err
	}
	defer stopRedis()
	var cluster *testenv.RedisCluster
	if o.Cluster {
		if cluster, err = testenv.NewRedisCluster(testenv.ClusterOptions{ReplicasPerMaster: -1}, logf); err != nil {
			return "", fmt.Errorf("start the Redis Cluster: %w", err)
		}
		defer cluster.Close()
	}
	rep := clientReport{Started: time.Now(), Machine: machine(), Options: co}
	for r := 1; r <= o.Runs; r++ {
		run, err := clientOnce(ctx, url, cluster, co.Callers, exe, r)
		if err != nil {
			return "", fmt.Errorf("run %d: %w", r, err)
		}
		logf("client run %d of %d: hit %.1f µs vs raw GET %.1f µs (%.2f; with the decode %.1f µs), %.0f round trip(s) per hit, %.0f per miss (%.0f with tags); stampede: %d loads over %d processes (most in one: %d), %d lock waits, callers p50 %.1f ms, p99 %.1f ms",
			r, o.Runs, run.HitMicros, run.RawGETMicros, run.HitMicros/run.RawGETMicros, run.RawDecodeMicros, run.HitRoundTrips, run.MissRoundTrips, run.MissTagsRTs,
			run.Stampede.Loads, stampedeProcs, run.Stampede.MaxLoads, run.Stampede.LockWaits, run.Stampede.P50Ms, run.Stampede.P99Ms)
		rep.Runs = append(rep.Runs, run)
		if err := ctx.Err(); err != nil {
			return "", err
		}
	}
	rep.Figures = clientFigures(rep.Runs, co.Callers, cluster != nil)
	printClientTable(stdout, rep)
	dir := filepath.Join(o.Out, rep.Started.Format("20060102-150405")+"-client")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "client.json")
	return path, os.WriteFile(path, append(js, '\n'), 0o644)
}

func clientFigures(runs []clientRun, callers int, cluster bool) []clientFigure {
	var figs []clientFigure
	add := func(f clientFigure, value func(clientRun) (v, versus float64)) {
		for _, r := range runs {
			v, vs := value(r)
			f.Values = append(f.Values, v)
			if f.Versus != "" {
				f.Ratios = append(f.Ratios, v/vs)
			}
		}
		if f.hasLimit {
			_, med, _ := spread(f.Values)
			if f.Versus != "" {
				_, med, _ = spread(f.Ratios)
			}
			met := med <= f.atMost
			f.Met = &met
		}
		figs = append(figs, f)
	}
	add(clientFigure{Name: "raw go-redis GET, median op", Unit: "µs"},
		func(r clientRun) (float64, float64) { return r.RawGETMicros, 0 })
	add(clientFigure{Name: "raw GET + json.Unmarshal (what a hit decodes), median op", Unit: "µs", Versus: "raw GET"},
		func(r clientRun) (float64, float64) { return r.RawDecodeMicros, r.RawGETMicros })
	add(clientFigure{Name: "GetOrLoad hit, median op (alternated with the GET)", Unit: "µs", Versus: "raw GET", Target: "≤ 1.15×", atMost: 1.15, hasLimit: true},
		func(r clientRun) (float64, float64) { return r.HitMicros, r.RawGETMicros })
	add(clientFigure{Name: "round trips per hit", Unit: "round trips", Versus: "raw GET (1)", Target: "no extra", atMost: 1, hasLimit: true},
		func(r clientRun) (float64, float64) { return r.HitRoundTrips, 1 })
	add(clientFigure{Name: "round trips per miss (lock, fenced fill)", Unit: "round trips"},
		func(r clientRun) (float64, float64) { return r.MissRoundTrips, 0 })
	add(clientFigure{Name: "round trips per miss with a tag", Unit: "round trips"},
		func(r clientRun) (float64, float64) { return r.MissTagsRTs, 0 })
	if cluster {
		add(clientFigure{Name: "round trips per miss, Redis Cluster", Unit: "round trips"},
			func(r clientRun) (float64, float64) { return r.ClusterMissRTs, 0 })
		add(clientFigure{Name: "round trips per miss with a tag, Redis Cluster", Unit: "round trips"},
			func(r clientRun) (float64, float64) { return r.ClusterTagsRTs, 0 })
	}
	add(clientFigure{Name: "miss, median op (a loader that returns at once)", Unit: "µs", Versus: "raw GET"},
		func(r clientRun) (float64, float64) { return r.MissMicros, r.RawGETMicros })
	stampede := fmt.Sprintf("stampede (%d callers, %d processes, %s loader): ", callers, stampedeProcs, stampedeLoad)
	add(clientFigure{Name: stampede + "loads in all", Unit: "loads", Target: "about 1 (the lock)", atMost: 1, hasLimit: true},
		func(r clientRun) (float64, float64) { return float64(r.Stampede.Loads), 0 })
	add(clientFigure{Name: stampede + "most loads in one process", Unit: "loads", Target: "≤ 1", atMost: 1, hasLimit: true},
		func(r clientRun) (float64, float64) { return float64(r.Stampede.MaxLoads), 0 })
	add(clientFigure{Name: stampede + "processes that waited for the lock", Unit: "processes"},
		func(r clientRun) (float64, float64) { return float64(r.Stampede.LockWaits), 0 })
	add(clientFigure{Name: stampede + "caller latency p50", Unit: "ms", Versus: "loader"},
		func(r clientRun) (float64, float64) { return r.Stampede.P50Ms, ms(stampedeLoad) })
	add(clientFigure{Name: stampede + "caller latency p99", Unit: "ms", Versus: "loader"},
		func(r clientRun) (float64, float64) { return r.Stampede.P99Ms, ms(stampedeLoad) })
	return figs
}

func printClientTable(w io.Writer, rep clientReport) {
	fmt.Fprintf(w, "\ncachesync-bench -client-only: %d run(s), %s\n\n", len(rep.Runs), rep.Machine["cpu"])
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.Debug)
	fmt.Fprintln(tw, "client figure\tunit\tmin\tmedian\tmax\tratio median [min–max]\tvs\ttarget\t")
	for _, f := range rep.Figures {
		lo, med, hi := spread(f.Values)
		ratio, target := "", f.Target
		if f.Versus != "" {
			rlo, rmed, rhi := spread(f.Ratios)
			ratio = fmt.Sprintf("%.2f [%.2f–%.2f]", rmed, rlo, rhi)
		}
		if f.Met != nil {
			target += map[bool]string{true: " met", false: " MISSED"}[*f.Met]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", f.Name, f.Unit, num(lo), num(med), num(hi), ratio, f.Versus, target)
	}
	tw.Flush()
}

// clientOnce measures one run: the hit, the misses, the stampede.
func clientOnce(ctx context.Context, url string, cluster *testenv.RedisCluster, callers int, exe string, run int) (clientRun, error) {
	var r clientRun
	opts, err := redis.ParseURL(url)
	if err != nil {
		return r, err
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	rt := &testenv.RoundTrips{}
	rdb.AddHook(rt)
	c, err := cacheaside.New(rdb, cacheaside.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return r, err
	}
	defer c.Close()
	type user struct {
		ID    int    `json:"id"`
		Email string `json:"email"`
	}
	u := user{ID: 42, Email: "someone@example.com"}
	load := func(context.Context) (user, error) { return u, nil }
	prefix := fmt.Sprintf("client:%d:", run)

	// The hit, alternated op by op with a raw GET of the same value, and with
	// a raw GET and the JSON decode a hit does.
	hot := prefix + "user:42"
	if _, err := cacheaside.GetOrLoad(ctx, c, hot, load); err != nil {
		return r, err
	}
	raw, decoded, hit := make([]time.Duration, 0, hitPairs), make([]time.Duration, 0, hitPairs), make([]time.Duration, 0, hitPairs)
	var hitRTs int64
	for range hitPairs {
		t0 := time.Now()
		if _, err := rdb.Get(ctx, hot).Bytes(); err != nil {
			return r, fmt.Errorf("raw GET: %w", err)
		}
		td := time.Now()
		b, err := rdb.Get(ctx, hot).Bytes()
		if err != nil {
			return r, fmt.Errorf("raw GET: %w", err)
		}
		var v user
		if err := json.Unmarshal(b, &v); err != nil {
			return r, err
		}
		decoded = append(decoded, time.Since(td))
		t1 := time.Now()
		before := rt.Load()
		if _, err := cacheaside.GetOrLoad(ctx, c, hot, load); err != nil {
			return r, fmt.Errorf("hit: %w", err)
		}
		hit = append(hit, time.Since(t1))
		hitRTs += rt.Load() - before
		raw = append(raw, td.Sub(t0))
	}
	r.RawGETMicros, r.HitMicros = micros(medianDuration(raw)), micros(medianDuration(hit))
	r.RawDecodeMicros = micros(medianDuration(decoded))
	r.HitRoundTrips = float64(hitRTs) / hitPairs
	if st := c.Stats(); st.Loads != 1 {
		return r, fmt.Errorf("%d loads for one key, want 1", st.Loads)
	}

	// Misses: fresh keys, plain and with a tag.
	miss := make([]time.Duration, 0, missOps)
	before := rt.Load()
	for i := range missOps {
		t0 := time.Now()
		if _, err := cacheaside.GetOrLoad(ctx, c, prefix+"miss:"+strconv.Itoa(i), load); err != nil {
			return r, fmt.Errorf("miss: %w", err)
		}
		miss = append(miss, time.Since(t0))
	}
	r.MissMicros = micros(medianDuration(miss))
	r.MissRoundTrips = float64(rt.Load()-before) / missOps
	before = rt.Load()
	for i := range missOps / 10 {
		if _, err := cacheaside.GetOrLoad(ctx, c, prefix+"tagged:"+strconv.Itoa(i), load, cacheaside.Tags("org:1")); err != nil {
			return r, fmt.Errorf("miss with a tag: %w", err)
		}
	}
	r.MissTagsRTs = float64(rt.Load()-before) / (missOps / 10)
	if cluster != nil {
		if r.ClusterMissRTs, r.ClusterTagsRTs, err = clusterMisses(ctx, cluster, prefix); err != nil {
			return r, fmt.Errorf("cluster: %w", err)
		}
	}
	if st := c.Stats(); st.RedisErrors != 0 || st.FencedFills != 0 {
		return r, fmt.Errorf("client stats %+v: Redis errors or refused fills without a writer", st)
	}
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		return r, err
	}
	r.Stampede, err = stampede(ctx, exe, url, prefix+"cold", callers)
	return r, err
}

// clusterMisses counts the round trips of misses on a Redis Cluster,
// without tags and with one.
func clusterMisses(ctx context.Context, cluster *testenv.RedisCluster, prefix string) (plain, tagged float64, err error) {
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cluster.Addrs()})
	defer rdb.Close()
	rt := &testenv.RoundTrips{}
	rdb.AddHook(rt)
	c, err := cacheaside.New(rdb, cacheaside.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	load := func(context.Context) (int, error) { return 1, nil }
	if _, err := cacheaside.GetOrLoad(ctx, c, prefix+"warm", load, cacheaside.Tags("org:1")); err != nil {
		return 0, 0, err
	}
	const n = 200
	count := func(tags ...string) (float64, error) {
		before := rt.Load()
		for i := range n {
			if _, err := cacheaside.GetOrLoad(ctx, c, fmt.Sprintf("%scluster:%d:%d", prefix, len(tags), i), load, cacheaside.Tags(tags...)); err != nil {
				return 0, err
			}
		}
		return float64(rt.Load()-before) / n, nil
	}
	if plain, err = count(); err != nil {
		return 0, 0, err
	}
	tagged, err = count("org:1")
	return plain, tagged, err
}

// stampedeSpec is what a stampede process is told, in clientHelperEnv.
type stampedeSpec struct {
	URL     string        `json:"url"`
	Key     string        `json:"key"`
	Callers int           `json:"callers"`
	Load    time.Duration `json:"load"`
}

// stampedeReport is what a stampede process answers, on its stdout.
type stampedeReport struct {
	Loads        uint64    `json:"loads"`
	LockWaits    uint64    `json:"lock_waits"`
	LockTimeouts uint64    `json:"lock_timeouts"`
	Fills        uint64    `json:"fills"`
	Errors       int       `json:"errors"`
	LatencyMs    []float64 `json:"latency_ms,omitempty"`
}

// stampede starts stampedeProcs processes of this binary, each with its
// share of callers of key (cold), lets them all go at once, and sums what
// they report.
func stampede(ctx context.Context, exe, url, key string, callers int) (stampedeResult, error) {
	res := stampedeResult{Callers: callers}
	type proc struct {
		cmd   *exec.Cmd
		stdin io.WriteCloser
		out   *bufio.Reader
	}
	var procs []proc
	defer func() {
		for _, p := range procs {
			_ = p.stdin.Close()
			if p.cmd.ProcessState == nil {
				_ = p.cmd.Process.Kill()
				_ = p.cmd.Wait()
			}
		}
	}()
	for i := range stampedeProcs {
		n := callers / stampedeProcs
		if i < callers%stampedeProcs {
			n++
		}
		spec, err := json.Marshal(stampedeSpec{URL: url, Key: key, Callers: n, Load: stampedeLoad})
		if err != nil {
			return res, err
		}
		cmd := exec.CommandContext(ctx, exe)
		cmd.Env = append(os.Environ(), clientHelperEnv+"="+string(spec))
		cmd.Stderr = os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return res, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return res, err
		}
		if err := cmd.Start(); err != nil {
			return res, fmt.Errorf("start a stampede process: %w", err)
		}
		procs = append(procs, proc{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)})
	}
	for _, p := range procs {
		if line, err := p.out.ReadString('\n'); err != nil || line != "ready\n" {
			return res, fmt.Errorf("a stampede process did not get ready: %q, %v", line, err)
		}
	}
	for _, p := range procs { // go
		if _, err := io.WriteString(p.stdin, "go\n"); err != nil {
			return res, err
		}
	}
	var latencies []float64
	for _, p := range procs {
		var pr stampedeReport
		if err := json.NewDecoder(p.out).Decode(&pr); err != nil {
			return res, fmt.Errorf("a stampede process's report: %w", err)
		}
		if err := p.cmd.Wait(); err != nil {
			return res, fmt.Errorf("a stampede process: %w", err)
		}
		if pr.Errors > 0 {
			return res, fmt.Errorf("%d callers of a stampede process failed", pr.Errors)
		}
		latencies = append(latencies, pr.LatencyMs...)
		pr.LatencyMs = nil
		res.Processes = append(res.Processes, pr)
		res.Loads += pr.Loads
		res.MaxLoads = max(res.MaxLoads, pr.Loads)
		res.LockWaits += pr.LockWaits
	}
	slices.Sort(latencies)
	if len(latencies) != callers {
		return res, fmt.Errorf("%d callers answered, want %d", len(latencies), callers)
	}
	res.P50Ms = latencies[len(latencies)/2]
	res.P99Ms = latencies[(len(latencies)*99)/100]
	res.MaxMs = latencies[len(latencies)-1]
	return res, nil
}

// stampedeProcess is one process of the stampede: it says "ready" once
// connected, and on "go" from its stdin starts its callers at once; it then
// writes its stampedeReport.
func stampedeProcess(specJSON string, stdin io.Reader, stdout io.Writer) error {
	var spec stampedeSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		return err
	}
	opts, err := redis.ParseURL(spec.URL)
	if err != nil {
		return err
	}
	// Connections for every caller, made before the start.
	opts.PoolSize, opts.MinIdleConns = spec.Callers, spec.Callers
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	ctx := context.Background()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return err
	}
	c, err := cacheaside.New(rdb, cacheaside.Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		return err
	}
	defer c.Close()
	load := func(ctx context.Context) (string, error) {
		select { // a query that takes spec.Load
		case <-time.After(spec.Load):
			return "value", nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	start := make(chan struct{})
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		latencies []float64
		failed    int
	)
	for range spec.Callers {
		wg.Go(func() {
			<-start
			t0 := time.Now()
			v, err := cacheaside.GetOrLoad(ctx, c, spec.Key, load)
			d := ms(time.Since(t0))
			mu.Lock()
			defer mu.Unlock()
			latencies = append(latencies, d)
			if err != nil || v != "value" {
				failed++
				fmt.Fprintln(os.Stderr, "caller:", v, err)
			}
		})
	}
	if _, err := io.WriteString(stdout, "ready\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil || line != "go\n" {
		close(start)
		wg.Wait()
		return errors.Join(errors.New("no go from the benchmark"), err)
	}
	close(start)
	wg.Wait()
	st := c.Stats()
	return json.NewEncoder(stdout).Encode(stampedeReport{
		Loads: st.Loads, LockWaits: st.LockWaits, LockTimeouts: st.LockTimeouts, Fills: st.Fills,
		Errors: failed, LatencyMs: latencies,
	})
}

// startBenchRedis starts a private redis-server on a free loopback port.
func startBenchRedis() (url string, stop func(), err error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", nil, errors.New("redis-server not found: run make deps")
	}
	dir, err := os.MkdirTemp("", "cachesync-bench-client-")
	if err != nil {
		return "", nil, err
	}
	for attempt := 0; ; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", nil, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--protected-mode", "no",
			"--save", "", "--appendonly", "no", "--dir", dir, "--logfile", filepath.Join(dir, "redis.log"))
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
		if err := cmd.Start(); err != nil {
			return "", nil, err
		}
		stop := func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
			_ = os.RemoveAll(dir)
		}
		url := fmt.Sprintf("redis://127.0.0.1:%d/0", port)
		opts, _ := redis.ParseURL(url)
		c := redis.NewClient(opts)
		deadline := time.Now().Add(10 * time.Second)
		for {
			pctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err = c.Ping(pctx).Err()
			cancel()
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond) // the server's start, not an effect of ours
		}
		_ = c.Close()
		if err == nil {
			return url, stop, nil
		}
		stop()
		if attempt == 3 {
			return "", nil, fmt.Errorf("redis-server did not answer: %w", err)
		}
		if dir, err = os.MkdirTemp("", "cachesync-bench-client-"); err != nil {
			return "", nil, err
		}
	}
}

func medianDuration(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[len(d)/2]
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
