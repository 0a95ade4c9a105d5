package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/urfave/cli/v2"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/metrics"
	"github.com/cachesync/cachesync/internal/shadow"
	"github.com/cachesync/cachesync/mapping"
)

// shadowFlags are run's shadow mode flags.
func shadowFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "shadow", EnvVars: []string{"CACHESYNC_SHADOW"}, Usage: "apply nothing: stream from a temporary slot of its own and count the invalidations the application did not do itself within --shadow-window (cachesync_shadow_missed_total); needs Redis keyspace notifications, standalone Redis only"},
		&cli.DurationFlag{Name: "shadow-window", Value: shadow.DefaultWindow, EnvVars: []string{"CACHESYNC_SHADOW_WINDOW"}, Usage: "with --shadow, how long after a commit the application has to delete or overwrite a key before it counts as missed"},
		&cli.IntFlag{Name: "shadow-max-keys", Value: shadow.DefaultMaxKeys, EnvVars: []string{"CACHESYNC_SHADOW_MAX_KEYS"}, Usage: "with --shadow, keys watched at once; effects past it are counted in cachesync_shadow_unchecked_total"},
	}
}

// startShadow sets up run --shadow: keyspace notifications on, the rules'
// key spaces subscribed, and the shadow as the dry run's applier (s.shadow).
func startShadow(c *cli.Context, e *env, s *stack, m *metrics.Metrics) error {
	if c.Bool("dry-run") {
		return &exitError{code: 2, msg: "--shadow and --dry-run do not go together: --shadow already applies nothing (use one)"}
	}
	window, maxKeys := c.Duration("shadow-window"), c.Int("shadow-max-keys")
	if window <= 0 || maxKeys <= 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("--shadow-window %s and --shadow-max-keys %d must be positive (defaults: %s, %d)", window, maxKeys, shadow.DefaultWindow, shadow.DefaultMaxKeys)}
	}
	if mode := e.cfg.Redis.Mode; mode != "" && mode != config.RedisStandalone {
		return &exitError{code: 1, msg: fmt.Sprintf("cachesync run --shadow watches a standalone Redis only in this version, and the rules file says mode = %q", mode)}
	}
	patterns, rules, err := shadowPatterns(e)
	if err != nil {
		return err
	}
	if len(patterns) == 0 {
		return &exitError{code: 1, msg: "cachesync run --shadow: no rule deletes or refreshes keys (bump_version effects are not checked): nothing to watch"}
	}
	rc, err := redisClient(c, e.cfg)
	if err != nil {
		return err
	}
	s.redis = rc
	client := rc.(*redis.Client)
	ctx, cancel := context.WithTimeout(c.Context, 10*time.Second)
	defer cancel()
	flags, err := shadow.EnableNotifications(ctx, client)
	if err != nil {
		return &exitError{code: 1, msg: "cachesync run --shadow: " + err.Error()}
	}
	sh := shadow.New(shadow.Options{Redis: client, Window: window, MaxKeys: maxKeys, Observer: m.ShadowObserver(rules), Logger: e.log})
	if err := sh.Start(ctx, patterns); err != nil {
		return &exitError{code: 1, msg: "cachesync run --shadow: " + err.Error()}
	}
	s.shadow = sh
	e.log.Info().Str("notify_keyspace_events", flags).Strs("patterns", patterns).Dur("window", window).
		Msg("shadow mode: nothing is applied; counting the invalidations the application misses")
	return nil
}

// shadowPatterns returns the key patterns to watch: the rules' key spaces,
// or every key when a rule deletes tags (a tag's keys can be any). rules
// are the names of the rules whose effects are checked.
func shadowPatterns(e *env) (patterns, rules []string, err error) {
	mp, err := mapping.New(e.cfg.Rules, mapping.Options{Logger: e.log})
	if err != nil {
		return nil, nil, &exitError{code: 1, msg: "cachesync run --shadow: " + err.Error()}
	}
	tags := false
	for _, op := range mp.FlushAll("") {
		ks := op.Keyspace
		if len(ks.Keys) > 0 || len(ks.Tags) > 0 {
			rules = append(rules, op.Rule)
		}
		for _, p := range ks.Keys {
			if !slices.Contains(patterns, p) {
				patterns = append(patterns, p)
			}
		}
		tags = tags || len(ks.Tags) > 0
	}
	if tags {
		patterns = []string{"*"}
	}
	return patterns, rules, nil
}
